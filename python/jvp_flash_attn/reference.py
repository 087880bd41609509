"""Masked attention from plain torch ops: the oracle, and the reference backend.

Layout is (B, S, H, D) throughout. Work is split into query blocks so that no more
than one block of (rows x Sk) scores exists at a time in the closed-form entry
points. ``attention`` is built from differentiable ops only, so autograd and
forward-mode AD differentiate it directly; the closed forms (``forward``,
``backward``, ``forward_jvp``) are what the reference backend runs and what the
kernels mirror.

A query row with no allowed key gives o = 0, lse = -inf, zero gradients and zero
tangent. NaN/Inf in inputs propagate.
"""
from __future__ import annotations

import torch

from .masks import SegmentMask, full

# Elements of one (B, H, rows, Sk) score block; bounds the memory of every entry point.
_BLOCK_ELEMENTS = 1 << 24


def _heads_first(x):
    return x.transpose(1, 2)  # (B, S, H, D) -> (B, H, S, D), a view


def _expand_kv(x, groups: int):
    """(B, S, Hk, D) -> (B, Hk*groups, S, D): query head h reads kv head h // groups."""
    x = _heads_first(x)
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _reduce_kv(dx, groups: int):
    """Sum a (B, Hq, S, D) gradient over each GQA group -> (B, S, Hk, D)."""
    b, hq, s, d = dx.shape
    if groups > 1:
        dx = dx.view(b, hq // groups, groups, s, d).sum(2)
    return dx.transpose(1, 2)


def _blocks(q, sk):
    b, sq, h, _ = q.shape
    rows = max(1, min(sq, _BLOCK_ELEMENTS // max(1, b * h * sk)))
    return [(r, min(r + rows, sq)) for r in range(0, sq, rows)]


def _masked_scores(qb, k, allowed, scale):
    s = torch.matmul(qb, k.transpose(-1, -2)) * scale
    return s.masked_fill(~allowed, float("-inf"))


def _softmax_stats(s):
    """Row max (detached: the results do not depend on it), unnormalised probabilities,
    their row sum, and lse; safe for rows with no allowed key."""
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    lse = torch.where(l == 0, torch.full_like(l, float("-inf")), m + torch.log(l))
    return p, l, lse


def _prepare(q, k, v, mask, scale):
    if mask is None:
        mask = full(q.shape[1], k.shape[1])
    if scale is None:
        scale = q.shape[-1] ** -0.5
    groups = q.shape[2] // k.shape[2]
    return mask, scale, groups


def attention(q, k, v, mask: SegmentMask | None = None, scale: float | None = None):
    """o of masked attention from differentiable torch ops (autograd and forward AD)."""
    mask, scale, groups = _prepare(q, k, v, mask, scale)
    kh, vh = _expand_kv(k, groups), _expand_kv(v, groups)
    outs = []
    for r0, r1 in _blocks(q, k.shape[1]):
        s = _masked_scores(_heads_first(q[:, r0:r1]), kh, mask.dense_rows(r0, r1, q.device), scale)
        p, l, _ = _softmax_stats(s)
        outs.append(torch.matmul(p, vh) / torch.where(l == 0, torch.ones_like(l), l))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


@torch.no_grad()
def forward(q, k, v, mask=None, scale=None):
    """(o, lse): o (B, Sq, Hq, Dv) in q's dtype, lse (B, Hq, Sq) float32 (float64 for float64 inputs)."""
    o, _, lse = _forward_impl(q, k, v, None, None, None, mask, scale)
    return o, lse


@torch.no_grad()
def forward_jvp(q, k, v, tq, tk, tv, mask=None, scale=None):
    """(o, to, lse) in one pass, closed form.

    With S = scale q k^T, P = softmax(S) and tS = scale (tq k^T + q tk^T):
    tP = P * (tS - rowsum(P * tS)), so to = P tv + (P * tS) v - rowsum(P * tS) * o.
    """
    return _forward_impl(q, k, v, tq, tk, tv, mask, scale)


def _forward_impl(q, k, v, tq, tk, tv, mask, scale):
    mask, scale, groups = _prepare(q, k, v, mask, scale)
    kh, vh = _expand_kv(k, groups), _expand_kv(v, groups)
    jvp = tq is not None
    if jvp:
        tkh, tvh = _expand_kv(tk, groups), _expand_kv(tv, groups)
    b, sq, hq, _ = q.shape
    o = q.new_empty(b, hq, sq, v.shape[-1])
    to = torch.empty_like(o) if jvp else None
    # float32 like the kernels, float64 when the inputs are float64 (the oracle must stay exact)
    lse = torch.empty(b, hq, sq, dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
    for r0, r1 in _blocks(q, k.shape[1]):
        qb = _heads_first(q[:, r0:r1])
        s = _masked_scores(qb, kh, mask.dense_rows(r0, r1, q.device), scale)
        p, l, lse_b = _softmax_stats(s)
        p = p / torch.where(l == 0, torch.ones_like(l), l)
        ob = torch.matmul(p, vh)
        o[:, :, r0:r1], lse[:, :, r0:r1] = ob, lse_b.squeeze(-1)
        if jvp:
            ts = (torch.matmul(_heads_first(tq[:, r0:r1]), kh.transpose(-1, -2))
                  + torch.matmul(qb, tkh.transpose(-1, -2))) * scale
            pts = torch.where(p == 0, torch.zeros_like(p), p * ts)  # masked keys contribute nothing
            mu = pts.sum(-1, keepdim=True)
            to[:, :, r0:r1] = torch.matmul(p, tvh) + torch.matmul(pts, vh) - mu * ob
    o = o.transpose(1, 2).contiguous()
    return (o, to.transpose(1, 2).contiguous(), lse) if jvp else (o, None, lse)


@torch.no_grad()
def backward(q, k, v, o, lse, do, mask=None, scale=None):
    """(dq, dk, dv), closed form (dk, dv summed over GQA groups).

    P = exp(S - lse), D = rowsum(dO * O), dV = P^T dO, dS = P * (dO V^T - D),
    dQ = scale dS K, dK = scale dS^T Q.
    """
    mask, scale, groups = _prepare(q, k, v, mask, scale)
    kh, vh = _expand_kv(k, groups), _expand_kv(v, groups)
    dq = torch.empty_like(q)
    dkh = torch.zeros_like(kh)
    dvh = torch.zeros_like(vh)
    lse_safe = torch.where(lse == float("-inf"), torch.zeros_like(lse), lse).to(q.dtype)
    for r0, r1 in _blocks(q, k.shape[1]):
        qb, dob, ob = (_heads_first(x[:, r0:r1]) for x in (q, do, o))
        s = _masked_scores(qb, kh, mask.dense_rows(r0, r1, q.device), scale)
        p = torch.exp(s - lse_safe[:, :, r0:r1, None])
        d = (dob * ob).sum(-1, keepdim=True)
        ds = p * (torch.matmul(dob, vh.transpose(-1, -2)) - d)
        dvh += torch.matmul(p.transpose(-1, -2), dob)
        dkh += torch.matmul(ds.transpose(-1, -2), qb) * scale
        dq[:, r0:r1] = (torch.matmul(ds, kh) * scale).transpose(1, 2)
    return dq, _reduce_kv(dkh, groups).contiguous(), _reduce_kv(dvh, groups).contiguous()


def flops(mask: SegmentMask, batch: int, heads: int, d_qk: int, d_v: int, op: str = "fwd") -> float:
    """Exact-pair FLOPs of DESIGN §6: forward 2 P (Dqk + Dv), backward 2.5x, fused JVP 3x."""
    base = 2.0 * mask.num_pairs * batch * heads * (d_qk + d_v)
    factor = {"fwd": 1.0, "bwd": 2.5, "jvp": 3.0}
    if op not in factor:
        raise ValueError(f"op must be one of {sorted(factor)}, got {op!r}")
    return base * factor[op]


__all__ = ["attention", "forward", "forward_jvp", "backward", "flops"]
