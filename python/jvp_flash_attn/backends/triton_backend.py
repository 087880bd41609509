"""The Triton backend: masked forward, backward and fused forward+JVP kernels.

Runs on a CUDA GPU, or on the CPU under Triton's interpreter (TRITON_INTERPRET=1, set
before the kernels are first imported). The kernels are imported on first use, so asking
whether the backend is available never defines them. The backward has no atomics: bitwise
repeatable whatever ``deterministic`` says.
"""
from __future__ import annotations

import os

import torch

from .base import Backend

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Head dims: multiples of 8 from 16 to 256 (non-powers of two are padded in registers).
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _head_dim_reason(name: str, d: int) -> str | None:
    if d % 8 or not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        return (f"{name}'s head dim must be a multiple of 8 in [{MIN_HEAD_DIM}, {MAX_HEAD_DIM}] "
                f"for the triton backend, got {d}")
    return None


def _check_offsets(**tensors):
    from ..triton.launch_setup import check_int32_offsets

    for name, x in tensors.items():
        check_int32_offsets(name, x)


class TritonBackend(Backend):
    name = "triton"

    def availability(self):
        try:
            import triton  # noqa: F401
        except ImportError as e:
            return f"triton is not installed ({e}; pip install 'jvp-flash-attn[triton]')"
        if _interpreting() or torch.cuda.is_available():
            return None
        return "no CUDA GPU (set TRITON_INTERPRET=1 to run the kernels on the CPU)"

    def unsupported(self, q, k, v):
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.dtype not in DTYPES:
                return f"{name}'s dtype must be one of {DTYPES} for the triton backend, got {x.dtype}"
        if _interpreting():
            if q.device.type != "cpu":
                return f"q must be on the CPU under TRITON_INTERPRET=1, got {q.device}"
        elif q.device.type != "cuda":
            return f"q must be on a CUDA device for the triton backend, got {q.device}"
        return _head_dim_reason("q", q.shape[-1]) or _head_dim_reason("v", v.shape[-1])

    def forward(self, q, k, v, mask, scale):
        from ..triton import attn_fwd

        _check_offsets(q=q, k=k, v=v)
        return attn_fwd(q, k, v, mask, scale)

    def forward_jvp(self, q, k, v, tq, tk, tv, mask, scale):
        from ..triton import attn_jvp

        _check_offsets(q=q, k=k, v=v, tq=tq, tk=tk, tv=tv)
        return attn_jvp(q, k, v, tq, tk, tv, mask, scale)

    def backward(self, q, k, v, o, lse, do, mask, scale, deterministic=False):
        from ..triton import attn_bwd

        _check_offsets(q=q, k=k, v=v, o=o, do=do)
        return attn_bwd(q, k, v, o, lse, do, mask, scale)
