"""FlexAttention provider pieces: a BlockMask equal to one of our masks, and the compiled kernel.

The BlockMask is built from the mask's segment grid, not from an S x S matrix that we
write: ``mask_mod`` looks up per-token segment ids and causal offsets (``token_maps``)
and the segment rule table, all tensors captured by the closure, so

    allowed(q, kv) = rule[q_seg[q], k_seg[kv]] == FULL
                     or (== CAUSAL and q_pos[q] >= k_pos[kv])

which is the definition of SegmentMask. ``create_block_mask`` then finds FlexAttention's
own partial and full blocks; on a GPU it is compiled so that the S x S evaluation is
fused and never stored. ``block_mask_from_tiles`` builds the same BlockMask directly
from our TileDescription (a fallback, and a cross-check in the tests).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

import bench  # noqa: F401
from jvp_flash_attn.masks import CAUSAL, FULL, SegmentMask
from jvp_flash_attn.masks.tiles import FULL as TILE_FULL, PARTIAL as TILE_PARTIAL

BLOCK_SIZE = 128


def availability() -> str | None:
    """None if FlexAttention can be imported here, else why not."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as e:
        return f"torch {torch.__version__} has no FlexAttention ({e})"
    return None


def mask_mod_for(mask: SegmentMask, device) -> Callable:
    """FlexAttention mask_mod equal to ``mask`` (see the module docstring)."""
    q_seg, q_pos, k_seg, k_pos, rule = mask.token_maps(device)
    n_k = rule.shape[1]
    rule_flat = rule.reshape(-1).contiguous()

    def mask_mod(b, h, q_idx, kv_idx):
        r = rule_flat[q_seg[q_idx] * n_k + k_seg[kv_idx]]
        return (r == FULL) | ((r == CAUSAL) & (q_pos[q_idx] >= k_pos[kv_idx]))

    return mask_mod


@functools.lru_cache(maxsize=1)
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask
    return torch.compile(create_block_mask)


def block_mask_for(mask: SegmentMask, device, block_size: int = BLOCK_SIZE, compile: bool | None = None):
    """BlockMask of ``mask`` through ``create_block_mask`` (compiled on CUDA by default)."""
    from torch.nn.attention.flex_attention import create_block_mask

    device = torch.device(device)
    compile = device.type == "cuda" if compile is None else compile
    make = _compiled_create_block_mask() if compile else create_block_mask
    return make(mask_mod_for(mask, device), None, None, mask.sq, mask.sk, device=device,
                BLOCK_SIZE=block_size)


def block_mask_from_tiles(mask: SegmentMask, device, block_size: int = BLOCK_SIZE,
                          partial_edges: bool = True):
    """The same BlockMask built from our TileDescription (partial and full key tiles per
    query tile) with ``BlockMask.from_kv_blocks``: O(tiles), no S x S evaluation.
    Index lists hold each query tile's key tiles in ascending order, padded with the rest.
    ``partial_edges`` marks ragged last tiles partial, as create_block_mask does; False keeps
    our states (full where every real pair is allowed), an experiment that the pre-timing
    checks must pass."""
    from torch.nn.attention.flex_attention import BlockMask

    device = torch.device(device)
    state = torch.from_numpy(mask.tiles(block_size, block_size, "cpu").state.copy())
    full, part = state == TILE_FULL, state == TILE_PARTIAL
    # FlexAttention pads the sequences to whole blocks and counts the padding as masked, so a
    # ragged last tile is partial there even where every real pair is allowed.
    for dim, n in ((0, mask.sq), (1, mask.sk)):
        if partial_edges and n % block_size:
            edge = full.select(dim, -1)
            part.select(dim, -1).logical_or_(edge)
            edge.zero_()

    def lists(selected):
        counts = selected.sum(1, dtype=torch.int32)
        order = torch.sort((~selected).to(torch.int8), dim=1, stable=True).indices.to(torch.int32)
        return counts[None, None].to(device), order[None, None].contiguous().to(device)

    kv_num, kv_idx = lists(part)
    full_num, full_idx = lists(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod_for(mask, device),
                                    seq_lengths=(mask.sq, mask.sk))


def dense_from_mask_mod(mask: SegmentMask, device="cpu") -> torch.Tensor:
    """Evaluate our mask_mod on every (q, kv) pair: (Sq, Sk) bool. Tests only: it is S x S."""
    mod = mask_mod_for(mask, device)
    q = torch.arange(mask.sq, device=device)[:, None]
    kv = torch.arange(mask.sk, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    return mod(zero, zero, q, kv)


@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    """``torch.compile(flex_attention)``: FlexAttention's fused Triton kernels (forward and backward)."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_attention_bshd(q, k, v, block_mask, scale=None, compiled: bool = True):
    """FlexAttention on our (B, S, H, D) layout, returning (B, Sq, Hq, Dv). The transposes are
    views; callers that time it should pass (B, H, S, D)-contiguous data through ``flex_bhsd``."""
    o = flex_bhsd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask, scale, compiled)
    return o.transpose(1, 2)


def flex_bhsd(q, k, v, block_mask, scale=None, compiled: bool = True):
    """FlexAttention on (B, H, S, D) tensors."""
    from torch.nn.attention.flex_attention import flex_attention
    fn = compiled_flex_attention() if compiled else flex_attention
    gqa = q.shape[1] != k.shape[1]
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
