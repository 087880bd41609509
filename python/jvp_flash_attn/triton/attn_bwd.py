"""Masked attention backward: FlashAttention-2's two-kernel scheme over the tile description.

1. ``_attn_bwd_preprocess_kernel``: delta = rowsum(dO * O), float32 (B, Hq, Sq).
2. ``_attn_bwd_dkdv_kernel``: one program per (key tile, batch x kv head). It walks the
   key tile's FULL then PARTIAL query tiles (CSR over key tiles) for every query head of
   its GQA group, so dK and dV are summed over the group in registers and written once.
3. ``_attn_bwd_dq_kernel``: one program per (query tile, batch x query head), walking the
   query tile's key tiles like the forward.
With P = exp(S - lse) recomputed per tile: dV = P^T dO, dS = P * (dO V^T - delta),
dK = scale dS^T Q, dQ = scale dS K. No atomics; scratch is delta only (O(S)).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch_setup import (alloc, block_dims, check_int32_offsets, get_config, pow2_at_least_16,
                           serialised_under_interpreter, visit_order)
from .tile_ops import (KERNEL_LOG2E, LOG2E, MODE_BOUNDS, MODE_FULL, MODE_RULE, _allowed, _load_tile, _mm,
                       _mma, _split_ragged, _store_tile, dot_precision)


@triton.jit
def _attn_bwd_preprocess_kernel(O, DO, DELTA, stride_ob, stride_os, stride_oh,
                                stride_dob, stride_dos, stride_doh, num_heads, seqlen_q,
                                D_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = bh % num_heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    d_v = tl.arange(0, BLOCK_DV)
    ok = (rows[:, None] < seqlen_q) & (d_v[None, :] < D_V)
    o = tl.load(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + d_v[None, :],
                mask=ok, other=0.0)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dos + d_v[None, :],
                 mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * seqlen_q + rows, delta, mask=rows < seqlen_q)


@triton.jit
def _attn_bwd_dkdv_tile(dk, dv, k, v, qt, Q_HEAD, DO_HEAD, LSE_HEAD, DELTA_HEAD,
                        stride_qs, stride_dos, k_seg, k_pos, Q_SEG, Q_POS, RULE, n_k_seg,
                        seqlen_q, qk_scale,
                        D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, MODE: tl.constexpr,
                        DOT_PRECISION: tl.constexpr):
    """One query tile's contribution to a key tile's (dk, dv), in transposed form (keys x queries).
    Out-of-range query rows read q = dO = lse = delta = 0 and so contribute exactly zero."""
    rows = qt * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seqlen_q
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q_HEAD + rows[:, None] * stride_qs + d_qk[None, :], row_ok[:, None],
                   d_qk[None, :] < D_QK, MODE != MODE_FULL, BLOCK_DQK != D_QK)
    do = _load_tile(DO_HEAD + rows[:, None] * stride_dos + d_v[None, :], row_ok[:, None],
                    d_v[None, :] < D_V, MODE != MODE_FULL, BLOCK_DV != D_V)
    if MODE == MODE_FULL:
        lse2 = tl.load(LSE_HEAD + rows) * KERNEL_LOG2E
        delta = tl.load(DELTA_HEAD + rows)
    else:
        lse2 = tl.load(LSE_HEAD + rows, mask=row_ok, other=0.0) * KERNEL_LOG2E
        delta = tl.load(DELTA_HEAD + rows, mask=row_ok, other=0.0)
    s_t = _mm(k, tl.trans(q), DOT_PRECISION) * qk_scale
    if MODE == MODE_RULE:
        q_seg = tl.load(Q_SEG + rows, mask=row_ok, other=0)
        q_pos = tl.load(Q_POS + rows, mask=row_ok, other=0)
        ok = _allowed(q_seg[None, :], q_pos[None, :], k_seg[:, None], k_pos[:, None], RULE, n_k_seg)
        s_t = tl.where(ok, s_t, float("-inf"))
        lse2 = tl.where(lse2 == float("-inf"), 0.0, lse2)  # rows with no allowed key: P = 0
    p_t = tl.math.exp2(s_t - lse2[None, :])
    dv = _mma(p_t.to(do.dtype), do, dv, DOT_PRECISION)
    dp_t = _mm(v, tl.trans(do), DOT_PRECISION)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = _mma(ds_t.to(q.dtype), q, dk, DOT_PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    K_FULL_PTR, K_FULL_IDX, K_PART_PTR, K_PART_IDX, TILE_ORDER,
    Q_SEG, Q_POS, K_SEG, K_POS, RULE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh,
    num_heads, groups, seqlen_q, seqlen_k, n_k_seg, n_q_tiles, scale, qk_scale,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, EVEN_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.load(TILE_ORDER + tl.program_id(0))
    bhk = tl.program_id(1)
    num_kv_heads = num_heads // groups
    b = bhk // num_kv_heads
    hk = bhk % num_kv_heads
    b64 = b.to(tl.int64)

    cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < seqlen_k
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    k = _load_tile(K + b64 * stride_kb + hk * stride_kh + cols[:, None] * stride_ks + d_qk[None, :],
                   col_ok[:, None], d_qk[None, :] < D_QK, True, BLOCK_DQK != D_QK)
    v = _load_tile(V + b64 * stride_vb + hk * stride_vh + cols[:, None] * stride_vs + d_v[None, :],
                   col_ok[:, None], d_v[None, :] < D_V, True, BLOCK_DV != D_V)
    k_seg = tl.load(K_SEG + cols, mask=col_ok, other=0)
    k_pos = tl.load(K_POS + cols, mask=col_ok, other=0)
    dk = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)

    full_start = tl.load(K_FULL_PTR + tile)
    full_end = tl.load(K_FULL_PTR + tile + 1)
    full_even, has_ragged = _split_ragged(K_FULL_IDX, full_start, full_end, n_q_tiles - 1, EVEN_M)
    part_start = tl.load(K_PART_PTR + tile)
    part_end = tl.load(K_PART_PTR + tile + 1)
    for g in range(groups):
        h = hk * groups + g
        q_head = Q + b64 * stride_qb + h * stride_qh
        do_head = DO + b64 * stride_dob + h * stride_doh
        lse_head = LSE + (b64 * num_heads + h) * seqlen_q
        delta_head = DELTA + (b64 * num_heads + h) * seqlen_q
        for i in range(full_start, full_even):
            qt = tl.load(K_FULL_IDX + i)
            dk, dv = _attn_bwd_dkdv_tile(dk, dv, k, v, qt, q_head, do_head, lse_head, delta_head,
                                         stride_qs, stride_dos, k_seg, k_pos, Q_SEG, Q_POS, RULE,
                                         n_k_seg, seqlen_q, qk_scale, D_QK, D_V, BLOCK_M, BLOCK_DQK,
                                         BLOCK_DV, MODE_FULL, DOT_PRECISION)
        if has_ragged:
            dk, dv = _attn_bwd_dkdv_tile(dk, dv, k, v, n_q_tiles - 1, q_head, do_head, lse_head,
                                         delta_head, stride_qs, stride_dos, k_seg, k_pos, Q_SEG,
                                         Q_POS, RULE, n_k_seg, seqlen_q, qk_scale, D_QK, D_V, BLOCK_M,
                                         BLOCK_DQK, BLOCK_DV, MODE_BOUNDS, DOT_PRECISION)
        for i in range(part_start, part_end):
            qt = tl.load(K_PART_IDX + i)
            dk, dv = _attn_bwd_dkdv_tile(dk, dv, k, v, qt, q_head, do_head, lse_head, delta_head,
                                         stride_qs, stride_dos, k_seg, k_pos, Q_SEG, Q_POS, RULE,
                                         n_k_seg, seqlen_q, qk_scale, D_QK, D_V, BLOCK_M, BLOCK_DQK,
                                         BLOCK_DV, MODE_RULE, DOT_PRECISION)

    dk = dk * scale
    _store_tile(DK + b64 * stride_dkb + hk * stride_dkh + cols[:, None] * stride_dks + d_qk[None, :],
                dk.to(DK.dtype.element_ty), col_ok[:, None], d_qk[None, :] < D_QK, BLOCK_DQK != D_QK)
    _store_tile(DV + b64 * stride_dvb + hk * stride_dvh + cols[:, None] * stride_dvs + d_v[None, :],
                dv.to(DV.dtype.element_ty), col_ok[:, None], d_v[None, :] < D_V, BLOCK_DV != D_V)


@triton.jit
def _attn_bwd_dq_tile(dq, q, do, lse2, delta, kt, K_HEAD, V_HEAD, stride_ks, stride_vs,
                      q_seg, q_pos, K_SEG, K_POS, RULE, n_k_seg, seqlen_k, qk_scale,
                      D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, MODE: tl.constexpr,
                      DOT_PRECISION: tl.constexpr):
    """One key tile's contribution to a query tile's dq (unscaled)."""
    cols = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < seqlen_k
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    k = _load_tile(K_HEAD + cols[:, None] * stride_ks + d_qk[None, :], col_ok[:, None],
                   d_qk[None, :] < D_QK, MODE != MODE_FULL, BLOCK_DQK != D_QK)
    v = _load_tile(V_HEAD + cols[:, None] * stride_vs + d_v[None, :], col_ok[:, None],
                   d_v[None, :] < D_V, MODE != MODE_FULL, BLOCK_DV != D_V)
    s = _mm(q, tl.trans(k), DOT_PRECISION) * qk_scale
    if MODE == MODE_BOUNDS:
        s = tl.where(col_ok[None, :], s, float("-inf"))
    if MODE == MODE_RULE:
        k_seg = tl.load(K_SEG + cols, mask=col_ok, other=0)
        k_pos = tl.load(K_POS + cols, mask=col_ok, other=0)
        ok = _allowed(q_seg[:, None], q_pos[:, None], k_seg[None, :], k_pos[None, :], RULE, n_k_seg)
        s = tl.where(ok & col_ok[None, :], s, float("-inf"))
    p = tl.math.exp2(s - lse2[:, None])
    dp = _mm(do, tl.trans(v), DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return _mma(ds.to(k.dtype), k, dq, DOT_PRECISION)


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    Q_FULL_PTR, Q_FULL_IDX, Q_PART_PTR, Q_PART_IDX, TILE_ORDER,
    Q_SEG, Q_POS, K_SEG, K_POS, RULE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh,
    num_heads, groups, seqlen_q, seqlen_k, n_k_seg, n_k_tiles, scale, qk_scale,
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
    k_head = K + b64 * stride_kb + hk * stride_kh
    v_head = V + b64 * stride_vb + hk * stride_vh

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seqlen_q
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q + b64 * stride_qb + h * stride_qh + rows[:, None] * stride_qs + d_qk[None, :],
                   row_ok[:, None], d_qk[None, :] < D_QK, True, BLOCK_DQK != D_QK)
    do = _load_tile(DO + b64 * stride_dob + h * stride_doh + rows[:, None] * stride_dos + d_v[None, :],
                    row_ok[:, None], d_v[None, :] < D_V, True, BLOCK_DV != D_V)
    lse2 = tl.load(LSE + bh.to(tl.int64) * seqlen_q + rows, mask=row_ok, other=0.0) * KERNEL_LOG2E
    lse2 = tl.where(lse2 == float("-inf"), 0.0, lse2)  # rows with no allowed key: P = 0
    delta = tl.load(DELTA + bh.to(tl.int64) * seqlen_q + rows, mask=row_ok, other=0.0)
    q_seg = tl.load(Q_SEG + rows, mask=row_ok, other=0)
    q_pos = tl.load(Q_POS + rows, mask=row_ok, other=0)
    dq = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)

    start = tl.load(Q_FULL_PTR + tile)
    end = tl.load(Q_FULL_PTR + tile + 1)
    end_even, has_ragged = _split_ragged(Q_FULL_IDX, start, end, n_k_tiles - 1, EVEN_N)
    for i in range(start, end_even):
        kt = tl.load(Q_FULL_IDX + i)
        dq = _attn_bwd_dq_tile(dq, q, do, lse2, delta, kt, k_head, v_head, stride_ks, stride_vs,
                               q_seg, q_pos, K_SEG, K_POS, RULE, n_k_seg, seqlen_k, qk_scale,
                               D_QK, D_V, BLOCK_N, BLOCK_DQK, BLOCK_DV, MODE_FULL, DOT_PRECISION)
    if has_ragged:
        dq = _attn_bwd_dq_tile(dq, q, do, lse2, delta, n_k_tiles - 1, k_head, v_head, stride_ks,
                               stride_vs, q_seg, q_pos, K_SEG, K_POS, RULE, n_k_seg, seqlen_k,
                               qk_scale, D_QK, D_V, BLOCK_N, BLOCK_DQK, BLOCK_DV, MODE_BOUNDS,
                               DOT_PRECISION)
    start = tl.load(Q_PART_PTR + tile)
    end = tl.load(Q_PART_PTR + tile + 1)
    for i in range(start, end):
        kt = tl.load(Q_PART_IDX + i)
        dq = _attn_bwd_dq_tile(dq, q, do, lse2, delta, kt, k_head, v_head, stride_ks, stride_vs,
                               q_seg, q_pos, K_SEG, K_POS, RULE, n_k_seg, seqlen_k, qk_scale,
                               D_QK, D_V, BLOCK_N, BLOCK_DQK, BLOCK_DV, MODE_RULE, DOT_PRECISION)
    dq = dq * scale
    _store_tile(DQ + b64 * stride_dqb + h * stride_dqh + rows[:, None] * stride_dqs + d_qk[None, :],
                dq.to(DQ.dtype.element_ty), row_ok[:, None], d_qk[None, :] < D_QK, BLOCK_DQK != D_QK)


@serialised_under_interpreter
def launch_bwd(q, k, v, o, lse, do,
               k_full_ptr, k_full_idx, k_part_ptr, k_part_idx, k_order,
               q_full_ptr, q_full_idx, q_part_ptr, q_part_idx, q_order,
               q_seg, q_pos, k_seg, k_pos, rule, scale: float,
               block_m1: int, block_n1: int, num_warps1: int, num_stages1: int,
               block_m2: int, block_n2: int, num_warps2: int, num_stages2: int):
    """Launch on explicit tile descriptions (the custom op's body). -> (dq, dk, dv).

    (block_m1, block_n1) tile the dK/dV kernel (its description's CSR over key tiles);
    (block_m2, block_n2) tile the dQ kernel (CSR over query tiles)."""
    b, sq, hq, d_qk = q.shape
    _, sk, hk, d_v = v.shape
    groups = hq // hk
    bd_qk, bd_v = block_dims(d_qk, d_v)
    prec = dot_precision(q.dtype)
    delta = alloc((b, hq, sq), torch.float32, q.device)
    pre_m = 64
    _attn_bwd_preprocess_kernel[(triton.cdiv(sq, pre_m), b * hq)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2),
        hq, sq, D_V=d_v, BLOCK_M=pre_m, BLOCK_DV=bd_v)
    dq = alloc(q.shape, q.dtype, q.device)
    dk = alloc(k.shape, k.dtype, k.device)
    dv = alloc(v.shape, v.dtype, v.device)
    lse = lse.contiguous()
    _attn_bwd_dkdv_kernel[(k_order.numel(), b * hk)](
        q, k, v, do, lse, delta, dk, dv,
        k_full_ptr, k_full_idx, k_part_ptr, k_part_idx, k_order,
        q_seg, q_pos, k_seg, k_pos, rule,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        hq, groups, sq, sk, rule.shape[1], triton.cdiv(sq, block_m1), scale, scale * LOG2E,
        D_QK=d_qk, D_V=d_v, BLOCK_M=block_m1, BLOCK_N=block_n1, BLOCK_DQK=bd_qk, BLOCK_DV=bd_v,
        EVEN_M=sq % block_m1 == 0, DOT_PRECISION=prec, num_warps=num_warps1, num_stages=num_stages1)
    _attn_bwd_dq_kernel[(q_order.numel(), b * hq)](
        q, k, v, do, lse, delta, dq,
        q_full_ptr, q_full_idx, q_part_ptr, q_part_idx, q_order,
        q_seg, q_pos, k_seg, k_pos, rule,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        hq, groups, sq, sk, rule.shape[1], triton.cdiv(sk, block_n2), scale, scale * LOG2E,
        D_QK=d_qk, D_V=d_v, BLOCK_M=block_m2, BLOCK_N=block_n2, BLOCK_DQK=bd_qk, BLOCK_DV=bd_v,
        EVEN_N=sk % block_n2 == 0, DOT_PRECISION=prec, num_warps=num_warps2, num_stages=num_stages2)
    return dq, dk, dv


def bwd_args(q, k, v, mask, config_dkdv=None, config_dq=None):
    """The tile-description tensors and launch parameters for a backward of these inputs."""
    c1 = config_dkdv or get_config("bwd_dkdv", q.dtype, q.shape[-1], v.shape[-1])
    c2 = config_dq or get_config("bwd_dq", q.dtype, q.shape[-1], v.shape[-1])
    d1 = mask.tiles(c1.block_m, c1.block_n, q.device)
    d2 = mask.tiles(c2.block_m, c2.block_n, q.device)
    tensors = (d1.k_full_ptr, d1.k_full_idx, d1.k_part_ptr, d1.k_part_idx, visit_order(d1, "k"),
               d2.q_full_ptr, d2.q_full_idx, d2.q_part_ptr, d2.q_part_idx, visit_order(d2, "q"),
               d2.q_seg, d2.q_pos, d2.k_seg, d2.k_pos, d2.rule)
    params = (c1.block_m, c1.block_n, c1.num_warps, c1.num_stages,
              c2.block_m, c2.block_n, c2.num_warps, c2.num_stages)
    return tensors, params


def attn_bwd(q, k, v, o, lse, do, mask, scale, config_dkdv=None, config_dq=None):
    """(dq, dk, dv) in the inputs' dtypes; dk, dv summed over each GQA group."""
    for name, x in (("q", q), ("k", k), ("v", v), ("o", o), ("do", do)):
        check_int32_offsets(name, x)
    tensors, params = bwd_args(q, k, v, mask, config_dkdv, config_dq)
    return launch_bwd(q, k, v, o, lse, do, *tensors, scale, *params)
