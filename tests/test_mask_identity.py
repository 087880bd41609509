"""Masks keep their meaning when copied, pickled or sent to another process: the uid the ops
receive is a digest of the mask's content, and a copy or an unpickled mask is registered."""
import copy
import gc
import multiprocessing
import pickle

import pytest
import torch

import jvp_flash_attn as jfa
from conftest import naive_attention
from jvp_flash_attn import masks
from jvp_flash_attn.masks import FramePattern, SegmentMask
from jvp_flash_attn.masks.segments import mask_by_uid

F64 = dict(dtype=torch.float64)


def _inputs(s, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, s, 2, 8, generator=g, **F64) for _ in range(3)]


def _run_in_child(mask, q, k, v):
    """Runs in a spawned process: build that process's own full mask of the same shape (as
    ``mask=None`` would), then attend under the mask that came through pickle."""
    own = masks.full(mask.sq, mask.sk)
    o_default = jfa.attention(q, k, v, backend="reference")
    o = jfa.attention(q, k, v, mask=mask, backend="reference")
    rebuilt = masks.block_causal(FramePattern(2, 5))
    return o, o_default, mask.dense(), mask.uid, own.uid, rebuilt.uid, mask_by_uid(mask.uid) == mask


def test_pickled_causal_mask_stays_causal_in_a_spawned_process():
    mask = masks.block_causal(FramePattern(2, 5))
    q, k, v = _inputs(mask.sq)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        o, o_default, dense, uid, own_uid, rebuilt_uid, registered = pool.apply(_run_in_child, (mask, q, k, v))
    torch.testing.assert_close(o, naive_attention(q, k, v, mask.dense())[0])
    torch.testing.assert_close(o_default, naive_attention(q, k, v, torch.ones_like(mask.dense()))[0])
    assert not torch.allclose(o, o_default)
    assert torch.equal(dense, mask.dense())
    assert uid == mask.uid == rebuilt_uid   # the same content has the same uid in every process
    assert own_uid != uid and registered


def _fresh_mask():
    """A mask no builder cache holds, so that dropping it really frees it."""
    return SegmentMask((5, 7), (4, 8), ((2, 0), (1, 2)), name="fresh")


@pytest.mark.parametrize("duplicate", [copy.copy, copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))],
                         ids=["copy", "deepcopy", "pickle"])
def test_copy_works_after_the_original_is_freed(duplicate):
    original = _fresh_mask()
    dup = duplicate(original)
    expect = original.dense()
    del original
    gc.collect()
    q, k, v = _inputs(dup.sq, seed=1)
    assert torch.equal(dup.dense(), expect)
    o = jfa.attention(q, k, v, mask=dup, backend="reference")
    torch.testing.assert_close(o, naive_attention(q, k, v, expect)[0])


def test_uid_follows_content():
    a, b = _fresh_mask(), _fresh_mask()
    assert a.uid == b.uid and a == b and isinstance(a.uid, int)
    assert mask_by_uid(a.uid) == a
    assert a.tiles(4, 4) is b.tiles(4, 4)   # equal masks share their caches
    other = SegmentMask((5, 7), (4, 8), ((2, 0), (1, 1)))
    hinted = a.with_zero_tangents(q_ranges=[(0, 5)])
    assert len({a.uid, other.uid, hinted.uid}) == 3
    assert 0 <= a.uid < 2 ** 63   # an int64 for the custom ops


def test_unknown_uid_names_itself():
    with pytest.raises(LookupError, match="no live mask has uid 12345"):
        mask_by_uid(12345)
