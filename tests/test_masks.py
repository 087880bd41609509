"""Mask builders against slow predicates written straight from docs/design/masks.md; counts; errors; pictures."""
import itertools
import warnings

import numpy as np

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from jvp_flash_attn import masks
from jvp_flash_attn.masks import FramePattern


# ---- slow, obviously correct predicates --------------------------------------------------
def chunk_of(p: FramePattern, token: int) -> int:
    frame = token // p.tokens_per_frame
    first = p.frames_per_chunk if p.first_chunk_frames is None else p.first_chunk_frames
    return 0 if frame < first else 1 + (frame - first) // p.frames_per_chunk


def in_window(cq, ck, window, sink):
    return window is None or ck > cq - window or ck < sink


def block_causal_pred(p, window, sink, q, k):
    cq, ck = chunk_of(p, q), chunk_of(p, k)
    return ck <= cq and in_window(cq, ck, window, sink)


def teacher_forcing_pred(p, window, sink, q, k):
    n = p.num_tokens
    if q < n:
        return k < n and block_causal_pred(p, window, sink, q, k)
    b = chunk_of(p, q - n)
    if k < n:
        ck = chunk_of(p, k)
        return ck < b and in_window(b, ck, window, sink)
    return chunk_of(p, k - n) == b


def dense_from(pred, sq, sk):
    return torch.tensor([[pred(i, j) for j in range(sk)] for i in range(sq)], dtype=torch.bool).reshape(sq, sk)


patterns = st.builds(
    lambda tpf, frames, fpc, first: FramePattern(tpf, frames, fpc, None if first is None else min(first, frames)),
    st.integers(1, 4), st.integers(1, 8), st.integers(1, 3), st.none() | st.integers(1, 4))
windows = st.none() | st.integers(1, 4)
sinks = st.integers(0, 3)


@given(patterns, windows, sinks)
def test_block_causal_matches_predicate(p, window, sink):
    m = masks.block_causal(p, window, sink)
    n = p.num_tokens
    assert torch.equal(m.dense(), dense_from(lambda i, j: block_causal_pred(p, window, sink, i, j), n, n))


@given(patterns, windows, sinks)
def test_teacher_forcing_matches_predicate(p, window, sink):
    m = masks.teacher_forcing(p, window, sink)
    n = 2 * p.num_tokens
    assert torch.equal(m.dense(), dense_from(lambda i, j: teacher_forcing_pred(p, window, sink, i, j), n, n))


@given(patterns, windows, sinks, st.data())
def test_kv_cache_matches_predicate(p, window, sink, data):
    qc = data.draw(st.integers(0, p.num_chunks - 1))
    m = masks.kv_cache(p, qc, window, sink)
    rows = [t for t in range(p.num_tokens) if chunk_of(p, t) == qc]
    keys = [t for t in range(p.num_tokens) if chunk_of(p, t) <= qc]
    expect = dense_from(lambda i, j: block_causal_pred(p, window, sink, rows[i], keys[j]), len(rows), len(keys))
    assert torch.equal(m.dense(), expect)


segment_grids = st.tuples(st.lists(st.integers(1, 7), min_size=1, max_size=4),
                          st.lists(st.integers(1, 7), min_size=1, max_size=4)).flatmap(
    lambda s: st.tuples(st.just(s[0]), st.just(s[1]),
                        st.lists(st.lists(st.sampled_from([0, 1, 2]), min_size=len(s[1]), max_size=len(s[1])),
                                 min_size=len(s[0]), max_size=len(s[0]))))


@given(segment_grids)
def test_from_segments_matches_predicate(grid):
    q_sizes, k_sizes, rule = grid
    qs, ks = np.cumsum([0] + q_sizes), np.cumsum([0] + k_sizes)

    def pred(i, j):
        a, b = np.searchsorted(qs, i, "right") - 1, np.searchsorted(ks, j, "right") - 1
        r = rule[a][b]
        return r == 1 or (r == 2 and i - qs[a] >= j - ks[b])

    m = masks.from_segments(q_sizes, k_sizes, rule)
    assert torch.equal(m.dense(), dense_from(pred, qs[-1], ks[-1]))


@given(segment_grids)
def test_num_pairs_is_exact(grid):
    m = masks.from_segments(*grid)
    assert m.num_pairs == int(m.dense().sum())


def test_num_pairs_at_w1_scale_without_dense():
    p = FramePattern(1560, 21)
    n = p.num_tokens
    # clean half: 1560^2 * (1 + 2 + ... + 21); noisy half: the same clean prefix minus the
    # diagonal chunk, plus the diagonal noisy chunk: also 1560^2 * sum(1..21).
    assert masks.teacher_forcing(p).num_pairs == 2 * 1560 ** 2 * (21 * 22 // 2)
    assert masks.full(n, n).num_pairs == n * n


def test_ragged_last_chunk_and_first_chunk():
    p = FramePattern(2, 7, frames_per_chunk=3, first_chunk_frames=1)
    assert p.chunk_frames == (1, 3, 3)
    p = FramePattern(2, 6, frames_per_chunk=4)
    assert p.chunk_frames == (4, 2) and p.chunk_sizes == (8, 4)


@given(st.one_of(patterns.map(lambda p: masks.teacher_forcing(p, 2, 1)),
                 patterns.map(lambda p: masks.block_causal(p)), segment_grids.map(lambda g: masks.from_segments(*g))),
       st.integers(1, 9), st.integers(1, 9))
def test_tiles_match_dense(m, bm, bn):
    t = m.tiles(bm, bn)
    dense = m.dense()
    for a, b in itertools.product(range(t.num_q_tiles), range(t.num_k_tiles)):
        block = dense[a * bm:(a + 1) * bm, b * bn:(b + 1) * bn]
        expect = 2 if block.all() else (1 if block.any() else 0)
        assert t.state[a, b] == expect, (a, b)
    for ptr, idx, kind in ((t.q_full_ptr, t.q_full_idx, 2), (t.q_part_ptr, t.q_part_idx, 1)):
        for a in range(t.num_q_tiles):
            assert idx[ptr[a]:ptr[a + 1]].tolist() == np.flatnonzero(t.state[a] == kind).tolist()
    for ptr, idx, kind in ((t.k_full_ptr, t.k_full_idx, 2), (t.k_part_ptr, t.k_part_idx, 1)):
        for b in range(t.num_k_tiles):
            assert idx[ptr[b]:ptr[b + 1]].tolist() == np.flatnonzero(t.state[:, b] == kind).tolist()


def test_token_maps_reproduce_dense():
    m = masks.from_segments([3, 5], [4, 2, 6], [[1, 2, 0], [2, 0, 1]])
    q_seg, q_pos, k_seg, k_pos, rule = m.token_maps()
    r = rule[q_seg.long()][:, k_seg.long()]
    assert torch.equal((r == 1) | ((r == 2) & (q_pos[:, None] >= k_pos[None, :])), m.dense())


def test_masks_and_tiles_are_cached():
    p = FramePattern(5, 4, 2)
    assert masks.teacher_forcing(p, 2, 1) is masks.teacher_forcing(FramePattern(5, 4, 2), 2, 1)
    m = masks.block_causal(p)
    assert m.tiles(4, 4) is m.tiles(4, 4)


def test_zero_tangent_hint_keeps_the_mask():
    p = FramePattern(3, 4)
    m = masks.teacher_forcing(p)
    h = m.with_zero_tangents(q_ranges=[(0, p.num_tokens)], k_ranges=[(0, p.num_tokens)])
    assert torch.equal(h.dense(), m.dense()) and h.zero_tangent_k == ((0, p.num_tokens),)
    with pytest.raises(ValueError, match="k_ranges"):
        m.with_zero_tangents(k_ranges=[(0, 10 ** 6)])


@pytest.mark.parametrize("call, match", [
    (lambda: FramePattern(0, 3), "tokens_per_frame"),
    (lambda: FramePattern(2, -1), "num_frames"),
    (lambda: FramePattern(2, 3, 0), "frames_per_chunk"),
    (lambda: FramePattern(2, 3, 1, 4), "first_chunk_frames"),
    (lambda: masks.block_causal(FramePattern(2, 3), window=0), "window"),
    (lambda: masks.teacher_forcing(FramePattern(2, 3), sink=-1), "sink"),
    (lambda: masks.kv_cache(FramePattern(2, 3), 3), "query_chunk"),
    (lambda: masks.kv_cache(FramePattern(2, 3), -1), "query_chunk"),
    (lambda: masks.full(0, 3), "sq"),
    (lambda: masks.from_segments([2, 0], [3], [[1], [1]]), "q_sizes"),
    (lambda: masks.from_segments([2], [3], [[3]]), "rule values"),
    (lambda: masks.from_segments([2, 2], [3], [[1]]), "rule must have shape"),
    (lambda: masks.from_segments([2], [3, 1], [[1]]), "rule must have shape"),
    (lambda: masks.from_segments([2], [3], [[1.7]]), r"rule\[0\]\[0\] = 1.7"),
    (lambda: masks.from_segments([2, 1], [3], [[1], [0.5]]), r"rule\[1\]\[0\] = 0.5"),
    (lambda: masks.from_segments([2], [3, 1], [[1, "2"]]), r"rule\[0\]\[1\] = '2'"),
    (lambda: masks.from_segments([2], [3], ["1"]), r"rule\[0\]\[0\] = '1'"),
    (lambda: masks.from_segments([2], [3], [[True]]), r"rule\[0\]\[0\] = True"),
    (lambda: masks.from_segments([2], [3], [[1.0]]), r"0: none, 1: full, 2: causal"),
    (lambda: masks.from_segments([2], [3], [[-1]]), r"rule values"),
    (lambda: masks.from_segments([2], [3, -1], [[1, 1]]), r"k_sizes\[1\] must be >= 1, got -1"),
])
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_from_segments_takes_numpy_integers():
    m = masks.from_segments(np.array([2, 3]), [np.int32(4)], np.array([[1], [2]]))
    assert m == masks.from_segments([2, 3], [4], [[1], [2]])


def test_num_pairs_is_exact_beyond_float64():
    # from sizes alone: nothing of size S x S (or S) is built
    a, b = 3 ** 17 + 2, 2 * 3 ** 17 + 1
    m = masks.from_segments([a, b], [b, a], [[1, 0], [2, 1]])
    expect = a * b + b * (b + 1) // 2 + b * a
    assert float(expect) != expect   # not representable in float64
    assert expect > 2 ** 53 and m.num_pairs == expect and type(m.num_pairs) is int
    c = m.prefix_counts(np.array([0, a, a + b]), np.array([0, b, a + b]))
    assert c[-1, -1] == expect and c[1, 1] == a * b


def test_token_level_causal_is_linear():
    import time

    n = 65536
    t0 = time.perf_counter()
    m = masks.block_causal(FramePattern(1, n))
    s = masks.from_segments([n], [n], [[2]])
    pairs = (m.num_pairs, s.num_pairs)
    seconds = time.perf_counter() - t0
    assert pairs == (n * (n + 1) // 2,) * 2 and m == s
    assert seconds < 0.5, f"{seconds:.2f} s to build token-level causal masks of {n} tokens"
    t = m.tiles(128, 128)
    assert t.num_full == 511 * 512 // 2 and t.num_partial == 512


def test_large_segment_grids_are_named_or_refused():
    """One-token chunks with a window, or in teacher forcing, make a grid of S x S (2S x 2S)
    segment rules: past a million the build warns with its size and cost, past 2^26 it is
    refused before anything is built; token-level causal without a window stays one segment."""
    import time

    from jvp_flash_attn.masks import builders
    builders._teacher_forcing.cache_clear()   # the warning comes with the build, not with a cached mask
    with pytest.warns(UserWarning, match=r"teacher_forcing over 520 chunks is a grid of 1040 x 1040"):
        masks.teacher_forcing(FramePattern(1, 520))
    t0 = time.perf_counter()
    for build in (lambda: masks.teacher_forcing(FramePattern(1, 5000)),
                  lambda: masks.block_causal(FramePattern(1, 9000), window=64)):
        with pytest.raises(ValueError, match=r"segment rules .* more than 67,108,864"):
            build()
    assert time.perf_counter() - t0 < 5, "refused before the grid is built"
    assert builders.MAX_RULES == 1 << 26 and builders.WARN_RULES == 1 << 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks.block_causal(FramePattern(1, 100_000))
        masks.teacher_forcing(FramePattern(1560, 21))


@pytest.mark.parametrize("first", [None, 1, 3])
@pytest.mark.parametrize("frames_per_chunk", [1, 2])
@pytest.mark.parametrize("window, sink", [(None, 0), (None, 2), (2, 0), (3, 1), (40, 0)])
def test_token_level_patterns_match_predicate(first, frames_per_chunk, window, sink):
    p = FramePattern(1, 9, frames_per_chunk, first)
    m = masks.block_causal(p, window, sink)
    assert torch.equal(m.dense(), dense_from(lambda i, j: block_causal_pred(p, window, sink, i, j), 9, 9))
    assert m.num_pairs == int(m.dense().sum())


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="pattern"):
        masks.block_causal((2, 3))
    with pytest.raises(TypeError, match="tokens_per_frame"):
        FramePattern(2.5, 3)
    for q_sizes, k_sizes, match in (([2, 1.5], [3], r"q_sizes\[1\] must be an int, got 1.5"),
                                    ([2], [True], r"k_sizes\[0\] must be an int, got True"),
                                    ([2], ["3"], r"k_sizes\[0\] must be an int, got '3'")):
        with pytest.raises(TypeError, match=match):
            masks.from_segments(q_sizes, k_sizes, [[1]] * len(q_sizes))


def test_cli_draws_png(tmp_path):
    from jvp_flash_attn.masks.__main__ import main

    out = tmp_path / "tf.png"
    main(["teacher_forcing", "--frames", "4", "--tokens-per-frame", "6", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    big = tmp_path / "big.png"
    main(["teacher_forcing", "--frames", "21", "--tokens-per-frame", "60", "--block-m", "64",
          "--block-n", "64", "--out", str(big)])
    assert big.stat().st_size > 1000
