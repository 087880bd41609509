"""bench/flex.py: the FlexAttention BlockMask equals our mask, element for element and tile for tile."""
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
flex = pytest.importorskip("bench.flex")
if flex.availability() is not None:
    pytest.skip(flex.availability(), allow_module_level=True)

import jvp_flash_attn as jfa  # noqa: E402
from jvp_flash_attn import masks  # noqa: E402
from jvp_flash_attn.masks.tiles import EMPTY, FULL  # noqa: E402

BLOCK = 32  # small tiles so that small masks have many tiles, ragged edges included


def _p(tpf, frames, fpc=1, first=None):
    return masks.FramePattern(tokens_per_frame=tpf, num_frames=frames, frames_per_chunk=fpc,
                              first_chunk_frames=first)


CASES = {
    "tf_framewise": masks.teacher_forcing(_p(13, 5)),
    "tf_chunk2_window2_sink1": masks.teacher_forcing(_p(11, 7, 2), window=2, sink=1),
    "bc_chunk3_ragged_last": masks.block_causal(_p(17, 8, 3)),
    "bc_window1_first_chunk1": masks.block_causal(_p(9, 9, 2, first=1), window=1),
    "kv_cache_chunk2": masks.kv_cache(_p(20, 6, 2), 2),
    "full_97x130": masks.full(97, 130),
    "segments_causal": masks.from_segments([70, 33, 60], [50, 90], [[2, 0], [1, 2], [0, 1]]),
}


def _kv_lists(num, idx):
    return [idx[0, 0, i, : num[0, 0, i]].tolist() for i in range(num.shape[-1])]


def _check_equivalent(m):
    # 1. the mask_mod is our mask, pair for pair
    assert torch.equal(flex.dense_from_mask_mod(m), m.dense())
    # 2. FlexAttention's own blocks (create_block_mask) cover exactly our non-empty tiles,
    #    and its full blocks are our full tiles away from the ragged edges
    bm = flex.block_mask_for(m, "cpu", BLOCK)
    assert bm.seq_lengths == (m.sq, m.sk)
    state = torch.from_numpy(m.tiles(BLOCK, BLOCK).state.copy())
    assert torch.equal(bm.to_dense()[0, 0].bool(), state != EMPTY)
    full = torch.zeros_like(state, dtype=torch.bool)
    for t, ks in enumerate(_kv_lists(bm.full_kv_num_blocks, bm.full_kv_indices)):
        full[t, ks] = True
    inner = (slice(None, m.sq // BLOCK), slice(None, m.sk // BLOCK))
    assert torch.equal(full[inner], (state == FULL)[inner])
    # 3. the BlockMask built from our TileDescription is the same BlockMask
    bt = flex.block_mask_from_tiles(m, "cpu", BLOCK)
    for a, b in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        assert torch.equal(getattr(bm, a), getattr(bt, a))
        assert _kv_lists(getattr(bm, a), getattr(bm, b)) == _kv_lists(getattr(bt, a), getattr(bt, b))


@pytest.mark.parametrize("name", list(CASES))
def test_block_mask_equals_our_mask(name):
    _check_equivalent(CASES[name])


@given(tpf=st.integers(1, 23), frames=st.integers(1, 9), fpc=st.integers(1, 3),
       window=st.one_of(st.none(), st.integers(1, 4)), sink=st.integers(0, 2), tf=st.booleans())
def test_block_mask_equals_our_mask_drawn(tpf, frames, fpc, window, sink, tf):
    p = _p(tpf, frames, fpc)
    _check_equivalent((masks.teacher_forcing if tf else masks.block_causal)(p, window=window, sink=sink))


@pytest.mark.parametrize("name", ["tf_chunk2_window2_sink1", "kv_cache_chunk2", "segments_causal"])
@pytest.mark.parametrize("source", ["create_block_mask", "tiles"])
def test_flex_output_equals_reference(name, source):
    """FlexAttention (eager, float64, GQA 4:2) with either BlockMask gives our reference's output."""
    m = CASES[name]
    bm = (flex.block_mask_for(m, "cpu", BLOCK) if source == "create_block_mask"
          else flex.block_mask_from_tiles(m, "cpu", BLOCK))
    q = torch.randn(2, m.sq, 4, 16, dtype=torch.float64)
    k = torch.randn(2, m.sk, 2, 16, dtype=torch.float64)
    v = torch.randn(2, m.sk, 2, 24, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is not compiled
        o = flex.flex_attention_bshd(q, k, v, bm, scale=0.3, compiled=False)
    ref = jfa.reference.attention(q, k, v, mask=m, scale=0.3)
    torch.testing.assert_close(o, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled FlexAttention kernel is timed on a GPU only")
def test_compiled_flex_on_gpu():
    m = CASES["tf_chunk2_window2_sink1"]
    bm = flex.block_mask_for(m, "cuda")
    q, k, v = (torch.randn(1, m.sq, 2, 64, device="cuda", dtype=torch.float32) for _ in range(3))
    o = flex.flex_attention_bshd(q, k, v, bm)
    ref = jfa.reference.attention(q.double(), k.double(), v.double(), mask=m)
    assert ((o.double() - ref).norm() / ref.norm()).item() < 1e-3
