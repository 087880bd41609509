"""bench/flex.py: the FlexAttention mask_mods (user-written from the recipe, and the segment
lookup) and their BlockMasks equal our mask, element for element and tile for tile."""
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
from bench.workloads import WORKLOADS, Recipe  # noqa: E402
from jvp_flash_attn import masks  # noqa: E402
from jvp_flash_attn.masks.tiles import EMPTY, FULL  # noqa: E402

BLOCK = 32  # small tiles so that small masks have many tiles, ragged edges included


def _p(tpf, frames, fpc=1, first=None):
    return masks.FramePattern(tokens_per_frame=tpf, num_frames=frames, frames_per_chunk=fpc,
                              first_chunk_frames=first)


RECIPES = {
    "tf_framewise": Recipe("teacher_forcing", _p(13, 5)),
    "tf_chunk2_window2_sink1": Recipe("teacher_forcing", _p(11, 7, 2), window=2, sink=1),
    "bc_chunk3_ragged_last": Recipe("block_causal", _p(17, 8, 3)),
    "bc_window1_first_chunk1": Recipe("block_causal", _p(9, 9, 2, first=1), window=1),
    "bc_first_chunk3_window2_sink1": Recipe("block_causal", _p(5, 11, 2, first=3), window=2, sink=1),
    "tf_first_chunk3": Recipe("teacher_forcing", _p(4, 9, 2, first=3), window=1, sink=1),
    "kv_cache_chunk2": Recipe("kv_cache", _p(20, 6, 2), query_chunk=2),
    "kv_cache_window2_sink1": Recipe("kv_cache", _p(7, 9, 2, first=1), query_chunk=4, window=2, sink=1),
    "full_97x130": Recipe("full", size=(97, 130)),
}
CASES = {name: r.build() for name, r in RECIPES.items()}
CASES["segments_causal"] = masks.from_segments([70, 33, 60], [50, 90], [[2, 0], [1, 2], [0, 1]])


def _kv_lists(num, idx):
    return [idx[0, 0, i, : num[0, 0, i]].tolist() for i in range(num.shape[-1])]


def _check_equivalent(m, recipe=None):
    # 1. the mask_mod is our mask, pair for pair
    mod = flex.mask_mod_for(m, "cpu", recipe)
    assert torch.equal(flex.dense_from_mask_mod(mod, m.sq, m.sk), m.dense())
    # 2. FlexAttention's own blocks (create_block_mask) cover exactly our non-empty tiles,
    #    and its full blocks are our full tiles away from the ragged edges
    bm = flex.block_mask_for(m, "cpu", BLOCK, mask_mod=mod)
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
    _check_equivalent(CASES[name], RECIPES.get(name))


@pytest.mark.parametrize("name", list(RECIPES))
def test_lookup_mask_mod_equals_our_mask(name):
    _check_equivalent(CASES[name])


@given(tpf=st.integers(1, 23), frames=st.integers(1, 9), fpc=st.integers(1, 3),
       first=st.one_of(st.none(), st.integers(1, 4)), window=st.one_of(st.none(), st.integers(1, 4)),
       sink=st.integers(0, 2), builder=st.sampled_from(["teacher_forcing", "block_causal", "kv_cache"]),
       data=st.data())
def test_user_mask_mod_equals_our_mask_drawn(tpf, frames, fpc, first, window, sink, builder, data):
    p = _p(tpf, frames, fpc, first=min(first, frames) if first else None)
    qc = data.draw(st.integers(0, p.num_chunks - 1)) if builder == "kv_cache" else None
    r = Recipe(builder, p, window=window, sink=sink, query_chunk=qc)
    _check_equivalent(r.build(), r)


@pytest.mark.parametrize("wid", list(WORKLOADS))
def test_user_mask_mod_of_every_workload(wid):
    """The benchmark's workloads, shrunk, through the user-written mask_mod."""
    r = WORKLOADS[wid].recipe(0.01)
    _check_equivalent(r.build(), r)


@pytest.mark.parametrize("name", ["tf_chunk2_window2_sink1", "kv_cache_chunk2", "segments_causal"])
@pytest.mark.parametrize("source", ["create_block_mask", "tiles"])
def test_flex_output_equals_reference(name, source):
    """FlexAttention (eager, float64, GQA 4:2) with either BlockMask gives our reference's output."""
    m = CASES[name]
    mod = flex.mask_mod_for(m, "cpu", RECIPES.get(name))
    bm = (flex.block_mask_for(m, "cpu", BLOCK, mask_mod=mod) if source == "create_block_mask"
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
    bm = flex.block_mask_for(m, "cuda", mask_mod=flex.user_mask_mod(RECIPES["tf_chunk2_window2_sink1"]))
    q, k, v = (torch.randn(1, m.sq, 2, 64, device="cuda", dtype=torch.float32) for _ in range(3))
    o = flex.flex_attention_bshd(q, k, v, bm)
    ref = jfa.reference.attention(q.double(), k.double(), v.double(), mask=m)
    assert ((o.double() - ref).norm() / ref.norm()).item() < 1e-3
