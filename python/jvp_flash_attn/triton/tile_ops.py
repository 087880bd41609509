"""The pieces the Triton kernels share inside ``@triton.jit``: constants, tile loads and
stores, the matrix products, the element-wise mask of a PARTIAL tile and the split of a FULL
list's ragged last tile.

Every kernel walks the compact tile description of ``SegmentMask.tiles``: FULL tiles in
one loop with no masking arithmetic (MODE_FULL), PARTIAL tiles in another with the segment
rule evaluated per element (MODE_RULE). The last key (or query) tile of a ragged length
can be FULL under the description (it only counts in-range elements); that one tile is
visited with bounds masking only (MODE_BOUNDS).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E)
LN2 = 0.6931471805599453    # ln(2):  ln(x) = log2(x) * LN2
# The same constants for use inside kernels (globals there must be constexpr).
KERNEL_LOG2E = tl.constexpr(LOG2E)
KERNEL_LN2 = tl.constexpr(LN2)

# How a tile is masked (constexpr MODE of the tile helpers).
MODE_FULL = tl.constexpr(0)    # every element in range and allowed: no masking
MODE_BOUNDS = tl.constexpr(1)  # allowed, but the tile sticks out past the sequence end
MODE_RULE = tl.constexpr(2)    # PARTIAL tile: segment rule per element, plus bounds

# The segment rule table's values (masks.segments): 1 sees everything, 2 causal.
RULE_FULL = tl.constexpr(1)
RULE_CAUSAL = tl.constexpr(2)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _load_tile(ptrs, n_ok, d_ok, N_CHECK: tl.constexpr, D_CHECK: tl.constexpr):
    """Load a 2-D tile; n_ok / d_ok are broadcastable bounds on the token / head-dim axes.
    Out-of-range elements read as 0 (so they add nothing to any product)."""
    if N_CHECK:
        if D_CHECK:
            x = tl.load(ptrs, mask=n_ok & d_ok, other=0.0)
        else:
            x = tl.load(ptrs, mask=n_ok, other=0.0)
    else:
        if D_CHECK:
            x = tl.load(ptrs, mask=d_ok, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _store_tile(ptrs, x, n_ok, d_ok, D_CHECK: tl.constexpr):
    if D_CHECK:
        tl.store(ptrs, x, mask=n_ok & d_ok)
    else:
        tl.store(ptrs, x, mask=n_ok)


# Matrix-product modes (constexpr PRECISION): "tf32" for 16-bit inputs (the hardware path;
# the flag only matters for float32), "ieee" for float32 inputs, and "upcast" under the
# interpreter, whose dot multiplies bfloat16 operands as their raw uint16 bits: there the
# operands are widened to float32 first (bf16 products are exact in float32, as on the GPU).
def dot_precision(dtype: torch.dtype) -> str:
    if interpreting():
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b, float32 accumulation."""
    if PRECISION == "upcast":
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=PRECISION)
    return out


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    """a @ b in float32."""
    if PRECISION == "upcast":
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision=PRECISION)
    return out


@triton.jit
def _allowed(q_seg, q_pos, k_seg, k_pos, RULE, n_k_seg):
    """Element-wise mask from broadcastable per-token segment ids and causal offsets:
    rule[q_seg, k_seg] == 1, or == 2 and q_pos >= k_pos."""
    r = tl.load(RULE + q_seg * n_k_seg + k_seg)
    return (r == RULE_FULL) | ((r == RULE_CAUSAL) & (q_pos >= k_pos))


@triton.jit
def _max_to_subtract(m_new):
    """The running max the online softmax subtracts before exp2: 0 for a row whose scores so far
    are all -inf (masked, or -inf themselves), so that their exp2 is 0 rather than NaN."""
    return tl.where(m_new == float("-inf"), 0.0, m_new)


@triton.jit
def _seen_in_tile(seen, allowed):
    """Per row: whether an allowed key has been met, now or in an earlier tile. A row that met
    one but whose probabilities sum to 0 had only -inf scores there: softmax gives NaN, not the
    o = 0 of a row with no allowed key."""
    return seen | (tl.max(allowed.to(tl.int32), 1) > 0)


@triton.jit
def _split_ragged(FULL_IDX, start, end, last_tile, EVEN: tl.constexpr):
    """The FULL list [start, end) minus its last entry when that entry is the ragged last
    tile (lists are ascending). Returns (end_of_unmasked_part, has_ragged_full_tile)."""
    if EVEN:
        has_ragged = end < start  # always False, typed like the other branch
    else:
        nonempty = end > start
        last = tl.load(FULL_IDX + tl.maximum(end - 1, 0), mask=nonempty, other=-1)
        has_ragged = nonempty & (last == last_tile)
    return end - has_ragged.to(tl.int32), has_ragged
