// Forward (o, lse) and fused forward+JVP (o, to, lse) on Hopper with specialised warpgroups
// (sm_90a): the only forward and JVP there.
//
// Same walk and arithmetic as the portable kernel (fwd_kernel.h, which also gives the JVP's
// algebra); what changes is who waits for whom. Where every warp loads, barriers per key tile
// hold the warps in step, so the tensor cores idle while all mask and exponentiate. Here:
//   - warpgroup 0 is the producer: one thread issues TMA loads of the query tile(s) and of each
//     key and value tile (and their tangents) into stages guarded by transaction barriers ("full"
//     when the bytes landed, "empty" when every consumer warp is done reading), and gives its
//     registers away;
//   - warpgroups 1 and 2 are consumers of 64 query rows each. They take turns issuing their
//     products through two named barriers, so one warpgroup's masking and softmax run while the
//     tensor cores work on the other's products ("ping-pong"). In the forward, the softmax of
//     tile i also overlaps the warpgroup's own p_{i-1} v_{i-1} (the JVP has no registers for that).
// No __syncthreads in the key loop. bench/NOTES_cuda.md, items 10-11.
#pragma once

#include <type_traits>

#include "async_sm90.h"
#include "fwd_parts.h"
#include "kernel_traits.h"
#include "mask.h"
#include "wgmma.h"

namespace jfa {

constexpr int kProducerRegs = 24;    // the producer's registers after setmaxnreg
constexpr int kConsumerRegs = 240;   // 128 x 24 + 256 x 240 <= 65,536
constexpr int kTurnBarrier = 1;      // named barriers 1 and 2: consumer warpgroup 0's and 1's turn to issue

// Shared memory of a warp-specialised block: query tile(s), key and value stages (operand 0 the
// tile, 1 its tangent), then the barriers.
template <class Tr>
struct FwdWarpSpecialisedSmem {
    using QTile = PanelTile<Tr::kBlockM, Tr::kDQK>;
    using KTile = PanelTile<Tr::kBlockN, Tr::kDQK>;
    using VTile = PanelTile<Tr::kBlockN, Tr::kDV>;
    static constexpr int kS = Tr::kStages, kOps = Tr::kOperands;
    uint32_t s0;   // 1024-byte aligned base

    __device__ __forceinline__ QTile q(int which) const { return QTile{s0 + which * Tr::kQBytes}; }
    __device__ __forceinline__ KTile k(int st, int which) const {
        return KTile{s0 + Tr::kKOffset + (st * kOps + which) * Tr::kKBytes};
    }
    __device__ __forceinline__ VTile v(int st, int which) const {
        return VTile{s0 + Tr::kVOffset + (st * kOps + which) * Tr::kVBytes};
    }
    __device__ __forceinline__ MBarrier bar(int i) const { return MBarrier{s0 + Tr::kBarOffset + 8 * i}; }
    __device__ __forceinline__ MBarrier q_full() const { return bar(0); }
    __device__ __forceinline__ MBarrier k_full(int st) const { return bar(1 + st); }
    __device__ __forceinline__ MBarrier k_empty(int st) const { return bar(1 + kS + st); }
    __device__ __forceinline__ MBarrier v_full(int st) const { return bar(1 + 2 * kS + st); }
    __device__ __forceinline__ MBarrier v_empty(int st) const { return bar(1 + 3 * kS + st); }

    // One thread, before the block's first barrier.
    __device__ __forceinline__ void init_barriers() const {
        q_full().init(1);
#pragma unroll
        for (int st = 0; st < kS; ++st) {
            k_full(st).init(1);
            v_full(st).init(1);
            k_empty(st).init(Tr::kConsumerThreads / 32);   // one arrival per consumer warp
            v_empty(st).init(Tr::kConsumerThreads / 32);
        }
        fence_barrier_init();
    }
};

// The block's query tile and heads.
struct FwdWarpSpecialisedBlock {
    int q_tile, b, h, hk, q0;
    __device__ __forceinline__ FwdWarpSpecialisedBlock(const AttnParams& p, int block_m) {
        q_tile = p.num_q_tiles - 1 - blockIdx.x;   // late query tiles see the most keys: start them first
        b = blockIdx.y / p.heads_q;
        h = blockIdx.y % p.heads_q;
        hk = h / (p.heads_q / p.heads_k);
        q0 = q_tile * block_m;
    }
};

// All 64-column panels of one tile (rows from row0 of head h, batch b) by TMA, completing on bar.
template <class Tile>
__device__ __forceinline__ void load_panels(const Tile& t, const CUtensorMap* map, const MBarrier& bar, int row0, int h,
                                            int b) {
#pragma unroll
    for (int pn = 0; pn < Tile::kPanels; ++pn) tma_load_4d(t.base + pn * Tile::kPanelBytes, map, bar, pn * kPanelElems, row0, h, b);
}

// The producer thread: the query tile(s), then key tile i into stage i % kS once every consumer
// warp released tile i - kS, values likewise. tangents(tile) says whether key tile `tile`'s tk / tv
// are loaded (JVP; false where the zero-tangent hint promises zeros).
template <class Tr, class Tangents>
__device__ __forceinline__ void produce(const FwdWarpSpecialisedSmem<Tr>& sm, const FwdTensorMaps& maps,
                                        const TileWalk& walk, const FwdWarpSpecialisedBlock& blk, Tangents&& tangents) {
    constexpr int kS = Tr::kStages;
    sm.q_full().arrive_expect_tx(Tr::kOperands * Tr::kQBytes);
#pragma unroll
    for (int w = 0; w < Tr::kOperands; ++w) load_panels(sm.q(w), w ? &maps.tq : &maps.q, sm.q_full(), blk.q0, blk.h, blk.b);
    for (int i = 0; i < walk.num_total; ++i) {
        const int st = i % kS, parity = (i / kS) & 1, tile = walk.tile(i), k0 = tile * Tr::kBlockN;
        const int ops = tangents(tile) ? 2 : 1;
        sm.k_empty(st).wait(parity ^ 1);
        sm.k_full(st).arrive_expect_tx(ops * Tr::kKBytes);
        for (int w = 0; w < ops; ++w) load_panels(sm.k(st, w), w ? &maps.tk : &maps.k, sm.k_full(st), k0, blk.hk, blk.b);
        sm.v_empty(st).wait(parity ^ 1);
        sm.v_full(st).arrive_expect_tx(ops * Tr::kVBytes);
        for (int w = 0; w < ops; ++w) load_panels(sm.v(st, w), w ? &maps.tv : &maps.v, sm.v_full(st), k0, blk.hk, blk.b);
    }
}

// Consumer warpgroup wg's turn to issue products; then pass it to the other one. Warpgroup 1 makes
// the first pass (before its loop) so that warpgroup 0 starts, and skips its last one, which would
// meet no sync.
template <class Tr>
__device__ __forceinline__ void take_turn(int wg) { named_sync(kTurnBarrier + wg, Tr::kConsumerThreads); }
template <class Tr>
__device__ __forceinline__ void pass_turn(int wg, int i, int n) {
    if (wg == 0 || i + 1 < n) named_arrive(kTurnBarrier + (wg ^ 1), Tr::kConsumerThreads);
}
template <class Tr>
__device__ __forceinline__ void first_pass(int wg, int n) {
    if (wg == 1 && n > 0) named_arrive(kTurnBarrier, Tr::kConsumerThreads);
}

// What a consumer thread knows of its place: its warpgroup (0 or 1) and that warpgroup's first row
// in the tile, its warp's first query row, its lane.
struct FwdWarpSpecialisedConsumer {
    int wg, wg_row, row0, lane;
    bool edge_q;        // the query tile crosses the end of Sq
    float scale_log2;
    __device__ __forceinline__ FwdWarpSpecialisedConsumer(const AttnParams& p, const FwdWarpSpecialisedBlock& blk, int warp,
                                                          int lane_, int block_m)
        : wg((warp >> 2) - 1), wg_row(wg * 64), row0(blk.q0 + (warp - 4) * 16), lane(lane_),
          edge_q(blk.q0 + block_m > p.seqlen_q), scale_log2(p.scale * kLog2e) {}
};

// The walk's key tiles as the consumers take them: step i + 1's key tile, and whether its tangents
// are multiplied, are read while step i's products run (read(i + 1) right after they are issued).
// Read in its own step, after the wait for the scores that the mask step needs it for, the index's
// load latency was exposed on every tile (ncu: the R2UR of the index waiting on long_sb); read at
// the top of the step, ptxas moved it into a uniform register at once and waited there.
template <class Tangents>
struct KeyTilesAhead {
    const TileWalk& walk;
    const Tangents& tangents;
    int tile = 0;       // the next step's key tile
    bool tan = false;   // and tangents(tile)
    __device__ __forceinline__ KeyTilesAhead(const TileWalk& w, const Tangents& t) : walk(w), tangents(t) { read(0); }
    __device__ __forceinline__ void read(int i) {
        if (i < walk.num_total) {
            tile = walk.tile(i);
            tan = tangents(tile);
        }
    }
};

// The forward's consumer: per key tile, in its turn, q k_i^T and (from the second tile on)
// p_{i-1} v_{i-1}; then mask and softmax of tile i while p_{i-1} v_{i-1} still runs. tangents:
// the kernel's (false for every tile in the forward), for KeyTilesAhead.
template <class Tr, class Tangents>
__device__ __forceinline__ void consume_fwd(const AttnParams& p, const FwdWarpSpecialisedSmem<Tr>& sm,
                                            const TileWalk& walk, const FwdWarpSpecialisedBlock& blk,
                                            const FwdWarpSpecialisedConsumer& c, Tangents&& tangents) {
    using Elem = typename Tr::Elem;
    constexpr int kBN = Tr::kBlockN, kDQK = Tr::kDQK, kDV = Tr::kDV, kS = Tr::kStages;
    constexpr int kNBS = kBN / 8, kNBO = kDV / 8, kKQK = kDQK / 16, kKPV = kBN / 16;
    using MmaS = Wgmma<Elem, kBN>;
    using MmaO = Wgmma<Elem, kDV>;
    const int n = walk.num_total;
    float acc_o[kNBO][4], acc_t[1][4];
    zero(acc_o);
    float mu[2] = {0.f, 0.f};
    OnlineSoftmax softmax;
    uint32_t pf_prev[kKPV][4];   // p of the previous tile, read by its p v product

    auto issue = [&](int i, float (&s)[kNBS][4], bool with_pv) {
        const int st = i % kS;
        sm.k_full(st).wait((i / kS) & 1);
        if (with_pv) sm.v_full((i - 1) % kS).wait(((i - 1) / kS) & 1);
        take_turn<Tr>(c.wg);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kKQK; ++ks)
            MmaS::ss(s, sm.q(0).desc_k_major(c.wg_row, ks), sm.k(st, 0).desc_k_major(0, ks), ks > 0);
        wgmma_commit();
        if (with_pv) {
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_o, pf_prev[ks], sm.v((i - 1) % kS, 0).desc_n_major(ks), 1);
            wgmma_commit();
        }
        pass_turn<Tr>(c.wg, i, n);
    };
    // Once the scores are in: release the key stage, mask, and update the online softmax; whether
    // the warp's accumulator must be rescaled by alpha.
    auto update = [&](int i, int tile, float (&s)[kNBS][4], float (&alpha)[2]) {
        hold_across_wgmma(s);
        if (c.lane == 0) sm.k_empty(i % kS).arrive();
        const int k0 = tile * kBN;
        bool row_allowed[2];
        mask_scores<false>(s, p, walk, i, c.edge_q || k0 + kBN > p.seqlen_k, c.row0, k0, c.lane, row_allowed);
        return softmax.update<kRescaleBound<Elem, false>>(s, c.scale_log2, alpha, row_allowed);
    };

    KeyTilesAhead ahead(walk, tangents);
    sm.q_full().wait(0);
    first_pass<Tr>(c.wg, n);
    if (n > 0) {   // the first tile: scores only (a branch around the p v issue inside the loop
                   // made ptxas serialise every product of the kernel)
        float s[kNBS][4], alpha[2];
        const int tile = ahead.tile;
        issue(0, s, false);
        ahead.read(1);
        wgmma_wait<0>();
        update(0, tile, s, alpha);
        c_to_a<Elem, kKPV>(pf_prev, s);
    }
    for (int i = 1; i < n; ++i) {
        float s[kNBS][4], alpha[2];
        const int tile = ahead.tile;
        issue(i, s, true);
        ahead.read(i + 1);
        wgmma_wait<1>();   // the scores; p_{i-1} v_{i-1} still runs
        const bool rescale = update(i, tile, s, alpha);
        wgmma_wait<0>();
        hold_across_wgmma(acc_o);
        hold_across_wgmma(pf_prev);
        if (c.lane == 0) sm.v_empty((i - 1) % kS).arrive();
        if (rescale) scale_rows(acc_o, alpha);
        c_to_a<Elem, kKPV>(pf_prev, s);
    }
    if (n > 0) {   // the last tile's p v
        const int st = (n - 1) % kS;
        sm.v_full(st).wait(((n - 1) / kS) & 1);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_o, pf_prev[ks], sm.v(st, 0).desc_n_major(ks), 1);
        wgmma_commit();
        wgmma_wait<0>();
        hold_across_wgmma(acc_o);
        hold_across_wgmma(pf_prev);
    }
    fwd_epilogue<Elem, false, kNBO>(p, blk.b, blk.h, c.row0, c.lane, softmax, mu, acc_o, acc_t);
}

// The JVP's consumer: per key tile, in its turn, s = q k^T and ts = tq k^T (+ q tk^T where
// tangents(tile i)); then, off turn, mask, softmax, the tangent probabilities, and o += p v,
// to += p tv (where tangents(tile i)) + (p o ts) v.
template <class Tr, class Tangents>
__device__ __forceinline__ void consume_jvp(const AttnParams& p, const FwdWarpSpecialisedSmem<Tr>& sm,
                                            const TileWalk& walk, const FwdWarpSpecialisedBlock& blk,
                                            const FwdWarpSpecialisedConsumer& c, Tangents&& tangents) {
    using Elem = typename Tr::Elem;
    constexpr int kBN = Tr::kBlockN, kDQK = Tr::kDQK, kDV = Tr::kDV, kS = Tr::kStages;
    constexpr int kNBS = kBN / 8, kNBO = kDV / 8, kKQK = kDQK / 16, kKPV = kBN / 16;
    using MmaS = Wgmma<Elem, kBN>;
    using MmaO = Wgmma<Elem, kDV>;
    const int n = walk.num_total;
    float acc_o[kNBO][4], acc_t[kNBO][4];
    zero(acc_o);
    zero(acc_t);
    float mu[2] = {0.f, 0.f};
    OnlineSoftmax softmax;

    // One key tile; kTan: with its tk / tv products. The hinted kernel branches on the hint around
    // whole steps: a branch around single products inside a step made ptxas serialise every
    // product (warning C7520).
    KeyTilesAhead ahead(walk, tangents);
    auto step = [&](int i, int tile, auto tan) {
        constexpr bool kTan = decltype(tan)::value;
        const int st = i % kS, parity = (i / kS) & 1;
        float s[kNBS][4], ts[kNBS][4];
        sm.k_full(st).wait(parity);
        take_turn<Tr>(c.wg);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kKQK; ++ks)
            MmaS::ss(s, sm.q(0).desc_k_major(c.wg_row, ks), sm.k(st, 0).desc_k_major(0, ks), ks > 0);
#pragma unroll
        for (int ks = 0; ks < kKQK; ++ks)
            MmaS::ss(ts, sm.q(1).desc_k_major(c.wg_row, ks), sm.k(st, 0).desc_k_major(0, ks), ks > 0);
        if constexpr (kTan) {
#pragma unroll
            for (int ks = 0; ks < kKQK; ++ks)
                MmaS::ss(ts, sm.q(0).desc_k_major(c.wg_row, ks), sm.k(st, 1).desc_k_major(0, ks), 1);
        }
        wgmma_commit();
        pass_turn<Tr>(c.wg, i, n);
        wgmma_wait<0>();
        hold_across_wgmma(s);
        hold_across_wgmma(ts);
        if (c.lane == 0) sm.k_empty(st).arrive();

        const int k0 = tile * kBN;
        bool row_allowed[2];
        mask_scores_and_tangents<false, true>(s, ts, p, walk, i, c.edge_q || k0 + kBN > p.seqlen_k, c.row0, k0, c.lane,
                                              row_allowed);
        float alpha[2];
        if (softmax.update<kRescaleBound<Elem, true>>(s, c.scale_log2, alpha, row_allowed)) {
            scale_rows(acc_o, alpha);
            scale_rows(acc_t, alpha);
        }
        tangent_probs(ts, s, mu, alpha, p.scale);
        uint32_t pf[kKPV][4], ptf[kKPV][4];
        c_to_a<Elem, kKPV>(pf, s);
        c_to_a<Elem, kKPV>(ptf, ts);

        sm.v_full(st).wait(parity);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_o, pf[ks], sm.v(st, 0).desc_n_major(ks), 1);
        if constexpr (kTan) {
#pragma unroll
            for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_t, pf[ks], sm.v(st, 1).desc_n_major(ks), 1);
        }
#pragma unroll
        for (int ks = 0; ks < kKPV; ++ks) MmaO::rs(acc_t, ptf[ks], sm.v(st, 0).desc_n_major(ks), 1);
        wgmma_commit();
        wgmma_wait<0>();
        hold_across_wgmma(acc_o);
        hold_across_wgmma(acc_t);
        hold_across_wgmma(pf);
        hold_across_wgmma(ptf);
        if (c.lane == 0) sm.v_empty(st).arrive();
    };

    sm.q_full().wait(0);
    first_pass<Tr>(c.wg, n);
    for (int i = 0; i < n; ++i) {
        const int tile = ahead.tile;
        const bool tan = ahead.tan;
        ahead.read(i + 1);
        if (tan) {
            step(i, tile, std::true_type{});
        } else {
            step(i, tile, std::false_type{});
        }
    }
    fwd_epilogue<Elem, true, kNBO>(p, blk.b, blk.h, c.row0, c.lane, softmax, mu, acc_o, acc_t);
}

// The forward (Tr::kTangents false) or fused forward+JVP. kSkipsZeroTangents: the JVP reads the
// zero-tangent hint and skips the tangent work of key tiles it marks (a separate instantiation).
template <class Tr, bool kSkipsZeroTangents = false>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    attention_fwd_kernel_sm90_warp_specialised(const AttnParams p, const __grid_constant__ FwdTensorMaps maps) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ char smem[];
    const FwdWarpSpecialisedSmem<Tr> sm{(smem_addr(smem) + kSwizzleAtom - 1) & ~uint32_t(kSwizzleAtom - 1)};
    const int tid = threadIdx.x, warp = tid >> 5;
    const FwdWarpSpecialisedBlock blk(p, Tr::kBlockM);
    if (tid == 0) sm.init_barriers();
    __syncthreads();

    const TileWalk walk(p.q_tiles, blk.q_tile);
    // Whether key tile `tile`'s tangents are loaded and multiplied (JVP; the hint promises zeros).
    auto tangents = [&](int tile) { return Tr::kTangents && !(kSkipsZeroTangents && p.k_zero_tangent[tile]); };
    if (warp < 4) {
        setmaxnreg_dec<kProducerRegs>();
        if (tid == 0) produce(sm, maps, walk, blk, tangents);
    } else {
        setmaxnreg_inc<kConsumerRegs>();
        const FwdWarpSpecialisedConsumer c(p, blk, warp, tid & 31, Tr::kBlockM);
        if constexpr (Tr::kTangents) {
            consume_jvp(p, sm, walk, blk, c, tangents);
        } else {
            consume_fwd(p, sm, walk, blk, c, tangents);
        }
    }
#endif
}

}  // namespace jfa
