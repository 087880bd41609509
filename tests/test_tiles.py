"""Tile flags of the zero-tangent hint against their per-token definition; the ordered
backward's dQ turns against theirs."""
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
    """Each key-side entry's turn is its key tile's rank among the key tiles that visit the
    entry's query tile: the ordered backward adds every dQ tile in increasing key-tile order."""
    pattern = masks.FramePattern(tokens, frames, min(chunk, frames))
    mask = masks.teacher_forcing(pattern) if teacher else masks.block_causal(pattern)
    t = mask.tiles(bm, bn)
    visited = t.state != 0
    for (ptr, idx), turns in zip(((t.k_full_ptr, t.k_full_idx), (t.k_part_ptr, t.k_part_idx)), t.dq_turns):
        assert turns.dtype == torch.int32 and turns.shape == idx.shape
        key_tile = np.repeat(np.arange(t.num_k_tiles), np.diff(ptr.numpy()))
        expect = [int(visited[m, :n].sum()) for m, n in zip(idx.tolist(), key_tile)]
        assert turns.tolist() == expect
    # per query tile, the turns of its visitors are 0, 1, 2, ... once each
    for m in range(t.num_q_tiles):
        got = sorted(int(tt[e]) for (ptr, idx), tt in zip(((t.k_full_ptr, t.k_full_idx), (t.k_part_ptr, t.k_part_idx)),
                                                          t.dq_turns) for e in range(len(idx)) if int(idx[e]) == m)
        assert got == list(range(int(visited[m].sum())))
