"""The Triton launchers as torch.library custom ops, so torch.compile sees one opaque node
per call (no graph break) and ``torch.library.opcheck`` can check them.

Masks are not tensors: the ops take the mask's ``uid`` and fetch its cached tile description
inside the op, where torch.compile does not trace (building a description is data-dependent
host work).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..backends.base import empty_outputs, refuse_tangents
from ..masks.segments import mask_by_uid
from .attn_bwd import attn_bwd
from .attn_fwd import attn_fwd
from .attn_jvp import attn_jvp


@torch.library.custom_op("jfa::triton_fwd", mutates_args=())
def triton_fwd(q: Tensor, k: Tensor, v: Tensor, mask_uid: int, scale: float) -> tuple[Tensor, Tensor]:
    refuse_tangents(q, k, v)
    return attn_fwd(q, k, v, mask_by_uid(mask_uid), scale)


@triton_fwd.register_fake
def _(q, k, v, mask_uid, scale):
    return empty_outputs(q, v)


@torch.library.custom_op("jfa::triton_jvp", mutates_args=())
def triton_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor, mask_uid: int,
               scale: float) -> tuple[Tensor, Tensor, Tensor]:
    refuse_tangents(q, k, v, tq, tk, tv)
    return attn_jvp(q, k, v, tq, tk, tv, mask_by_uid(mask_uid), scale)


@triton_jvp.register_fake
def _(q, k, v, tq, tk, tv, mask_uid, scale):
    return empty_outputs(q, v, with_tangent=True)


@torch.library.custom_op("jfa::triton_bwd", mutates_args=())
def triton_bwd(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor, mask_uid: int,
               scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return attn_bwd(q, k, v, o, lse, do, mask_by_uid(mask_uid), scale)


@triton_bwd.register_fake
def _(q, k, v, o, lse, do, mask_uid, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
