"""Masked attention from plain torch ops: the oracle, and the reference backend.

Layout is (B, S, H, D) throughout. Work is split into query blocks so that no more
than one block of (rows x Sk) scores exists at a time in the closed-form entry
points. ``attention`` is built from differentiable ops only, so autograd and
forward-mode AD differentiate it directly; the closed forms (``forward``,
``backward``, ``forward_jvp``) are what the reference backend runs and what the
kernels mirror: for 16-bit inputs, scores, softmax statistics and every product's
accumulation in float32, with P (and P * tS, dS) rounded to the inputs' dtype before
they multiply V (or K, Q), as the kernels feed their matrix units.

A query row with no allowed key gives o = 0, lse = -inf, zero gradients and zero
tangent; which rows those are is decided by the mask alone. Masked (query, key) pairs
are absent: a NaN or Inf at a key never reaches a row that cannot see it (nor one at a
query a key it cannot see). Otherwise NaN and Inf propagate: a row whose allowed scores
hold NaN or +Inf, or are all -Inf, gives NaN (softmax's 0/0), and a NaN or Inf in v at
an allowed key gives NaN or Inf in the output columns it reaches.
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


def _acc_dtype(dtype):
    """Where scores, statistics and sums live: float32 for 16-bit inputs (as in the kernels; fp16
    products overflow), the inputs' own dtype otherwise (float64 keeps the oracle exact)."""
    return torch.promote_types(dtype, torch.float32)


def _round(x, dtype):
    """x rounded to ``dtype`` and back: the kernels' 16-bit operands of a matrix product."""
    return x.to(dtype).to(x.dtype)


def _masked_scores(qb, k, allowed, scale):
    s = torch.matmul(qb, k.transpose(-1, -2)) * scale
    return s.masked_fill(~allowed, float("-inf"))


def _matmul_allowed(a, b, allowed):
    """a @ b for an ``a`` that is zero wherever ``allowed`` (a's last two dims) is False. A NaN or
    Inf in b reaches a row of the product only through an allowed pair, where it gives NaN; a plain
    product would spread it to every row (0 * NaN = NaN). The kernels do the same."""
    finite = torch.isfinite(b)
    if bool(finite.all()):
        return torch.matmul(a, b)
    out = torch.matmul(a, torch.where(finite, b, torch.zeros_like(b)))
    hits = torch.matmul(allowed.to(b.dtype), (~finite).to(b.dtype))
    return torch.where(hits > 0, torch.full_like(out, float("nan")), out)


def _softmax_stats(s, allowed):
    """Row max (detached: the results do not depend on it), unnormalised probabilities, their
    row sum, lse, and which rows have no allowed key. A row whose allowed scores are all -inf
    has l = 0 and lse = -inf but is not empty: dividing by its l gives NaN, as softmax does."""
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)  # exp(-inf - 0) = 0, not NaN
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)
    empty = ~allowed.any(-1, keepdim=True)
    lse = torch.where(empty, torch.full_like(l, float("-inf")), m + torch.log(l))
    return p, l, lse, empty


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
    acc = _acc_dtype(q.dtype)
    kh, vh = _expand_kv(k, groups).to(acc), _expand_kv(v, groups).to(acc)
    outs = []
    for r0, r1 in _blocks(q, k.shape[1]):
        allowed = mask.dense_rows(r0, r1, q.device)
        s = _masked_scores(_heads_first(q[:, r0:r1]).to(acc), kh, allowed, scale)
        p, l, _, empty = _softmax_stats(s, allowed)
        outs.append(_matmul_allowed(p, vh, allowed) / torch.where(empty, torch.ones_like(l), l))
    return torch.cat(outs, dim=2).transpose(1, 2).to(q.dtype).contiguous()


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
    acc = _acc_dtype(q.dtype)
    kh, vh = _expand_kv(k, groups).to(acc), _expand_kv(v, groups).to(acc)
    jvp = tq is not None
    if jvp:
        tkh, tvh = _expand_kv(tk, groups).to(acc), _expand_kv(tv, groups).to(acc)
    b, sq, hq, _ = q.shape
    o = q.new_empty(b, hq, sq, v.shape[-1])
    to = torch.empty_like(o) if jvp else None
    lse = torch.empty(b, hq, sq, dtype=acc, device=q.device)
    for r0, r1 in _blocks(q, k.shape[1]):
        allowed = mask.dense_rows(r0, r1, q.device)
        qb = _heads_first(q[:, r0:r1]).to(acc)
        s = _masked_scores(qb, kh, allowed, scale)
        p, l, lse_b, empty = _softmax_stats(s, allowed)
        l = torch.where(empty, torch.ones_like(l), l)
        p_in = _round(p, q.dtype)
        ob = _matmul_allowed(p_in, vh, allowed) / l
        o[:, :, r0:r1], lse[:, :, r0:r1] = ob, lse_b.squeeze(-1)
        if jvp:
            ts = (torch.matmul(_heads_first(tq[:, r0:r1]).to(acc), kh.transpose(-1, -2))
                  + torch.matmul(qb, tkh.transpose(-1, -2))) * scale
            pts = torch.where(allowed, p * ts, torch.zeros_like(p))  # masked pairs are absent
            mu = pts.sum(-1, keepdim=True)
            acc_t = _matmul_allowed(p_in, tvh, allowed) + _matmul_allowed(_round(pts, q.dtype), vh, allowed)
            to[:, :, r0:r1] = acc_t / l - (mu / l) * ob
    o = o.transpose(1, 2).contiguous()
    return (o, to.transpose(1, 2).contiguous(), lse) if jvp else (o, None, lse)


@torch.no_grad()
def backward(q, k, v, o, lse, do, mask=None, scale=None):
    """(dq, dk, dv), closed form (dk, dv summed over GQA groups).

    P = exp(S - lse), D = rowsum(dO * O), dV = P^T dO, dS = P * (dO V^T - D),
    dQ = scale dS K, dK = scale dS^T Q.
    """
    mask, scale, groups = _prepare(q, k, v, mask, scale)
    acc = _acc_dtype(q.dtype)
    kh, vh = _expand_kv(k, groups).to(acc), _expand_kv(v, groups).to(acc)
    dq = torch.empty_like(q)
    dkh = torch.zeros_like(kh)
    dvh = torch.zeros_like(vh)
    lse = lse.to(acc)
    for r0, r1 in _blocks(q, k.shape[1]):
        allowed = mask.dense_rows(r0, r1, q.device)
        qb, dob, ob = (_heads_first(x[:, r0:r1]).to(acc) for x in (q, do, o))
        s = _masked_scores(qb, kh, allowed, scale)
        # only allowed pairs: rows with no allowed key have lse = -inf, and exp(-inf + inf) is NaN
        p = torch.where(allowed, torch.exp(s - lse[:, :, r0:r1, None]), torch.zeros_like(s))
        d = (dob * ob).sum(-1, keepdim=True)
        ds = torch.where(allowed, p * (torch.matmul(dob, vh.transpose(-1, -2)) - d), torch.zeros_like(p))
        ds_in, allowed_t = _round(ds, q.dtype), allowed.transpose(0, 1)
        dvh += _matmul_allowed(_round(p, q.dtype).transpose(-1, -2), dob, allowed_t)
        dkh += _matmul_allowed(ds_in.transpose(-1, -2), qb, allowed_t)
        dq[:, r0:r1] = (_matmul_allowed(ds_in, kh, allowed) * scale).transpose(1, 2)
    dk, dv = _reduce_kv(dkh * scale, groups), _reduce_kv(dvh, groups)
    return dq, dk.to(k.dtype).contiguous(), dv.to(v.dtype).contiguous()


def flops(mask: SegmentMask, batch: int, heads: int, d_qk: int, d_v: int, op: str = "fwd") -> float:
    """Exact-pair FLOPs (docs/design/benchmarks.md): forward 2 P (Dqk + Dv), backward 2.5x, fused JVP 3x."""
    base = 2.0 * mask.num_pairs * batch * heads * (d_qk + d_v)
    factor = {"fwd": 1.0, "bwd": 2.5, "jvp": 3.0}
    if op not in factor:
        raise ValueError(f"op must be one of {sorted(factor)}, got {op!r}")
    return base * factor[op]


__all__ = ["attention", "forward", "forward_jvp", "backward", "flops"]
