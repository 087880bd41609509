"""Ulysses context parallelism: attention over a sequence split across the ranks of a group.

Each rank holds a shard of the sequence, ``(B, S/P, H, D)``. One all-to-all turns sequence
shards into head shards (every rank then holds the whole sequence for H/P heads), the
package's attention runs under the global mask on those heads, and one all-to-all turns the
output back into sequence shards.

Both exchanges are autograd Functions. ``backward()`` runs the reverse exchange on the
gradients; forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``) is served the way
``jfa.attention`` serves it: the tangents are taken off the inputs, travel in the same
collective as their primals (packed side by side in one buffer) and are put back on the outputs
with ``make_dual``. So a forward under forward AD costs two all-to-alls and one fused
forward+JVP, like a plain forward.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.distributed as dist

from .api import attention, split_duals
from .masks import SegmentMask, full


def _exchange(xs, to_heads: bool, group):
    """One all-to-all for a list of tensors that share (B, local S).

    to_heads: (B, s, h, d) sequence shards -> (B, s * P, h / P, d) head shards.
    otherwise: (B, S, h, d) head shards -> (B, S / P, h * P, d) sequence shards.
    Rank r sends its r-th group of heads (to_heads) or its r-th sequence block (back).
    """
    p = dist.get_world_size(group)
    b, s = xs[0].shape[:2]
    # send[r] (B, s or S/P, width): head group r of my sequence shard, or sequence block r
    # of my heads; every tensor is copied once into its columns
    if to_heads:
        blocks = [x.reshape(b, s, p, -1).permute(2, 0, 1, 3) for x in xs]
    else:
        blocks = [x.reshape(b, p, s // p, -1).transpose(0, 1) for x in xs]
    widths = [blk.shape[-1] for blk in blocks]
    send = xs[0].new_empty(blocks[0].shape[:3] + (sum(widths),))
    start = 0
    for blk, w in zip(blocks, widths):
        send[..., start:start + w].copy_(blk)
        start += w
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    # recv[r] came from rank r: its sequence shard (to_heads) or its head group (back)
    recv = recv.transpose(0, 1) if to_heads else recv.permute(1, 2, 0, 3)
    outs, start = [], 0
    for x, w in zip(xs, widths):
        h, d = x.shape[2:]
        # a fresh tensor per output: outputs that were views of one buffer would trip
        # forward AD's view tracking
        shape = (b, p * s, h // p, d) if to_heads else (b, s // p, p * h, d)
        out = recv.new_empty(shape)
        out.view(recv.shape[:3] + (w,)).copy_(recv[..., start:start + w])
        outs.append(out)
        start += w
    return outs


class _AllToAll(torch.autograd.Function):
    """inputs: to_heads, group, then the tensors to exchange (primals and tangents alike)."""

    @staticmethod
    def forward(to_heads, group, *xs):
        return tuple(_exchange(list(xs), to_heads, group))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.to_heads, ctx.group = inputs[:2]

    @staticmethod
    def backward(ctx, *grads):
        return (None, None, *_exchange(list(grads), not ctx.to_heads, ctx.group))


def _all_to_all(xs, to_heads: bool, group):
    """Differentiable exchange of tensors sharing (B, local S). Under forward AD the tangents are
    taken off the inputs, exchanged in the same collective as their primals and put back with
    ``make_dual``: ordinary outputs, so a compiled graph keeps them (as ``jfa.attention`` does)."""
    primals, tangents = split_duals(xs)
    if tangents is None:
        return _AllToAll.apply(to_heads, group, *xs)
    outs = _AllToAll.apply(to_heads, group, *primals, *tangents)
    n = len(xs)
    return tuple(fwAD.make_dual(o, t) for o, t in zip(outs[:n], outs[n:]))


def _check(q, k, v, mask, p):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have rank 4 (B, S/P, H, D), got shape {tuple(x.shape)}")
        if x.shape[2] % p:
            raise ValueError(f"{name} has {x.shape[2]} heads, not a multiple of the group size P={p}: "
                             f"Ulysses splits heads across ranks (repeat k/v heads for GQA/MQA)")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same local sequence length, got {k.shape[1]} and {v.shape[1]}")
    sq, sk = q.shape[1] * p, k.shape[1] * p
    if mask is None:
        return full(sq, sk)
    if not isinstance(mask, SegmentMask):
        raise TypeError(f"mask must be a jvp_flash_attn.masks mask or None, got {type(mask).__name__}")
    if (mask.sq, mask.sk) != (sq, sk):
        raise ValueError(
            f"mask is {mask.sq} x {mask.sk} (global queries x keys) but the local shards give "
            f"P={p} x {q.shape[1]} = {sq} queries and {p} x {k.shape[1]} = {sk} keys: every rank "
            f"must hold an equal shard of the sequence (pad the sequence to a multiple of P and "
            f"leave the padding out of the mask's allowed pairs)")
    return mask


def context_parallel_attention(q, k, v, mask=None, group=None, scale=None, backend=None, deterministic=None):
    """Attention over a sequence sharded across ``group`` (default: the whole world).

    q (B, Sq/P, Hq, Dqk), k (B, Sk/P, Hk, Dqk), v (B, Sk/P, Hk, Dv): this rank's contiguous
    block of the sequence (rank r holds tokens [r * S/P, (r + 1) * S/P)). ``mask`` covers the
    global sequence (Sq x Sk). Hq and Hk must be multiples of P. Returns this rank's block of
    the output, (B, Sq/P, Hq, Dv). Differentiable by ``backward()``, ``torch.func.jvp`` and
    ``torch.autograd.forward_ad``; ``scale``, ``backend`` and ``deterministic`` are those of
    ``jfa.attention`` (the all-to-alls themselves are repeatable).
    """
    p = dist.get_world_size(group)
    mask = _check(q, k, v, mask, p)
    if p == 1:
        return attention(q, k, v, mask=mask, scale=scale, backend=backend, deterministic=deterministic)
    if q.shape[1] == k.shape[1]:
        qh, kh, vh = _all_to_all([q, k, v], True, group)
    else:
        (qh,) = _all_to_all([q], True, group)
        kh, vh = _all_to_all([k, v], True, group)
    o = attention(qh, kh, vh, mask=mask, scale=scale, backend=backend, deterministic=deterministic)
    return _all_to_all([o], False, group)[0]
