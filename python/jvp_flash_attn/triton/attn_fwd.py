"""Masked attention forward: FlashAttention-2 online softmax over the compact tile description.

One program per (query tile, batch x query head). It visits the query tile's FULL key
tiles with no masking arithmetic, then its PARTIAL key tiles with the segment rule per
element; EMPTY tiles are never touched. Scores live in log2 units (scale * log2(e)) so the
exponentials are exp2; ``lse`` is written in natural-log units, float32 (B, Hq, Sq).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch_setup import (alloc, block_dims, check_int32_offsets, get_config, pow2_at_least_16,
                           serialised_under_interpreter, visit_order)
from .tile_ops import (KERNEL_LN2, LOG2E, MODE_BOUNDS, MODE_FULL, MODE_RULE, _allowed, _load_tile, _mm, _mma,
                       _max_to_subtract, _seen_in_tile, _split_ragged, _store_tile, dot_precision)


@triton.jit
def _attn_fwd_tile(acc, l_i, m_i, seen, q, kt, K_HEAD, V_HEAD, stride_ks, stride_vs,
                   q_seg, q_pos, K_SEG, K_POS, RULE, n_k_seg, seqlen_k, qk_scale,
                   D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, MODE: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """One key tile of the online softmax: returns the rescaled (acc, l_i, m_i)."""
    cols = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    col_ok = cols < seqlen_k
    k_t = _load_tile(K_HEAD + cols[None, :] * stride_ks + d_qk[:, None], col_ok[None, :],
                     d_qk[:, None] < D_QK, MODE != MODE_FULL, BLOCK_DQK != D_QK)
    s = _mm(q, k_t, DOT_PRECISION) * qk_scale
    if MODE == MODE_BOUNDS:
        s = tl.where(col_ok[None, :], s, float("-inf"))
    if MODE == MODE_RULE:
        k_seg = tl.load(K_SEG + cols, mask=col_ok, other=0)
        k_pos = tl.load(K_POS + cols, mask=col_ok, other=0)
        ok = _allowed(q_seg[:, None], q_pos[:, None], k_seg[None, :], k_pos[None, :], RULE, n_k_seg)
        ok = ok & col_ok[None, :]
        s = tl.where(ok, s, float("-inf"))
        seen = _seen_in_tile(seen, ok)
    else:
        seen = seen | True   # every row in range sees at least one key of a FULL tile
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = _max_to_subtract(m_new)
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_tile(V_HEAD + cols[:, None] * stride_vs + d_v[None, :], col_ok[:, None],
                   d_v[None, :] < D_V, MODE != MODE_FULL, BLOCK_DV != D_V)
    acc = _mma(p.to(v.dtype), v, acc * alpha[:, None], DOT_PRECISION)
    return acc, l_i, m_new, seen


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    Q_FULL_PTR, Q_FULL_IDX, Q_PART_PTR, Q_PART_IDX, TILE_ORDER,
    Q_SEG, Q_POS, K_SEG, K_POS, RULE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    num_heads, groups, seqlen_q, seqlen_k, n_k_seg, n_k_tiles, qk_scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, EVEN_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.load(TILE_ORDER + tl.program_id(0))
    bh = tl.program_id(1)
    b = bh // num_heads
    h = bh % num_heads
    hk = h // groups
    b64 = b.to(tl.int64)
    q_head = Q + b64 * stride_qb + h * stride_qh
    k_head = K + b64 * stride_kb + hk * stride_kh
    v_head = V + b64 * stride_vb + hk * stride_vh

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seqlen_q
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    q = _load_tile(q_head + rows[:, None] * stride_qs + d_qk[None, :], row_ok[:, None],
                   d_qk[None, :] < D_QK, True, BLOCK_DQK != D_QK)
    q_seg = tl.load(Q_SEG + rows, mask=row_ok, other=0)
    q_pos = tl.load(Q_POS + rows, mask=row_ok, other=0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    seen = tl.zeros([BLOCK_M], tl.int1)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    start = tl.load(Q_FULL_PTR + tile)
    end = tl.load(Q_FULL_PTR + tile + 1)
    end_even, has_ragged = _split_ragged(Q_FULL_IDX, start, end, n_k_tiles - 1, EVEN_N)
    for i in range(start, end_even):
        kt = tl.load(Q_FULL_IDX + i)
        acc, l_i, m_i, seen = _attn_fwd_tile(acc, l_i, m_i, seen, q, kt, k_head, v_head, stride_ks, stride_vs,
                                       q_seg, q_pos, K_SEG, K_POS, RULE, n_k_seg, seqlen_k, qk_scale,
                                       D_QK, D_V, BLOCK_N, BLOCK_DQK, BLOCK_DV, MODE_FULL, DOT_PRECISION)
    if has_ragged:
        acc, l_i, m_i, seen = _attn_fwd_tile(acc, l_i, m_i, seen, q, n_k_tiles - 1, k_head, v_head, stride_ks,
                                       stride_vs, q_seg, q_pos, K_SEG, K_POS, RULE, n_k_seg, seqlen_k,
                                       qk_scale, D_QK, D_V, BLOCK_N, BLOCK_DQK, BLOCK_DV, MODE_BOUNDS,
                                       DOT_PRECISION)
    start = tl.load(Q_PART_PTR + tile)
    end = tl.load(Q_PART_PTR + tile + 1)
    for i in range(start, end):
        kt = tl.load(Q_PART_IDX + i)
        acc, l_i, m_i, seen = _attn_fwd_tile(acc, l_i, m_i, seen, q, kt, k_head, v_head, stride_ks, stride_vs,
                                       q_seg, q_pos, K_SEG, K_POS, RULE, n_k_seg, seqlen_k, qk_scale,
                                       D_QK, D_V, BLOCK_N, BLOCK_DQK, BLOCK_DV, MODE_RULE, DOT_PRECISION)

    empty = l_i == 0.0  # no allowed key: o = 0, lse = -inf; allowed keys whose scores are all -inf: NaN
    l_safe = tl.where(empty, 1.0, l_i)
    o = tl.where((empty & seen)[:, None], float("nan"), acc / l_safe[:, None])
    lse = tl.where(empty, tl.where(seen, float("nan"), float("-inf")), (m_i + tl.math.log2(l_safe)) * KERNEL_LN2)
    o_head = O + b64 * stride_ob + h * stride_oh
    _store_tile(o_head + rows[:, None] * stride_os + d_v[None, :], o.to(O.dtype.element_ty),
                row_ok[:, None], d_v[None, :] < D_V, BLOCK_DV != D_V)
    tl.store(LSE + bh.to(tl.int64) * seqlen_q + rows, lse, mask=row_ok)


@serialised_under_interpreter
def launch_fwd(q, k, v, q_full_ptr, q_full_idx, q_part_ptr, q_part_idx, tile_order,
               q_seg, q_pos, k_seg, k_pos, rule, scale: float,
               block_m: int, block_n: int, num_warps: int, num_stages: int):
    """Launch on an explicit tile description (the custom op's body). -> (o, lse)."""
    b, sq, hq, d_qk = q.shape
    _, sk, hk, d_v = v.shape
    o = alloc((b, sq, hq, d_v), q.dtype, q.device)
    lse = alloc((b, hq, sq), torch.float32, q.device)
    grid = (tile_order.numel(), b * hq)
    _attn_fwd_kernel[grid](
        q, k, v, o, lse,
        q_full_ptr, q_full_idx, q_part_ptr, q_part_idx, tile_order,
        q_seg, q_pos, k_seg, k_pos, rule,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        hq, hq // hk, sq, sk, rule.shape[1], triton.cdiv(sk, block_n), scale * LOG2E,
        D_QK=d_qk, D_V=d_v, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_DQK=block_dims(d_qk, d_v)[0], BLOCK_DV=block_dims(d_qk, d_v)[1],
        EVEN_N=sk % block_n == 0, DOT_PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages)
    return o, lse


def fwd_args(q, k, v, mask, config=None):
    """The tile-description tensors and launch parameters for a forward of these inputs."""
    cfg = config or get_config("fwd", q.dtype, q.shape[-1], v.shape[-1])
    desc = mask.tiles(cfg.block_m, cfg.block_n, q.device)
    tensors = (desc.q_full_ptr, desc.q_full_idx, desc.q_part_ptr, desc.q_part_idx,
               visit_order(desc, "q"), desc.q_seg, desc.q_pos, desc.k_seg, desc.k_pos, desc.rule)
    return tensors, (cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages)


def attn_fwd(q, k, v, mask, scale, config=None):
    """(o, lse): o (B, Sq, Hq, Dv) in q's dtype, lse float32 (B, Hq, Sq), natural log."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_int32_offsets(name, x)
    tensors, params = fwd_args(q, k, v, mask, config)
    return launch_fwd(q, k, v, *tensors, scale, *params)
