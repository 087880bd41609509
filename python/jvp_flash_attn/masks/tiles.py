"""Compact tile description that the kernels walk instead of an S x S mask.

For a tiling of the (Sq, Sk) plane into block_m x block_n tiles, every tile is
EMPTY (never visited), FULL (visited without masking arithmetic) or PARTIAL
(masked element-wise with the per-token maps). The forward and JVP kernels walk
a query tile's key tiles (CSR over query tiles); the backward's dK/dV kernel walks
a key tile's query tiles (CSR over key tiles).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

EMPTY, PARTIAL, FULL = 0, 1, 2


def covered_intervals(starts: np.ndarray, ends: np.ndarray, ranges) -> np.ndarray:
    """bool per interval [starts[i], ends[i]): whether it lies in the union of the (start, end)
    ranges. O(intervals x disjoint ranges), no per-token work."""
    covered = np.zeros(len(starts), bool)
    merged = []  # the union of the ranges as disjoint sorted [a, b)
    for a, b in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    for a, b in merged:  # an interval is covered iff one merged range holds all of it
        covered |= (starts >= a) & (ends <= b)
    return covered


def zero_tangent_tiles(ranges, n: int, block: int) -> np.ndarray:
    """int8 flag per tile of `block` tokens over [0, n): 1 where every token of the tile lies in
    the union of the (start, end) ranges that the mask promises have zero tangents. Tokens
    past n are zero-filled, so they count as zero."""
    starts = np.arange(-(-n // block), dtype=np.int64) * block
    return covered_intervals(starts, np.minimum(starts + block, n), ranges).astype(np.int8)


RUN_FIELDS = 8   # int32 per PARTIAL tile in the runs arrays (see partial_tile_runs)
_NO_CUT = np.iinfo(np.int32).max
_NEVER = np.iinfo(np.int32).min
_RULE_FULL, _RULE_CAUSAL = 1, 2   # segments.FULL, segments.CAUSAL (rule values, not tile states)


def partial_tile_runs(q_starts, k_starts, rule, q_tile, k_tile, block_m: int, block_n: int, sq: int,
                      sk: int) -> np.ndarray:
    """(n, RUN_FIELDS) int32, one row per PARTIAL tile (query tile q_tile[i], key tile k_tile[i]).

    A partial tile's queries fall in at most two query segments and its keys in at most two key
    segments for every mask with segments as long as a tile (then it is "simple"): each side is cut
    once, at the first token of its second segment. Then allowed(qi, kj) is arithmetic on values the
    kernel loads once per tile, instead of a rule lookup per element:

        allowed = kj - qi <= bound[qi >= q_cut][kj >= k_cut]

    where the bound of a (query run, key run) pair is int32 max if its rule is FULL, int32 min if
    NONE, and k_start - q_start (the runs' segment starts) if CAUSAL: q_pos >= k_pos is
    kj - k_start <= qi - q_start. Fields: q_cut, k_cut (int32 max where a side has one run),
    bound[0][0], bound[0][1], bound[1][0], bound[1][1], 1 if the tile is simple (else 0: the kernel
    keeps the per-element lookup), 0."""
    q_starts, k_starts = np.asarray(q_starts, np.int64), np.asarray(k_starts, np.int64)
    rule = np.asarray(rule, np.int64)
    q_tile, k_tile = np.asarray(q_tile, np.int64), np.asarray(k_tile, np.int64)
    out = np.zeros((len(q_tile), RUN_FIELDS), np.int32)
    if len(q_tile) == 0:
        return out
    sides = []
    for tiles, block, n, starts in ((q_tile, block_m, sq, q_starts), (k_tile, block_n, sk, k_starts)):
        first = tiles * block
        last = np.minimum(first + block, n) - 1
        a = np.searchsorted(starts, first, "right") - 1   # segment of the first token
        b = np.searchsorted(starts, last, "right") - 1    # and of the last
        cut = np.where(b > a, starts[np.minimum(a + 1, len(starts) - 1)], _NO_CUT)
        sides.append((a, b, cut))
    (qa, qb, q_cut), (ka, kb, k_cut) = sides
    out[:, 0], out[:, 1] = q_cut, k_cut
    for col, (qs, ks) in enumerate(((qa, ka), (qa, kb), (qb, ka), (qb, kb)), start=2):
        r = rule[qs, ks]
        out[:, col] = np.where(r == _RULE_FULL, _NO_CUT, np.where(r == _RULE_CAUSAL, k_starts[ks] - q_starts[qs], _NEVER))
    out[:, 6] = ((qb - qa) <= 1) & ((kb - ka) <= 1)
    return out


def dq_group_of(key_tile, groups: int, run: int):
    """The ordered backward's dQ group of key tile(s) `key_tile` (csrc/jfa/params.h, dq_groups):
    runs of `run` key tiles dealt to the groups in turn, (u // run) % groups."""
    return (key_tile // run) % groups


def _csr_by_state(state: np.ndarray):
    """CSR (row pointers, column indices, int32) of the FULL and of the PARTIAL entries.

    Mask tiles repeat whole rows (every tile row inside one run of query segments is the same),
    so the lists are found on the distinct consecutive rows only and then copied out."""
    nrows, ncols = state.shape
    new_run = np.ones(nrows, bool)
    np.any(state[1:] != state[:-1], axis=1, out=new_run[1:])
    starts = np.flatnonzero(new_run)
    run_len = np.diff(np.append(starts, nrows))
    run_of_row = np.repeat(np.arange(len(starts)), run_len)
    out = []
    for value in (FULL, PARTIAL):
        selected = state[starts] == value                     # (runs, ncols)
        count = np.count_nonzero(selected, axis=1)
        run_idx = (np.flatnonzero(selected) % max(ncols, 1)).astype(np.int32)
        run_ptr = np.zeros(len(starts) + 1, np.int64)
        np.cumsum(count, out=run_ptr[1:])
        row_count = count[run_of_row]
        ptr = np.zeros(nrows + 1, np.int32)
        np.cumsum(row_count, out=ptr[1:])
        # entry e of row r is entry e - ptr[r] of its run's list
        shift = np.repeat(run_ptr[run_of_row] - ptr[:-1], row_count)
        out.append((ptr, run_idx[np.arange(ptr[-1]) + shift]))
    return out


@dataclass(frozen=True)
class TileDescription:
    block_m: int
    block_n: int
    sq: int
    sk: int
    num_q_tiles: int
    num_k_tiles: int
    state: np.ndarray          # (num_q_tiles, num_k_tiles) int8 of EMPTY/PARTIAL/FULL, host only
    # CSR over query tiles: for query tile t, key tiles idx[ptr[t]:ptr[t+1]] (ascending).
    q_full_ptr: torch.Tensor
    q_full_idx: torch.Tensor
    q_part_ptr: torch.Tensor
    q_part_idx: torch.Tensor
    # CSR over key tiles: for key tile u, query tiles idx[ptr[u]:ptr[u+1]] (ascending).
    k_full_ptr: torch.Tensor
    k_full_idx: torch.Tensor
    k_part_ptr: torch.Tensor
    k_part_idx: torch.Tensor
    # Per entry of q_part_idx / k_part_idx: the tile's runs (partial_tile_runs), RUN_FIELDS int32 each.
    q_part_runs: torch.Tensor
    k_part_runs: torch.Tensor
    # Per-token maps for PARTIAL tiles (see SegmentMask.token_maps).
    q_seg: torch.Tensor
    q_pos: torch.Tensor
    k_seg: torch.Tensor
    k_pos: torch.Tensor
    rule: torch.Tensor
    # Zero-tangent hint (SegmentMask.with_zero_tangents), int8 per query tile (block_m) and per
    # key tile (block_n): 1 where every token's tangent is promised to be zero. All 0 without a hint.
    q_zero_tangent: torch.Tensor
    k_zero_tangent: torch.Tensor
    mask_uid: int              # the described mask's uid: a content digest, a key for caches

    @staticmethod
    def build(mask, block_m: int, block_n: int, device="cpu") -> "TileDescription":
        for name, b in (("block_m", block_m), ("block_n", block_n)):
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise ValueError(f"{name} must be a positive int, got {b!r}")
        sq, sk = mask.sq, mask.sk
        row_cuts = np.minimum(np.arange(0, sq + block_m, block_m), sq)
        col_cuts = np.minimum(np.arange(0, sk + block_n, block_n), sk)
        row_cuts = row_cuts[: -(-sq // block_m) + 1]
        col_cuts = col_cuts[: -(-sk // block_n) + 1]
        state = mask.tile_states(row_cuts, col_cuts)
        state_t = np.ascontiguousarray(state.T)  # one int8 transpose serves both key-tile lists
        dev = torch.device(device)
        as_t = lambda a: torch.from_numpy(a).to(dev)
        (qf, qfi), (qp, qpi) = _csr_by_state(state)
        (kf, kfi), (kp, kpi) = _csr_by_state(state_t)
        q_seg, q_pos, k_seg, k_pos, rule = mask.token_maps(dev)
        q_starts, k_starts, rule_table = mask.segment_starts()
        # one set of runs serves both lists: the key-side list holds the same PARTIAL tiles, ordered
        # by key tile, then query tile
        q_tile = np.repeat(np.arange(state.shape[0]), np.diff(qp))
        runs_q = partial_tile_runs(q_starts, k_starts, rule_table, q_tile, qpi, block_m, block_n, sq, sk)
        by_key = np.argsort(qpi.astype(np.int64) * state.shape[0] + q_tile, kind="stable")
        q_part_runs, k_part_runs = as_t(runs_q), as_t(np.ascontiguousarray(runs_q[by_key]))
        return TileDescription(
            block_m, block_n, sq, sk, state.shape[0], state.shape[1], state,
            as_t(qf), as_t(qfi), as_t(qp), as_t(qpi), as_t(kf), as_t(kfi), as_t(kp), as_t(kpi),
            q_part_runs, k_part_runs, q_seg, q_pos, k_seg, k_pos, rule,
            as_t(zero_tangent_tiles(getattr(mask, "zero_tangent_q", ()), sq, block_m)),
            as_t(zero_tangent_tiles(getattr(mask, "zero_tangent_k", ()), sk, block_n)), mask.uid)

    @property
    def num_full(self) -> int:
        return int(self.q_full_idx.numel())

    @property
    def num_partial(self) -> int:
        return int(self.q_part_idx.numel())

    @functools.cached_property
    def _key_side_entries(self) -> tuple:
        """Host copies of the key-side lists, FULL then PARTIAL: (ptr, key tile of each entry,
        query tile of each entry), read once for k_walk_order and dq_turns."""
        out = []
        for ptr, idx in ((self.k_full_ptr, self.k_full_idx), (self.k_part_ptr, self.k_part_idx)):
            ptr_h = ptr.cpu().numpy().astype(np.int64)
            out.append((ptr_h, np.repeat(np.arange(self.num_k_tiles), np.diff(ptr_h)), idx.cpu().numpy().astype(np.int64)))
        return tuple(out)

    @functools.cached_property
    def k_walk_order(self) -> torch.Tensor:
        """The order the backward walks each key tile's query tiles: per key tile u, at offset
        k_full_ptr[u] + k_part_ptr[u], its entries' indices (FULL entries 0.., then PARTIAL ones)
        by increasing query tile. In the frame and chunk masks (frames of at least a key tile;
        block-causal, with or without a window, or teacher forcing by whole chunks) a higher key
        tile then reaches each query tile no later than the lower ones, the order of the ordered
        backward's dQ turns."""
        (fp, key_f, fi), (pp, key_p, pi) = self._key_side_entries
        nf = np.diff(fp)
        entry = np.concatenate([np.arange(len(fi)) - fp[key_f], nf[key_p] + np.arange(len(pi)) - pp[key_p]])
        key = np.concatenate([key_f, key_p]) * max(self.num_q_tiles, 1) + np.concatenate([fi, pi])
        order = entry[np.argsort(key, kind="stable")].astype(np.int32)
        return torch.from_numpy(order).to(self.k_full_idx.device)

    @functools.cached_property
    def dq_turns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per entry of the key-side lists (k_full_idx, k_part_idx): the key tile's rank among the
        key tiles that visit that entry's query tile (0 for the highest). The ordered backward adds
        each dQ tile in this order, so its sums are bitwise repeatable; its blocks take the key
        tiles highest first, so a block only waits for blocks launched before it. One group:
        dq_group_turns(1, 1)."""
        return self.dq_group_turns(1, 1)

    @functools.cached_property
    def _dq_group_turns(self) -> dict:
        return {}

    def dq_group_turns(self, groups: int, run: int) -> tuple[torch.Tensor, torch.Tensor]:
        """dq_turns with the key tiles in `groups` groups, key tile u in group (u // run) % groups
        (dq_group_of; the kernel takes run 1, u mod G, with G a power of two): per
        entry, the key tile's rank among the key tiles of its group that visit the entry's query
        tile (0 for the group's highest). Each group has its own dQ buffer and semaphores
        (csrc/jfa/params.h, dq_groups), so the turns of one group count 0.. per query tile."""
        for name, x in (("groups", groups), ("run", run)):
            if isinstance(x, bool) or not isinstance(x, int) or x < 1:
                raise ValueError(f"{name} must be a positive int, got {x!r}")
        key = (groups, run) if groups > 1 else (1, 1)   # one group: run changes nothing
        if key not in self._dq_group_turns:
            visited = self.state != EMPTY
            group = dq_group_of(np.arange(self.num_k_tiles), *key)
            rank = np.zeros(visited.shape, np.int32)   # (q tiles, k tiles)
            for g in range(key[0]):
                cols = np.flatnonzero(group == g)
                rank[:, cols] = np.cumsum(visited[:, cols[::-1]], axis=1, dtype=np.int32)[:, ::-1] - 1
            dev = self.k_full_idx.device
            self._dq_group_turns[key] = tuple(
                torch.from_numpy(np.ascontiguousarray(rank[query_tile, key_tile], dtype=np.int32)).to(dev)
                for _, key_tile, query_tile in self._key_side_entries)
        return self._dq_group_turns[key]

    def longest_dq_chain(self) -> int:
        """The most key tiles that visit one query tile: the ordered backward's longest chain of
        turns (one group)."""
        return self.max_tiles_per_q_tile()

    def max_tiles_per_q_tile(self) -> int:
        counts = (self.state != EMPTY).sum(axis=1)
        return int(counts.max()) if counts.size else 0

    def dense_tiles(self) -> torch.Tensor:
        """(num_q_tiles, num_k_tiles) int8 states, for tests and pictures."""
        return torch.from_numpy(self.state.copy())
