"""Named mask factories (docs/design/masks.md). Each returns a cached SegmentMask."""
from __future__ import annotations

import itertools
import operator
import warnings
from functools import lru_cache

import torch

from .pattern import FramePattern, _positive_int
from .segments import CAUSAL, FULL, NONE, SegmentMask, check_grid


def _check_window_sink(window, sink):
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"window must be an int or None, got {type(window).__name__}")
        if window < 1:
            raise ValueError(f"window must be >= 1 (chunks, counting the query's own), got {window}")
    if isinstance(sink, bool) or not isinstance(sink, int):
        raise TypeError(f"sink must be an int, got {type(sink).__name__}")
    if sink < 0:
        raise ValueError(f"sink must be >= 0, got {sink}")


def _check_pattern(p):
    if not isinstance(p, FramePattern):
        raise TypeError(f"pattern must be a FramePattern, got {type(p).__name__}")


# A mask is a grid of segment pairs, one rule each, held as Python tuples: chunks of one token
# with a window, or in teacher forcing, make S x S (2S x 2S) of them. Above WARN_RULES the build
# is slow enough to say so; above MAX_RULES it would take minutes and gigabytes, so it is refused.
WARN_RULES = 1 << 20
MAX_RULES = 1 << 26


def _check_grid_size(what: str, n_q: int, n_k: int, chunks: int):
    """Refuse or warn before a rule grid of n_q x n_k segments is built."""
    rules = n_q * n_k
    if rules <= WARN_RULES:
        return
    cost = (f"{what} over {chunks} chunks is a grid of {n_q} x {n_k} = {rules:,} segment rules (the mask is "
            f"made for chunks of many tokens; token-level causal without a window is one segment)")
    if rules > MAX_RULES:
        raise ValueError(f"{cost}: more than {MAX_RULES:,}, which would take minutes and gigabytes to build; "
                         f"use longer chunks, or describe the mask with fewer segments through from_segments")
    warnings.warn(f"{cost}: building it takes about {rules * 2.5e-7:.1f} s", stacklevel=4)


def _visible(qc: int, kc: int, window, sink) -> bool:
    """Chunk-level rule for a key chunk kc <= qc: inside the window or a sink."""
    return window is None or kc > qc - window or kc < sink


def _block_causal_rule(n: int, window, sink):
    return [[FULL if kc <= qc and _visible(qc, kc, window, sink) else NONE for kc in range(n)]
            for qc in range(n)]


def full(sq: int, sk: int) -> SegmentMask:
    """Every query sees every key."""
    _positive_int("sq", sq)
    _positive_int("sk", sk)
    # operator.index: under torch.compile it turns sizes traced as symbols into constants
    # (with a guard), so the mask below is built for known sizes.
    return _full_constant(operator.index(sq), operator.index(sk))


@torch.compiler.assume_constant_result
def _full_constant(sq, sk):
    """Under torch.compile (jfa.attention's default mask), run as plain Python while tracing
    and kept as a constant of the graph: the build itself (digest, lock, weak-reference
    registry) cannot be traced."""
    return _full(sq, sk)


@lru_cache(maxsize=256)
def _full(sq, sk):
    return SegmentMask((sq,), (sk,), ((FULL,),), name="full")


def block_causal(pattern: FramePattern, window: int | None = None, sink: int = 0) -> SegmentMask:
    """q sees k iff chunk(k) <= chunk(q), within the window of chunks or a sink chunk."""
    _check_pattern(pattern)
    _check_window_sink(window, sink)
    return _block_causal(pattern, window, sink)


@lru_cache(maxsize=256)
def _block_causal(p, window, sink):
    sizes = p.chunk_sizes
    if window is not None and window < len(sizes):
        _check_grid_size("block_causal with a window", len(sizes), len(sizes), len(sizes))
        return SegmentMask(sizes, sizes, _block_causal_rule(len(sizes), window, sink), name="block_causal")
    # Every earlier chunk is visible (the sink only matters with a window).
    sizes, diagonal = _merge_one_token_chunks(sizes)
    _check_grid_size("block_causal", len(sizes), len(sizes), p.num_chunks)
    rule = [[FULL if kc < qc else diagonal[qc] if kc == qc else NONE for kc in range(len(sizes))]
            for qc in range(len(sizes))]
    return SegmentMask(sizes, sizes, rule, name="block_causal")


def _merge_one_token_chunks(sizes):
    """Block-causal over one-token chunks is token-level causal: each run of them becomes one
    segment with rule 2 on its diagonal, so a token-level causal mask has O(1) segments, not
    S. Returns (segment sizes, diagonal rule of each segment)."""
    merged, diagonal = [], []
    for one_token, run in itertools.groupby(sizes, lambda s: s == 1):
        run = list(run)
        if one_token and len(run) > 1:
            merged.append(len(run))
            diagonal.append(CAUSAL)
        else:
            merged += run
            diagonal += [FULL] * len(run)
    return tuple(merged), diagonal


def teacher_forcing(pattern: FramePattern, window: int | None = None, sink: int = 0) -> SegmentMask:
    """[clean | noisy] packed: clean rows are block-causal over clean keys; the noisy
    copy of chunk b sees clean chunks < b (same window/sink rule) and its own noisy chunk."""
    _check_pattern(pattern)
    _check_window_sink(window, sink)
    return _teacher_forcing(pattern, window, sink)


@lru_cache(maxsize=256)
def _teacher_forcing(p, window, sink):
    n = p.num_chunks
    _check_grid_size("teacher_forcing", 2 * n, 2 * n, n)
    clean = _block_causal_rule(n, window, sink)
    rule = [row + [NONE] * n for row in clean]
    for b in range(n):
        to_clean = [FULL if kc < b and _visible(b, kc, window, sink) else NONE for kc in range(n)]
        to_noisy = [FULL if kc == b else NONE for kc in range(n)]
        rule.append(to_clean + to_noisy)
    sizes = p.chunk_sizes * 2
    return SegmentMask(sizes, sizes, rule, name="teacher_forcing")


def kv_cache(pattern: FramePattern, query_chunk: int, window: int | None = None, sink: int = 0) -> SegmentMask:
    """Rows of chunk ``query_chunk`` of block_causal; keys are all tokens of chunks 0..query_chunk."""
    _check_pattern(pattern)
    _check_window_sink(window, sink)
    if isinstance(query_chunk, bool) or not isinstance(query_chunk, int):
        raise TypeError(f"query_chunk must be an int, got {type(query_chunk).__name__}")
    if not 0 <= query_chunk < pattern.num_chunks:
        raise ValueError(f"query_chunk must be in [0, {pattern.num_chunks}), got {query_chunk}")
    return _kv_cache(pattern, query_chunk, window, sink)


@lru_cache(maxsize=256)
def _kv_cache(p, qc, window, sink):
    sizes = p.chunk_sizes
    _check_grid_size("kv_cache", 1, qc + 1, p.num_chunks)
    row = [FULL if _visible(qc, kc, window, sink) else NONE for kc in range(qc + 1)]
    return SegmentMask((sizes[qc],), sizes[: qc + 1], (row,), name="kv_cache")


def from_segments(q_sizes, k_sizes, rule) -> SegmentMask:
    """Any segment grid: rule[i][j] in {0: none, 1: full, 2: causal (top-left aligned)}."""
    return _from_segments(*check_grid(q_sizes, k_sizes, rule))  # checked before the cache: 1.0 == 1


@lru_cache(maxsize=256)
def _from_segments(q_sizes, k_sizes, rule):
    return SegmentMask(q_sizes, k_sizes, rule, name="segments")
