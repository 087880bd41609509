"""The zero-tangent hint's query side: rows whose tangent output is zero by promise run the forward.

A query row's tangent output is to = sum_j p_j (tv_j + ts_j (v_j - o)) with
ts_j = scale (tq . k_j + q . tk_j). When the mask's hint promises tq = 0 for the row and
tk = tv = 0 for every key the row may see, every term is zero: the row needs only o and lse, which
the forward computes with two products per tile instead of the fused JVP's four to six (and, on
Hopper, with wider tiles). In teacher forcing these are the clean half's rows, half of the pairs.

``forward_jvp_by_rows`` cuts the query segments into runs of such rows and of the others, runs the
backend's forward on the first and its fused JVP on the second, each over a mask of those query
segments and every key, and joins the outputs. For the forward's rows to = 0 * o: exact zeros
where o is finite, and NaN where o is not, as the oracle's 0 * (v - o) gives there. One case
differs from the oracle: an infinite key whose score is -inf leaves o finite, while the oracle's
tq . k = 0 * inf is NaN; there to is 0.
"""
from __future__ import annotations

import numpy as np
import torch

from .masks.segments import NONE, SegmentMask
from .masks.tiles import covered_intervals


def tangent_free_segments(mask: SegmentMask) -> np.ndarray:
    """Per query segment: the hint promises a zero tangent for its rows and for every key it may see."""
    q_free = covered_intervals(mask._q_starts[:-1], mask._q_starts[1:], mask.zero_tangent_q)
    k_free = covered_intervals(mask._k_starts[:-1], mask._k_starts[1:], mask.zero_tangent_k)
    sees_tangent = ((mask._rule != NONE) & ~k_free[None, :]).any(axis=1)
    return q_free & ~sees_tangent


def row_runs(mask: SegmentMask) -> tuple[tuple[int, int, bool, SegmentMask], ...] | None:
    """(row_start, row_end, tangent_free, mask of those rows) per run of query segments alike, or
    None when no row is tangent-free (the fused JVP runs on the whole mask). Cached with the mask
    (and gone with it): the runs' masks, and their tile descriptions, are built once."""
    if "row_runs" not in mask._derived:
        mask._derived["row_runs"] = _row_runs(mask)
    return mask._derived["row_runs"]


def _row_runs(mask: SegmentMask):
    free = tangent_free_segments(mask)
    if not free.any():
        return None
    runs, first = [], 0
    for i in range(1, len(free) + 1):
        if i == len(free) or free[i] != free[first]:
            a, b = int(mask._q_starts[first]), int(mask._q_starts[i])
            # zero-tangent query ranges in the run's own row numbers (key ranges are unchanged)
            zq = [(max(s, a) - a, min(e, b) - a) for s, e in mask.zero_tangent_q if min(e, b) > max(s, a)]
            sub = SegmentMask(mask.q_sizes[first:i], mask.k_sizes, mask.rule[first:i],
                              f"{mask.name}[rows {a}:{b}]", zq, mask.zero_tangent_k)
            runs.append((a, b, bool(free[first]), sub))
            first = i
    return tuple(runs)


def forward_jvp_by_rows(backend, q, k, v, tq, tk, tv, mask: SegmentMask, scale: float):
    """(o, to, lse) as ``backend.forward_jvp`` returns them, the hint's tangent-free rows by the
    forward (see the module docstring)."""
    if q.shape[1] != mask.sq:
        raise ValueError(f"q has {q.shape[1]} rows but the mask {mask.sq}")
    runs = row_runs(mask) if mask.zero_tangent_q else None
    if runs is None:
        return backend.forward_jvp(q, k, v, tq, tk, tv, mask, scale)
    outs, tos, lses = [], [], []
    for a, b, tangent_free, sub in runs:
        if tangent_free:
            o, lse = backend.forward(q[:, a:b], k, v, sub, scale)
            to = o * 0
        else:
            o, to, lse = backend.forward_jvp(q[:, a:b], k, v, tq[:, a:b], tk, tv, sub, scale)
        outs.append(o)
        tos.append(to)
        lses.append(lse)
    if len(runs) == 1:
        return outs[0], tos[0], lses[0]
    return torch.cat(outs, dim=1), torch.cat(tos, dim=1), torch.cat(lses, dim=2)
