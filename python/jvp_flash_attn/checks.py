"""Input validation for the public API: every error names the argument and what was expected."""
from __future__ import annotations

import numbers

import torch

from .masks import SegmentMask, full


def _tensor(name, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have rank 4 (B, S, H, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.numel() and x.stride(-1) != 1:
        raise ValueError(f"{name} must have unit stride on its last dim, got strides {x.stride()}")
    if min(x.shape) < 1:
        raise ValueError(f"{name} must have no empty dims, got shape {tuple(x.shape)}")


def check_inputs(q, k, v, mask, scale):
    """Validate q/k/v/mask/scale; return (mask, scale) with defaults filled in."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _tensor(name, x)
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    (b, sq, hq, d), (bk, sk, hk, dk), (bv, sv, hv, _) = q.shape, k.shape, v.shape
    if not b == bk == bv:
        raise ValueError(f"batch sizes must match: q {b}, k {bk}, v {bv}")
    if sk != sv:
        raise ValueError(f"k and v must have the same sequence length, got k {sk}, v {sv}")
    if hk != hv:
        raise ValueError(f"k and v must have the same number of heads, got k {hk}, v {hv}")
    if dk != d:
        raise ValueError(f"k's head dim must equal q's (Dqk={d}), got {dk}")
    if hq % hk:
        raise ValueError(f"q's heads ({hq}) must be a multiple of k's heads ({hk}) for GQA/MQA")
    if mask is None:
        mask = full(sq, sk)
    elif not isinstance(mask, SegmentMask):
        raise TypeError(f"mask must be a jvp_flash_attn.masks mask or None, got {type(mask).__name__}")
    elif (mask.sq, mask.sk) != (sq, sk):
        raise ValueError(f"mask is {mask.sq} x {mask.sk} (queries x keys) but q has Sq={sq} "
                         f"and k has Sk={sk}")
    return mask, _scale(scale, d)


_F32 = torch.finfo(torch.float32)


def _scale(scale, d):
    """The softmax scale as a float, Dqk ** -0.5 by default. Only positive normal float32 values
    give the same result on every backend: the kernels take it as a float32, and the cuda kernels
    scale scores after masking them with -inf, which a scale <= 0 turns into NaN."""
    if scale is None:
        return d ** -0.5
    # bool is an int, and a tensor would be read back from its device on every call
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number (int or float) or None, got {type(scale).__name__}")
    if not _F32.tiny <= scale <= _F32.max:  # also False for NaN
        raise ValueError(f"scale must be finite and positive, in float32's normal range "
                         f"[{_F32.tiny:.4g}, {_F32.max:.4g}], got {scale}")
    return float(scale)


def check_tangents(primals, tangents, names=("tq", "tk", "tv")):
    """Each tangent matches its primal in shape, dtype and device, with unit last stride."""
    for name, p, t in zip(names, primals, tangents):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != p.shape:
            raise ValueError(f"{name} must have its primal's shape {tuple(p.shape)}, got {tuple(t.shape)}")
        if t.dtype != p.dtype or t.device != p.device:
            raise TypeError(f"{name} must match its primal's dtype/device ({p.dtype}, {p.device}), "
                            f"got ({t.dtype}, {t.device})")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have unit stride on its last dim, got strides {t.stride()}")
