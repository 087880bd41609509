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

#include "fwd_parts.h"
#include "kernel_traits.h"
#include "mask.h"

namespace jfa {

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
    const FwdKVStages<Tr, KTile, VTile, kJvp> stages{s0};
    const FwdHeads<Elem, kJvp> heads(p, b, h, hk);

    const TileWalk walk(p.q_tiles, q_tile);
    sQ.template load_async<Tr::kThreads>(heads.q, p.q_stride.row, q0, p.seqlen_q, tid);
    if constexpr (kJvp) sTQ.template load_async<Tr::kThreads>(heads.tq, p.tq_stride.row, q0, p.seqlen_q, tid);
    auto load_kv = [&](int i, int st) { stages.load(p, heads, walk.tile(i) * kBN, st, [] { return true; }, tid); };
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
        prefetch_next_and_wait(i, walk.num_total, st ^ 1, load_kv);
        __syncthreads();
        const KTile sK = stages.k(st, 0);
        const VTile sV = stages.v(st, 0);

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
            mma_abt<Elem, kNBS, kKQK>(ts, sQ, warp * 16, stages.k(st, 1), lane);
        }

        const int k0 = walk.tile(i) * kBN;
        bool row_allowed[2];
        mask_scores_and_tangents<false, kJvp>(s, ts, p, walk, i, edge_q || k0 + kBN > p.seqlen_k, row0, k0, lane,
                                              row_allowed);

        float alpha[2];
        if (sm.update<kRescaleBound<Elem, kJvp>>(s, scale_log2, alpha, row_allowed)) {
            scale_rows(acc_o, alpha);
            if constexpr (kJvp) scale_rows(acc_t, alpha);
        }
        uint32_t pf[kKPV][4];
        c_to_a<Elem, kKPV>(pf, s);
        mma_ab_regs<Elem, kNBO, kKPV>(acc_o, pf, sV, lane);

        if constexpr (kJvp) {
            tangent_probs(ts, s, mu, alpha, p.scale);
            mma_ab_regs<Elem, kNBO, kKPV>(acc_t, pf, stages.v(st, 1), lane);
            uint32_t ptf[kKPV][4];
            c_to_a<Elem, kKPV>(ptf, ts);
            mma_ab_regs<Elem, kNBO, kKPV>(acc_t, ptf, sV, lane);
        }
        __syncthreads();  // this stage is refilled by the next iteration's prefetch
    }

    fwd_epilogue<Elem, kJvp, kNBO>(p, b, h, row0, lane, sm, mu, acc_o, acc_t);
}

}  // namespace jfa
