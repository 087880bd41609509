"""The three attention custom ops, one per direction, over every backend.

``jfa::attention_fwd``, ``jfa::attention_jvp`` (the fused forward+JVP) and ``jfa::attention_bwd``
take the backend's name and run its launcher (``backends.get(name).forward``, ...), so
torch.compile sees one opaque node per call (no graph break) and ``torch.library.opcheck`` checks
them. Masks are not tensors: the ops take the mask's ``uid`` (a content digest) and fetch the mask
inside the op, where torch.compile does not trace (its tile description is data-dependent host work).
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from . import backends
from .masks.segments import mask_by_uid
from .tangent_rows import forward_jvp_by_rows


def refuse_tangents(*tensors):
    """Called first in the forward ops. A kernel cannot see forward-AD tangents and would silently
    drop them; jfa.attention strips them and runs the fused pass, so one that arrives here bypassed
    it: dual tensors passed into a torch.compile'd function, whose graph was traced without them."""
    if torch._C._dispatch_tls_is_dispatch_key_excluded(torch._C.DispatchKey.ADInplaceOrView):
        return  # inference mode or inductor's compiled code: tangents can be neither read nor kept here
    if any(fwAD.unpack_dual(x).tangent is not None for x in tensors):
        raise RuntimeError("jvp_flash_attn: forward-mode AD tangents reached the attention kernel, which "
                           "would drop them. Under torch.compile, make the dual tensors (or call "
                           "torch.func.jvp) inside the compiled function, not outside it.")


def empty_outputs(q, v, with_tangent=False):
    """Uninitialised (o, lse) or (o, to, lse) of the launchers' shapes, what the ops report to
    torch.compile: o/to (B, Sq, Hq, Dv) in q's dtype, lse (B, Hq, Sq) in float32 (float64 for
    float64 inputs, which only the reference backend takes)."""
    b, sq, hq, _ = q.shape
    o = q.new_empty(b, sq, hq, v.shape[-1])
    lse = q.new_empty(b, hq, sq, dtype=torch.promote_types(q.dtype, torch.float32))
    return (o, torch.empty_like(o), lse) if with_tangent else (o, lse)


@torch.library.custom_op("jfa::attention_fwd", mutates_args=())
def attention_fwd(q: Tensor, k: Tensor, v: Tensor, mask_uid: int, scale: float,
                  backend: str) -> tuple[Tensor, Tensor]:
    refuse_tangents(q, k, v)
    return backends.get(backend).forward(q, k, v, mask_by_uid(mask_uid), scale)


@attention_fwd.register_fake
def _(q, k, v, mask_uid, scale, backend):
    return empty_outputs(q, v)


@torch.library.custom_op("jfa::attention_jvp", mutates_args=())
def attention_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor, mask_uid: int,
                  scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    refuse_tangents(q, k, v, tq, tk, tv)
    # rows the zero-tangent hint makes tangent-free run the plain forward (tangent_rows.py)
    return forward_jvp_by_rows(backends.get(backend), q, k, v, tq, tk, tv, mask_by_uid(mask_uid), scale)


@attention_jvp.register_fake
def _(q, k, v, tq, tk, tv, mask_uid, scale, backend):
    return empty_outputs(q, v, with_tangent=True)


@torch.library.custom_op("jfa::attention_bwd", mutates_args=())
def attention_bwd(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor, mask_uid: int,
                  scale: float, backend: str, deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
    return backends.get(backend).backward(q, k, v, o, lse, do, mask_by_uid(mask_uid), scale,
                                          deterministic=deterministic)


@attention_bwd.register_fake
def _(q, k, v, o, lse, do, mask_uid, scale, backend, deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)   # contiguous, as every launcher's
