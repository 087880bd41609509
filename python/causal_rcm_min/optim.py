"""The two update steps every trainer here repeats: a clipped optimizer step and an EMA pull."""
from __future__ import annotations

import torch


def clipped_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, grad_clip: float) -> torch.Tensor:
    """Zero the gradients, back-propagate loss, clip the gradient norm of params, step; the
    norm before clipping is returned."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    return grad_norm


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)
