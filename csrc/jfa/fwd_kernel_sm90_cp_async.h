// Forward (o, lse) and fused forward+JVP (o, to, lse) on Hopper's warpgroup products (sm_90a),
// every warp loading by cp.async: the fallback of fwd_kernel_sm90_warp_specialised.h where the TMA
// unit cannot describe an operand.
//
// Same walk and arithmetic as fwd_kernel.h (see its header for the JVP's algebra); what changes
// is who multiplies. Each warpgroup owns 64 query rows; q k^T (and tq k^T + q tk^T) is one chain
// of wgmma reading q and k straight from 128-byte-swizzled shared panels; p v (and p tv + (p o ts) v)
// takes the probabilities from registers and reads v transposed through its descriptor. No
// ldmatrix and no shared-memory fragment traffic from the warps: the bottleneck of the mma.sync
// kernel (bench/NOTES_cuda.md) is gone. Tiles arrive by cp.async, one tile ahead.
// The forward overlaps the softmax of tile i (CUDA cores) with p v of tile i-1 (tensor cores):
// it issues q k_i^T and then p_{i-1} v_{i-1}, waits for the scores only, and waits for p v just
// before rescaling the output; value tiles therefore live one tile longer (three stages).
#pragma once

#include "fwd_parts.h"
#include "kernel_traits.h"
#include "mask.h"
#include "wgmma.h"

namespace jfa {

// kSkipsZeroTangents: the JVP reads the zero-tangent hint and skips the tangent work of key tiles
// it marks (a separate instantiation: its branches cost the hint-free JVP registers).
template <class Tr, bool kJvp, bool kSkipsZeroTangents = false>
__global__ void __launch_bounds__(Tr::kThreads, 1) attention_fwd_kernel_sm90_cp_async(const AttnParams p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Elem = typename Tr::Elem;
    constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kDQK = Tr::kDQK, kDV = Tr::kDV;
    constexpr int kNBS = kBN / 8, kNBO = kDV / 8, kKQK = kDQK / 16, kKPV = kBN / 16;
    using QTile = PanelTile<kBM, kDQK>;
    using KTile = PanelTile<kBN, kDQK>;
    using VTile = PanelTile<kBN, kDV>;
    using MmaS = Wgmma<Elem, kBN>;
    using MmaO = Wgmma<Elem, kDV>;

    extern __shared__ char smem[];
    const uint32_t s0 = (smem_addr(smem) + kSwizzleAtom - 1) & ~uint32_t(kSwizzleAtom - 1);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg_row = (warp >> 2) * 64;   // this warpgroup's first row in the tile
    const int q_tile = p.num_q_tiles - 1 - blockIdx.x;  // late query tiles see the most keys: start them first
    const int b = blockIdx.y / p.heads_q, h = blockIdx.y % p.heads_q;
    const int hk = h / (p.heads_q / p.heads_k);
    const int q0 = q_tile * kBM, row0 = q0 + warp * 16;

    const QTile sQ{s0}, sTQ{s0 + QTile::kBytes};
    const FwdKVStages<Tr, KTile, VTile, kJvp> stages{s0};
    const FwdHeads<Elem, kJvp> heads(p, b, h, hk);

    const TileWalk walk(p.q_tiles, q_tile);
    // Zero-tangent hint (JVP): a key tile whose tk and tv are zero skips their loads, q tk^T and
    // p tv. (Skipping tq k^T for zero-tangent query tiles as well made ptxas spill 300 bytes in
    // the key loop; the query side is not used.)
    auto tan_k = [&](int i) { return !(kJvp && kSkipsZeroTangents && p.k_zero_tangent[walk.tile(i)]); };
    sQ.template load_async<Tr::kThreads>(heads.q, p.q_stride.row, q0, p.seqlen_q, tid);
    if constexpr (kJvp) sTQ.template load_async<Tr::kThreads>(heads.tq, p.tq_stride.row, q0, p.seqlen_q, tid);
    auto load_kv = [&](int i, int st) {
        stages.load(p, heads, walk.tile(i) * kBN, st, [&] { return tan_k(i); }, tid);
    };
    if (walk.num_total > 0) load_kv(0, 0);
    cp_async_commit();

    float acc_o[kNBO][4], acc_t[kJvp ? kNBO : 1][4];
    zero(acc_o);
    zero(acc_t);
    float mu[2] = {0.f, 0.f};
    OnlineSoftmax sm;
    const float scale_log2 = p.scale * kLog2e;
    const bool edge_q = q0 + kBM > p.seqlen_q;

    uint32_t pf_prev[kJvp ? 1 : kKPV][4];  // forward: p of the previous tile, read by its p v product
    int st_prev = 0;
    for (int i = 0; i < walk.num_total; ++i) {
        const int st = i % Tr::kStages;
        if constexpr (kJvp) {
            prefetch_next_and_wait(i, walk.num_total, st ^ 1, load_kv);
            fence_proxy_async();  // this thread's copies become visible to the tensor cores' reads
            __syncthreads();
        } else {
            // Tile i landed; after the barrier no warpgroup still reads stage (i + 1) % 3 (tile
            // i-2: its p v was waited for in iteration i-1), so the prefetch of tile i+1 may go there.
            cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads();
            if (i + 1 < walk.num_total) load_kv(i + 1, (i + 1) % Tr::kStages);
            cp_async_commit();
        }
        const KTile sK = stages.k(st, 0);
        const VTile sV = stages.v(st, 0);

        // Scores (and tangent scores) of this warpgroup's 64 rows against the kBN keys.
        float s[kNBS][4], ts[kJvp ? kNBS : 1][4];
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kKQK; ++ks) MmaS::ss(s, sQ.desc_k_major(wg_row, ks), sK.desc_k_major(0, ks), ks > 0);
        const bool tan_ki = tan_k(i);
        if constexpr (kJvp) {
            const KTile sTK = stages.k(st, 1);
#pragma unroll
            for (int ks = 0; ks < kKQK; ++ks) MmaS::ss(ts, sTQ.desc_k_major(wg_row, ks), sK.desc_k_major(0, ks), ks > 0);
            if (tan_ki) {
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < kKQK; ++ks) MmaS::ss(ts, sQ.desc_k_major(wg_row, ks), sTK.desc_k_major(0, ks), 1);
            }
        }
        wgmma_commit();
        if (!kJvp && i > 0) {
            // p_{i-1} v_{i-1} runs on the tensor cores behind the scores while this warpgroup
            // masks and exponentiates them.
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_o, pf_prev[ks], stages.v(st_prev, 0).desc_n_major(ks), 1);
            wgmma_commit();
            wgmma_wait<1>();
        } else {
            wgmma_wait<0>();
        }
        hold_across_wgmma(s);
        if constexpr (kJvp) hold_across_wgmma(ts);

        const int k0 = walk.tile(i) * kBN;
        bool row_allowed[2];
        mask_scores_and_tangents<false, kJvp>(s, ts, p, walk, i, edge_q || k0 + kBN > p.seqlen_k, row0, k0, lane,
                                              row_allowed);

        float alpha[2];
        sm.update(s, scale_log2, alpha, row_allowed);
        if constexpr (!kJvp) {
            wgmma_wait<0>();   // p_{i-1} v_{i-1} (unconditional, so ptxas sees every path wait)
            hold_across_wgmma(acc_o);
            hold_across_wgmma(pf_prev);
            scale_rows(acc_o, alpha);
            c_to_a<Elem, kKPV>(pf_prev, s);
            st_prev = st;
            continue;   // this tile's p v is issued with the next tile's scores (or after the loop)
        }
        scale_rows(acc_o, alpha);
        uint32_t pf[kKPV][4];
        c_to_a<Elem, kKPV>(pf, s);
        uint32_t ptf[kJvp ? kKPV : 1][4];
        if constexpr (kJvp) {
            scale_rows(acc_t, alpha);
            tangent_probs(ts, s, mu, alpha, p.scale);
            c_to_a<Elem, kKPV>(ptf, ts);
        }

        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_o, pf[ks], sV.desc_n_major(ks), 1);
        if constexpr (kJvp) {
            const VTile sTV = stages.v(st, 1);
            if (tan_ki) {
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_t, pf[ks], sTV.desc_n_major(ks), 1);
            }
            if (kSkipsZeroTangents) wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_t, ptf[ks], sV.desc_n_major(ks), 1);
        }
        wgmma_commit();
        wgmma_wait<0>();
        hold_across_wgmma(acc_o);
        hold_across_wgmma(pf);
        if constexpr (kJvp) {
            hold_across_wgmma(acc_t);
            hold_across_wgmma(ptf);
        }
        __syncthreads();  // this stage is refilled by the next iteration's prefetch
    }
    if (!kJvp && walk.num_total > 0) {   // the last tile's p v
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_o, pf_prev[ks], stages.v(st_prev, 0).desc_n_major(ks), 1);
        wgmma_commit();
        wgmma_wait<0>();
        hold_across_wgmma(acc_o);
        hold_across_wgmma(pf_prev);
    }

    fwd_epilogue<Elem, kJvp, kNBO>(p, b, h, row0, lane, sm, mu, acc_o, acc_t);
#endif
}

}  // namespace jfa
