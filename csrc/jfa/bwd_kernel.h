// Backward kernel bodies: a row-wise preprocess (delta = rowsum(dO o O)), dK/dV (one CTA per
// key tile and kv head, walking the query tiles of every query head in its GQA group, so
// dK/dV are summed over the group without atomics), and dQ (one CTA per query tile).
// Both recompute P = exp(S - lse) from the forward's lse; with dP = dO V^T and
// dS = P o (dP - delta):  dV = P^T dO,  dK = scale dS^T Q,  dQ = scale dS K.
// No atomics: the result is deterministic.
#pragma once

#include "fwd_parts.h"
#include "kernel_traits.h"
#include "mask.h"

namespace jfa {

// lse in the log2 domain for the kernels' exp2; rows with no allowed key (lse = -inf) and rows
// past the end map to +inf so that exp2(s - lse2) is 0 for every one of their (masked) scores.
__device__ __forceinline__ float lse_log2(const float* lse_row, int i, int sq) {
    const float x = i < sq ? lse_row[i] : -INFINITY;
    return x == -INFINITY ? INFINITY : x * kLog2e;
}

template <class Elem>
__global__ void attention_bwd_delta_kernel(const AttnParams p) {
    constexpr int kRowsPerBlock = 8;  // one warp per row
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * kRowsPerBlock + (threadIdx.x >> 5);
    const int b = blockIdx.y / p.heads_q, h = blockIdx.y % p.heads_q;
    if (row >= p.seqlen_q) return;
    const Elem* o = head_ptr<Elem>(p.o, p.o_stride, b, h) + row * p.o_stride.row;
    const Elem* d = head_ptr<Elem>(p.do_, p.do_stride, b, h) + row * p.do_stride.row;
    float sum = 0.f;
    for (int c = lane; c < p.head_dim_v; c += 32) sum += ElemOps<Elem>::to_float(o[c]) * ElemOps<Elem>::to_float(d[c]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane == 0) p.delta[static_cast<int64_t>(blockIdx.y) * p.seqlen_q + row] = sum;
}

// The query side of the dK/dV walk, the same on both paths (only the tile types differ): each of
// two stages after the key/value tiles holds a q tile, its dO tile, and the rows' lse (log2
// units) and delta. Step j of the walk is entry walk.entry(j % num_total) of head j / num_total
// of the group, so dK/dV sum over the group.
template <class Tr, class QTile, class OTile>
struct BwdKVQueryStages {
    uint32_t s0;   // shared address of the (aligned) base
    char* base;    // the same place as a pointer
    int b, hk, groups;

    __device__ __forceinline__ int offset(int st) const { return Tr::kKVBytes + st * Tr::kStageBytes; }
    __device__ __forceinline__ QTile q(int st) const { return QTile{s0 + offset(st)}; }
    __device__ OTile dO(int st) const { return OTile{s0 + offset(st) + QTile::kBytes}; }
    __device__ float* lse2(int st) const {
        return reinterpret_cast<float*>(base + offset(st) + QTile::kBytes + OTile::kBytes);
    }
    __device__ float* delta(int st) const { return lse2(st) + Tr::kBlockM; }

    __device__ void load(const AttnParams& p, const TileWalk& walk, int j, int st, int tid) const {
        using Elem = typename Tr::Elem;
        const int h = hk * groups + j / walk.num_total;
        const int m0 = walk.tile(walk.entry(j % walk.num_total)) * Tr::kBlockM;
        q(st).template load_async<Tr::kThreads>(head_ptr<Elem>(p.q, p.q_stride, b, h), p.q_stride.row, m0,
                                                p.seqlen_q, tid);
        dO(st).template load_async<Tr::kThreads>(head_ptr<Elem>(p.do_, p.do_stride, b, h), p.do_stride.row, m0,
                                                 p.seqlen_q, tid);
        const int64_t bh = static_cast<int64_t>(b) * p.heads_q + h;
        for (int i = tid; i < Tr::kBlockM; i += Tr::kThreads) {
            lse2(st)[i] = lse_log2(p.lse + bh * p.seqlen_q, m0 + i, p.seqlen_q);
            delta(st)[i] = m0 + i < p.seqlen_q ? p.delta[bh * p.seqlen_q + m0 + i] : 0.f;
        }
    }
};

// The key side of the dQ walk, the same on both paths but for the tile types: each of two stages
// after the q and dO tiles holds a k tile and its v tile.
template <class Tr, class KTile, class VTile>
struct BwdQKeyStages {
    uint32_t s0;                 // shared address of the (aligned) base
    const typename Tr::Elem *k, *v;   // this query head's kv head

    __device__ __forceinline__ KTile key(int st) const { return KTile{s0 + Tr::kQBytes + st * Tr::kStageBytes}; }
    __device__ __forceinline__ VTile value(int st) const {
        return VTile{s0 + Tr::kQBytes + st * Tr::kStageBytes + KTile::kBytes};
    }
    __device__ __forceinline__ void load(const AttnParams& p, int k0, int st, int tid) const {
        key(st).template load_async<Tr::kThreads>(k, p.k_stride.row, k0, p.seqlen_k, tid);
        value(st).template load_async<Tr::kThreads>(v, p.v_stride.row, k0, p.seqlen_k, tid);
    }
};

// dK = scale dK_acc and dV of a warp's 16 keys from krow0 (every key-side kernel's epilogue).
template <class Elem, int kNBK, int kNBV>
__device__ __forceinline__ void store_dk_dv(const AttnParams& p, int b, int hk, int krow0, const float (&acc_dk)[kNBK][4],
                                            const float (&acc_dv)[kNBV][4], int lane) {
    const float f_dk[2] = {p.scale, p.scale}, f_dv[2] = {1.f, 1.f};
    store_rows<Elem, kNBK>(head_ptr<Elem>(p.dk, p.dk_stride, b, hk), p.dk_stride.row, krow0, p.seqlen_k, acc_dk, f_dk,
                           lane);
    store_rows<Elem, kNBV>(head_ptr<Elem>(p.dv, p.dv_stride, b, hk), p.dv_stride.row, krow0, p.seqlen_k, acc_dv, f_dv,
                           lane);
}

// lse (log2 units) and delta of the two rows a thread holds in a warp's 16-row slice from row0.
__device__ __forceinline__ void row_lse_delta(const AttnParams& p, int row0, int lane, float (&lse2)[2],
                                              float (&delta)[2]) {
    const int64_t bh_off = static_cast<int64_t>(blockIdx.y) * p.seqlen_q;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + (lane >> 2) + 8 * r;
        lse2[r] = lse_log2(p.lse + bh_off, row, p.seqlen_q);
        delta[r] = row < p.seqlen_q ? p.delta[bh_off + row] : 0.f;
    }
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) attention_bwd_kv_kernel(const AttnParams p) {
    using Elem = typename Tr::Elem;
    constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kDQK = Tr::kDQK, kDV = Tr::kDV;
    constexpr int kNBS = kBM / 8;    // n8 blocks of a (key x query) score slice
    constexpr int kKS = kBM / 16;    // k16 steps over queries
    using KTile = SmemTile<kBN, kDQK>;
    using VTile = SmemTile<kBN, kDV>;
    using QTile = SmemTile<kBM, kDQK>;
    using OTile = SmemTile<kBM, kDV>;

    extern __shared__ __align__(128) char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int k_tile = blockIdx.x;
    const int b = blockIdx.y / p.heads_k, hk = blockIdx.y % p.heads_k;
    const int groups = p.heads_q / p.heads_k;
    const int n0 = k_tile * kBN, krow0 = n0 + warp * Tr::kWarpRows;

    const uint32_t s0 = smem_addr(smem);
    const KTile sK{s0};
    const VTile sV{s0 + KTile::kBytes};
    const BwdKVQueryStages<Tr, QTile, OTile> stages{s0, smem, b, hk, groups};

    const TileWalk walk(p.k_tiles, k_tile);
    const int total = groups * walk.num_total;
    sK.template load_async<Tr::kThreads>(head_ptr<Elem>(p.k, p.k_stride, b, hk), p.k_stride.row, n0, p.seqlen_k, tid);
    sV.template load_async<Tr::kThreads>(head_ptr<Elem>(p.v, p.v_stride, b, hk), p.v_stride.row, n0, p.seqlen_k, tid);
    auto load_q = [&](int j, int st) { stages.load(p, walk, j, st, tid); };
    if (total > 0) load_q(0, 0);
    cp_async_commit();

    float acc_dk[kDQK / 8][4], acc_dv[kDV / 8][4];
    zero(acc_dk);
    zero(acc_dv);
    const float scale_log2 = p.scale * kLog2e;
    const bool edge_k = n0 + kBN > p.seqlen_k;
    const int t2 = 2 * (lane & 3);

    for (int j = 0; j < total; ++j) {
        const int st = j & 1;
        prefetch_next_and_wait(j, total, st ^ 1, load_q);
        __syncthreads();
        const QTile sQ = stages.q(st);
        const OTile sDO = stages.dO(st);
        const float* lse2 = stages.lse2(st);
        const float* delta = stages.delta(st);
        const int i = walk.entry(j % walk.num_total);
        const int m0 = walk.tile(i) * kBM;

        // S^T = K Q^T for this warp's 16 keys x kBM queries, masked, then P^T.
        float pt[kNBS][4];
        zero(pt);
        mma_abt<Elem, kNBS, kDQK / 16>(pt, sK, warp * 16, sQ, lane);
        mask_scores<true>(pt, p, walk, i, edge_k || m0 + kBM > p.seqlen_q, krow0, m0, lane);
#pragma unroll
        for (int nb = 0; nb < kNBS; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) pt[nb][e] = exp2f(pt[nb][e] * scale_log2 - lse2[nb * 8 + t2 + (e & 1)]);
        }
        // dP^T = V dO^T, then dS^T = P^T o (dP^T - delta).
        float dst[kNBS][4];
        zero(dst);
        mma_abt<Elem, kNBS, kDV / 16>(dst, sV, warp * 16, sDO, lane);
#pragma unroll
        for (int nb = 0; nb < kNBS; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) dst[nb][e] = pt[nb][e] * (dst[nb][e] - delta[nb * 8 + t2 + (e & 1)]);
        }
        uint32_t af[kKS][4];
        c_to_a<Elem, kKS>(af, pt);
        mma_ab_regs<Elem, kDV / 8, kKS>(acc_dv, af, sDO, lane);
        c_to_a<Elem, kKS>(af, dst);
        mma_ab_regs<Elem, kDQK / 8, kKS>(acc_dk, af, sQ, lane);
        __syncthreads();
    }

    store_dk_dv<Elem>(p, b, hk, krow0, acc_dk, acc_dv, lane);
}

template <class Tr>
__global__ void __launch_bounds__(Tr::kThreads, 1) attention_bwd_q_kernel(const AttnParams p) {
    using Elem = typename Tr::Elem;
    constexpr int kBM = Tr::kBlockM, kBN = Tr::kBlockN, kDQK = Tr::kDQK, kDV = Tr::kDV;
    constexpr int kNBS = kBN / 8;
    constexpr int kKS = kBN / 16;
    using QTile = SmemTile<kBM, kDQK>;
    using OTile = SmemTile<kBM, kDV>;
    using KTile = SmemTile<kBN, kDQK>;
    using VTile = SmemTile<kBN, kDV>;

    extern __shared__ __align__(128) char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q_tile = p.num_q_tiles - 1 - blockIdx.x;
    const int b = blockIdx.y / p.heads_q, h = blockIdx.y % p.heads_q;
    const int hk = h / (p.heads_q / p.heads_k);
    const int q0 = q_tile * kBM, row0 = q0 + warp * Tr::kWarpRows;

    const uint32_t s0 = smem_addr(smem);
    const QTile sQ{s0};
    const OTile sDO{s0 + QTile::kBytes};
    const BwdQKeyStages<Tr, KTile, VTile> stages{s0, head_ptr<Elem>(p.k, p.k_stride, b, hk),
                                                 head_ptr<Elem>(p.v, p.v_stride, b, hk)};
    const TileWalk walk(p.q_tiles, q_tile);
    sQ.template load_async<Tr::kThreads>(head_ptr<Elem>(p.q, p.q_stride, b, h), p.q_stride.row, q0, p.seqlen_q, tid);
    sDO.template load_async<Tr::kThreads>(head_ptr<Elem>(p.do_, p.do_stride, b, h), p.do_stride.row, q0, p.seqlen_q,
                                          tid);
    auto load_kv = [&](int i, int st) { stages.load(p, walk.tile(i) * kBN, st, tid); };
    if (walk.num_total > 0) load_kv(0, 0);
    cp_async_commit();

    float lse2[2], delta[2];
    row_lse_delta(p, row0, lane, lse2, delta);
    float acc_dq[kDQK / 8][4];
    zero(acc_dq);
    const float scale_log2 = p.scale * kLog2e;
    const bool edge_q = q0 + kBM > p.seqlen_q;

    for (int i = 0; i < walk.num_total; ++i) {
        const int st = i & 1;
        prefetch_next_and_wait(i, walk.num_total, st ^ 1, load_kv);
        __syncthreads();
        const KTile sK = stages.key(st);
        const int k0 = walk.tile(i) * kBN;

        float s[kNBS][4];
        zero(s);
        mma_abt<Elem, kNBS, kDQK / 16>(s, sQ, warp * 16, sK, lane);
        mask_scores<false>(s, p, walk, i, edge_q || k0 + kBN > p.seqlen_k, row0, k0, lane);
        float dp[kNBS][4];
        zero(dp);
        mma_abt<Elem, kNBS, kDV / 16>(dp, sDO, warp * 16, stages.value(st), lane);
#pragma unroll
        for (int nb = 0; nb < kNBS; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float pe = exp2f(s[nb][e] * scale_log2 - lse2[e >> 1]);
                dp[nb][e] = pe * (dp[nb][e] - delta[e >> 1]);
            }
        }
        uint32_t af[kKS][4];
        c_to_a<Elem, kKS>(af, dp);
        mma_ab_regs<Elem, kDQK / 8, kKS>(acc_dq, af, sK, lane);
        __syncthreads();
    }
    const float f[2] = {p.scale, p.scale};
    store_rows<Elem, kDQK / 8>(head_ptr<Elem>(p.dq, p.dq_stride, b, h), p.dq_stride.row, row0, p.seqlen_q, acc_dq, f,
                               lane);
}

}  // namespace jfa
