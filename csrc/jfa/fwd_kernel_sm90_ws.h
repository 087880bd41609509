// Forward (o, lse) on Hopper with specialised warpgroups (sm_90a): the default forward there.
//
// Same walk and arithmetic as attention_fwd_kernel_sm90 (fwd_kernel_sm90.h); what changes is who
// waits for whom. In that kernel every warp loads, and a barrier per key tile holds both
// warpgroups in step, so the tensor cores idle while both mask and exponentiate. Here:
//   - warpgroup 0 is the producer: one thread issues TMA loads of the query tile and of each key
//     and value tile into stages guarded by transaction barriers ("full" when the bytes landed,
//     "empty" when every consumer warp is done reading), and gives its registers away;
//   - warpgroups 1 and 2 are consumers of 64 query rows each. They take turns issuing their
//     products (q k_i^T, then p_{i-1} v_{i-1}) through two named barriers, so one warpgroup's
//     softmax runs while the tensor cores work on the other's products ("ping-pong"); inside a
//     warpgroup the softmax of tile i still overlaps its own p_{i-1} v_{i-1}.
// No __syncthreads in the key loop.
#pragma once

#include "async_sm90.h"
#include "fwd_common.h"
#include "kernel_traits.h"
#include "mask.h"
#include "wgmma.h"

namespace jfa {

constexpr int kProducerRegs = 24;    // the producer's registers after setmaxnreg
constexpr int kConsumerRegs = 240;   // 128 x 24 + 256 x 240 <= 65,536
constexpr int kTurnBarrier = 1;      // named barriers 1 and 2: consumer warpgroup 0's and 1's turn to issue

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    attention_fwd_kernel_sm90_ws(const AttnParams p, const __grid_constant__ FwdTensorMaps maps) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Elem = typename Tr::Elem;
    constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kDQK = Tr::kDQK, kDV = Tr::kDV, kS = Tr::kStages;
    constexpr int kNBS = kBN / 8, kNBO = kDV / 8, kKQK = kDQK / 16, kKPV = kBN / 16;
    constexpr int kConsumerWarps = Tr::kConsumerThreads / 32;
    using QTile = PanelTile<kBM, kDQK>;
    using KTile = PanelTile<kBN, kDQK>;
    using VTile = PanelTile<kBN, kDV>;
    using MmaS = Wgmma<Elem, kBN>;
    using MmaO = Wgmma<Elem, kDV>;

    extern __shared__ char smem[];
    const uint32_t s0 = (smem_addr(smem) + kSwizzleAtom - 1) & ~uint32_t(kSwizzleAtom - 1);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q_tile = p.num_q_tiles - 1 - blockIdx.x;  // late query tiles see the most keys: start them first
    const int b = blockIdx.y / p.heads_q, h = blockIdx.y % p.heads_q;
    const int hk = h / (p.heads_q / p.heads_k);
    const int q0 = q_tile * kBM;

    const QTile sQ{s0};
    auto sK = [&](int st) { return KTile{s0 + Tr::kKOffset + st * Tr::kKBytes}; };
    auto sV = [&](int st) { return VTile{s0 + Tr::kVOffset + st * Tr::kVBytes}; };
    const uint32_t bars = s0 + Tr::kBarOffset;
    const MBarrier q_full{bars};
    auto k_full = [&](int st) { return MBarrier{bars + 8 * (1 + st)}; };
    auto k_empty = [&](int st) { return MBarrier{bars + 8 * (1 + kS + st)}; };
    auto v_full = [&](int st) { return MBarrier{bars + 8 * (1 + 2 * kS + st)}; };
    auto v_empty = [&](int st) { return MBarrier{bars + 8 * (1 + 3 * kS + st)}; };
    if (tid == 0) {
        q_full.init(1);
#pragma unroll
        for (int st = 0; st < kS; ++st) {
            k_full(st).init(1);
            v_full(st).init(1);
            k_empty(st).init(kConsumerWarps);
            v_empty(st).init(kConsumerWarps);
        }
        fence_barrier_init();
    }
    __syncthreads();

    const TileWalk walk(p.q_tiles, q_tile);
    const int n = walk.num_total;
    if (warp < 4) {
        // Producer: key tile i goes to stage i % kS once every consumer warp released tile i - kS.
        setmaxnreg_dec<kProducerRegs>();
        if (tid == 0) {
            prefetch_tensor_map(&maps.k);
            prefetch_tensor_map(&maps.v);
            q_full.arrive_expect_tx(QTile::kBytes);
#pragma unroll
            for (int pn = 0; pn < QTile::kPanels; ++pn)
                tma_load_4d(sQ.base + pn * QTile::kPanelBytes, &maps.q, q_full, pn * kPanelElems, q0, h, b);
            for (int i = 0; i < n; ++i) {
                const int st = i % kS, parity = (i / kS) & 1, k0 = walk.tile(i) * kBN;
                k_empty(st).wait(parity ^ 1);
                k_full(st).arrive_expect_tx(KTile::kBytes);
#pragma unroll
                for (int pn = 0; pn < KTile::kPanels; ++pn)
                    tma_load_4d(sK(st).base + pn * KTile::kPanelBytes, &maps.k, k_full(st), pn * kPanelElems, k0, hk, b);
                v_empty(st).wait(parity ^ 1);
                v_full(st).arrive_expect_tx(VTile::kBytes);
#pragma unroll
                for (int pn = 0; pn < VTile::kPanels; ++pn)
                    tma_load_4d(sV(st).base + pn * VTile::kPanelBytes, &maps.v, v_full(st), pn * kPanelElems, k0, hk, b);
            }
        }
    } else {
        setmaxnreg_inc<kConsumerRegs>();
        const int wg = (warp >> 2) - 1;          // consumer warpgroup 0 or 1
        const int wg_row = wg * 64;              // its first row in the tile
        const int row0 = q0 + (warp - 4) * 16;   // this warp's first query row
        float acc_o[kNBO][4], acc_t[1][4];
        zero(acc_o);
        float mu[2] = {0.f, 0.f};
        OnlineSoftmax sm;
        const float scale_log2 = p.scale * kLog2e;
        const bool edge_q = q0 + kBM > p.seqlen_q;
        uint32_t pf_prev[kKPV][4];   // p of the previous tile, read by its p v product

        // Per key tile: wait for its keys, take our turn, issue q k_i^T (and, from the second tile
        // on, p_{i-1} v_{i-1}), pass the turn on (warpgroup 1's last arrival would meet no sync).
        auto issue = [&](int i, float (&s)[kNBS][4], bool with_pv) {
            const int st = i % kS;
            k_full(st).wait((i / kS) & 1);
            if (with_pv) v_full((i - 1) % kS).wait(((i - 1) / kS) & 1);
            named_sync(kTurnBarrier + wg, Tr::kConsumerThreads);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < kKQK; ++ks) MmaS::ss(s, sQ.desc_k_major(wg_row, ks), sK(st).desc_k_major(0, ks), ks > 0);
            wgmma_commit();
            if (with_pv) {
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_o, pf_prev[ks], sV((i - 1) % kS).desc_n_major(ks), 1);
                wgmma_commit();
            }
            if (wg == 0 || i + 1 < n) named_arrive(kTurnBarrier + (wg ^ 1), Tr::kConsumerThreads);
        };
        // Once the scores are in: release the key stage, mask, and update the online softmax.
        auto softmax = [&](int i, float (&s)[kNBS][4], float (&alpha)[2]) {
            pin(s);
            if (lane == 0) k_empty(i % kS).arrive();
            const int k0 = walk.tile(i) * kBN;
            mask_scores<false>(s, p, walk.partial(i), edge_q || k0 + kBN > p.seqlen_k, row0, k0, lane);
            sm.update(s, scale_log2, alpha);
        };

        q_full.wait(0);
        if (wg == 1 && n > 0) named_arrive(kTurnBarrier, Tr::kConsumerThreads);   // warpgroup 0 issues first
        if (n > 0) {   // the first tile: scores only (a branch around the p v issue inside the loop
                       // made ptxas serialise every product of the kernel)
            float s[kNBS][4], alpha[2];
            issue(0, s, false);
            wgmma_wait<0>();
            softmax(0, s, alpha);
            c_to_a<Elem, kKPV>(pf_prev, s);
        }
        for (int i = 1; i < n; ++i) {
            float s[kNBS][4], alpha[2];
            issue(i, s, true);
            wgmma_wait<1>();   // the scores; p_{i-1} v_{i-1} still runs
            softmax(i, s, alpha);
            wgmma_wait<0>();
            pin(acc_o);
            pin(pf_prev);
            if (lane == 0) v_empty((i - 1) % kS).arrive();
            scale_rows(acc_o, alpha);
            c_to_a<Elem, kKPV>(pf_prev, s);
        }
        if (n > 0) {   // the last tile's p v
            const int st = (n - 1) % kS;
            v_full(st).wait(((n - 1) / kS) & 1);
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_o, pf_prev[ks], sV(st).desc_n_major(ks), 1);
            wgmma_commit();
            wgmma_wait<0>();
            pin(acc_o);
            pin(pf_prev);
        }
        fwd_epilogue<Elem, false, kNBO>(p, b, h, row0, lane, sm, mu, acc_o, acc_t);
    }
#endif
}

}  // namespace jfa
