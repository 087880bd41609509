"""The model's pointwise pieces (modulated norms, q/k norm + rotary, gated residuals), eager or fused.

Eager, each piece is several memory-bound kernels, most of them in float32 under autocast; on an
H200 they take about two thirds of a training step of the small preset (bench/NOTES.md,
"causal_rcm_min step profile"). ``torch.compile`` turns each piece into one fused kernel forward
and one backward. Fusion is chosen per model (``CausalVideoDiT.fuse_pointwise``) and only on a
GPU. The teacher trainer uses it (``train.fused_pointwise``): on an H200 the small preset's
teacher step goes from 10.7 to 21.5 steps/s. The students do not: TF-sCM and TF-MeanFlow run
forward-mode AD, TF-dCM's step time is compared with TF-sCM's, and the short SF-DMD stages and
samplers, whose chunk-by-chunk shapes vary, spend more on compiling than they save.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def modulated_layer_norm(x, shift, scale, eps: float = 1e-6):
    """LayerNorm without affine, then adaLN modulation x * (1 + scale) + shift."""
    return F.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale) + shift


def gated_add(x, gate, y):
    return x + gate * y


def rms_norm(x, weight, eps: float = 1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x, cos, sin):
    """Rotate consecutive pairs of x (B, S, H, D) by angles with cos/sin (S, D/2)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


def qk_norm_rope(q, k, wq, wk, cos, sin, dtype: torch.dtype, eps: float = 1e-6):
    """RMS-normed, rotated q and k in ``dtype`` (the norms' float32 weights would promote them)."""
    return rope(rms_norm(q, wq, eps), cos, sin).to(dtype), rope(rms_norm(k, wk, eps), cos, sin).to(dtype)


class Pointwise:
    """One set of the pieces: the functions above, or each compiled on first use."""

    def __init__(self, fused: bool):
        self.fused = fused
        fns = dict(modulated_layer_norm=modulated_layer_norm, gated_add=gated_add, qk_norm_rope=qk_norm_rope)
        for name, fn in fns.items():
            setattr(self, name, torch.compile(fn, dynamic=None) if fused else fn)


EAGER = Pointwise(False)
_fused = None


def tangents_active() -> bool:
    """Inside torch.func transforms or a forward-AD dual level: compiled code there would drop the
    tangents (dual tensors come out plain), so the eager pieces must run."""
    from torch.autograd import forward_ad
    if getattr(forward_ad, "_current_level", -1) >= 0:
        return True
    level = getattr(getattr(torch._C, "_functorch", None), "maybe_current_level", None)
    return level is not None and level() is not None


def pieces(fused: bool) -> Pointwise:
    """The fused pieces when asked for and no tangent is being carried; the eager ones otherwise."""
    global _fused
    if not fused or tangents_active():
        return EAGER
    if _fused is None:   # compiled once per process; every model shares the compiled code
        _fused = Pointwise(True)
    return _fused
