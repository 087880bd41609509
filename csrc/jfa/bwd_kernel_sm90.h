// The fused backward on Hopper's warpgroup products (sm_90a): the parts of its kernel
// (bwd_kernel_sm90_warp_specialised.h) that are not about who waits for whom, and the dQ
// conversion pass. It is the dK/dV walk of bwd_kernel.h (same recomputation of P from the
// forward's lse, same algebra; see its header) with every product a wgmma chain, that also does
// dQ's work: warpgroups own 64 keys; operands come from 128-byte-swizzled panels (wgmma.h), the
// K-major reads for S and dP, the N-major (transposed) reads for dV += P^T dO, dK += dS^T Q,
// dQ += dS K. It stores dS^T of each step in shared memory, runs dQ_tile = dS K (both operands
// read transposed), stages the float32 tile in shared memory and adds it into a float32 buffer
// with one bulk reduce-add of the TMA unit, which reads the staging tile while the next step
// computes; a last pass scales and converts the buffer into dq. 5 products per tile pair instead
// of a two-kernel backward's 7. The adds land in the order the blocks arrive (not bitwise
// repeatable) unless params.dq_order asks for key-tile order (below). Per-thread vector atomics
// instead of the bulk reduce-add doubled the kernel's time (bench/NOTES_cuda.md, item 8).
//
// The buffer holds, per (batch, head), Sq rounded up to whole query tiles of the kernel's block_m
// rows; per query tile its 64-row pieces (one per 64-query wgmma product: one at d = 128, where
// block_m is 64; two at d = 64, where it is 128) in order, and per piece its 64-column halves one
// after the other, each 64 x 64 in the threads' fragment order (each 16-byte chunk holds what one
// thread holds of a row's two 8-column blocks, so staging is one 16-byte store per chunk, free of
// bank conflicts). A query tile is thus kBlockM x Dqk floats in one place, so a warpgroup's staged
// part of it goes in with one bulk reduce-add; dq_tile and dq_chunk_offset say where.
#pragma once

#include "bwd_kernel.h"
#include "wgmma.h"

namespace jfa {

// Rows row0 .. row0 + 15 of a warp's dS^T slice (A fragments, k16 steps over queries) into the
// dS^T panel tile, one stmatrix (four 8 x 8 matrices) per k16 step: matrix j of a step holds
// rows 8 (j & 1) .. and columns 8 (j >> 1) .. of the 16 x 16 block, exactly the A fragment
// registers a0..a3, and lane l gives the address of row l % 8 of matrix l / 8, a 16-byte chunk
// of the swizzled panel.
template <int kKS, class Tile>
__device__ __forceinline__ void store_a_frags(const Tile& t, const uint32_t (&af)[kKS][4], int row0, int lane) {
    const int j = lane >> 3, row = row0 + (lane & 7) + 8 * (j & 1);
#pragma unroll
    for (int ks = 0; ks < kKS; ++ks) {
        asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n"
                     ::"r"(t.chunk(row, 2 * ks + (j >> 1))), "r"(af[ks][0]), "r"(af[ks][1]), "r"(af[ks][2]), "r"(af[ks][3])
                     : "memory");
    }
}

constexpr int kDQTileRows = 64;                       // query rows per piece of the dQ buffer (one wgmma's M)
constexpr int kDQHalf = 64;                           // columns per staged dQ half tile
constexpr int kDQHalfBytes = kDQTileRows * kDQHalf * 4;

// Index of query tile qt (kBlockM rows) of row (batch x head) bh among the dQ buffer's tiles (and
// the ordered form's semaphores).
template <int kBlockM>
__device__ __forceinline__ int64_t dq_tile_index(const AttnParams& p, int bh, int qt) {
    static_assert(kBlockM % kDQTileRows == 0, "query tiles are whole 64-row pieces");
    const int q_tiles = (p.seqlen_q + kBlockM - 1) / kBlockM;
    return static_cast<int64_t>(bh) * q_tiles + qt;
}

// The dQ buffer's tile of query tile qt of row (batch x head) bh.
template <int kBlockM, int kDQK>
__device__ __forceinline__ float* dq_tile(const AttnParams& p, int bh, int qt) {
    return p.dq_accum + dq_tile_index<kBlockM>(p, bh, qt) * kBlockM * kDQK;
}

// The ordered form's group of key tile k_tile (params.h, dq_groups), as the offset in dQ tiles
// of its buffer and semaphores: 0 with one group. (An int: a dQ tile is 16-32 KB.)
// Called by a whole warp, computed where it is used, step by step: taking k_tile through a
// shuffle keeps the compiler from hoisting it out of the dQ warp's loop, where one more value
// held across the loop spilled (the producer warps have 24 registers).
__device__ __forceinline__ int dq_group_offset(const AttnParams& p, int k_tile) {
    return (__shfl_sync(0xffffffffu, k_tile, 0) & (p.dq_groups - 1)) * p.dq_group_tiles;
}

// The ordered form (DqOrder::kKeyTile): a dQ tile takes its adds in decreasing key-tile order.
// Its blocks take the key tiles highest first, and walk each key tile's query tiles in increasing
// order: in the frame and chunk masks a higher key tile then also reaches a query tile sooner,
// so the turns rarely wait, and a block only waits for blocks launched before it, so every wait
// ends.
// wait_dq_turn: until the tile's semaphore equals this block's turn (acquire, GPU scope).
// pass_dq_turn: once this block's adds into the tile are complete, count the semaphore up
// (release). The adds run in the async proxy; the proxy fences order them with the semaphore's
// accesses.
__device__ __forceinline__ int bwd_key_tile(const AttnParams& p) {
    return p.dq_order == DqOrder::kKeyTile ? p.num_k_tiles - 1 - static_cast<int>(blockIdx.x) : blockIdx.x;
}
__device__ __forceinline__ void wait_dq_turn(const int32_t* sem, int turn) {
    int v;
    while (true) {
        asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(sem) : "memory");
        if (v == turn) break;
        __nanosleep(64);
    }
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
__device__ __forceinline__ void pass_dq_turn(int32_t* sem) {
    asm volatile("fence.proxy.async.global;\n" ::: "memory");
    asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(sem) : "memory");
}

// A staged 64 x 64 half tile (and the buffer's tiles, which are its sums) keeps each thread's
// C fragments together: in row r, the 16-byte chunk q = 4 m + t holds columns 16 m + 2 t, + 1,
// 16 m + 8 + 2 t, + 1 (what lane quad position t holds of column blocks 2 m and 2 m + 1), so a
// thread stages a row's 16 columns with one 16-byte store per block pair. Chunks are placed at
// q ^ 4 (r & 3): the eight lanes of one store phase (two rows) then hit all 32 banks once.
__host__ __device__ __forceinline__ int dq_chunk_offset(int r, int q) { return r * kDQHalf + ((q ^ ((r & 3) << 2)) << 2); }

// acc (C fragments of a 64-column wgmma, warp rows row0 + g (+8)) into a staged half tile.
__device__ __forceinline__ void stage_dq_half(uint32_t tile, const float (&acc)[kDQHalf / 8][4], int row0, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + g + 8 * r;
#pragma unroll
        for (int m = 0; m < kDQHalf / 16; ++m) {
            const uint32_t a = tile + 4 * dq_chunk_offset(row, 4 * m + t);
            asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(a), "f"(acc[2 * m][2 * r]),
                         "f"(acc[2 * m][2 * r + 1]), "f"(acc[2 * m + 1][2 * r]), "f"(acc[2 * m + 1][2 * r + 1]));
        }
    }
}

// The TMA unit adds `bytes` of float32 from shared memory into global memory (one bulk group).
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, uint32_t src, int bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n"
                 "cp.async.bulk.commit_group;\n" ::"l"(dst), "r"(src), "r"(bytes) : "memory");
}
// Wait until the bulk groups in flight have read their shared-memory source (not for the adds).
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// Wait until they are complete.
__device__ __forceinline__ void bulk_wait_all() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// The parts of one step of the key-side walk (the dK/dV kernel and the fused backward): a
// warpgroup owns 64 keys (rows wg_row.. of the key tile), a step is one query tile.

// The step's lse2 and delta values of this thread's columns (the tile's queries), read into
// registers: kernels that exponentiate S^T while dP^T is still computed read them before the
// products are issued where registers allow, so the exp2 does not wait for them.
template <int kNB>
__device__ __forceinline__ void query_row_pairs(float2 (&v)[kNB], const float* rows, int lane) {
    const int t2 = 2 * (lane & 3);
#pragma unroll
    for (int nb = 0; nb < kNB; ++nb) v[nb] = *reinterpret_cast<const float2*>(rows + nb * 8 + t2);
}
// P^T = exp2(S^T scale_log2 - lse2) from the masked scores, then dS^T = P^T (dP^T - delta).
template <int kNB>
__device__ __forceinline__ void key_side_exp(float (&pt)[kNB][4], const float2 (&lse2)[kNB], float scale_log2) {
#pragma unroll
    for (int nb = 0; nb < kNB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) pt[nb][e] = exp2f(pt[nb][e] * scale_log2 - ((e & 1) ? lse2[nb].y : lse2[nb].x));
}
template <int kNB>
__device__ __forceinline__ void key_side_ds(const float (&pt)[kNB][4], float (&dst)[kNB][4], const float2 (&delta)[kNB]) {
#pragma unroll
    for (int nb = 0; nb < kNB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) dst[nb][e] = pt[nb][e] * (dst[nb][e] - ((e & 1) ? delta[nb].y : delta[nb].x));
}

// dq = scale dq_accum in the element type: 16 columns of one row per thread, read as the four
// chunks that hold them in the buffer's (query tile of kBlockM rows, 64-row piece, half, 64 x 64
// in fragment order) layout; with dq_groups > 1 (kGroups), the groups' buffers summed first,
// g = 0, 1, ... in that order (so dq stays bitwise repeatable), then scaled.
constexpr int kDQConvertCols = 16;   // columns of dq per thread of the conversion
template <class Elem, int kDQK, int kBlockM, bool kGroups>
__global__ void attention_bwd_dq_convert_kernel(const AttnParams p) {
    constexpr int kVec = kDQConvertCols, kPerRow = kDQK / kVec;
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t row = i / kPerRow;   // (b, h, s) row of dq
    if (row >= static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q) return;
    const int c = static_cast<int>(i % kPerRow) * kVec;
    const int s = static_cast<int>(row % p.seqlen_q);
    const int bh = static_cast<int>(row / p.seqlen_q);
    const int piece = (s % kBlockM) / kDQTileRows;   // 0 where kBlockM is one piece
    const float* half = dq_tile<kBlockM, kDQK>(p, bh, s / kBlockM) +
                        (piece * (kDQK / kDQHalf) + c / kDQHalf) * (kDQTileRows * kDQHalf);
    const int r = s % kDQTileRows, m = (c % kDQHalf) / 16;
    const float f = p.scale;
    // the ordered form's groups (params.h, dq_groups): their buffers summed in the order 0, 1, ...
    const int64_t group_floats = static_cast<int64_t>(p.dq_group_tiles) * kBlockM * kDQK;
    uint32_t out[8];
#pragma unroll
    for (int t = 0; t < 4; ++t) {   // chunk 4 m + t: columns 2 t, 2 t + 1 and 8 + 2 t, 8 + 2 t + 1
        float4 v = *reinterpret_cast<const float4*>(half + dq_chunk_offset(r, 4 * m + t));
        for (int g = 1; kGroups && g < p.dq_groups; ++g) {
            const float4 w = *reinterpret_cast<const float4*>(half + g * group_floats + dq_chunk_offset(r, 4 * m + t));
            v.x += w.x;
            v.y += w.y;
            v.z += w.z;
            v.w += w.w;
        }
        out[t] = ElemOps<Elem>::pack(f * v.x, f * v.y);
        out[4 + t] = ElemOps<Elem>::pack(f * v.z, f * v.w);
    }
    Elem* dst = head_ptr<Elem>(p.dq, p.dq_stride, bh / p.heads_q, bh % p.heads_q) + s * p.dq_stride.row + c;
    *reinterpret_cast<uint4*>(dst) = make_uint4(out[0], out[1], out[2], out[3]);
    *reinterpret_cast<uint4*>(dst + 8) = make_uint4(out[4], out[5], out[6], out[7]);
}

}  // namespace jfa
