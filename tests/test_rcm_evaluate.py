"""The detector recovers the world's ground truth, real data scores near-perfectly, and
each metric reacts to the defect it is meant to catch."""
import pytest
import torch

from causal_rcm_min.config import DataConfig, EvalConfig, preset
from causal_rcm_min.data import sample_clips
from causal_rcm_min.encoder import clip_features, load_or_train
from causal_rcm_min.evaluate import detect, frechet_distance, score_clips


CONFIGS = {"default": DataConfig(), "tiny": preset("tiny").data, "actions": DataConfig(action_mode=True)}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def real(request):
    cfg = CONFIGS[request.param]
    return cfg, sample_clips(48, cfg, seed=11)


def _score(cfg, clips, frames=None, actions=None):
    return score_clips(clips.frames if frames is None else frames, clips.cond, cfg,
                       clips.actions if actions is None else actions, clips.colours[:, 0])


def test_detector_recovers_states(real):
    cfg, clips = real
    det = detect(clips.frames, cfg)
    assert torch.equal(det.slots, clips.cond)
    b, n = clips.present.nonzero(as_tuple=True)
    col = clips.colours[b, n]
    err = (det.positions[b, col] - clips.positions[b, n]).norm(dim=-1)
    assert err.mean() < 0.05 and err.max() < 0.25, (err.mean(), err.max())
    assert (det.shape[b, col] == clips.shapes[b, n, None]).all()
    assert det.present.sum() == clips.present.sum() * cfg.num_frames


def test_real_data_scores_near_perfect(real):
    cfg, clips = real
    s = _score(cfg, clips)
    by = s["by_frame"]
    assert all(len(v) == cfg.num_frames for v in by.values())
    assert max(by["physics_error_px"]) < 0.1
    assert min(by["adherence_exact"]) == 1.0 and s["mean"]["adherence_clip_exact"] == 1.0
    assert max(by["drift_background"]) < 1e-3 and max(by["drift_area"]) < 0.05
    assert min(by["detected_fraction"]) == 1.0
    if cfg.action_mode:
        assert max(by["action_error_px"]) < 0.1
    else:
        assert "action_error_px" not in by


def test_metrics_catch_defects():
    cfg = DataConfig(action_mode=True)
    clips = sample_clips(32, cfg, seed=12)
    base = _score(cfg, clips)["mean"]
    order = torch.randperm(cfg.num_frames, generator=torch.Generator().manual_seed(0))
    shuffled = _score(cfg, clips, frames=clips.frames[:, order])["mean"]
    assert shuffled["physics_error_px"] > 10 * base["physics_error_px"]
    wrong_actions = _score(cfg, clips, actions=clips.actions.roll(1, 0))["mean"]
    assert wrong_actions["action_error_px"] > 5 * base["action_error_px"]
    other_scene = score_clips(clips.frames, clips.cond.roll(1, 0), cfg, clips.actions, clips.colours[:, 0])
    assert other_scene["mean"]["adherence_clip_exact"] < 0.5
    faded = clips.frames.clone()
    faded[:, cfg.num_frames // 2:] = faded[:, cfg.num_frames // 2:] * 0.8 + 0.1
    drift = _score(cfg, clips, frames=faded)["by_frame"]["drift_background"]
    assert max(drift[:cfg.num_frames // 2]) < 1e-3 < min(drift[cfg.num_frames // 2:])


def test_frechet_distance():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)) == pytest.approx(4.0, abs=0.2)
    # scaled copy: (1 - 2)^2 per dim for unit variance -> about 3
    assert frechet_distance(a, 2 * b) == pytest.approx(3.0, abs=0.3)
    with pytest.raises(ValueError, match="features"):
        frechet_distance(a, b[:, :2])


def test_encoder_cache_and_separation(tmp_path):
    cfg = preset("tiny")
    path = str(tmp_path / "enc.pt")
    ec = EvalConfig(encoder_steps=60, encoder_batch=16, encoder_width=8)
    enc = load_or_train(path, cfg.data, ec, "cpu")
    again = load_or_train(path, cfg.data, ec, "cpu")
    clips = sample_clips(64, cfg.data, seed=1)
    torch.testing.assert_close(clip_features(enc, clips.frames), clip_features(again, clips.frames))
    other = sample_clips(64, cfg.data, seed=2).frames
    noise = torch.rand_like(other)
    f = clip_features(enc, clips.frames)
    assert frechet_distance(f, clip_features(enc, other)) < 0.2 * frechet_distance(f, clip_features(enc, noise))


def test_bad_input():
    cfg = DataConfig()
    clips = sample_clips(2, cfg, seed=0)
    with pytest.raises(ValueError, match="frames"):
        detect(clips.frames[:, :, :, :16], cfg)
    with pytest.raises(ValueError, match="cond"):
        score_clips(clips.frames, clips.cond[:, :3], cfg)
    with pytest.raises(ValueError, match="action"):
        score_clips(clips.frames, clips.cond, DataConfig(action_mode=True))
