"""Shared pieces of the Triton kernels: constants, tile loads, the element-wise mask of a
PARTIAL tile, launch configurations and the per-description tile visiting order.

Every kernel walks the compact tile description of ``SegmentMask.tiles``: FULL tiles in
one loop with no masking arithmetic (MODE_FULL), PARTIAL tiles in another with the segment
rule evaluated per element (MODE_RULE). The last key (or query) tile of a ragged length
can be FULL under the description (it only counts in-range elements); that one tile is
visited with bounds masking only (MODE_BOUNDS).
"""
from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
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


# ---- launch configurations -----------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Overrides set by benchmarks/tests: direction -> Config. Directions: fwd, jvp, bwd_dkdv, bwd_dq.
_OVERRIDES: dict[str, Config] = {}


def set_config(direction: str, config: Config | None):
    """Force a launch configuration for one direction (None restores the default)."""
    if direction not in ("fwd", "jvp", "bwd_dkdv", "bwd_dq"):
        raise ValueError(f"direction must be fwd, jvp, bwd_dkdv or bwd_dq, got {direction!r}")
    if config is None:
        _OVERRIDES.pop(direction, None)
    else:
        _OVERRIDES[direction] = config


_POISON = [False]


def poison_outputs(on: bool):
    """Tests: fill every buffer a launcher allocates with NaN, so an element the kernel
    fails to write cannot pass as a plausible value."""
    _POISON[0] = bool(on)


def alloc(shape, dtype, device) -> torch.Tensor:
    """A launcher's output buffer (NaN-filled when poisoning is on)."""
    if _POISON[0]:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def pow2_at_least_16(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def block_dims(d_qk: int, d_v: int) -> tuple[int, int]:
    """Register widths (BLOCK_DQK, BLOCK_DV) for these head dims. BLOCK_DV is never narrower
    than BLOCK_DQK: with triton 3.6 on sm_90, kernels with Dv < Dqk and a ragged sequence
    length produced wrong o (garbage values), while the interpreter and Dv >= Dqk were
    right; padding V's width to the key's (masked on load and store) avoids that build.
    See bench/NOTES_triton.md."""
    bd_qk = pow2_at_least_16(d_qk)
    return bd_qk, max(bd_qk, pow2_at_least_16(d_v))


def get_config(direction: str, dtype: torch.dtype, d_qk: int, d_v: int) -> Config:
    if direction in _OVERRIDES:
        return _OVERRIDES[direction]
    if interpreting():
        # Small tiles so that small test shapes still have EMPTY, FULL and PARTIAL tiles.
        return Config(16, 32, 4, 1) if direction in ("bwd_dkdv",) else Config(32, 16, 4, 1)
    d = max(pow2_at_least_16(d_qk), pow2_at_least_16(d_v))
    wide = dtype == torch.float32 or d > 128
    # 16-bit, head dims <= 128: the fastest of a sweep on W3 (H200, triton 3.6; see
    # bench/NOTES_triton.md). Some spill registers under ptxas and are still the fastest.
    if direction == "fwd":
        return Config(64, 32, 4, 2) if wide else Config(128, 128, 8, 2)
    if direction == "jvp":
        return Config(64, 32, 4, 2) if wide else Config(128, 64, 8, 2)
    if direction == "bwd_dkdv":  # block_m: query rows per step, block_n: the program's keys
        return Config(16, 64, 4, 2) if wide else Config(64, 128, 8, 2)
    return Config(64, 32, 4, 2) if wide else Config(64, 64, 4, 2)


# ---- tile visiting order ---------------------------------------------------------------------

VISIT_ORDER_CACHE_SIZE = 64
# (mask uid, block_m, block_n, device, by) -> order, least recently used first. Keyed by the
# mask's content digest, so equal masks share an entry, and bounded, so that a run which
# makes a new mask per step does not grow it.
_ORDERS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_ORDERS_LOCK = threading.Lock()


def visit_order(desc, by: str) -> torch.Tensor:
    """Query tiles (by="q") or key tiles (by="k") sorted by descending number of tiles to
    visit, so the longest programs start first and the tail of the grid is short. int32 on
    the description's device; an LRU cache holds the last VISIT_ORDER_CACHE_SIZE."""
    full_ptr, part_ptr = (desc.q_full_ptr, desc.q_part_ptr) if by == "q" else (desc.k_full_ptr, desc.k_part_ptr)
    key = (desc.mask_uid, desc.block_m, desc.block_n, str(full_ptr.device), by)
    with _ORDERS_LOCK:
        if key in _ORDERS:
            _ORDERS.move_to_end(key)
            return _ORDERS[key]
    work = np.diff(full_ptr.cpu().numpy()).astype(np.int64) + np.diff(part_ptr.cpu().numpy())
    order = np.argsort(-work, kind="stable").astype(np.int32)
    t = torch.from_numpy(order).to(full_ptr.device)
    with _ORDERS_LOCK:
        t = _ORDERS.setdefault(key, t)   # another thread may have stored it meanwhile
        _ORDERS.move_to_end(key)
        while len(_ORDERS) > VISIT_ORDER_CACHE_SIZE:
            _ORDERS.popitem(last=False)
    return t


# Triton's interpreter (TRITON_INTERPRET=1) patches triton.language and keeps the program id
# in shared state while a kernel runs, so launches from two threads would mix; under the
# interpreter they take turns. Compiled launches need no lock.
_INTERPRETER_LOCK = threading.Lock()


def serialised_under_interpreter(launch):
    """Decorates a launcher so that, under the interpreter, one launcher runs at a time."""
    @functools.wraps(launch)
    def run(*args, **kwargs):
        if not interpreting():
            return launch(*args, **kwargs)
        with _INTERPRETER_LOCK:
            return launch(*args, **kwargs)
    return run


def check_int32_offsets(name: str, x: torch.Tensor):
    """Kernels index one (batch, head) with int32 offsets; refuse what would overflow."""
    b, s, h, d = x.shape
    span = (s - 1) * x.stride(1) + (h - 1) * x.stride(2) + d
    if span >= 2**31:
        raise ValueError(f"{name} is too large for the Triton kernels' int32 offsets "
                         f"(one batch spans {span} elements)")
