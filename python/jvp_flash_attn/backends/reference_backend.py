"""The reference backend: the closed forms of jvp_flash_attn.reference, any float dtype and device.

Its three entry points are torch.library custom ops, so torch.compile sees one opaque node per
call (the reference's mask indexing is data-dependent and cannot be traced). Masks are not
tensors: the ops take the mask's ``uid``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..masks.segments import mask_by_uid
from .base import Backend, empty_outputs, refuse_tangents

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@torch.library.custom_op("jfa::reference_fwd", mutates_args=())
def reference_fwd(q: Tensor, k: Tensor, v: Tensor, mask_id: int, scale: float) -> tuple[Tensor, Tensor]:
    refuse_tangents(q, k, v)
    return reference.forward(q, k, v, mask_by_uid(mask_id), scale)


def _lse_dtype(q):
    return torch.promote_types(q.dtype, torch.float32)


@reference_fwd.register_fake
def _(q, k, v, mask_id, scale):
    return empty_outputs(q, v, _lse_dtype(q))


@torch.library.custom_op("jfa::reference_jvp", mutates_args=())
def reference_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor, mask_id: int,
                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
    refuse_tangents(q, k, v, tq, tk, tv)
    return reference.forward_jvp(q, k, v, tq, tk, tv, mask_by_uid(mask_id), scale)


@reference_jvp.register_fake
def _(q, k, v, tq, tk, tv, mask_id, scale):
    return empty_outputs(q, v, _lse_dtype(q), with_tangent=True)


@torch.library.custom_op("jfa::reference_bwd", mutates_args=())
def reference_bwd(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor, mask_id: int,
                  scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return reference.backward(q, k, v, o, lse, do, mask_by_uid(mask_id), scale)


@reference_bwd.register_fake
def _(q, k, v, o, lse, do, mask_id, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class ReferenceBackend(Backend):
    name = "reference"

    def availability(self):
        return None

    def unsupported(self, q, k, v):
        if q.dtype not in FLOAT_DTYPES:
            return f"dtype must be one of {FLOAT_DTYPES}, got {q.dtype}"
        return None

    def forward(self, q, k, v, mask, scale):
        return reference_fwd(q, k, v, mask.uid, scale)

    def backward(self, q, k, v, o, lse, do, mask, scale):
        return reference_bwd(q, k, v, o, lse, do, mask.uid, scale)

    def forward_jvp(self, q, k, v, tq, tk, tv, mask, scale):
        return reference_jvp(q, k, v, tq, tk, tv, mask.uid, scale)
