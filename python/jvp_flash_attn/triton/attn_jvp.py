"""Fused masked attention forward + JVP: (o, to, lse) in one launch, one pass over K/V/tK/tV.

With S = scale q k^T, P = softmax(S), tS = scale (tq k^T + q tk^T):
    to = P tv + (P * tS) v - mu * o,   mu = rowsum(P * tS).
The kernel carries, next to the forward's running (m, l, P v), the running sums
P tv + (P * tS) v and mu, rescaled by the same factor as the softmax whenever the row max
moves; at the end to = acc_t / l - (mu / l) * o. Tiles are walked as in attn_fwd.
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
def _attn_jvp_tile(acc_o, acc_t, mu, l_i, m_i, seen, q, tq, kt,
                   K_HEAD, V_HEAD, TK_HEAD, TV_HEAD, stride_ks, stride_vs, stride_tks, stride_tvs,
                   q_seg, q_pos, K_SEG, K_POS, RULE, n_k_seg, seqlen_k, scale, qk_scale,
                   D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, MODE: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    """One key tile of the fused pass: returns the rescaled (acc_o, acc_t, mu, l_i, m_i)."""
    cols = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    col_ok = cols < seqlen_k
    k_t = _load_tile(K_HEAD + cols[None, :] * stride_ks + d_qk[:, None], col_ok[None, :],
                     d_qk[:, None] < D_QK, MODE != MODE_FULL, BLOCK_DQK != D_QK)
    tk_t = _load_tile(TK_HEAD + cols[None, :] * stride_tks + d_qk[:, None], col_ok[None, :],
                      d_qk[:, None] < D_QK, MODE != MODE_FULL, BLOCK_DQK != D_QK)
    s = _mm(q, k_t, DOT_PRECISION) * qk_scale
    ts = _mma(tq, k_t, _mm(q, tk_t, DOT_PRECISION), DOT_PRECISION) * scale
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
    # Masked keys contribute nothing, even where their tangent is not finite; an allowed key does,
    # even where its score is -inf (p = 0 times an infinite tangent score is NaN, as in softmax).
    if MODE == MODE_FULL:
        pts = p * ts
    elif MODE == MODE_BOUNDS:
        pts = tl.where(col_ok[None, :], p * ts, 0.0)
    else:
        pts = tl.where(ok, p * ts, 0.0)
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    mu = mu * alpha + tl.sum(pts, 1)
    v = _load_tile(V_HEAD + cols[:, None] * stride_vs + d_v[None, :], col_ok[:, None],
                   d_v[None, :] < D_V, MODE != MODE_FULL, BLOCK_DV != D_V)
    tv = _load_tile(TV_HEAD + cols[:, None] * stride_tvs + d_v[None, :], col_ok[:, None],
                    d_v[None, :] < D_V, MODE != MODE_FULL, BLOCK_DV != D_V)
    p16 = p.to(v.dtype)
    acc_o = _mma(p16, v, acc_o * alpha[:, None], DOT_PRECISION)
    acc_t = _mma(p16, tv, acc_t * alpha[:, None], DOT_PRECISION)
    acc_t = _mma(pts.to(v.dtype), v, acc_t, DOT_PRECISION)
    return acc_o, acc_t, mu, l_i, m_new, seen


@triton.jit
def _attn_jvp_kernel(
    Q, K, V, TQ, TK, TV, O, TO, LSE,
    Q_FULL_PTR, Q_FULL_IDX, Q_PART_PTR, Q_PART_IDX, TILE_ORDER,
    Q_SEG, Q_POS, K_SEG, K_POS, RULE,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_tqb, stride_tqs, stride_tqh,
    stride_tkb, stride_tks, stride_tkh,
    stride_tvb, stride_tvs, stride_tvh,
    stride_ob, stride_os, stride_oh,
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
    tk_head = TK + b64 * stride_tkb + hk * stride_tkh
    tv_head = TV + b64 * stride_tvb + hk * stride_tvh

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < seqlen_q
    d_qk = tl.arange(0, BLOCK_DQK)
    d_v = tl.arange(0, BLOCK_DV)
    q = _load_tile(Q + b64 * stride_qb + h * stride_qh + rows[:, None] * stride_qs + d_qk[None, :],
                   row_ok[:, None], d_qk[None, :] < D_QK, True, BLOCK_DQK != D_QK)
    tq = _load_tile(TQ + b64 * stride_tqb + h * stride_tqh + rows[:, None] * stride_tqs + d_qk[None, :],
                    row_ok[:, None], d_qk[None, :] < D_QK, True, BLOCK_DQK != D_QK)
    q_seg = tl.load(Q_SEG + rows, mask=row_ok, other=0)
    q_pos = tl.load(Q_POS + rows, mask=row_ok, other=0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    seen = tl.zeros([BLOCK_M], tl.int1)
    mu = tl.zeros([BLOCK_M], tl.float32)
    acc_o = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    acc_t = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    start = tl.load(Q_FULL_PTR + tile)
    end = tl.load(Q_FULL_PTR + tile + 1)
    end_even, has_ragged = _split_ragged(Q_FULL_IDX, start, end, n_k_tiles - 1, EVEN_N)
    for i in range(start, end_even):
        kt = tl.load(Q_FULL_IDX + i)
        acc_o, acc_t, mu, l_i, m_i, seen = _attn_jvp_tile(
            acc_o, acc_t, mu, l_i, m_i, seen, q, tq, kt, k_head, v_head, tk_head, tv_head,
            stride_ks, stride_vs, stride_tks, stride_tvs, q_seg, q_pos, K_SEG, K_POS, RULE,
            n_k_seg, seqlen_k, scale, qk_scale, D_QK, D_V, BLOCK_N, BLOCK_DQK, BLOCK_DV,
            MODE_FULL, DOT_PRECISION)
    if has_ragged:
        acc_o, acc_t, mu, l_i, m_i, seen = _attn_jvp_tile(
            acc_o, acc_t, mu, l_i, m_i, seen, q, tq, n_k_tiles - 1, k_head, v_head, tk_head, tv_head,
            stride_ks, stride_vs, stride_tks, stride_tvs, q_seg, q_pos, K_SEG, K_POS, RULE,
            n_k_seg, seqlen_k, scale, qk_scale, D_QK, D_V, BLOCK_N, BLOCK_DQK, BLOCK_DV,
            MODE_BOUNDS, DOT_PRECISION)
    start = tl.load(Q_PART_PTR + tile)
    end = tl.load(Q_PART_PTR + tile + 1)
    for i in range(start, end):
        kt = tl.load(Q_PART_IDX + i)
        acc_o, acc_t, mu, l_i, m_i, seen = _attn_jvp_tile(
            acc_o, acc_t, mu, l_i, m_i, seen, q, tq, kt, k_head, v_head, tk_head, tv_head,
            stride_ks, stride_vs, stride_tks, stride_tvs, q_seg, q_pos, K_SEG, K_POS, RULE,
            n_k_seg, seqlen_k, scale, qk_scale, D_QK, D_V, BLOCK_N, BLOCK_DQK, BLOCK_DV,
            MODE_RULE, DOT_PRECISION)

    empty = l_i == 0.0  # no allowed key: o = 0, to = 0, lse = -inf; allowed keys whose scores are all -inf: NaN
    l_safe = tl.where(empty, 1.0, l_i)
    o = tl.where((empty & seen)[:, None], float("nan"), acc_o / l_safe[:, None])
    to = acc_t / l_safe[:, None] - (mu / l_safe)[:, None] * o
    lse = tl.where(empty, tl.where(seen, float("nan"), float("-inf")), (m_i + tl.math.log2(l_safe)) * KERNEL_LN2)
    out_off = b64 * stride_ob + h * stride_oh + rows[:, None] * stride_os + d_v[None, :]
    _store_tile(O + out_off, o.to(O.dtype.element_ty), row_ok[:, None], d_v[None, :] < D_V,
                BLOCK_DV != D_V)
    _store_tile(TO + out_off, to.to(TO.dtype.element_ty), row_ok[:, None], d_v[None, :] < D_V,
                BLOCK_DV != D_V)
    tl.store(LSE + bh.to(tl.int64) * seqlen_q + rows, lse, mask=row_ok)


@serialised_under_interpreter
def launch_jvp(q, k, v, tq, tk, tv, q_full_ptr, q_full_idx, q_part_ptr, q_part_idx, tile_order,
               q_seg, q_pos, k_seg, k_pos, rule, scale: float,
               block_m: int, block_n: int, num_warps: int, num_stages: int):
    """Launch on an explicit tile description (the custom op's body). -> (o, to, lse)."""
    b, sq, hq, d_qk = q.shape
    _, sk, hk, d_v = v.shape
    o = alloc((b, sq, hq, d_v), q.dtype, q.device)
    to = alloc((b, sq, hq, d_v), q.dtype, q.device)
    lse = alloc((b, hq, sq), torch.float32, q.device)
    grid = (tile_order.numel(), b * hq)
    _attn_jvp_kernel[grid](
        q, k, v, tq, tk, tv, o, to, lse,
        q_full_ptr, q_full_idx, q_part_ptr, q_part_idx, tile_order,
        q_seg, q_pos, k_seg, k_pos, rule,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        tq.stride(0), tq.stride(1), tq.stride(2),
        tk.stride(0), tk.stride(1), tk.stride(2),
        tv.stride(0), tv.stride(1), tv.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        hq, hq // hk, sq, sk, rule.shape[1], triton.cdiv(sk, block_n), scale, scale * LOG2E,
        D_QK=d_qk, D_V=d_v, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_DQK=block_dims(d_qk, d_v)[0], BLOCK_DV=block_dims(d_qk, d_v)[1],
        EVEN_N=sk % block_n == 0, DOT_PRECISION=dot_precision(q.dtype),
        num_warps=num_warps, num_stages=num_stages)
    return o, to, lse


def jvp_args(q, k, v, mask, config=None):
    """The tile-description tensors and launch parameters for a fused pass on these inputs."""
    cfg = config or get_config("jvp", q.dtype, q.shape[-1], v.shape[-1])
    desc = mask.tiles(cfg.block_m, cfg.block_n, q.device)
    tensors = (desc.q_full_ptr, desc.q_full_idx, desc.q_part_ptr, desc.q_part_idx,
               visit_order(desc, "q"), desc.q_seg, desc.q_pos, desc.k_seg, desc.k_pos, desc.rule)
    return tensors, (cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages)


def attn_jvp(q, k, v, tq, tk, tv, mask, scale, config=None):
    """(o, to, lse) of masked attention and its tangent along (tq, tk, tv), one launch."""
    for name, x in (("q", q), ("k", k), ("v", v), ("tq", tq), ("tk", tk), ("tv", tv)):
        check_int32_offsets(name, x)
    tensors, params = jvp_args(q, k, v, mask, config)
    return launch_jvp(q, k, v, tq, tk, tv, *tensors, scale, *params)
