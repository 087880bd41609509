"""Public entry points: attention (backward + forward AD) and attention_jvp.

Both run the custom ops of ``ops.py`` (one per direction, the backend named as an argument).
Forward-mode AD is served by the backend's fused forward+JVP. ``attention`` unpacks the
inputs' forward-AD tangents itself, runs the fused pass on the primals, and returns
``make_dual(o, to)``. The tangent is an ordinary output of the traced ops, so a torch.compile
graph carries it like any other tensor (torch.compile drops an autograd.Function's ``jvp``
rule). Each call runs one kernel (fused under forward AD, plain forward otherwise; with a
zero-tangent hint the rows it makes tangent-free run the forward, tangent_rows.py) and
the primal stays differentiable by ``backward()``, ``torch.func.grad`` and ``torch.func.vjp``.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from . import backends as _backends
from . import ops
from .checks import check_inputs, check_tangents


class _Attention(torch.autograd.Function):
    """(o, lse), or (o, lse, to) when tangents are given; lse and to are not differentiable."""

    @staticmethod
    def forward(q, k, v, tq, tk, tv, mask, scale, backend, deterministic):
        if tq is None:
            return ops.attention_fwd(q, k, v, mask.uid, scale, backend)
        o, to, lse = ops.attention_jvp(q, k, v, tq, tk, tv, mask.uid, scale, backend)
        return o, lse, to

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, _, _, _, mask, scale, backend, deterministic = inputs
        o, lse = output[:2]
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.mask, ctx.scale, ctx.backend, ctx.deterministic = mask, scale, backend, deterministic
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, do, *_):
        if do is None:
            return (None,) * 10
        q, k, v, o, lse = ctx.saved_tensors
        # The kernel is not differentiable: run it without recording (torch.func.grad runs every
        # backward with create_graph=True), and make any second derivative raise.
        with torch.no_grad():
            dq, dk, dv = ops.attention_bwd(q, k, v, o, lse, do.contiguous(), ctx.mask.uid, ctx.scale, ctx.backend,
                                           ctx.deterministic)
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, do)):
            dq, dk, dv = _FirstOrderOnly.apply(dq, dk, dv, q, k, v, do)
        return dq, dk, dv, None, None, None, None, None, None, None


class _FirstOrderOnly(torch.autograd.Function):
    """Passes attention's gradients through, tied to the inputs they depend on, so that
    differentiating them raises instead of giving a silently zero second derivative."""

    generate_vmap_rule = True  # so that jacrev(jacrev(...)) reaches the error below

    @staticmethod
    def forward(dq, dk, dv, *_depends_on):
        return dq.view_as(dq), dk.view_as(dk), dv.view_as(dv)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError("jvp_flash_attn.attention is differentiable once: its gradients have no "
                           "derivative (double backward, Hessians and jvp-of-grad are not supported)")


def _run(q, k, v, tangents, mask, scale, backend, deterministic):
    name = _backends.select(backend, q, k, v).name
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    elif not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be None, True or False, got {deterministic!r}")
    if tangents is None:
        return _Attention.apply(q, k, v, None, None, None, mask, scale, name, deterministic)[0], None
    o, _, to = _Attention.apply(q, k, v, *tangents, mask, scale, name, deterministic)
    return o, to


def split_duals(xs):
    """(primals, tangents) of forward-AD dual tensors, tangents None when none has one.

    A missing tangent is zero. Forward AD keeps a tangent's shape its primal's, but not always
    its dtype: mixed-precision models hand float32 tangents of bf16 activations. The derivative
    of a bf16 input is taken at bf16, so a floating tangent of another dtype is rounded to its
    primal's (a kernel would otherwise read its bytes as the primal's dtype)."""
    duals = [fwAD.unpack_dual(x) for x in xs]
    primals = tuple(d.primal for d in duals)
    if all(d.tangent is None for d in duals):
        return primals, None
    return primals, tuple(torch.zeros_like(d.primal) if d.tangent is None
                          else d.tangent.to(d.primal.dtype) if d.tangent.is_floating_point() else d.tangent
                          for d in duals)


def attention(q, k, v, mask=None, scale=None, backend=None, deterministic=None):
    """Masked attention. q (B, Sq, Hq, Dqk), k (B, Sk, Hk, Dqk), v (B, Sk, Hk, Dv) -> o (B, Sq, Hq, Dv).

    Differentiable by ``backward()``, ``torch.func.grad``/``vjp``, ``torch.func.jvp`` and
    ``torch.autograd.forward_ad``; under forward AD one fused forward+JVP pass computes o and
    its tangent.

    ``deterministic``: whether the gradients must be bitwise repeatable from run to run. None
    follows ``torch.are_deterministic_algorithms_enabled()``; True or False decides. Only the cuda
    backend has a faster backward that is not repeatable (on Hopper, dQ summed with atomic
    adds); True runs its repeatable form. The other backends are repeatable either way.

    >>> import torch, jvp_flash_attn as jfa
    >>> p = jfa.masks.FramePattern(tokens_per_frame=6, num_frames=4)
    >>> q = k = v = torch.randn(1, 2 * p.num_tokens, 2, 16)
    >>> jfa.attention(q, k, v, mask=jfa.masks.teacher_forcing(p)).shape
    torch.Size([1, 48, 2, 16])
    """
    mask, scale = check_inputs(q, k, v, mask, scale)
    primals, tangents = split_duals((q, k, v))
    if tangents is None:
        return _run(q, k, v, None, mask, scale, backend, deterministic)[0]
    check_tangents(primals, tangents, names=("tq (q's forward-AD tangent)", "tk (k's forward-AD tangent)",
                                             "tv (v's forward-AD tangent)"))
    o, to = _run(*primals, tangents, mask, scale, backend, deterministic)
    return fwAD.make_dual(o, to)


def attention_jvp(q, k, v, tq, tk, tv, mask=None, scale=None, backend=None, deterministic=None):
    """(o, to): attention and its directional derivative along (tq, tk, tv), in one fused pass.

    ``o`` stays differentiable by ``backward()`` when the inputs require grad; ``to`` is not
    differentiable (continuous-time consistency objectives stop its gradient). ``deterministic``
    is that of :func:`attention` (it concerns o's backward).
    """
    mask, scale = check_inputs(q, k, v, mask, scale)
    check_tangents((q, k, v), (tq, tk, tv))
    return _run(q, k, v, (tq, tk, tv), mask, scale, backend, deterministic)
