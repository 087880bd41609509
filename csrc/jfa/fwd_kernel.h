// Forward (o, lse) and fused forward+JVP (o, to, lse) kernel body.
//
// One CTA per (query tile, batch x head); each warp owns 16 query rows and walks the key tiles
// that the mask's description lists for its query tile, two stages of key/value tiles in flight.
// The JVP adds, with tS = scale (tq k^T + q tk^T) and P = softmax(S):
//   to = P tv + (P o tS) v - rowsum(P o tS) o
// carried unnormalised through the online softmax: acc_t accumulates p~ tv + (p~ o tS) v and
// mu accumulates rowsum(p~ o tS), both rescaled like acc_o; at the end
//   o = acc_o / l,  to = acc_t / l - (mu / l) o.
#pragma once

#include "kernel_traits.h"
#include "mask.h"
#include "params.h"
#include "softmax.h"

namespace jfa {

template <class Elem>
__device__ __forceinline__ const Elem* head_ptr(const void* base, const Strides& s, int b, int h) {
    return static_cast<const Elem*>(base) + b * s.batch + h * s.head;
}
template <class Elem>
__device__ __forceinline__ Elem* head_ptr(void* base, const Strides& s, int b, int h) {
    return static_cast<Elem*>(base) + b * s.batch + h * s.head;
}

// Store a warp's 16 x (8 kNB) fp32 block (times row factor f) as 16-bit pairs; rows >= limit skipped.
template <class Elem, int kNB>
__device__ __forceinline__ void store_rows(Elem* out, int64_t row_stride, int row0, int limit, const float (&acc)[kNB][4],
                                           const float (&f)[2], int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + g + 8 * r;
        if (row >= limit) continue;
        Elem* dst = out + row * row_stride + 2 * t;
#pragma unroll
        for (int nb = 0; nb < kNB; ++nb) {
            *reinterpret_cast<uint32_t*>(dst + nb * 8) =
                ElemOps<Elem>::pack(acc[nb][2 * r] * f[r], acc[nb][2 * r + 1] * f[r]);
        }
    }
}

template <class Tr, bool kJvp>
__global__ void __launch_bounds__(Tr::kThreads, 1) attention_fwd_kernel(const AttnParams p) {
    using Elem = typename Tr::Elem;
    constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kDQK = Tr::kDQK, kDV = Tr::kDV;
    constexpr int kNBS = kBN / 8;   // n8 blocks of a score row slice
    constexpr int kNBO = kDV / 8;   // n8 blocks of an output row slice
    constexpr int kKQK = kDQK / 16; // k16 steps of q k^T
    constexpr int kKPV = kBN / 16;  // k16 steps of p v
    using QTile = SmemTile<kBM, kDQK>;
    using KTile = SmemTile<kBN, kDQK>;
    using VTile = SmemTile<kBN, kDV>;

    extern __shared__ __align__(128) char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q_tile = p.num_q_tiles - 1 - blockIdx.x;  // late query tiles see the most keys: start them first
    const int b = blockIdx.y / p.heads_q, h = blockIdx.y % p.heads_q;
    const int hk = h / (p.heads_q / p.heads_k);
    const int q0 = q_tile * kBM, row0 = q0 + warp * Tr::kWarpRows;

    const uint32_t s0 = smem_addr(smem);
    const QTile sQ{s0}, sTQ{s0 + QTile::kBytes};
    auto stage_k = [&](int st, int which) {  // which: 0 k, 1 tk
        return KTile{s0 + Tr::kQBytes + st * Tr::kStageBytes + which * KTile::kBytes};
    };
    auto stage_v = [&](int st, int which) {  // which: 0 v, 1 tv
        return VTile{s0 + Tr::kQBytes + st * Tr::kStageBytes + (kJvp ? 2 : 1) * KTile::kBytes + which * VTile::kBytes};
    };

    const Elem* q = head_ptr<Elem>(p.q, p.q_stride, b, h);
    const Elem* k = head_ptr<Elem>(p.k, p.k_stride, b, hk);
    const Elem* v = head_ptr<Elem>(p.v, p.v_stride, b, hk);
    const Elem* tq = kJvp ? head_ptr<Elem>(p.tq, p.tq_stride, b, h) : nullptr;
    const Elem* tk = kJvp ? head_ptr<Elem>(p.tk, p.tk_stride, b, hk) : nullptr;
    const Elem* tv = kJvp ? head_ptr<Elem>(p.tv, p.tv_stride, b, hk) : nullptr;

    const TileWalk walk(p.q_tiles, q_tile);
    sQ.template load_async<Tr::kThreads>(q, p.q_stride.row, q0, p.seqlen_q, tid);
    if constexpr (kJvp) sTQ.template load_async<Tr::kThreads>(tq, p.tq_stride.row, q0, p.seqlen_q, tid);
    auto load_kv = [&](int i, int st) {
        const int k0 = walk.tile(i) * kBN;
        stage_k(st, 0).template load_async<Tr::kThreads>(k, p.k_stride.row, k0, p.seqlen_k, tid);
        stage_v(st, 0).template load_async<Tr::kThreads>(v, p.v_stride.row, k0, p.seqlen_k, tid);
        if constexpr (kJvp) {
            stage_k(st, 1).template load_async<Tr::kThreads>(tk, p.tk_stride.row, k0, p.seqlen_k, tid);
            stage_v(st, 1).template load_async<Tr::kThreads>(tv, p.tv_stride.row, k0, p.seqlen_k, tid);
        }
    };
    if (walk.num_total > 0) load_kv(0, 0);
    cp_async_commit();

    float acc_o[kNBO][4], acc_t[kJvp ? kNBO : 1][4];
    zero(acc_o);
    zero(acc_t);
    float mu[2] = {0.f, 0.f};
    OnlineSoftmax sm;
    uint32_t qf[kJvp ? 1 : kKQK][4];  // the forward keeps its q slice in registers
    const float scale_log2 = p.scale * kLog2e;
    const bool edge_q = q0 + kBM > p.seqlen_q;

    for (int i = 0; i < walk.num_total; ++i) {
        const int st = i & 1;
        if (i + 1 < walk.num_total) {
            load_kv(i + 1, st ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const KTile sK = stage_k(st, 0);
        const VTile sV = stage_v(st, 0);

        float s[kNBS][4];
        zero(s);
        if constexpr (kJvp) {
            mma_abt<Elem, kNBS, kKQK>(s, sQ, warp * 16, sK, lane);
        } else {
            if (i == 0) {
#pragma unroll
                for (int ks = 0; ks < kKQK; ++ks) sQ.load_a(qf[ks], warp * 16, ks, lane);
            }
            mma_abt_regs<Elem, kNBS, kKQK>(s, qf, sK, lane);
        }
        float ts[kJvp ? kNBS : 1][4];
        if constexpr (kJvp) {
            zero(ts);
            mma_abt<Elem, kNBS, kKQK>(ts, sTQ, warp * 16, sK, lane);
            mma_abt<Elem, kNBS, kKQK>(ts, sQ, warp * 16, stage_k(st, 1), lane);
        }

        const int k0 = walk.tile(i) * kBN;
        if (walk.partial(i)) {
            mask_tile<true, false>(s, p.maps, row0, k0, lane, p.seqlen_q, p.seqlen_k);
        } else if (edge_q || k0 + kBN > p.seqlen_k) {
            mask_tile<false, false>(s, p.maps, row0, k0, lane, p.seqlen_q, p.seqlen_k);
        }

        float alpha[2];
        sm.update(s, scale_log2, alpha);
        scale_rows(acc_o, alpha);
        uint32_t pf[kKPV][4];
        c_to_a<Elem, kKPV>(pf, s);
        mma_ab_regs<Elem, kNBO, kKPV>(acc_o, pf, sV, lane);

        if constexpr (kJvp) {
            scale_rows(acc_t, alpha);
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float sum = 0.f;
#pragma unroll
                for (int nb = 0; nb < kNBS; ++nb) {
#pragma unroll
                    for (int e = 2 * r; e < 2 * r + 2; ++e) {
                        // Masked keys contribute nothing, even where the tangent score is not finite.
                        ts[nb][e] = s[nb][e] == 0.f ? 0.f : s[nb][e] * ts[nb][e] * p.scale;
                        sum += ts[nb][e];
                    }
                }
                mu[r] = mu[r] * alpha[r] + sum;
            }
            mma_ab_regs<Elem, kNBO, kKPV>(acc_t, pf, stage_v(st, 1), lane);
            uint32_t ptf[kKPV][4];
            c_to_a<Elem, kKPV>(ptf, ts);
            mma_ab_regs<Elem, kNBO, kKPV>(acc_t, ptf, sV, lane);
        }
        __syncthreads();  // this stage is refilled by the next iteration's prefetch
    }

    // Epilogue: normalise, write o (and to) and lse. A row with no allowed key has l = 0:
    // o = 0, to = 0, lse = -inf.
    float inv_l[2], lse[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float l = quad_sum(sm.l[r]);
        inv_l[r] = l == 0.f ? 0.f : 1.f / l;
        lse[r] = l == 0.f ? -INFINITY : sm.m[r] * kLn2 + logf(l);
        mu[r] = quad_sum(mu[r]) * inv_l[r];
    }
    Elem* o = head_ptr<Elem>(p.o, p.o_stride, b, h);
    store_rows<Elem, kNBO>(o, p.o_stride.row, row0, p.seqlen_q, acc_o, inv_l, lane);
    if constexpr (kJvp) {
        // to = acc_t / l - mu o, with o = acc_o / l.
#pragma unroll
        for (int nb = 0; nb < kNBO; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_t[nb][e] -= mu[e >> 1] * acc_o[nb][e];
        }
        Elem* to = head_ptr<Elem>(p.to, p.to_stride, b, h);
        store_rows<Elem, kNBO>(to, p.to_stride.row, row0, p.seqlen_q, acc_t, inv_l, lane);
    }
    if ((lane & 3) == 0) {
        float* lse_row = p.lse + static_cast<int64_t>(blockIdx.y) * p.seqlen_q;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + (lane >> 2) + 8 * r;
            if (row < p.seqlen_q) lse_row[row] = lse[r];
        }
    }
}

}  // namespace jfa
