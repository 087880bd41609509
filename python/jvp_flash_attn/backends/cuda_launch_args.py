"""The compiled core's arguments: its parameter struct (``AttnParams``, the one the kernels see,
bound from csrc/jfa/params.h), built from tensors, the kernel choice and tile descriptions here
and nowhere else.

The module is torch-free: the struct holds device pointers, shapes, (batch, row, head) element
strides, the kernel family and the tile descriptions' device pointers. Inputs are made 16-byte
aligned here (the kernels copy 16 bytes at a time) and outputs allocated here.
"""
from __future__ import annotations

import torch

DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_ALIGN_ELEMS = 8  # 16-byte async copies: base pointers and strides in multiples of 8 elements

# Tests set this to fill outputs with NaN before the kernels run, so an unwritten element shows
# (an attribute rather than an environment switch: nothing on a call's path reads the environment).
POISON_OUTPUTS = False


def aligned(x: torch.Tensor) -> torch.Tensor:
    """x itself when its pointer and (batch, row, head) strides suit 16-byte copies and the TMA
    unit (no stride 0 along a dimension longer than 1, as expand() makes), else a contiguous copy."""
    ok = (x.stride(-1) == 1 and x.data_ptr() % 16 == 0
          and all(s % _ALIGN_ELEMS == 0 and (s > 0 or n == 1) for s, n in zip(x.stride()[:3], x.shape[:3])))
    return x if ok else x.contiguous()


def empty(shape, like, dtype=None):
    """An output for a kernel to fill (NaN-filled under POISON_OUTPUTS)."""
    out = torch.empty(shape, dtype=dtype or like.dtype, device=like.device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def set_tensors(params, **tensors):
    """Each (B, S, H, D) tensor's pointer and (batch, row, head) strides into the field of its name
    (dO's is ``do_``, its strides ``do_stride``)."""
    for name, x in tensors.items():
        setattr(params, name, x.data_ptr())
        setattr(params, f"{name.rstrip('_')}_stride", (x.stride(0), x.stride(1), x.stride(2)))


def _set_tile_lists(lists, desc, by_key: bool):
    """The CSR lists the kernels walk: key tiles per query tile, or (by_key) query tiles per key
    tile, with the runs of their PARTIAL tiles."""
    side = "k" if by_key else "q"
    for part in ("full_ptr", "full_idx", "part_ptr", "part_idx", "part_runs"):
        setattr(lists, part, getattr(desc, f"{side}_{part}").data_ptr())


def _params_every_direction_needs(module, choice, mask, q, k, v, scale, o, lse, k_desc=None):
    """Shapes, the kernel family, q, k, v, the outputs o and lse, the description walked per query
    tile (its token maps serve every walk) and, for the backward, the one walked per key tile."""
    q_desc = mask.tiles(*choice.q_tiles, q.device)
    p = module.AttnParams()
    p.batch, p.seqlen_q, p.heads_q, p.head_dim_qk = q.shape
    p.seqlen_k, p.heads_k, p.head_dim_v = k.shape[1], k.shape[2], v.shape[-1]
    p.scale = float(scale)
    p.family = getattr(module.KernelFamily, choice.family)
    set_tensors(p, q=q, k=k, v=v, o=o)
    p.lse = lse.data_ptr()
    _set_tile_lists(p.q_tiles, q_desc, by_key=False)
    p.num_q_tiles, p.q_tiles_block_m, p.q_tiles_block_n = q_desc.num_q_tiles, q_desc.block_m, q_desc.block_n
    if k_desc is not None:
        _set_tile_lists(p.k_tiles, k_desc, by_key=True)
        p.num_k_tiles, p.k_tiles_block_m, p.k_tiles_block_n = k_desc.num_k_tiles, k_desc.block_m, k_desc.block_n
    maps = p.maps
    maps.q_seg, maps.q_pos = q_desc.q_seg.data_ptr(), q_desc.q_pos.data_ptr()
    maps.k_seg, maps.k_pos = q_desc.k_seg.data_ptr(), q_desc.k_pos.data_ptr()
    maps.rule, maps.num_k_segments = q_desc.rule.data_ptr(), int(q_desc.rule.shape[1])
    return p, q_desc


def forward_params(module, choice, mask, q, k, v, scale, o, lse):
    return _params_every_direction_needs(module, choice, mask, q, k, v, scale, o, lse)[0]


def jvp_params(module, choice, mask, q, k, v, tq, tk, tv, scale, o, to, lse):
    p, desc = _params_every_direction_needs(module, choice, mask, q, k, v, scale, o, lse)
    set_tensors(p, tq=tq, tk=tk, tv=tv, to=to)
    if mask.zero_tangent_k:   # the sm_90a JVP skips the key tiles of zero tangents (the query side: tangent_rows.py)
        p.zero_tangent_hint = True
        p.q_zero_tangent, p.k_zero_tangent = desc.q_zero_tangent.data_ptr(), desc.k_zero_tangent.data_ptr()
    return p


# The ordered backward's dQ groups (csrc/jfa/params.h, dq_groups): key tile u adds into buffer
# u mod G, each buffer with its own semaphores and turns, so a dQ tile's chain of turns (one per key
# tile visiting it, each waiting for the previous add to complete) becomes G chains that run side by
# side; the key tiles launched one after the other fall in different groups.
# bench/simulate_ordered_dq.py: two groups take a KV-cache step (W7: 74 query tiles, every one
# visited by all 256 key tiles) from 0.66 to 0.99 of the fast form; four gain nothing more anywhere.
DQ_GROUP_CHAIN = 160      # group once the longest chain is longer (W1-W8's are 185-294 key tiles)
DQ_MAX_GROUPS = 2
# A fixed byte budget for the groups' float32 buffers, not a share of the free memory: G changes the
# order of the float32 adds, so it must depend on the call's shapes and mask alone for dq to be
# bitwise repeatable from one call to the next. 2 GiB holds two buffers of the largest benchmark
# (W5: 98,280 queries x 12 heads x 128 x 4 bytes = 604 MB each); one buffer always goes.
DQ_GROUP_BYTES = 2 << 30


def dq_groups(k_desc, buffer_bytes: int) -> int:
    """The ordered backward's dQ groups for a key-side tile description and one group's float32
    buffer size: a power of two (the kernel takes key tile u mod G), 2 where the longest chain of
    turns (the most key tiles visiting one query tile) exceeds DQ_GROUP_CHAIN, at most
    DQ_MAX_GROUPS and within DQ_GROUP_BYTES; else 1."""
    chain, groups = k_desc.longest_dq_chain(), 1
    while (groups < DQ_MAX_GROUPS and -(-chain // groups) > DQ_GROUP_CHAIN
           and 2 * groups * buffer_bytes <= DQ_GROUP_BYTES):
        groups *= 2
    return groups


def backward_params(module, choice, mask, q, k, v, o, lse, do, scale, dq, dk, dv, delta, dq_accum=None,
                    dq_semaphore=None, groups: int = 1):
    """``dq_accum``: the fused forms' float32 dQ sum (the sm_90a family's backward needs it);
    ``dq_semaphore``: the ordered form's turn counters, one int32 per dQ tile; ``groups``: the
    ordered form's dQ groups (dq_groups), dq_accum and dq_semaphore holding that many buffers and
    sets of counters, group-major."""
    k_desc = mask.tiles(*choice.k_tiles, q.device)
    p, _ = _params_every_direction_needs(module, choice, mask, q, k, v, scale, o, lse, k_desc=k_desc)
    set_tensors(p, do_=do, dq=dq, dk=dk, dv=dv)
    p.delta = delta.data_ptr()
    if dq_accum is not None:
        p.dq_accum = dq_accum.data_ptr()
    if groups != 1 and choice.backward_form != "fused-ordered":
        raise ValueError(f"dQ groups are the ordered backward's; the {choice.backward_form} form takes 1, got {groups}")
    if choice.backward_form == "fused-ordered":
        # laid out as the key-side lists' entries; ranks within each group
        full_turns, part_turns = k_desc.dq_group_turns(groups, 1)
        p.dq_groups = groups
        p.dq_group_tiles = -(-q.shape[1] // k_desc.block_m) * q.shape[0] * q.shape[2]
        if dq_accum.numel() != groups * p.dq_group_tiles * k_desc.block_m * q.shape[3] or \
                dq_semaphore.numel() != groups * p.dq_group_tiles:
            raise ValueError(f"dq_accum / dq_semaphore must hold {groups} groups' buffers and counters")
        p.dq_turns.full_ptr, p.dq_turns.part_ptr = k_desc.k_full_ptr.data_ptr(), k_desc.k_part_ptr.data_ptr()
        p.dq_turns.full_idx, p.dq_turns.part_idx = full_turns.data_ptr(), part_turns.data_ptr()
        p.dq_order = module.DqOrder.key_tile
        p.dq_semaphore = dq_semaphore.data_ptr()
        p.k_tiles.order = k_desc.k_walk_order.data_ptr()   # each key tile's query tiles in increasing order
    return p


def launch(module_fn, params, q):
    """Runs one of the module's launchers on q's device and current stream."""
    module_fn(params, DTYPES[q.dtype], q.device.index, torch.cuda.current_stream(q.device).cuda_stream)
