"""FlexAttention as its users run it: the mask_mod they would write, its BlockMask, and the
compiled kernel on Triton (``flex``) or on FlashAttention-4's CuTe-DSL kernels (``flex-flash``).

A user of FlexAttention writes the mask_mod from the frame pattern with index arithmetic: the
chunk of a token is ``token // tokens_per_chunk`` (shifted when the first chunk has its own
length), and the builder's rule compares chunks (``user_mask_mod``). That is what this benchmark
times for every mask built from a FramePattern (``bench.workloads.Recipe``). Only masks given
as an arbitrary segment grid (``from_segments``) fall back to ``lookup_mask_mod``, which gathers
per-token segment ids and the rule table: slower for FlexAttention (a gather per element), and
the only form that describes any grid.

``create_block_mask`` then finds FlexAttention's own partial and full blocks; on a GPU it is
compiled so that the S x S evaluation is fused and never stored. ``block_mask_from_tiles``
builds the same BlockMask from our TileDescription in O(tiles) (a cross-check in the tests).
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

import bench  # noqa: F401
from jvp_flash_attn.masks import CAUSAL, FULL, SegmentMask
from jvp_flash_attn.masks.tiles import FULL as TILE_FULL, PARTIAL as TILE_PARTIAL

BLOCK_SIZE = 128
FLASH_OPTIONS = {"BACKEND": "FLASH"}  # FlexAttention's switch to FlashAttention-4's kernels


def availability() -> str | None:
    """None if FlexAttention can be imported here, else why not."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError as e:
        return f"torch {torch.__version__} has no FlexAttention ({e})"
    return None


def flash_availability(device) -> str | None:
    """None if FlexAttention's FLASH backend (FlashAttention-4, package flash-attn-4) can run."""
    why = availability()
    if why:
        return why
    if torch.device(device).type != "cuda":
        return "FlashAttention-4 runs on NVIDIA GPUs only"
    if torch.cuda.get_device_capability(device)[0] < 9:
        return "FlashAttention-4 needs Hopper (sm_90) or newer"
    try:
        import flash_attn.cute  # noqa: F401
    except Exception as e:  # ImportError, or the CuTe DSL failing to load its libraries
        return (f"flash_attn.cute cannot be imported ({type(e).__name__}: {str(e)[:120]}); on the "
                "GPU host `source .peers/fa4.sh install` brings it in (its header says how)")
    return None


def flash_version() -> str:
    """flash-attn-4's version, or '' when it is not installed."""
    from importlib import metadata
    for dist in ("flash-attn-4", "flash_attn_4", "fa4"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return ""


# ---- mask_mods ----------------------------------------------------------------------------
def _chunk_of(pattern) -> Callable:
    """token index -> chunk index, by arithmetic on the pattern (what a user writes)."""
    tpf, fpc = pattern.tokens_per_frame, pattern.frames_per_chunk
    first = pattern.chunk_frames[0]
    if first == fpc:
        return lambda idx: idx // (tpf * fpc)
    # chunk 0 holds `first` frames, later chunks `fpc`: shift by the difference
    shift = fpc - first
    return lambda idx: torch.clamp((idx // tpf + shift) // fpc, min=0)


def _window_rule(window, sink) -> Callable:
    """(query chunk, key chunk) -> visible by window and sink (True when there is no window)."""
    if window is None:
        return None
    if sink:
        return lambda qc, kc: (kc > qc - window) | (kc < sink)
    return lambda qc, kc: kc > qc - window


def user_mask_mod(recipe) -> Callable:
    """The mask_mod a FlexAttention user writes for a builder mask (``bench.workloads.Recipe``):
    chunk arithmetic on q_idx and kv_idx, no tables."""
    if recipe.builder == "full":
        return lambda b, h, q_idx, kv_idx: q_idx >= 0
    chunk = _chunk_of(recipe.pattern)
    vis = _window_rule(recipe.window, recipe.sink)
    if recipe.builder == "block_causal":
        def block_causal(b, h, q_idx, kv_idx):
            qc, kc = chunk(q_idx), chunk(kv_idx)
            ok = kc <= qc
            return ok & vis(qc, kc) if vis else ok
        return block_causal
    if recipe.builder == "kv_cache":
        qc = recipe.query_chunk  # every key is in a chunk <= qc
        if vis is None:
            return lambda b, h, q_idx, kv_idx: kv_idx >= 0
        return lambda b, h, q_idx, kv_idx: vis(qc, chunk(kv_idx))
    if recipe.builder == "teacher_forcing":
        n = recipe.pattern.num_tokens  # [clean | noisy], each n tokens

        def teacher_forcing(b, h, q_idx, kv_idx):
            q_noisy, k_noisy = q_idx >= n, kv_idx >= n
            qc = chunk(torch.where(q_noisy, q_idx - n, q_idx))
            kc = chunk(torch.where(k_noisy, kv_idx - n, kv_idx))
            # clean keys: block-causal for clean queries, strictly earlier chunks for noisy ones
            to_clean = ~k_noisy & torch.where(q_noisy, kc < qc, kc <= qc)
            if vis:
                to_clean = to_clean & vis(qc, kc)
            return to_clean | (q_noisy & k_noisy & (kc == qc))
        return teacher_forcing
    raise ValueError(f"no user mask_mod for builder {recipe.builder!r}")


def lookup_mask_mod(mask: SegmentMask, device) -> Callable:
    """mask_mod of any segment grid by table lookup:

        allowed(q, kv) = rule[q_seg[q], k_seg[kv]] == FULL
                         or (== CAUSAL and q_pos[q] >= k_pos[kv])

    which is the definition of SegmentMask (for ``from_segments`` masks)."""
    q_seg, q_pos, k_seg, k_pos, rule = mask.token_maps(device)
    n_k = rule.shape[1]
    rule_flat = rule.reshape(-1).contiguous()

    def mask_mod(b, h, q_idx, kv_idx):
        r = rule_flat[q_seg[q_idx] * n_k + k_seg[kv_idx]]
        return (r == FULL) | ((r == CAUSAL) & (q_pos[q_idx] >= k_pos[kv_idx]))

    return mask_mod


def mask_mod_for(mask: SegmentMask, device, recipe=None) -> Callable:
    """The user-written mask_mod when the recipe is known, else the segment lookup."""
    return user_mask_mod(recipe) if recipe is not None else lookup_mask_mod(mask, device)


# ---- BlockMask ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask
    return torch.compile(create_block_mask)


def block_mask_for(mask: SegmentMask, device, block_size: int = BLOCK_SIZE, compile: bool | None = None,
                   mask_mod: Callable | None = None):
    """BlockMask of ``mask`` through ``create_block_mask`` (compiled on CUDA by default), from
    ``mask_mod`` (default: the segment lookup)."""
    from torch.nn.attention.flex_attention import create_block_mask

    device = torch.device(device)
    compile = device.type == "cuda" if compile is None else compile
    make = _compiled_create_block_mask() if compile else create_block_mask
    mod = mask_mod or lookup_mask_mod(mask, device)
    return make(mod, None, None, mask.sq, mask.sk, device=device, BLOCK_SIZE=block_size)


def block_mask_from_tiles(mask: SegmentMask, device, block_size: int = BLOCK_SIZE):
    """The same BlockMask built from our TileDescription (partial and full key tiles per query
    tile) with ``BlockMask.from_kv_blocks``: O(tiles), no S x S evaluation. Index lists hold
    each query tile's key tiles in ascending order, padded with the rest."""
    from torch.nn.attention.flex_attention import BlockMask

    device = torch.device(device)
    state = torch.from_numpy(mask.tiles(block_size, block_size, "cpu").state.copy())
    full, part = state == TILE_FULL, state == TILE_PARTIAL
    # FlexAttention pads the sequences to whole blocks and counts the padding as masked, so a
    # ragged last tile is partial there even where every real pair is allowed.
    for dim, n in ((0, mask.sq), (1, mask.sk)):
        if n % block_size:
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
                                    mask_mod=lookup_mask_mod(mask, device),
                                    seq_lengths=(mask.sq, mask.sk))


def dense_from_mask_mod(mask_mod: Callable, sq: int, sk: int, device="cpu") -> torch.Tensor:
    """Evaluate a mask_mod on every (q, kv) pair: (Sq, Sk) bool. Tests only: it is S x S."""
    q = torch.arange(sq, device=device)[:, None]
    kv = torch.arange(sk, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    return mask_mod(zero, zero, q, kv).expand(sq, sk)


# ---- the kernel ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    """``torch.compile(flex_attention)``: FlexAttention's fused kernels (forward and backward)."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_attention_bshd(q, k, v, block_mask, scale=None, compiled: bool = True):
    """FlexAttention on our (B, S, H, D) layout, returning (B, Sq, Hq, Dv). The transposes are
    views; callers that time it should pass (B, H, S, D)-contiguous data through ``flex_bhsd``."""
    o = flex_bhsd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask, scale, compiled)
    return o.transpose(1, 2)


def flex_bhsd(q, k, v, block_mask, scale=None, compiled: bool = True, kernel_options=None):
    """FlexAttention on (B, H, S, D) tensors; ``kernel_options=FLASH_OPTIONS`` runs it on
    FlashAttention-4."""
    from torch.nn.attention.flex_attention import flex_attention
    fn = compiled_flex_attention() if compiled else flex_attention
    gqa = q.shape[1] != k.shape[1]
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa, kernel_options=kernel_options)
