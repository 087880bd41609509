"""The matrix product of a PARTIAL tile, where masked (query, key) pairs must stay absent.

In a PARTIAL tile the left operand (P, P * tS or dS) is zero at masked pairs, but the right
one (V, tV, K, Q or dO) is shared by every row: a NaN or Inf there would reach rows that cannot
see it through 0 * NaN = NaN. FULL tiles have no masked pair and multiply plainly; EMPTY tiles
are never visited. So whether a non-finite value reaches an output does not depend on how the
mask falls on tiles (jvp_flash_attn.reference does the same without tiles).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import _mm, _mma


@triton.jit
def _mma_allowed(a, b, acc, ok, PRECISION: tl.constexpr):
    """acc + a @ b for an ``a`` (M x N) that is zero wherever ``ok`` (M x N) is False. A NaN or
    Inf in b (N x D) makes the result NaN in the rows whose pair with it is allowed, and in no
    other row. The extra products run only for a tile that holds such a value."""
    finite = tl.abs(b.to(tl.float32)) < float("inf")  # False for NaN too
    if tl.min(finite.to(tl.int32)) == 0:
        out = _mma(a, tl.where(finite, b, tl.zeros_like(b)), acc, PRECISION)
        hits = _mm(ok.to(b.dtype), (finite == 0).to(b.dtype), PRECISION)
        out = tl.where(hits > 0, float("nan"), out)
    else:
        out = _mma(a, b, acc, PRECISION)
    return out
