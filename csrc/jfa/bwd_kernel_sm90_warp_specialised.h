// The fused backward on Hopper with specialised warps (sm_90a): the only backward there.
//
// The walk and algebra of bwd_kernel_sm90.h (one block per 128-key tile and kv head, steps of
// 64 queries, 128 at d = 64, over the walk of every query head of the GQA group; dK and dV in
// registers, dQ added into a float32 buffer by the TMA unit's bulk reduce-add), with warps that
// each wait only for what they need (a form whose warps all loaded by cp.async and met at four
// __syncthreads per step was the fallback where the TMA unit could not describe an operand; the
// Python side now copies such operands, and it is gone):
//   - warpgroup 0 gives its registers away and splits three jobs over its warps: warp 0 issues
//     the TMA loads (k and v once, then q and dO per step into two stages guarded by "full" and
//     "empty" transaction barriers), warp 1 copies the step's lse (log2 units) and delta rows
//     into the stage (their rows are not 16-byte aligned for every Sq, so not by TMA), warp 2
//     adds each staged dQ tile into the buffer and waits for the TMA unit to have read it (in the
//     ordered form it first waits for the tile's turn, and counts the turn on once the add is
//     complete; there warps 2 and 3 take the steps in turn, so two adds are in flight);
//   - warpgroups 1 and 2 (64 keys each) only compute. Per step: S^T, then dP^T (the mask and
//     exp2 of S^T run while dP^T is computed); dV while dS^T goes to shared memory; then dQ
//     and dK, and dQ is staged while dK still runs; the step closes with no product in flight. At
//     d = 128 warpgroup w computes dQ's column half w over all 128 keys, so the two meet once per
//     step, when both halves of dS^T are in shared memory (dS^T has two buffers, so one may write
//     step j's while the other still reads step j - 1's); at d = 64 each computes all columns
//     over its own 64 keys (two 64-query products), and both tiles are added into the buffer, so
//     they never wait for each other (and one dS^T buffer does, each warpgroup's rows its own).
// Named barriers: kDsFull / kDsOwn (dS^T written), kDsFree (d = 64: dS^T rows free again),
// kDqHalfFull / kDqHalfEmpty (a warpgroup's staged dQ tile and the dQ warp). bench/NOTES_cuda.md,
// items 12-14, 23 and 25.
#pragma once

#include "bwd_kernel_sm90.h"
#include "fwd_kernel_sm90_warp_specialised.h"

namespace jfa {

// Tensor maps of one backward call, passed as a __grid_constant__ parameter.
struct BwdTensorMaps {
    CUtensorMap q, k, v, do_;
};

template <class Elem_, int kDQK_, int kDV_>
struct BwdWarpSpecialisedTraitsSm90 {
    using Elem = Elem_;
    static constexpr int kDQK = kDQK_, kDV = kDV_;
    static constexpr int kBlockM = kBwdFusedTilesSm90<kDQK, kDV>.block_m;   // queries per step
    static constexpr int kBlockN = kBwdFusedTilesSm90<kDQK, kDV>.block_n;   // keys per block
    static constexpr int kThreads = 384;
    static constexpr int kConsumerThreads = 256;
    static constexpr int kStages = 2;
    static constexpr int kKBytes = kBlockN * kDQK * 2, kVBytes = kBlockN * kDV * 2;
    static constexpr int kQBytes = kBlockM * kDQK * 2, kDOBytes = kBlockM * kDV * 2;
    static constexpr int kDSBytes = kBlockN * kBlockM * 2;   // one dS^T buffer (keys x queries)
    // dQ: at d = 128 warpgroup w computes column half w over all 128 keys; at d = 64 (one
    // half) it computes all columns over its own 64 keys, and both tiles are added into the
    // same buffer tile. Each warpgroup stages kBlockM x 64 floats: one 64 x 64 piece per 64
    // query rows (one wgmma product each), in the buffer's order, so one reduce-add takes them.
    static constexpr bool kDQSplitKeys = kDQK == kDQHalf;
    static_assert(kDQK == kDQHalf || kDQK == 2 * kDQHalf, "dQ is one or two 64-column halves");
    // Steps of 64 queries (one wgmma's M for the dQ product), or of 128 at d = 64: there dK and dV
    // take 64 registers instead of 128, which leaves room for S^T and dP^T of 64 keys x 128 queries
    // (64 registers each); at d = 128 they would not fit the consumers' 240.
    static_assert(kBlockN == 128 && (kBlockM == 64 || (kBlockM == 128 && kDQSplitKeys)),
                  "two consumer warpgroups of 64 keys; 128-query steps only at d = 64");
    static constexpr int kDQPieces = kBlockM / kDQTileRows;   // dQ products per warpgroup and step
    static constexpr int kDQKeySteps = (kDQSplitKeys ? kBlockN / 2 : kBlockN) / 16;
    static constexpr int kDQWgBytes = kDQPieces * kDQHalfBytes;   // one warpgroup's staged dQ
    static constexpr int kDQBytes = 2 * kDQWgBytes;               // both warpgroups'
    // dS^T buffers. At d = 128 each warpgroup reads both warpgroups' rows, so two buffers let one
    // write step j's while the other still reads step j - 1's. At d = 64 each reads only its own
    // rows, so one buffer does, with a barrier of the warpgroup (kDsFree) before it is written
    // again; the 128-query form needs that: with two it would need 40 bytes more than an SM has
    // (K, V 32 KB, two q / dO stages 64 KB, dS^T 2 x 32 KB, dQ staging 2 x 32 KB, lse / delta
    // rows 2 KB, the barriers and 1 KB to align the base); with one it takes 195 KB. 64-query
    // steps keep two (JFA_TILES="bwdf90@64=64,128" then builds the d = 64 kernel as it was).
    static constexpr int kDSBuffers = kBlockM == 128 ? 1 : 2;
    static constexpr int kVOffset = kKBytes;
    static constexpr int kQOffset = kVOffset + kVBytes;                      // stage st: q, then dO
    static constexpr int kDSOffset = kQOffset + kStages * (kQBytes + kDOBytes);
    static constexpr int kDQOffset = kDSOffset + kDSBuffers * kDSBytes;
    static constexpr int kRowsOffset = kDQOffset + kDQBytes;                 // stage st: lse2[kBlockM], delta[kBlockM]
    static constexpr int kBarOffset = kRowsOffset + kStages * 2 * kBlockM * 4;
    static constexpr int kSmemBytes = kBarOffset + 8 * (1 + 2 * kStages) + 1024;   // + room to align the base
    static_assert(kSmemBytes <= kSmemPerSm90 - 1024, "the block must fit an SM");
};

constexpr int kDsFull = 1;        // both dS^T halves of the step are in shared memory (d = 128)
constexpr int kDsOwn = 2;         // 2, 3: warpgroup w's dS^T rows are (d = 64)
constexpr int kDsFree = 12;       // 12, 13: warpgroup w's dQ product of the last step is complete (one dS^T buffer)
// Each warpgroup stages its own dQ tile and hands it to the dQ warp through its own pair of
// barriers (160 threads), so neither waits for the other's tile to be staged or read.
constexpr int kDqHalfFull = 4;    // 4, 5: warpgroup w's staged tile is complete
constexpr int kDqHalfEmpty = 6;   // 6, 7: the TMA unit has read it
// The ordered form hands its odd steps to a second dQ warp, through barriers 8-11 (the same
// pairs, shifted), so that each barrier meets the consumers and one warp only.
__device__ __forceinline__ int dq_barrier_shift(bool in_order, int j) { return in_order ? (j & 1) * 4 : 0; }

template <class Tr>
struct BwdWarpSpecialisedSmem {
    using KTile = PanelTile<Tr::kBlockN, Tr::kDQK>;
    using VTile = PanelTile<Tr::kBlockN, Tr::kDV>;
    using QTile = PanelTile<Tr::kBlockM, Tr::kDQK>;
    using OTile = PanelTile<Tr::kBlockM, Tr::kDV>;
    using DSTile = PanelTile<Tr::kBlockN, Tr::kBlockM>;
    uint32_t s0;   // 1024-byte aligned shared address
    char* base;    // the same place as a pointer

    __device__ __forceinline__ KTile k() const { return KTile{s0}; }
    __device__ __forceinline__ VTile v() const { return VTile{s0 + Tr::kVOffset}; }
    __device__ __forceinline__ QTile q(int st) const { return QTile{s0 + Tr::kQOffset + st * (Tr::kQBytes + Tr::kDOBytes)}; }
    __device__ __forceinline__ OTile dO(int st) const { return OTile{q(st).base + Tr::kQBytes}; }
    __device__ __forceinline__ DSTile ds(int buf) const { return DSTile{s0 + Tr::kDSOffset + buf * Tr::kDSBytes}; }
    __device__ __forceinline__ uint32_t dq_staging() const { return s0 + Tr::kDQOffset; }
    __device__ __forceinline__ float* lse2(int st) const {
        return reinterpret_cast<float*>(base + Tr::kRowsOffset) + st * 2 * Tr::kBlockM;
    }
    __device__ __forceinline__ float* delta(int st) const { return lse2(st) + Tr::kBlockM; }
    __device__ __forceinline__ MBarrier bar(int i) const { return MBarrier{s0 + Tr::kBarOffset + 8 * i}; }
    __device__ __forceinline__ MBarrier kv_full() const { return bar(0); }
    __device__ __forceinline__ MBarrier q_full(int st) const { return bar(1 + st); }
    __device__ __forceinline__ MBarrier q_empty(int st) const { return bar(1 + Tr::kStages + st); }

    __device__ __forceinline__ void init_barriers() const {
        kv_full().init(1);
#pragma unroll
        for (int st = 0; st < Tr::kStages; ++st) {
            // Every thread that writes or reads the stage's lse / delta rows arrives itself: its own
            // arrive (release) orders its own accesses, which one arrival per warp would not.
            q_full(st).init(1 + 32);                     // the TMA thread and the lse / delta warp's lanes
            q_empty(st).init(Tr::kConsumerThreads);      // every consumer thread
        }
        fence_barrier_init();
    }
};

// Where step j of the block's walk is: step s of the walk for query head h (the walk repeats
// once per head of the GQA group), which takes the lists' entry i. Advanced step by step: no
// division per step.
struct BwdWalkCursor {
    int s, i, h;
    __device__ __forceinline__ BwdWalkCursor(const TileWalk& walk, int hk, int groups)
        : s(0), i(walk.num_total > 0 ? walk.entry(0) : 0), h(hk * groups) {}
    __device__ __forceinline__ void advance(const TileWalk& walk) {
        if (++s == walk.num_total) {
            s = 0;
            ++h;
        }
        i = walk.entry(s);
    }
};

// S^T and dP^T of the step in stage st, as two groups, the first k16 step of each writing its
// accumulator without reading it. Waits for the stage's q_full first, then runs `before_products`
// (reads of the stage's rows that should not queue behind the products' operand reads).
template <class Tr, class Smem, int kM, class BeforeProducts>
__device__ __forceinline__ void issue_scores(const Smem& sm, float (&pt)[kM][4], float (&dst)[kM][4], int st, int parity,
                                             int wg_row, BeforeProducts&& before_products) {
    using Elem = typename Tr::Elem;
    constexpr int kBM = Tr::kBlockM;
    const auto sQ = sm.q(st);
    const auto sDO = sm.dO(st);
    sm.q_full(st).wait(parity);
    before_products();
    wgmma_fence();
    Wgmma<Elem, kBM>::ss_first(pt, sm.k().desc_k_major(wg_row, 0), sQ.desc_k_major(0, 0));
#pragma unroll
    for (int ks = 1; ks < Tr::kDQK / 16; ++ks)
        Wgmma<Elem, kBM>::ss(pt, sm.k().desc_k_major(wg_row, ks), sQ.desc_k_major(0, ks), 1);
    wgmma_commit();
    Wgmma<Elem, kBM>::ss_first(dst, sm.v().desc_k_major(wg_row, 0), sDO.desc_k_major(0, 0));
#pragma unroll
    for (int ks = 1; ks < Tr::kDV / 16; ++ks)
        Wgmma<Elem, kBM>::ss(dst, sm.v().desc_k_major(wg_row, ks), sDO.desc_k_major(0, ks), 1);
    wgmma_commit();
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1)
    attention_bwd_kernel_sm90_warp_specialised(const AttnParams p, const __grid_constant__ BwdTensorMaps maps) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using Elem = typename Tr::Elem;
    constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kDQK = Tr::kDQK, kDV = Tr::kDV, kS = Tr::kStages;
    constexpr int kKS = kBM / 16;   // k16 steps over queries
    constexpr bool kDQSplitKeys = Tr::kDQSplitKeys;
    constexpr int kDQKeySteps = Tr::kDQKeySteps, kDQPieces = Tr::kDQPieces;
    constexpr bool kWide = kBM == 128;   // 128-query steps (d = 64)
    extern __shared__ char smem[];
    const uint32_t s0 = (smem_addr(smem) + kSwizzleAtom - 1) & ~uint32_t(kSwizzleAtom - 1);
    const BwdWarpSpecialisedSmem<Tr> sm{s0, smem + (s0 - smem_addr(smem))};
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int k_tile = bwd_key_tile(p);
    const int b = blockIdx.y / p.heads_k, hk = blockIdx.y % p.heads_k;
    const int groups = p.heads_q / p.heads_k;
    const int n0 = k_tile * kBN;
    if (tid == 0) sm.init_barriers();
    __syncthreads();
    const TileWalk walk(p.k_tiles, k_tile);
    const int total = groups * walk.num_total;

    if (warp < 4) {
        // The block is launched with 168 registers a thread; the consumers' 240 come from what the
        // producers give back, (168 - 24) x 128 = (240 - 168) x 256 exactly (with 32, setmaxnreg.inc waits forever).
        setmaxnreg_dec<kProducerRegs>();
        if (warp == 0 && lane == 0) {   // loads
            sm.kv_full().arrive_expect_tx(Tr::kKBytes + Tr::kVBytes);
            load_panels(sm.k(), &maps.k, sm.kv_full(), n0, hk, b);
            load_panels(sm.v(), &maps.v, sm.kv_full(), n0, hk, b);
            BwdWalkCursor at(walk, hk, groups);
            for (int j = 0; j < total; ++j, at.advance(walk)) {
                const int st = j % kS, m0 = walk.tile(at.i) * kBM;
                sm.q_empty(st).wait(((j / kS) & 1) ^ 1);
                sm.q_full(st).arrive_expect_tx(Tr::kQBytes + Tr::kDOBytes);
                load_panels(sm.q(st), &maps.q, sm.q_full(st), m0, at.h, b);
                load_panels(sm.dO(st), &maps.do_, sm.q_full(st), m0, at.h, b);
            }
        } else if (warp == 1) {   // lse (log2 units; +inf where no key is allowed) and delta rows
            BwdWalkCursor at(walk, hk, groups);
            for (int j = 0; j < total; ++j, at.advance(walk)) {
                const int st = j % kS, m0 = walk.tile(at.i) * kBM;
                const int64_t row_off = (static_cast<int64_t>(b) * p.heads_q + at.h) * p.seqlen_q;
                sm.q_empty(st).wait(((j / kS) & 1) ^ 1);
                for (int r = lane; r < kBM; r += 32) {
                    const int row = m0 + r;
                    sm.lse2(st)[r] = lse_log2(p.lse + row_off, row, p.seqlen_q);
                    sm.delta(st)[r] = row < p.seqlen_q ? p.delta[row_off + row] : 0.f;
                }
                sm.q_full(st).arrive();
            }
        } else if (warp >= 2) {   // dQ: a bulk reduce-add per warpgroup and step
            // The fast form: warp 2 takes every step. The ordered form: warps 2 and 3 take the
            // steps in turn, so that one warp's wait for its add to complete (before the tile's
            // turn passes on) overlaps the other's step. A warp waits for both halves to be
            // staged, then for the tile's turn, so a turn is held only while the adds run; at
            // d = 64 both warpgroups' tiles go to the same place, one after the other (two adds
            // in flight to one address could land in either order).
            const bool in_order = p.dq_order == DqOrder::kKeyTile;
            const int first = warp - 2, stride = in_order ? 2 : 1;
            if (first >= stride) return;
            BwdWalkCursor at(walk, hk, groups);
            if (first > 0) at.advance(walk);
            for (int j = first; j < total; j += stride) {
                const int bh = b * p.heads_q + at.h, qt = walk.tile(at.i);
                float* tile = dq_tile<kBM, kDQK>(p, bh, qt);
                // warpgroup w's staged tile into the buffer's tile at dst: the same place for both at d = 64
                auto add_half = [&](float* dst, int w) {
                    bulk_reduce_add_f32(kDQSplitKeys ? dst : dst + w * kDQTileRows * kDQHalf,
                                        sm.dq_staging() + w * Tr::kDQWgBytes, Tr::kDQWgBytes);
                };
                const int shift = dq_barrier_shift(in_order, j);
                if (in_order) {
                    named_sync(kDqHalfFull + shift, 128 + 32);
                    named_sync(kDqHalfFull + 1 + shift, 128 + 32);
                    // this key tile's group: its own buffer and semaphores (params.h, dq_groups)
                    // (an int: B x Hq x query tiles x dq_groups is far below 2^31 for any buffer that fits)
                    const int at_tile = static_cast<int>(dq_tile_index<kBM>(p, bh, qt)) + dq_group_offset(p, k_tile);
                    int32_t* sem = p.dq_semaphore + at_tile;
                    if (lane == 0) {
                        wait_dq_turn(sem, TileWalk(p.dq_turns, k_tile).tile(at.i));
#pragma unroll
                        for (int w = 0; w < 2; ++w) {
                            if (kDQSplitKeys && w == 1) bulk_wait_all();
                            // the buffer's tile from the semaphore's index (at_tile itself kept
                            // live here spilled 8 bytes more at d = 64)
                            add_half(p.dq_accum + (sem - p.dq_semaphore) * (kBM * kDQK), w);
                        }
                        bulk_wait_read();
                    }
                    __syncwarp();
                    if (j + 1 < total) {
                        named_arrive(kDqHalfEmpty + shift, 128 + 32);
                        named_arrive(kDqHalfEmpty + 1 + shift, 128 + 32);
                    }
                    if (lane == 0) {
                        bulk_wait_all();
                        pass_dq_turn(sem);
                    }
                } else {
#pragma unroll
                    for (int w = 0; w < 2; ++w) {
                        named_sync(kDqHalfFull + w, 128 + 32);
                        if (lane == 0) {
                            add_half(tile, w);
                            bulk_wait_read();
                        }
                        __syncwarp();
                        if (j + 1 < total) named_arrive(kDqHalfEmpty + w, 128 + 32);
                    }
                }
                for (int s = 0; s < stride; ++s) at.advance(walk);
            }
            if (lane == 0) bulk_wait_all();
        }
        return;
    }

    setmaxnreg_inc<kConsumerRegs>();
    const int cw = warp - 4;               // consumer warp 0..7: keys n0 + 16 cw ..
    const int wg = cw >> 2, wg_row = wg * 64;
    const int krow0 = n0 + cw * 16;
    const float scale_log2 = p.scale * kLog2e;
    const bool edge_k = n0 + kBN > p.seqlen_k;
    const bool in_order = p.dq_order == DqOrder::kKeyTile;   // dQ barriers alternate between two warps
    float acc_dk[kDQK / 8][4], acc_dv[kDV / 8][4];
    zero(acc_dk);
    zero(acc_dv);
    sm.kv_full().wait(0);

    // One step: S^T and dP^T as two groups; the mask and exp2 of S^T while dP^T runs; dV as soon
    // as P^T is in registers, so dS^T is formed and stored while dV runs; then dQ (this
    // warpgroup's column half) and dK, and dQ is staged while dK still runs. The step closes
    // with no product in flight: ptxas keeps the products asynchronous only when it can tell
    // within one iteration which wait retires each of them.
    BwdWalkCursor at(walk, hk, groups);
    for (int j = 0; j < total; ++j, at.advance(walk)) {
        const int st = j % kS, buf = Tr::kDSBuffers == 2 ? (j & 1) : 0;
        const int m0 = walk.tile(at.i) * kBM;
        const auto sQ = sm.q(st);
        const auto sDO = sm.dO(st);
        float pt[kBM / 8][4], dst[kBM / 8][4];
        float2 lse2[kBM / 8], delta[kBM / 8];
        // The stage's lse and delta rows are read into registers early: read right behind S^T
        // and dP^T, the exp2's FFMA waited for lse (ncu: short_sb), and dS^T's FADD for delta
        // read behind dV; a load issued behind the products seems to wait for their operand
        // reads (two ss products of 64 x 64 x 16 take all of the shared memory's bandwidth).
        // Every read still lies between the step's q_full wait and its q_empty arrive, so the
        // lse / delta warp's protocol and the barriers' counts are unchanged.
        // 64-query steps: lse once q_full has completed, before S^T and dP^T are issued.
        issue_scores<Tr>(sm, pt, dst, st, (j / kS) & 1, wg_row, [&] {
            if constexpr (!kWide) query_row_pairs(lse2, sm.lse2(st), lane);
        });
        wgmma_wait<1>();   // S^T
        hold_across_wgmma(pt);
        mask_scores<true>(pt, p, walk, at.i, edge_k || m0 + kBM > p.seqlen_q, krow0, m0, lane);
        // 128-query steps: read after the mask, whose element tests need the registers that
        // these 32 would hold (read before it, they cost 640 bytes of spill, all in the mask;
        // read before S^T on FULL tiles only, 740)
        if constexpr (kWide) query_row_pairs(lse2, sm.lse2(st), lane);
        key_side_exp(pt, lse2, scale_log2);
        uint32_t pf[kKS][4], dsf[kKS][4];
        c_to_a<Elem, kKS>(pf, pt);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < kKS; ++ks) Wgmma<Elem, kDV>::rs(acc_dv, pf[ks], sDO.desc_n_major(ks), 1);
        wgmma_commit();
        // 64-query steps: delta once dV is issued, before the wait for dP^T (ptxas puts the loads
        // among dV's products). Read with lse before S^T, it spilled 36 bytes in the step; read
        // before dV is issued, ptxas mixed the loads into the exp2 and the conversion of P^T
        // waited for them on a shared scoreboard. 128-query steps: after the wait for dP^T (read
        // before dV is issued or here, 264 bytes of spill).
        if constexpr (!kWide) query_row_pairs(delta, sm.delta(st), lane);
        wgmma_wait<1>();   // dP^T (dV runs on)
        hold_across_wgmma(dst);
        if constexpr (kWide) query_row_pairs(delta, sm.delta(st), lane);
        key_side_ds(pt, dst, delta);
        c_to_a<Elem, kKS>(dsf, dst);
        // One buffer (128-query steps): every warp of the warpgroup has waited for the last
        // step's dQ product, which read these rows, before any overwrites them.
        if constexpr (Tr::kDSBuffers == 1) named_sync(kDsFree + wg, 128);
        store_a_frags(sm.ds(buf), dsf, cw * 16, lane);
        fence_proxy_async();
        if constexpr (kDQSplitKeys) {
            named_sync(kDsOwn + wg, 128);   // this warpgroup's dS^T rows are all it reads
        } else {
            named_sync(kDsFull, Tr::kConsumerThreads);
        }
        // dQ over this warpgroup's keys (d = 64) or all keys for its column panel (d = 128), one
        // product per 64 query rows (dS^T's panel pc holds queries 64 pc ..)
        const int key0 = kDQSplitKeys ? 4 * wg : 0, k_panel = kDQSplitKeys ? 0 : wg;
        using DSTile = typename BwdWarpSpecialisedSmem<Tr>::DSTile;
        float acc_dq[kDQPieces][kDQHalf / 8][4];
        wgmma_fence();
#pragma unroll
        for (int pc = 0; pc < kDQPieces; ++pc) {
            // panel pc of dS^T as a tile of its own (the same layout; passed as desc_n_major's
            // panel, the descriptors took 4 more instructions per step at kDQPieces = 1)
            const DSTile ds{sm.ds(buf).base + pc * DSTile::kPanelBytes};
            Wgmma<Elem, kDQHalf>::ss_t_first(acc_dq[pc], ds.desc_n_major(key0), sm.k().desc_n_major(key0, k_panel));
#pragma unroll
            for (int ks = 1; ks < kDQKeySteps; ++ks)
                Wgmma<Elem, kDQHalf>::ss_t(acc_dq[pc], ds.desc_n_major(key0 + ks), sm.k().desc_n_major(key0 + ks, k_panel), 1);
        }
        wgmma_commit();
#pragma unroll
        for (int ks = 0; ks < kKS; ++ks) Wgmma<Elem, kDQK>::rs(acc_dk, dsf[ks], sQ.desc_n_major(ks), 1);
        wgmma_commit();
        wgmma_wait<1>();   // dV and dQ
        hold_across_wgmma(acc_dv);
        hold_across_wgmma(pf);
#pragma unroll
        for (int pc = 0; pc < kDQPieces; ++pc) hold_across_wgmma(acc_dq[pc]);
        if (j > 0) named_sync(kDqHalfEmpty + wg + dq_barrier_shift(in_order, j - 1), 128 + 32);   // this half of the previous tile has been read
#pragma unroll
        for (int pc = 0; pc < kDQPieces; ++pc)
            stage_dq_half(sm.dq_staging() + wg * Tr::kDQWgBytes + pc * kDQHalfBytes, acc_dq[pc], (cw & 3) * 16, lane);
        wgmma_wait<0>();   // dK
        hold_across_wgmma(acc_dk);
        hold_across_wgmma(dsf);
        sm.q_empty(st).arrive();   // q, dO, lse and delta of the stage are read
        fence_proxy_async();
        named_arrive(kDqHalfFull + wg + dq_barrier_shift(in_order, j), 128 + 32);
    }

    store_dk_dv<Elem>(p, b, hk, krow0, acc_dk, acc_dv, lane);
#endif
}

}  // namespace jfa
