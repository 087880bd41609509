"""Correctness checks run before any time is printed (the tolerance rule, docs/design/numerics.md).

Two checks, both against float64:
- ``small``: the whole op on a small mask of the same structure (the workload shrunk to
  ``check_scale``), every output (o; dq, dk, dv; o, to) against jvp_flash_attn.reference
  in float64.
- ``rows``: the op at full size, then row slices of its row-local outputs (o, dq, to)
  against the reference computing just those rows in float64 (and in the dtype, for the
  bound).
A provider passes when, for every output, ||out - ref64|| / ||ref64|| <= 2 x the same
error of the reference computed in the provider's dtype, plus FLOOR.
"""
from __future__ import annotations

import torch

import bench  # noqa: F401
from jvp_flash_attn import reference

FLOOR = 1e-4
ROWS = 32  # rows per slice; three slices: first, middle, last


def rel_err(x, ref) -> float:
    x, ref = x.double(), ref.double()
    den = ref.norm().item()
    return (x - ref).norm().item() / (den if den > 0 else 1.0)


def judge(outputs, ref64, ref_dt, names) -> tuple[bool, str]:
    """Tolerance rule over paired outputs; returns (ok, 'name err (bound) ...')."""
    ok, parts = True, []
    for name, out, r64, rdt in zip(names, outputs, ref64, ref_dt):
        e = rel_err(out, r64)
        bound = 2.0 * rel_err(rdt, r64) + FLOOR
        good = e <= bound  # False for NaN
        ok &= good
        parts.append(f"{name} {e:.1e}{'' if good else ' FAIL'} (<= {bound:.1e})")
    return ok, ", ".join(parts)


OUTPUT_NAMES = {"fwd": ("o",), "bwd": ("dq", "dk", "dv"), "jvp": ("o", "to")}
ROW_LOCAL = {"fwd": (0,), "bwd": (0,), "jvp": (0, 1)}  # outputs whose rows depend on their own rows only


def reference_op(op, inp, dtype):
    """All outputs of ``op`` from the closed-form reference with inputs cast to ``dtype``."""
    q, k, v, tq, tk, tv, do = (x.to(dtype) for x in (inp.q, inp.k, inp.v, inp.tq, inp.tk, inp.tv, inp.do))
    if op == "fwd":
        return (reference.forward(q, k, v, inp.mask, inp.scale)[0],)
    if op == "bwd":
        o, lse = reference.forward(q, k, v, inp.mask, inp.scale)
        return reference.backward(q, k, v, o, lse, do, inp.mask, inp.scale)
    if op == "jvp":
        o, to, _ = reference.forward_jvp(q, k, v, tq, tk, tv, inp.mask, inp.scale)
        return o, to
    raise ValueError(f"op must be fwd, bwd or jvp, got {op!r}")


def check_small(op, inp, outputs) -> tuple[bool, str]:
    """Whole-op check on a small input set ``inp`` (already produced ``outputs``)."""
    ref64 = reference_op(op, inp, torch.float64)
    ref_dt = reference_op(op, inp, inp.q.dtype)
    return judge(outputs, ref64, ref_dt, OUTPUT_NAMES[op])


class _Rows:
    """Rows [start, start + n) of a mask, seen by the reference as a mask of its own: the
    reference reads a mask only through ``dense_rows``, so row slices of any mask (causal
    segments cut in the middle included) are computed by the reference's own code."""

    def __init__(self, mask, start: int):
        self.mask, self.start = mask, start

    def dense_rows(self, r0, r1, device="cpu"):
        return self.mask.dense_rows(self.start + r0, self.start + r1, device)


def row_reference(op, inp, r0, r1, dtype):
    """Row-local outputs of ``op`` for query rows [r0, r1) by the reference in ``dtype``:
    (o,) for fwd, (dq,) for bwd, (o, to) for jvp, each (B, r1 - r0, Hq, D)."""
    rows = _Rows(inp.mask, r0)
    c = lambda x: x.to(dtype)
    q, tq, do = (c(x[:, r0:r1]) for x in (inp.q, inp.tq, inp.do))
    k, v, tk, tv = (c(x) for x in (inp.k, inp.v, inp.tk, inp.tv))
    if op == "fwd":
        return (reference.forward(q, k, v, rows, inp.scale)[0],)
    if op == "bwd":
        o, lse = reference.forward(q, k, v, rows, inp.scale)
        return (reference.backward(q, k, v, o, lse, do, rows, inp.scale)[0],)
    o, to, _ = reference.forward_jvp(q, k, v, tq, tk, tv, rows, inp.scale)
    return o, to


def row_slices(sq: int, rows: int = ROWS):
    n = min(rows, sq)
    starts = sorted({0, max(0, sq // 2 - n // 2), sq - n})
    return [(s, s + n) for s in starts]


def check_rows(op, inp, outputs) -> tuple[bool, str]:
    """Row-slice check of the row-local outputs of a full-size run."""
    idx = ROW_LOCAL[op]
    names = [OUTPUT_NAMES[op][i] for i in idx]
    ok, parts = True, []
    for r0, r1 in row_slices(inp.q.shape[1]):
        got = [outputs[i][:, r0:r1] for i in idx]
        good, msg = judge(got, row_reference(op, inp, r0, r1, torch.float64),
                          row_reference(op, inp, r0, r1, inp.q.dtype), names)
        ok &= good
        parts.append(f"rows {r0}:{r1} {msg}")
    return ok, "; ".join(parts)
