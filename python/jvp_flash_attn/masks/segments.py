"""The one mask representation every builder produces: a grid of token segments.

Queries are cut into segments ``q_sizes`` and keys into ``k_sizes``; ``rule[i][j]``
says what query segment i sees of key segment j: 0 nothing, 1 everything, 2 the
top-left aligned causal triangle ``(q - q_start) >= (k - k_start)``. Every frame
and chunk mask of docs/design/masks.md is such a grid with O(chunks) segments, so counts and
tile descriptions cost O(segments²) or O(tiles), never O(Sq·Sk).

Torch custom ops take plain values only, so a mask reaches them as its ``uid``: a digest of
its content. Equal masks share the uid (and their caches) in every process, so a pickled
mask means the same in another process; different masks never share one.
"""
from __future__ import annotations

import hashlib
import itertools
import numbers
import operator
import threading
import weakref

import numpy as np
import torch

NONE, FULL, CAUSAL = 0, 1, 2

# uid -> the first live mask with that content. Equal masks made while it lives hold it, so
# their uid keeps resolving however the copies were made (copy, deepcopy, pickle).
_LIVE = weakref.WeakValueDictionary()
_REGISTER = threading.Lock()


def mask_by_uid(uid: int) -> "SegmentMask":
    try:
        return _LIVE[uid]
    except KeyError:
        raise LookupError(f"no live mask has uid {uid}; keep the mask alive while the ops "
                          f"that name it run") from None


def check_grid(q_sizes, k_sizes, rule):
    """(q_sizes, k_sizes, rule) as tuples of ints, or an error naming the bad entry."""
    def sizes(name, values):
        values = tuple(values)
        if not values:
            raise ValueError(f"{name} must hold at least one segment")
        for i, s in enumerate(values):
            if not _integral(type(s)):
                raise TypeError(f"{name}[{i}] must be an int, got {s!r}")
            if s < 1:
                raise ValueError(f"{name}[{i}] must be >= 1, got {s}")
        return tuple(int(s) for s in values)

    q_sizes, k_sizes = sizes("q_sizes", q_sizes), sizes("k_sizes", k_sizes)
    try:
        rule = tuple(tuple(row) for row in rule)
    except TypeError as e:
        raise TypeError("rule must be a 2-D sequence of ints") from e
    if len(rule) != len(q_sizes) or any(len(row) != len(k_sizes) for row in rule):
        raise ValueError(f"rule must have shape ({len(q_sizes)}, {len(k_sizes)}) = "
                         f"(len(q_sizes), len(k_sizes)), got {[len(r) for r in rule]} row lengths")
    # No int() before this check: it would turn 1.7 into 1 and "2" into 2 without a word.
    # Checked on the set of types and values first (C speed); the loop only finds the culprit.
    flat = list(itertools.chain.from_iterable(rule))
    if not (all(_integral(t) for t in set(map(type, flat))) and set(flat) <= {NONE, FULL, CAUSAL}):
        i, j, r = next((i, j, r) for i, row in enumerate(rule) for j, r in enumerate(row)
                       if not _integral(type(r)) or r not in (NONE, FULL, CAUSAL))
        raise ValueError(f"rule values must be ints in {{0: none, 1: full, 2: causal}}, "
                         f"got rule[{i}][{j}] = {r!r}")
    return q_sizes, k_sizes, tuple(tuple(map(int, row)) for row in rule)


def _token_ranges(name, ranges, n):
    """Zero-tangent ranges as ((start, end), ...) of ints, or an error naming the bad entry."""
    out = []
    for r in ranges:
        try:
            a, b = (operator.index(x) for x in r)   # ints (numpy's and torch's too), not 1.7 or "2"
        except (TypeError, ValueError):
            a, b = -1, -1
        if not (0 <= a <= b <= n):
            raise ValueError(f"{name} entries must be (start, end) with 0 <= start <= end <= {n}, got {r}")
        out.append((a, b))
    return tuple(out)


def _integral(t: type) -> bool:
    return issubclass(t, numbers.Integral) and not issubclass(t, bool)


def _causal_pairs(a: int, b: int) -> int:
    """Allowed pairs of an a x b segment pair under rule 2: row r sees min(r + 1, b) keys."""
    return a * (a + 1) // 2 if a <= b else b * (b + 1) // 2 + (a - b) * b


class SegmentMask:
    """A block-structured attention mask; see the module docstring."""

    def __init__(self, q_sizes, k_sizes, rule, name: str = "segments",
                 zero_tangent_q=(), zero_tangent_k=()):
        self.q_sizes, self.k_sizes, self.rule = check_grid(q_sizes, k_sizes, rule)
        self.name = name
        # Speed hint for the JVP: token ranges [start, end) whose tangents the caller
        # promises are zero (e.g. the clean half of teacher forcing). Never changes results.
        # plain ints, so that torch.compile sees constants rather than numpy results
        self.sq, self.sk = sum(self.q_sizes), sum(self.k_sizes)
        self.zero_tangent_q = _token_ranges("q_ranges", zero_tangent_q, self.sq)
        self.zero_tangent_k = _token_ranges("k_ranges", zero_tangent_k, self.sk)
        self._q_starts = np.concatenate([[0], np.cumsum(self.q_sizes)]).astype(np.int64)
        self._k_starts = np.concatenate([[0], np.cumsum(self.k_sizes)]).astype(np.int64)
        self._rule = np.asarray(self.rule, dtype=np.int8).reshape(len(self.q_sizes), len(self.k_sizes))
        self._tiles = {}
        self._token_maps = {}
        self._derived = {}   # other values derived from the mask, by name (tangent_rows.row_runs)
        self.uid = self._digest()
        with _REGISTER:
            first = _LIVE.setdefault(self.uid, self)
        # An equal mask already registered: hold it (so the uid resolves while this one
        # lives, even once every other reference to it is gone) and share its caches.
        self._first = None if first is self else first
        if self._first is not None:
            if first.key() != self.key():
                raise RuntimeError(f"mask uid {self.uid} digests two different masks: {first!r} and {self!r}")
            self._tiles, self._token_maps, self._derived = first._tiles, first._token_maps, first._derived

    def _digest(self) -> int:
        """63 bits of a hash of key(): a plain int (a constant to torch.compile) that fits
        the ops' int64. Each part is preceded by its length, so no two keys share an input."""
        h = hashlib.blake2b(digest_size=8)
        for part in (self.q_sizes, self.k_sizes, self.zero_tangent_q, self.zero_tangent_k):
            a = np.asarray(part, np.int64)
            h.update(np.int64(len(a)).tobytes() + a.tobytes())
        h.update(self._rule.tobytes())
        return int.from_bytes(h.digest(), "little") >> 1

    def __reduce__(self):
        # Copies and unpickled masks are rebuilt through __init__, so they are registered
        # (in this process or another) and do not carry the caches' tensors along.
        return type(self), (self.q_sizes, self.k_sizes, self.rule, self.name,
                            self.zero_tangent_q, self.zero_tangent_k)

    # ---- identity -------------------------------------------------------------------
    def key(self):
        return (self.q_sizes, self.k_sizes, self.rule, self.zero_tangent_q, self.zero_tangent_k)

    def __eq__(self, other):
        return isinstance(other, SegmentMask) and self.uid == other.uid and self.key() == other.key()

    def __hash__(self):
        return self.uid

    def __repr__(self):
        return (f"SegmentMask({self.name}, sq={self.sq}, sk={self.sk}, "
                f"segments={len(self.q_sizes)}x{len(self.k_sizes)}, pairs={self.num_pairs})")

    def with_zero_tangents(self, q_ranges=(), k_ranges=()):
        """The same mask with a promise that tangents in these token ranges are zero."""
        return SegmentMask(self.q_sizes, self.k_sizes, self.rule, self.name, q_ranges, k_ranges)

    # ---- sizes and counts -----------------------------------------------------------
    @property
    def num_pairs(self) -> int:
        """Exact number of allowed (query, key) pairs, in Python int arithmetic."""
        # keys each query segment sees in full: one row sum each, below Sk, exact in int64
        full_keys = ((self._rule == FULL) * np.asarray(self.k_sizes, np.int64)).sum(axis=1)
        pairs = sum(q * int(n) for q, n in zip(self.q_sizes, full_keys))
        for i, j in zip(*np.nonzero(self._rule == CAUSAL)):
            pairs += _causal_pairs(self.q_sizes[i], self.k_sizes[j])
        return pairs

    def prefix_counts(self, row_cuts: np.ndarray, col_cuts: np.ndarray) -> np.ndarray:
        """C[a, b] = allowed pairs in rows [0, row_cuts[a]) x cols [0, col_cuts[b]).

        int64, exact below 2**63 pairs. Rows [0, r) cover every query segment before seg(r)
        whole and seg(r) for r - start; likewise columns. So the full-rule part is two prefix
        sums and two gathers (no matrix product: BLAS start-up costs more than the work at
        these sizes), and each causal segment pair adds a closed-form triangle count.
        """
        row_cuts, col_cuts = np.asarray(row_cuts, np.int64), np.asarray(col_cuts, np.int64)
        q_sizes, k_sizes = np.asarray(self.q_sizes, np.int64), np.asarray(self.k_sizes, np.int64)
        qi = np.clip(np.searchsorted(self._q_starts, row_cuts, "right") - 1, 0, len(q_sizes) - 1)
        ki = np.clip(np.searchsorted(self._k_starts, col_cuts, "right") - 1, 0, len(k_sizes) - 1)
        q_off = row_cuts - self._q_starts[qi]
        k_off = col_cuts - self._k_starts[ki]
        full = (self._rule == FULL).astype(np.int64)
        # m[i, c] = full pairs of query segment i's rows (each) with columns [0, col_cuts[c])
        by_col = np.zeros((full.shape[0], full.shape[1] + 1), np.int64)
        np.cumsum(full * k_sizes, axis=1, out=by_col[:, 1:])
        m = by_col[:, ki] + k_off * full[:, ki]
        by_row = np.zeros((m.shape[0] + 1, m.shape[1]), np.int64)
        np.cumsum(q_sizes[:, None] * m, axis=0, out=by_row[1:])
        total = by_row[qi] + q_off[:, None] * m[qi]
        for i, j in zip(*np.nonzero(self._rule == CAUSAL)):
            a = np.clip(row_cuts - self._q_starts[i], 0, q_sizes[i])[:, None]
            b = np.clip(col_cuts - self._k_starts[j], 0, k_sizes[j])[None, :]
            total += np.where(a <= b, a * (a + 1) // 2, b * (b + 1) // 2 + (a - b) * b)
        return total

    def tile_states(self, row_cuts: np.ndarray, col_cuts: np.ndarray) -> np.ndarray:
        """int8 state of each tile [row_cuts[a], row_cuts[a+1]) x [col_cuts[b], col_cuts[b+1]):
        0 no allowed pair, 1 some, 2 all (the tiles module names them EMPTY, PARTIAL, FULL)."""
        if (self._rule == CAUSAL).any():
            return self._tile_states_by_counts(row_cuts, col_cuts)
        return self._tile_states_by_spans(row_cuts, col_cuts)

    def _tile_states_by_counts(self, row_cuts, col_cuts):
        """Exact allowed-pair count per tile from the prefix counts (any rule)."""
        c = self.prefix_counts(row_cuts, col_cuts)
        allowed = c[1:, 1:] - c[:-1, 1:] - c[1:, :-1] + c[:-1, :-1]
        area = np.diff(row_cuts).astype(np.int64)[:, None] * np.diff(col_cuts)[None, :]
        full = allowed == area
        return full.view(np.int8) * 2 + ((allowed != 0) & ~full).view(np.int8)

    def _tile_states_by_spans(self, row_cuts, col_cuts):
        """Rules 0/1 only: a tile is full iff every segment pair it spans is FULL, empty iff none
        is. Each tile row spans a run of query segments and each tile column a run of key
        segments, so the state is a range count over the small rule table, computed once per
        distinct (row span, column span) and spread over the tiles by one int8 gather."""
        def spans(cuts, starts):
            first = np.searchsorted(starts, cuts[:-1], "right") - 1
            last = np.searchsorted(starts, cuts[1:] - 1, "right") - 1
            kinds, inverse = np.unique(np.stack([first, last], 1), axis=0, return_inverse=True)
            return kinds[:, 0], kinds[:, 1] + 1, inverse.reshape(-1)

        r0, r1, row_kind = spans(row_cuts, self._q_starts)
        c0, c1, col_kind = spans(col_cuts, self._k_starts)
        table = np.zeros((self._rule.shape[0] + 1, self._rule.shape[1] + 1), np.int64)
        np.cumsum(np.cumsum(self._rule == FULL, 0), 1, out=table[1:, 1:])
        full = (table[r1][:, c1] - table[r0][:, c1] - table[r1][:, c0] + table[r0][:, c0])
        area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
        kind_state = np.where(full == area, 2, np.where(full == 0, 0, 1)).astype(np.int8)
        # spans grow with the tile index, so each kind covers one run of tiles: repeat, not gather
        rows = np.repeat(kind_state, np.bincount(row_kind), axis=0)
        return np.repeat(rows, np.bincount(col_kind), axis=1)

    # ---- per-token view, for kernels and the reference ---------------------------------
    def token_maps(self, device="cpu"):
        """Per-token segment ids and causal offsets: (q_seg, q_pos, k_seg, k_pos, rule), int32.

        allowed(i, j) = rule[q_seg[i], k_seg[j]] == 1, or == 2 and q_pos[i] >= k_pos[j].
        O(Sq + Sk) memory; cached per device.
        """
        device = torch.device(device)
        if device not in self._token_maps:
            def maps(sizes, starts):
                seg = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
                pos = (np.arange(starts[-1]) - starts[:-1][seg]).astype(np.int32)
                return torch.from_numpy(seg).to(device), torch.from_numpy(pos).to(device)
            q_seg, q_pos = maps(self.q_sizes, self._q_starts)
            k_seg, k_pos = maps(self.k_sizes, self._k_starts)
            rule = torch.from_numpy(self._rule.astype(np.int32)).to(device)
            self._token_maps[device] = (q_seg, q_pos, k_seg, k_pos, rule)
        return self._token_maps[device]

    def segment_starts(self):
        """(q_starts, k_starts, rule): each side's segment start tokens (with the total at the
        end) as int64 arrays, and the (query segments, key segments) rule table."""
        return self._q_starts, self._k_starts, self._rule

    def dense_rows(self, start: int, end: int, device="cpu") -> torch.Tensor:
        """Boolean (end - start, Sk) block of the mask: rows [start, end)."""
        q_seg, q_pos, k_seg, k_pos, rule = self.token_maps(device)
        r = rule[q_seg[start:end]][:, k_seg]
        return (r == FULL) | ((r == CAUSAL) & (q_pos[start:end, None] >= k_pos[None, :]))

    def dense(self, device="cpu") -> torch.Tensor:
        """Boolean (Sq, Sk) mask. For tests and pictures only: it is S x S."""
        return self.dense_rows(0, self.sq, device)

    # ---- tile description -----------------------------------------------------------
    def tiles(self, block_m: int = 128, block_n: int = 128, device="cpu"):
        """Cached :class:`~jvp_flash_attn.masks.tiles.TileDescription` for these tile sizes."""
        from .tiles import TileDescription

        key = (int(block_m), int(block_n), str(torch.device(device)))
        if key not in self._tiles:
            self._tiles[key] = TileDescription.build(self, block_m, block_n, device)
        return self._tiles[key]
