// Warp-level tile verbs on raw PTX: 16-byte async copies into XOR-swizzled shared tiles,
// ldmatrix fragment loads, and the m16n8k16 tensor-core product (16-bit in, fp32 accumulate).
//
// Fragment layouts (PTX ISA, mma.m16n8k16; g = lane / 4, t = lane % 4):
//   A (16x16, row):  a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (16x8, col):   b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C (16x8, fp32):  c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// so the C fragments of two neighbouring n8 blocks are, once packed to 16 bits, exactly the
// A fragment of one k16 step: the probabilities never leave registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace jfa {

constexpr float kLog2e = 1.4426950408889634f;   // log2(e): softmax runs on exp2
constexpr float kLn2 = 0.6931471805599453f;     // ln(2): back from log2 to natural log
constexpr int kChunkElems = 8;                  // 16-bit elements in one 16-byte chunk

template <class Elem> struct ElemOps;

template <> struct ElemOps<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    static __device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

template <> struct ElemOps<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&v);
    }
    static __device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
    static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; src_bytes = 0 fills the chunk with zeros (rows past the end).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

// The two-stage copy step at the top of iteration i of n: start the copies of tile i+1 into
// stage next_stage (load(i + 1, next_stage)), then wait until tile i's own copies have landed.
template <class Load>
__device__ __forceinline__ void prefetch_next_and_wait(int i, int n, int next_stage, Load&& load) {
    if (i + 1 < n) {
        load(i + 1, next_stage);
        cp_async_commit();
        cp_async_wait<1>();
    } else {
        cp_async_wait<0>();
    }
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// All kThreads threads copy rows [row0, row0 + kRows) of a global matrix (row stride in
// elements, kCols 16-bit columns) into a shared tile, 16 bytes at a time to tile.chunk(row, c);
// rows at or past num_rows are zero-filled. Serves every tile layout (SmemTile, PanelTile).
template <int kRows, int kCols, int kThreads, class Tile>
__device__ __forceinline__ void copy_rows_async(const Tile& tile, const void* gbase, int64_t row_stride, int row0,
                                                int num_rows, int tid) {
    constexpr int kChunks = kCols / kChunkElems;
    const char* g = static_cast<const char*>(gbase);
    constexpr int kIters = (kRows * kChunks + kThreads - 1) / kThreads;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
        const int i = tid + it * kThreads;
        if (kRows * kChunks % kThreads != 0 && i >= kRows * kChunks) break;
        const int r = i / kChunks, c = i % kChunks;
        const bool in = row0 + r < num_rows;
        const char* src = in ? g + ((row0 + r) * row_stride + c * kChunkElems) * 2 : g;
        cp_async_16(tile.chunk(r, c), src, in ? 16 : 0);
    }
}

// A shared-memory tile of kRows x kCols 16-bit elements, row-major in 16-byte chunks whose
// chunk index is XORed with (row % 8): the 8 row addresses of one ldmatrix hit 8 different
// bank groups, and a row's 16-byte chunks stay contiguous for the async copies.
template <int kRows, int kCols>
struct SmemTile {
    static constexpr int kChunks = kCols / kChunkElems;
    static constexpr int kBytes = kRows * kCols * 2;
    static_assert(kChunks >= 8 && kChunks % 8 == 0, "swizzle needs rows of a multiple of 8 chunks");
    uint32_t base;  // shared address

    __device__ __forceinline__ uint32_t chunk(int row, int c) const {
        return base + static_cast<uint32_t>((row * kChunks + (c ^ (row & 7))) * 16);
    }

    template <int kThreads>
    __device__ __forceinline__ void load_async(const void* gbase, int64_t row_stride, int row0, int num_rows,
                                               int tid) const {
        copy_rows_async<kRows, kCols, kThreads>(*this, gbase, row_stride, row0, num_rows, tid);
    }

    // A fragment of the 16x16 block at (row0, 16 * kstep).
    __device__ __forceinline__ void load_a(uint32_t (&a)[4], int row0, int kstep, int lane) const {
        ldsm_x4(a, chunk(row0 + (lane & 15), 2 * kstep + (lane >> 4)));
    }
    // B fragments of two n8 blocks [n0, n0 + 16) for k = [16 kstep, 16 kstep + 16), where the
    // tile stores B transposed (rows = n, contiguous k): b[0..1] for n0, b[2..3] for n0 + 8.
    __device__ __forceinline__ void load_b(uint32_t (&b)[4], int n0, int kstep, int lane) const {
        ldsm_x4(b, chunk(n0 + (lane & 7) + ((lane >> 4) << 3), 2 * kstep + ((lane >> 3) & 1)));
    }
    // B fragments of two n8 blocks at columns [8 c0, 8 c0 + 16) for k = rows [k0, k0 + 16),
    // where the tile stores B as is (rows = k, contiguous n): b[0..1] for chunk c0, b[2..3] c0 + 1.
    __device__ __forceinline__ void load_b_trans(uint32_t (&b)[4], int k0, int c0, int lane) const {
        ldsm_x4_trans(b, chunk(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), c0 + (lane >> 4)));
    }
};

// acc[kNB][4] (+)= A(16 x 16 kSteps, from tile a at rows row0) * B^T, B stored as tile b with
// rows = n in [0, 8 kNB).
template <class Elem, int kNB, int kSteps, class TA, class TB>
__device__ __forceinline__ void mma_abt(float (&acc)[kNB][4], const TA& a, int row0, const TB& b, int lane) {
    static_assert(kNB % 2 == 0, "n blocks come in pairs");
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
        uint32_t af[4];
        a.load_a(af, row0, ks, lane);
#pragma unroll
        for (int nb = 0; nb < kNB; nb += 2) {
            uint32_t bf[4];
            b.load_b(bf, nb * 8, ks, lane);
            ElemOps<Elem>::mma(acc[nb], af, bf[0], bf[1]);
            ElemOps<Elem>::mma(acc[nb + 1], af, bf[2], bf[3]);
        }
    }
}

// Same with the A fragments already in registers.
template <class Elem, int kNB, int kSteps, class TB>
__device__ __forceinline__ void mma_abt_regs(float (&acc)[kNB][4], const uint32_t (&af)[kSteps][4], const TB& b,
                                             int lane) {
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
#pragma unroll
        for (int nb = 0; nb < kNB; nb += 2) {
            uint32_t bf[4];
            b.load_b(bf, nb * 8, ks, lane);
            ElemOps<Elem>::mma(acc[nb], af[ks], bf[0], bf[1]);
            ElemOps<Elem>::mma(acc[nb + 1], af[ks], bf[2], bf[3]);
        }
    }
}

// Pack fp32 C fragments of a 16 x (16 kSteps) block into the A fragments of one product.
template <class Elem, int kSteps>
__device__ __forceinline__ void c_to_a(uint32_t (&af)[kSteps][4], const float (&c)[2 * kSteps][4]) {
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
        af[ks][0] = ElemOps<Elem>::pack(c[2 * ks][0], c[2 * ks][1]);
        af[ks][1] = ElemOps<Elem>::pack(c[2 * ks][2], c[2 * ks][3]);
        af[ks][2] = ElemOps<Elem>::pack(c[2 * ks + 1][0], c[2 * ks + 1][1]);
        af[ks][3] = ElemOps<Elem>::pack(c[2 * ks + 1][2], c[2 * ks + 1][3]);
    }
}

// acc[kNB][4] (+)= A(registers, k = rows of tile b) * B, B stored as is (rows = k, n contiguous).
template <class Elem, int kNB, int kSteps, class TB>
__device__ __forceinline__ void mma_ab_regs(float (&acc)[kNB][4], const uint32_t (&af)[kSteps][4], const TB& b,
                                            int lane) {
    static_assert(kNB % 2 == 0, "n blocks come in pairs");
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
#pragma unroll
        for (int nb = 0; nb < kNB; nb += 2) {
            uint32_t bf[4];
            b.load_b_trans(bf, ks * 16, nb, lane);
            ElemOps<Elem>::mma(acc[nb], af[ks], bf[0], bf[1]);
            ElemOps<Elem>::mma(acc[nb + 1], af[ks], bf[2], bf[3]);
        }
    }
}

template <int kN>
__device__ __forceinline__ void zero(float (&acc)[kN][4]) {
#pragma unroll
    for (int i = 0; i < kN; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// Reduce over the 4 lanes of a quad (the lanes that share a row of a C fragment).
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

__device__ __forceinline__ bool quad_any(bool x) {
    int v = x;
    v |= __shfl_xor_sync(0xffffffffu, v, 1);
    v |= __shfl_xor_sync(0xffffffffu, v, 2);
    return v != 0;
}

}  // namespace jfa
