"""What the Triton launchers share on the host: launch configurations (per direction, dtype
and head dims, with overrides for benchmarks), output allocation (NaN-poisoned for tests), the
cached per-description tile visiting order, the interpreter's lock and the int32 offset check.
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import triton

from .tile_ops import interpreting

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
