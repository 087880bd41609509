"""Samplers: schedules, streaming with guidance, per-chunk step counts, noisy context."""
import pytest
import torch

from causal_rcm_min.sample import chunk_schedules, sample_full, sample_streaming, shifted_times
from test_rcm_model import build


# Whole-model tests run on jfa's reference backend (conftest.reference_backend).
pytestmark = pytest.mark.usefixtures("reference_backend")


def test_shifted_times():
    ts = shifted_times(4, 3.0)
    assert len(ts) == 5 and ts[0] == 1.0 and ts[-1] == 0.0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert ts[1] > 0.75   # a shift above 1 spends the steps near noise
    assert shifted_times(4) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    with pytest.raises(ValueError, match="steps"):
        shifted_times(0)
    with pytest.raises(ValueError, match="shift"):
        shifted_times(2, 0.0)


@pytest.mark.parametrize("cfg_scale, solver, noisy_context", [
    (1.0, "euler", False), (2.0, "euler", False), (2.0, "consistency", True), (1.0, "euler", True)])
def test_streaming_sampler(cfg_scale, solver, noisy_context):
    model, clips = build("first3_then2", action_mode=True, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    out = sample_streaming(model, clips.cond, clips.actions, 5, chunk_schedules([3, 2], 2.0), cfg_scale,
                           solver, noisy_context, g)
    assert out.shape == clips.frames.shape and out.min() >= 0 and out.max() <= 1
    g = torch.Generator().manual_seed(0)
    again = sample_streaming(model, clips.cond, clips.actions, 5, chunk_schedules([3, 2], 2.0), cfg_scale,
                             solver, noisy_context, g)
    torch.testing.assert_close(out, again)


def test_streaming_counts_forwards():
    """Chunk 0 takes 3 steps, later chunks 1 each, plus one t=0 re-encode per chunk."""
    model, clips = build("chunkwise", dtype=torch.float32)
    calls = []
    original = model.forward_chunk

    def counted(*args, **kwargs):
        calls.append(kwargs["write"])
        return original(*args, **kwargs)

    model.forward_chunk = counted
    sample_streaming(model, clips.cond, None, 5, chunk_schedules([3, 1], 1.0))
    chunks = len(model.pattern(5).chunk_frames)
    assert len(calls) == 3 + (chunks - 1) + chunks and sum(calls) == chunks
    calls.clear()
    sample_streaming(model, clips.cond, None, 5, chunk_schedules([3, 1], 1.0), noisy_context=True)
    assert len(calls) == 3 + (chunks - 1) and sum(calls) == chunks


def test_full_sampler():
    model, clips = build("chunkwise", dtype=torch.float32)
    out = sample_full(model, clips.cond, None, 5, shifted_times(3), cfg_scale=1.5)
    assert out.shape == clips.frames.shape


def test_bad_schedule():
    model, clips = build("chunkwise", dtype=torch.float32)
    with pytest.raises(ValueError, match="schedule"):
        sample_streaming(model, clips.cond, None, 5, [[1.0, 0.5]])
    with pytest.raises(ValueError, match="solver"):
        sample_streaming(model, clips.cond, None, 5, [[1.0, 0.0]], solver="heun")
