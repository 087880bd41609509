"""The Triton launchers as torch.library custom ops, so torch.compile sees one opaque node
per launch (no graph break) and ``torch.library.opcheck`` can check them.

The ops take the tile description as tensors plus the launch parameters as ints; the host
helpers ``fwd_args`` / ``jvp_args`` / ``bwd_args`` turn a mask into those arguments.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .attn_bwd import launch_bwd
from .attn_fwd import launch_fwd
from .attn_jvp import launch_jvp


@torch.library.custom_op("jfa::triton_fwd", mutates_args=())
def triton_fwd(q: Tensor, k: Tensor, v: Tensor,
               q_full_ptr: Tensor, q_full_idx: Tensor, q_part_ptr: Tensor, q_part_idx: Tensor,
               tile_order: Tensor, q_seg: Tensor, q_pos: Tensor, k_seg: Tensor, k_pos: Tensor,
               rule: Tensor, scale: float, block_m: int, block_n: int, num_warps: int,
               num_stages: int) -> tuple[Tensor, Tensor]:
    return launch_fwd(q, k, v, q_full_ptr, q_full_idx, q_part_ptr, q_part_idx, tile_order,
                      q_seg, q_pos, k_seg, k_pos, rule, scale, block_m, block_n, num_warps, num_stages)


@triton_fwd.register_fake
def _(q, k, v, *_args):
    b, sq, hq, _ = q.shape
    o = q.new_empty(b, sq, hq, v.shape[-1])
    return o, q.new_empty(b, hq, sq, dtype=torch.float32)


@torch.library.custom_op("jfa::triton_jvp", mutates_args=())
def triton_jvp(q: Tensor, k: Tensor, v: Tensor, tq: Tensor, tk: Tensor, tv: Tensor,
               q_full_ptr: Tensor, q_full_idx: Tensor, q_part_ptr: Tensor, q_part_idx: Tensor,
               tile_order: Tensor, q_seg: Tensor, q_pos: Tensor, k_seg: Tensor, k_pos: Tensor,
               rule: Tensor, scale: float, block_m: int, block_n: int, num_warps: int,
               num_stages: int) -> tuple[Tensor, Tensor, Tensor]:
    return launch_jvp(q, k, v, tq, tk, tv, q_full_ptr, q_full_idx, q_part_ptr, q_part_idx,
                      tile_order, q_seg, q_pos, k_seg, k_pos, rule, scale, block_m, block_n,
                      num_warps, num_stages)


@triton_jvp.register_fake
def _(q, k, v, *_args):
    b, sq, hq, _ = q.shape
    o = q.new_empty(b, sq, hq, v.shape[-1])
    return o, torch.empty_like(o), q.new_empty(b, hq, sq, dtype=torch.float32)


@torch.library.custom_op("jfa::triton_bwd", mutates_args=())
def triton_bwd(q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, do: Tensor,
               k_full_ptr: Tensor, k_full_idx: Tensor, k_part_ptr: Tensor, k_part_idx: Tensor,
               k_order: Tensor, q_full_ptr: Tensor, q_full_idx: Tensor, q_part_ptr: Tensor,
               q_part_idx: Tensor, q_order: Tensor, q_seg: Tensor, q_pos: Tensor, k_seg: Tensor,
               k_pos: Tensor, rule: Tensor, scale: float,
               block_m1: int, block_n1: int, num_warps1: int, num_stages1: int,
               block_m2: int, block_n2: int, num_warps2: int, num_stages2: int
               ) -> tuple[Tensor, Tensor, Tensor]:
    return launch_bwd(q, k, v, o, lse, do, k_full_ptr, k_full_idx, k_part_ptr, k_part_idx, k_order,
                      q_full_ptr, q_full_idx, q_part_ptr, q_part_idx, q_order,
                      q_seg, q_pos, k_seg, k_pos, rule, scale,
                      block_m1, block_n1, num_warps1, num_stages1,
                      block_m2, block_n2, num_warps2, num_stages2)


@triton_bwd.register_fake
def _(q, k, v, *_args):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))
