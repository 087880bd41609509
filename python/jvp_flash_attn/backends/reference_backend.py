"""The reference backend: the closed forms of jvp_flash_attn.reference, any float dtype and device.

Its backward has no atomics: bitwise repeatable whatever ``deterministic`` says.
"""
from __future__ import annotations

import torch

from .. import reference
from .base import Backend

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ReferenceBackend(Backend):
    name = "reference"

    def availability(self):
        return None

    def unsupported(self, q, k, v):
        if q.dtype not in FLOAT_DTYPES:
            return f"dtype must be one of {FLOAT_DTYPES}, got {q.dtype}"
        return None

    def forward(self, q, k, v, mask, scale):
        return reference.forward(q, k, v, mask, scale)

    def forward_jvp(self, q, k, v, tq, tk, tv, mask, scale):
        return reference.forward_jvp(q, k, v, tq, tk, tv, mask, scale)

    def backward(self, q, k, v, o, lse, do, mask, scale, deterministic=False):
        dq, dk, dv = reference.backward(q, k, v, o, lse, do, mask, scale)
        return dq.contiguous(), dk, dv   # dq follows q's strides; the op promises contiguous gradients
