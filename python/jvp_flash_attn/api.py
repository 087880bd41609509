"""Public entry points: attention (backward + forward AD) and attention_jvp.

Forward-mode AD is served by the backend's fused forward+JVP: the API reads the
inputs' tangents before entering the autograd.Function, hands them in as plain
inputs, and the Function's ``jvp`` rule returns the tangent the fused pass already
computed. So each call runs exactly one kernel (fused under forward AD, plain
forward otherwise) and the primal stays differentiable by ``backward()``.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from . import backends as _backends
from .checks import check_inputs, check_tangents


class _TangentSlot:
    """Carries the fused pass's tangent from ``forward`` to ``jvp``. Deliberately not a
    dict or list: functorch rebuilds pytree containers between the two calls."""

    __slots__ = ("to",)

    def __init__(self):
        self.to = None


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(q, k, v, tq, tk, tv, mask, scale, backend, slot):
        if tq is None:
            return backend.forward(q, k, v, mask, scale)
        o, to, lse = backend.forward_jvp(q, k, v, tq, tk, tv, mask, scale)
        slot.to = to
        return o, lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, _, _, _, mask, scale, backend, slot = inputs
        o, lse = output
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.mask, ctx.scale, ctx.backend, ctx.slot = mask, scale, backend, slot
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, do, _dlse):
        if do is None:
            return (None,) * 10
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.backend.backward(q, k, v, o, lse, do.contiguous(), ctx.mask, ctx.scale)
        return dq, dk, dv, None, None, None, None, None, None, None



class _AttentionForwardAD(_Attention):
    """The same op with the forward-AD rule. Kept apart because torch.compile cannot trace an
    autograd.Function that defines ``jvp``; without tangents the plain one is used."""

    @staticmethod
    def jvp(ctx, *_tangents):
        to, ctx.slot.to = ctx.slot.to, None
        if to is None:
            raise RuntimeError("jvp_flash_attn: forward-mode AD reached attention without the "
                               "tangents being read; this is a bug, please report it")
        return to, None


def _tangent(x):
    return fwAD.unpack_dual(x).tangent


def _run(q, k, v, tangents, mask, scale, backend):
    be = _backends.select(backend, q, k, v)
    slot = _TangentSlot()
    if tangents is None:
        o, _ = _Attention.apply(q, k, v, None, None, None, mask, scale, be, slot)
        return o, None
    tq, tk, tv = (t if t is not None else torch.zeros_like(p) for t, p in zip(tangents, (q, k, v)))
    o, _ = _AttentionForwardAD.apply(q, k, v, tq, tk, tv, mask, scale, be, slot)
    return o, slot.to


def attention(q, k, v, mask=None, scale=None, backend=None):
    """Masked attention. q (B, Sq, Hq, Dqk), k (B, Sk, Hk, Dqk), v (B, Sk, Hk, Dv) -> o (B, Sq, Hq, Dv).

    Differentiable by ``backward()``, ``torch.func.jvp`` and ``torch.autograd.forward_ad``;
    under forward AD one fused forward+JVP pass computes o and its tangent.

    >>> import torch, jvp_flash_attn as jfa
    >>> p = jfa.masks.FramePattern(tokens_per_frame=6, num_frames=4)
    >>> q = k = v = torch.randn(1, 2 * p.num_tokens, 2, 16)
    >>> jfa.attention(q, k, v, mask=jfa.masks.teacher_forcing(p)).shape
    torch.Size([1, 48, 2, 16])
    """
    mask, scale = check_inputs(q, k, v, mask, scale)
    tangents = tuple(_tangent(x) for x in (q, k, v))
    if all(t is None for t in tangents):
        tangents = None
    return _run(q, k, v, tangents, mask, scale, backend)[0]


def attention_jvp(q, k, v, tq, tk, tv, mask=None, scale=None, backend=None):
    """(o, to): attention and its directional derivative along (tq, tk, tv), in one fused pass.

    ``o`` stays differentiable by ``backward()`` when the inputs require grad; ``to`` is not
    differentiable (continuous-time consistency objectives stop its gradient).
    """
    mask, scale = check_inputs(q, k, v, mask, scale)
    check_tangents((q, k, v), (tq, tk, tv))
    o, to = _run(q, k, v, (tq, tk, tv), mask, scale, backend)
    return o, to
