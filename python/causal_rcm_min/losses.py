"""Training objectives, one function per objective.

Flow matching: x_t = (1 - t) x0 + t eps, the model predicts the velocity eps - x0.
Teachers differ only in how timesteps are laid out over frames and which attention
layout the model runs:

- teacher forcing: per-chunk times on the noisy copy, clean context packed beside it;
- diffusion forcing: per-chunk times, each chunk attends to the noisy earlier chunks;
- bidirectional: one time per clip, full attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data import NULL

T_SAMPLINGS = ("logit_normal", "shift", "uniform")


def sample_t(shape, cfg: TrainConfig, device, generator=None) -> torch.Tensor:
    """Training times in (0, 1): logit-normal, or uniform warped by a shift (>1 favours noise)."""
    if cfg.t_sampling == "logit_normal":
        t = torch.sigmoid(cfg.t_mean + cfg.t_std * torch.randn(shape, device=device, generator=generator))
    elif cfg.t_sampling in ("shift", "uniform"):
        u = torch.rand(shape, device=device, generator=generator)
        s = cfg.t_shift if cfg.t_sampling == "shift" else 1.0
        t = s * u / (1 + (s - 1) * u)
    else:
        raise ValueError(f"train.t_sampling must be one of {T_SAMPLINGS}, got {cfg.t_sampling!r}")
    return t.clamp(1e-5, 1 - 1e-5)


def drop_condition(cond: torch.Tensor, p: float, generator=None) -> torch.Tensor:
    """Replace each clip's condition by the null condition with probability p (for CFG)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"train.cond_dropout must be in [0, 1], got {p}")
    drop = torch.rand(cond.shape[0], device=cond.device, generator=generator) < p
    return torch.where(drop[:, None], torch.full_like(cond, NULL), cond)


def chunk_times(model, batch: int, num_frames: int, cfg: TrainConfig, device) -> torch.Tensor:
    """One time per chunk, repeated over the chunk's frames: (B, F)."""
    pattern = model.pattern(num_frames)
    tc = sample_t((batch, pattern.num_chunks), cfg, device)
    return torch.repeat_interleave(tc, torch.tensor(pattern.chunk_frames, device=device), dim=1)


def _flow_matching(model, x0, t, cond, actions, cfg: TrainConfig, mode: str, clean=None):
    eps = torch.randn_like(x0)
    tt = t[:, :, None, None, None]
    xt = (1 - tt) * x0 + tt * eps
    v = model(xt, t.to(x0.dtype), drop_condition(cond, cfg.cond_dropout), actions, mode=mode, clean=clean)
    return F.mse_loss(v.float(), (eps - x0).float())


def flow_matching_teacher_forcing(model, x0, cond, actions, cfg: TrainConfig):
    """Causal teacher: noisy chunks see the clean earlier chunks, as with a clean KV cache."""
    net = getattr(model, "module", model)
    t = chunk_times(net, x0.shape[0], x0.shape[1], cfg, x0.device)
    return _flow_matching(model, x0, t, cond, actions, cfg, "teacher_forcing", clean=x0)


def flow_matching_diffusion_forcing(model, x0, cond, actions, cfg: TrainConfig):
    """Causal teacher: independent noise level per chunk under the block-causal mask."""
    net = getattr(model, "module", model)
    t = chunk_times(net, x0.shape[0], x0.shape[1], cfg, x0.device)
    return _flow_matching(model, x0, t, cond, actions, cfg, "block_causal")


def flow_matching_bidirectional(model, x0, cond, actions, cfg: TrainConfig):
    """Bidirectional teacher: one noise level per clip, every frame sees every frame."""
    t = sample_t((x0.shape[0], 1), cfg, x0.device).expand(x0.shape[0], x0.shape[1])
    return _flow_matching(model, x0, t, cond, actions, cfg, "full")


OBJECTIVES = {
    "teacher_forcing": flow_matching_teacher_forcing,
    "diffusion_forcing": flow_matching_diffusion_forcing,
    "bidirectional": flow_matching_bidirectional,
}


def objective(name: str):
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]

