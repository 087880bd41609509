"""Tile flags of the zero-tangent hint against their per-token definition; the ordered
backward's dQ turns against theirs; the runs of partial tiles against the mask."""
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from jvp_flash_attn import masks
from jvp_flash_attn.masks.tiles import zero_tangent_tiles


@given(n=st.integers(1, 200), block=st.integers(1, 40),
       ranges=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=5))
def test_zero_tangent_tiles_match_tokens(n, block, ranges):
    ranges = [(min(a, n), min(b, n)) for a, b in ranges]
    zero = np.zeros(-(-n // block) * block, bool)
    zero[n:] = True  # tokens past n are zero-filled
    for a, b in ranges:
        zero[a:b] = True
    expect = zero.reshape(-1, block).all(axis=1).astype(np.int8)
    assert zero_tangent_tiles(ranges, n, block).tolist() == expect.tolist()


@given(frames=st.integers(1, 6), tokens=st.integers(1, 90), chunk=st.integers(1, 3),
       teacher=st.booleans(), bm=st.sampled_from([16, 64]), bn=st.sampled_from([32, 128]))
def test_dq_turns_rank_key_tiles_per_query_tile(frames, tokens, chunk, teacher, bm, bn):
    """Each key-side entry's turn is its key tile's rank, highest first, among the key tiles that
    visit the entry's query tile: the ordered backward adds every dQ tile in decreasing key-tile order."""
    pattern = masks.FramePattern(tokens, frames, min(chunk, frames))
    mask = masks.teacher_forcing(pattern) if teacher else masks.block_causal(pattern)
    t = mask.tiles(bm, bn)
    visited = t.state != 0
    for (ptr, idx), turns in zip(((t.k_full_ptr, t.k_full_idx), (t.k_part_ptr, t.k_part_idx)), t.dq_turns):
        assert turns.dtype == torch.int32 and turns.shape == idx.shape
        key_tile = np.repeat(np.arange(t.num_k_tiles), np.diff(ptr.numpy()))
        expect = [int(visited[m, n + 1:].sum()) for m, n in zip(idx.tolist(), key_tile)]
        assert turns.tolist() == expect
    # per query tile, the turns of its visitors are 0, 1, 2, ... once each
    for m in range(t.num_q_tiles):
        got = sorted(int(tt[e]) for (ptr, idx), tt in zip(((t.k_full_ptr, t.k_full_idx), (t.k_part_ptr, t.k_part_idx)),
                                                          t.dq_turns) for e in range(len(idx)) if int(idx[e]) == m)
        assert got == list(range(int(visited[m].sum())))


@given(q_sizes=st.lists(st.integers(1, 70), min_size=1, max_size=5),
       k_sizes=st.lists(st.integers(1, 90), min_size=1, max_size=6),
       data=st.data(), bm=st.sampled_from([8, 16, 64]), bn=st.sampled_from([8, 32]),
       groups=st.integers(1, 5), run=st.integers(1, 4))
def test_dq_group_turns_rank_key_tiles_per_query_tile_and_group(q_sizes, k_sizes, data, bm, bn, groups, run):
    """With the key tiles in groups (key tile u in group (u // run) % groups), per query tile and
    group the turns of the group's visitors are 0, 1, ... once each, and a higher key tile takes an
    earlier turn; one group gives dq_turns whatever the run."""
    rule = [[data.draw(st.integers(0, 2)) for _ in k_sizes] for _ in q_sizes]
    t = masks.from_segments(q_sizes, k_sizes, rule).tiles(bm, bn)
    turns = t.dq_group_turns(groups, run)
    if groups == 1:
        assert all(torch.equal(a, b) for a, b in zip(turns, t.dq_turns))
    seen = {}   # (query tile, group) -> [(key tile, turn)]
    for (ptr, idx), tt in zip(((t.k_full_ptr, t.k_full_idx), (t.k_part_ptr, t.k_part_idx)), turns):
        assert tt.dtype == torch.int32 and tt.shape == idx.shape
        key_tile = np.repeat(np.arange(t.num_k_tiles), np.diff(ptr.numpy()))
        for m, u, turn in zip(idx.tolist(), key_tile.tolist(), tt.tolist()):
            seen.setdefault((m, (u // run) % groups), []).append((u, turn))
    visited = t.state != 0
    for (m, g), entries in seen.items():
        members = [u for u in range(t.num_k_tiles) if (u // run) % groups == g and visited[m, u]]
        assert sorted(u for u, _ in entries) == members
        by_key = sorted(entries, reverse=True)   # decreasing key tiles take turns 0, 1, ...
        assert [turn for _, turn in by_key] == list(range(len(members)))


def _allowed_from_runs(run, qi, kj):
    """The kernels' test of a pair in a simple PARTIAL tile, from its runs row (partial_tile_runs)."""
    q_cut, k_cut, b00, b01, b10, b11 = (int(x) for x in run[:6])
    bound = (b11 if kj >= k_cut else b10) if qi >= q_cut else (b01 if kj >= k_cut else b00)
    return kj - qi <= bound


@given(q_sizes=st.lists(st.integers(1, 70), min_size=1, max_size=5),
       k_sizes=st.lists(st.integers(1, 70), min_size=1, max_size=5),
       data=st.data(), bm=st.sampled_from([8, 16, 64]), bn=st.sampled_from([8, 32, 128]))
def test_partial_tile_runs_match_the_mask(q_sizes, k_sizes, data, bm, bn):
    """Every pair of every simple PARTIAL tile, tested from the tile's runs as the kernels test it,
    agrees with the mask; tiles that are not simple are flagged so (the kernels look them up)."""
    rule = [[data.draw(st.integers(0, 2)) for _ in k_sizes] for _ in q_sizes]
    mask = masks.from_segments(q_sizes, k_sizes, rule)
    t = mask.tiles(bm, bn)
    dense = mask.dense().numpy()
    for ptr, idx, runs, by_key in ((t.q_part_ptr, t.q_part_idx, t.q_part_runs, False),
                                   (t.k_part_ptr, t.k_part_idx, t.k_part_runs, True)):
        assert runs.dtype == torch.int32 and tuple(runs.shape) == (len(idx), 8)
        outer = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr.numpy()))
        for e, (o, inner) in enumerate(zip(outer, idx.tolist())):
            m, n = (inner, o) if by_key else (o, inner)
            rows = range(m * bm, min((m + 1) * bm, mask.sq))
            cols = range(n * bn, min((n + 1) * bn, mask.sk))
            q_segs = {int(np.searchsorted(mask.segment_starts()[0], r, "right")) for r in rows}
            k_segs = {int(np.searchsorted(mask.segment_starts()[1], c, "right")) for c in cols}
            simple = bool(int(runs[e, 6]))
            assert simple == (max(q_segs) - min(q_segs) <= 1 and max(k_segs) - min(k_segs) <= 1)
            if simple:
                got = [[_allowed_from_runs(runs[e].tolist(), qi, kj) for kj in cols] for qi in rows]
                assert np.array_equal(np.array(got, bool), dense[rows.start:rows.stop, cols.start:cols.stop])


def test_partial_tile_runs_of_the_video_masks():
    """With frames longer than a tile (the benchmark's 1,560 tokens), every partial tile of the
    frame- and chunk-wise masks is simple: teacher forcing, block-causal by frame and by chunk,
    with a window and a sink, and a KV-cache step."""
    for mask in (masks.teacher_forcing(masks.FramePattern(1560, 4, 2)),
                 masks.block_causal(masks.FramePattern(1560, 5, 1)),
                 masks.block_causal(masks.FramePattern(1560, 6, 3)),
                 masks.block_causal(masks.FramePattern(1560, 12, 3), window=2, sink=1),
                 masks.kv_cache(masks.FramePattern(1560, 9, 3), 2)):
        for bm, bn in ((64, 128), (128, 128), (128, 64)):
            t = mask.tiles(bm, bn)
            for runs in (t.q_part_runs, t.k_part_runs):
                assert (runs[:, 6] == 1).all()


@given(q_sizes=st.lists(st.integers(1, 70), min_size=1, max_size=5),
       k_sizes=st.lists(st.integers(1, 70), min_size=1, max_size=5),
       data=st.data(), bm=st.sampled_from([16, 64]), bn=st.sampled_from([32, 128]))
def test_key_walk_order_takes_every_entry_by_increasing_query_tile(q_sizes, k_sizes, data, bm, bn):
    """Per key tile, the backward's walk order names each of its entries once (FULL entries 0..,
    then PARTIAL ones) and takes their query tiles in increasing order."""
    rule = [[data.draw(st.integers(0, 2)) for _ in k_sizes] for _ in q_sizes]
    t = masks.from_segments(q_sizes, k_sizes, rule).tiles(bm, bn)
    order = t.k_walk_order
    assert order.dtype == torch.int32 and order.numel() == t.k_full_idx.numel() + t.k_part_idx.numel()
    fp, pp = t.k_full_ptr.tolist(), t.k_part_ptr.tolist()
    for u in range(t.num_k_tiles):
        tiles = t.k_full_idx[fp[u]:fp[u + 1]].tolist() + t.k_part_idx[pp[u]:pp[u + 1]].tolist()
        walk = order[fp[u] + pp[u]:fp[u + 1] + pp[u + 1]].tolist()
        assert sorted(walk) == list(range(len(tiles)))
        assert [tiles[e] for e in walk] == sorted(tiles)


@given(frames=st.integers(1, 7), tokens=st.integers(128, 400), chunk=st.integers(1, 3), teacher=st.booleans(),
       window=st.one_of(st.none(), st.integers(1, 3)), sink=st.integers(0, 1))
def test_higher_key_tiles_reach_each_query_tile_first(frames, tokens, chunk, teacher, window, sink):
    """What the ordered backward's speed rests on: walking each key tile's query tiles in
    k_walk_order, a higher key tile reaches any query tile at the same step or earlier than a lower
    one, so turns in decreasing key-tile order follow the order the blocks arrive in. It holds
    for frames of at least a key tile (128 tokens) in block-causal masks with or without a window
    and sink, and in teacher forcing by whole chunks without a window (W1-W8's masks). Elsewhere
    (shorter frames, a ragged last chunk or a window in teacher forcing) some blocks wait longer;
    the turns, and so the sums, are the same."""
    if teacher:
        window, frames = None, frames - frames % min(chunk, frames)
    pattern = masks.FramePattern(tokens, frames, min(chunk, frames))
    build = masks.teacher_forcing if teacher else masks.block_causal
    t = build(pattern, window=window, sink=sink if window else 0).tiles(64, 128)
    fp, pp, order = t.k_full_ptr.tolist(), t.k_part_ptr.tolist(), t.k_walk_order.tolist()
    step_at = {}   # query tile -> [(key tile, step at which the key tile reaches it)]
    for u in range(t.num_k_tiles):
        tiles = t.k_full_idx[fp[u]:fp[u + 1]].tolist() + t.k_part_idx[pp[u]:pp[u + 1]].tolist()
        for s, e in enumerate(order[fp[u] + pp[u]:fp[u + 1] + pp[u + 1]]):
            step_at.setdefault(tiles[e], []).append((u, s))
    for m, visits in step_at.items():
        steps = [s for _, s in sorted(visits, reverse=True)]   # by key tile, highest first
        assert steps == sorted(steps), (m, sorted(visits, reverse=True))
