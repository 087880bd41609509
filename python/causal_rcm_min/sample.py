"""Samplers: streaming chunk-by-chunk generation with a KV cache, and full-clip sampling.

Each chunk starts from noise and is denoised on its own timestep list (t from 1 to 0):
many Euler steps for a flow-matching teacher, a few "consistency" steps for a student
(predict x0, re-noise to the next time), or "meanflow" steps for a two-time student
(x_r = x_t - (t - r) u(x_t, r, t), deterministic). A finished chunk is re-encoded at t = 0 into
the cache, or with ``noisy_context`` the K/V of its last denoising step are cached
instead, saving one forward per chunk.
"""
from __future__ import annotations

import torch

from .data import from_model, null_cond

SOLVERS = ("euler", "consistency", "meanflow")


def shifted_times(steps: int, shift: float = 1.0) -> list[float]:
    """``steps + 1`` times from 1 to 0, uniform then warped by ``shift`` (>1 spends more steps near noise)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * u / (1 + (shift - 1) * u)).tolist()


def chunk_schedules(steps: list[int], shift: float) -> list[list[float]]:
    """Per-chunk timestep lists from per-chunk step counts (the last entry repeats)."""
    if not steps:
        raise ValueError("steps must list at least one step count")
    return [shifted_times(int(n), shift) for n in steps]


def student_schedules(dc) -> list[list[float]]:
    """A student's per-chunk timestep lists from its ``DistillConfig``: the custom ``schedule``
    when given, else ``student_steps`` warped by ``t_shift``. Training (the times a student
    is trained at, the rollouts of SF-DMD) and the sampler both read this one function."""
    if dc.schedule:
        schedules = [[float(t) for t in ts] for ts in dc.schedule]
        for ts in schedules:
            _check_schedule(ts)
        return schedules
    return chunk_schedules(dc.student_steps, dc.t_shift)


def schedule_for_chunk(schedules: list[list[float]], b: int) -> list[float]:
    """Chunk b's timestep list (the last list repeats)."""
    return schedules[min(b, len(schedules) - 1)]


def _check_schedule(ts: list[float]):
    if len(ts) < 2 or abs(ts[0] - 1.0) > 1e-6 or abs(ts[-1]) > 1e-6 or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"each schedule must fall strictly from 1 to 0, got {ts}")


def _guided(velocity_fn, x, t, cond, actions, cfg_scale):
    """Classifier-free guidance on a batch doubled as [cond | null]."""
    if cfg_scale == 1.0:
        return velocity_fn(x, t, cond, actions)
    B = x.shape[0]
    v = velocity_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null_cond(B, cond.device)]),
                    None if actions is None else torch.cat([actions, actions]))
    vc, vu = v[:B], v[B:]
    return vu + cfg_scale * (vc - vu)


def _step(x, v, t, t_next, solver, generator):
    if solver in ("euler", "meanflow"):   # meanflow: v is the average velocity over [t_next, t]
        return x + (t_next - t) * v
    if solver == "consistency":
        x0 = x - t * v
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return (1 - t_next) * x0 + t_next * noise
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


@torch.no_grad()
def sample_streaming(model, cond, actions, num_frames: int, schedules: list[list[float]],
                     cfg_scale: float = 1.0, solver: str = "euler", noisy_context: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate (B, num_frames, 3, H, W) in [0, 1] chunk by chunk with a KV cache.

    ``schedules[b]`` is chunk b's timestep list (the last one repeats). Guidance runs
    the conditional and null branches as one doubled batch with one doubled cache.
    """
    for ts in schedules:
        _check_schedule(ts)
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    B, device = cond.shape[0], cond.device
    dtype = next(model.parameters()).dtype
    size = model.data_cfg.image_size
    cache = model.new_cache()
    guided = cfg_scale != 1.0

    def velocity(x, t, c, a, write=False, r=None):
        return model.forward_chunk(x, t, c, a, cache, write=write, r=r)

    chunks, start = [], 0
    for b, nf in enumerate(model.pattern(num_frames).chunk_frames):
        ts = schedules[min(b, len(schedules) - 1)]
        a = None if actions is None else actions[:, start:start + nf]
        x = torch.randn((B, nf, 3, size, size), device=device, dtype=dtype, generator=generator)
        for i, (t, t_next) in enumerate(zip(ts, ts[1:])):
            last = i == len(ts) - 2
            tt = torch.full((B, nf), t, device=device, dtype=dtype)
            write = noisy_context and last
            r = None
            if solver == "meanflow":
                r = torch.full((B * (2 if guided else 1), nf), t_next, device=device, dtype=dtype)
            v = _guided(lambda *args: velocity(*args, write=write, r=r), x, tt, cond, a, cfg_scale)
            x = _step(x, v, t, t_next, solver, generator)
        if not noisy_context:
            zero = torch.zeros((B, nf), device=device, dtype=dtype)
            if guided:
                velocity(torch.cat([x, x]), torch.cat([zero, zero]), torch.cat([cond, null_cond(B, device)]),
                         None if a is None else torch.cat([a, a]), write=True)
            else:
                velocity(x, zero, cond, a, write=True)
        chunks.append(x)
        start += nf
    return from_model(torch.cat(chunks, 1).float())


@torch.no_grad()
def sample_full(model, cond, actions, num_frames: int, schedule: list[float], cfg_scale: float = 1.0,
                solver: str = "euler", generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate whole clips at once with full attention (the bidirectional teacher)."""
    _check_schedule(schedule)
    B, device = cond.shape[0], cond.device
    dtype = next(model.parameters()).dtype
    size = model.data_cfg.image_size
    x = torch.randn((B, num_frames, 3, size, size), device=device, dtype=dtype, generator=generator)

    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    for t, t_next in zip(schedule, schedule[1:]):
        tt = torch.full((B, num_frames), t, device=device, dtype=dtype)

        def velocity(x, t, c, a):
            r = torch.full_like(t, t_next) if solver == "meanflow" else None
            return model(x, t, c, a, mode="full", r=r)

        x = _step(x, _guided(velocity, x, tt, cond, actions, cfg_scale), t, t_next, solver, generator)
    return from_model(x.float())
