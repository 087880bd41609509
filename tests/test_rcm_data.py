"""The sprite world: bounces keep sprites in frame, motion is constant between bounces,
actions set the agent's acceleration, and a seed fixes everything."""
import pytest
import torch

from causal_rcm_min.config import DataConfig, preset
from causal_rcm_min.data import (ACTION_DIRECTIONS, NUM_SLOTS, bounds, coverage, render,
                                 sample_clips, simulate)
from causal_rcm_min.evaluate import shape_areas

CONFIGS = {"default": DataConfig(), "tiny": preset("tiny").data,
           "actions": DataConfig(action_mode=True), "long": DataConfig(num_frames=40, image_size=48)}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def world(request):
    cfg = CONFIGS[request.param]
    return cfg, sample_clips(64, cfg, seed=3)


def test_shapes_and_ranges(world):
    cfg, clips = world
    B, F, S = 64, cfg.num_frames, cfg.image_size
    assert clips.frames.shape == (B, F, 3, S, S)
    assert clips.positions.shape == clips.velocities.shape == (B, cfg.max_sprites, F, 2)
    assert clips.frames.min() >= 0 and clips.frames.max() <= 1
    assert clips.actions.shape == (B, F) and clips.cond.shape == (B, NUM_SLOTS)


def test_bounces_keep_sprites_in_frame(world):
    cfg, clips = world
    lo, hi = bounds(cfg)
    p = clips.positions[clips.present]
    assert p.min() >= lo and p.max() <= hi
    # nothing is clipped: drawn on a larger canvas, no coverage falls outside the frame
    pad, S = 8, cfg.image_size
    big = coverage(clips.shapes[clips.present][:, None].expand(-1, cfg.num_frames), p[..., 0] + pad,
                   p[..., 1] + pad, S + 2 * pad, cfg.sprite_radius)
    inside = big[..., pad:pad + S, pad:pad + S].sum((-1, -2))
    torch.testing.assert_close(inside, big.sum((-1, -2)))


def test_velocity_constant_between_bounces(world):
    cfg, clips = world
    passive = clips.present.clone()
    if cfg.action_mode:
        passive[:, 0] = False
    v, p = clips.velocities[passive], clips.positions[passive]          # (M, F, 2)
    torch.testing.assert_close(v.abs(), v[:, :1].abs().expand_as(v))   # speed per axis never changes
    step = p[:, 1:] - p[:, :-1]
    flipped = torch.sign(v[:, 1:]) != torch.sign(v[:, :-1])
    assert flipped.any()                                                 # bounces happen
    torch.testing.assert_close(step[~flipped], v[:, 1:][~flipped])       # free flight moves by v


def test_actions_set_agent_acceleration():
    cfg = DataConfig(action_mode=True, image_size=64, agent_max_speed=10.0)  # never clamped
    clips = sample_clips(64, cfg, seed=5)
    assert (clips.actions[:, 0] == 0).all() and len(clips.actions.unique()) == 5
    v = clips.velocities[:, 0]                                           # (B, F, 2) agent
    prev = v[:, :-1]
    expected = prev + cfg.accel * ACTION_DIRECTIONS[clips.actions[:, 1:]]
    p = clips.positions[:, 0]
    lo, hi = bounds(cfg)
    free = ((p[:, :-1] + expected) > lo) & ((p[:, :-1] + expected) < hi)
    torch.testing.assert_close(v[:, 1:][free], expected[free])
    torch.testing.assert_close(v[:, 1:][~free], -expected[~free])        # a bounce reverses it


def test_render_matches_states_and_distinct_colours(world):
    cfg, clips = world
    again = render(clips.positions, clips.shapes, clips.colours, clips.present, cfg.image_size,
                   cfg.sprite_radius)
    torch.testing.assert_close(again, clips.frames)
    for b in range(8):
        cols = clips.colours[b][clips.present[b]]
        assert len(cols.unique()) == len(cols)
        assert (clips.cond[b, cols] == clips.shapes[b][clips.present[b]] + 1).all()
        assert (clips.cond[b] > 0).sum() == clips.present[b].sum()


def test_seed_determinism():
    cfg = DataConfig()
    a, b, c = sample_clips(8, cfg, 1), sample_clips(8, cfg, 1), sample_clips(8, cfg, 2)
    assert torch.equal(a.frames, b.frames) and not torch.equal(a.frames, c.frames)


def test_simulate_is_a_fold_without_acceleration():
    p0, v0 = torch.tensor([4.0, 20.0]), torch.tensor([1.7, -2.3])
    p, _ = simulate(p0, v0, torch.zeros(2, 30), 3.0, 29.0)
    u = p0[:, None] + v0[:, None] * torch.arange(30)
    L = 26.0
    fold = 3.0 + L - ((u - 3.0).remainder(2 * L) - L).abs()
    torch.testing.assert_close(p, fold)


def test_shape_areas_differ():
    a = shape_areas(DataConfig())
    assert (a[0] - a[1]).abs() > 5 and (a[1] - a[2]).abs() > 5


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch=0), "batch"),
    (dict(cfg=DataConfig(max_sprites=7)), "max_sprites"),
    (dict(cfg=DataConfig(image_size=8)), "image_size"),
])
def test_bad_input(kwargs, match):
    args = dict(batch=2, cfg=DataConfig(), seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
        sample_clips(**args)
