// Hopper (sm_90a) verbs: shared tiles in the 128-byte-swizzled layout that wgmma reads through
// matrix descriptors, the descriptors themselves, and the fences around asynchronous products.
//
// Layout of a PanelTile<kRows, kCols> (16-bit elements): kCols / 64 panels one after the other,
// each kRows rows of 128 bytes (64 elements); in row r the 16-byte chunk c sits at chunk c ^ (r % 8).
// Eight rows form one 1024-byte swizzle atom, so panels start 1024-byte aligned. This is the
// canonical SWIZZLE_128B layout for both reads:
//   K-major (q, k as the A / B of q k^T): rows are m or n, 8-row groups 1024 bytes apart (SBO);
//     a k16 step inside a panel moves the start address by 32 bytes.
//   N-major (v as the B of p v, transposed read): rows are k, 8-row groups 1024 bytes apart (SBO),
//     the next 64 columns of n are the next panel (LBO = panel bytes); a k16 step is 16 rows.
#pragma once

#include <cstdint>

#include "mma.h"
#include "wgmma_ops.h"

namespace jfa {

constexpr int kPanelElems = 64;    // 16-bit elements in one 128-byte row of a panel
constexpr int kSwizzleAtom = 1024; // bytes of one 8-row swizzle atom

template <int kRows, int kCols>
struct PanelTile {
    static constexpr int kPanels = kCols / kPanelElems;
    static constexpr int kPanelBytes = kRows * 128;
    static constexpr int kBytes = kPanels * kPanelBytes;
    static_assert(kCols % kPanelElems == 0 && kRows % 8 == 0, "panels of 64 columns, rows in groups of 8");
    uint32_t base;  // shared address, 1024-byte aligned

    __device__ __forceinline__ uint32_t chunk(int row, int c) const {
        return base + static_cast<uint32_t>((c >> 3) * kPanelBytes + row * 128 + (((c & 7) ^ (row & 7)) << 4));
    }

    template <int kThreads>
    __device__ __forceinline__ void load_async(const void* gbase, int64_t row_stride, int row0, int num_rows,
                                               int tid) const {
        copy_rows_async<kRows, kCols, kThreads>(*this, gbase, row_stride, row0, num_rows, tid);
    }

    // Descriptor of the k16 step ks for a K-major read of rows [row0, ...).
    __device__ __forceinline__ uint64_t desc_k_major(int row0, int ks) const {
        return desc_at(static_cast<uint32_t>((ks >> 2) * kPanelBytes + row0 * 128 + (ks & 3) * 32), 16);
    }
    // Descriptor of the k16 step ks (rows [16 ks, 16 ks + 16)) for an N-major (transposed) read,
    // from panel `panel` on (columns [64 panel, ...)).
    __device__ __forceinline__ uint64_t desc_n_major(int ks, int panel = 0) const {
        return desc_at(static_cast<uint32_t>(panel * kPanelBytes + ks * 16 * 128), kPanelBytes);
    }

    // The descriptor of base + offset, as the base's descriptor plus offset / 16: the start
    // address field holds address / 16 in its low 14 bits, and a shared address is below 256 KB,
    // so the sum never carries out of it. Built this way, the part that depends on the base is
    // computed once per tile and each k16 step adds a constant (one instruction, not a masked
    // shift and an or per product).
    __device__ __forceinline__ uint64_t desc_at(uint32_t offset, uint32_t lbo) const {
        constexpr uint64_t kLayout = (static_cast<uint64_t>(kSwizzleAtom >> 4) << 32) | (1ull << 62);  // SBO; 128-byte swizzle
        return ((static_cast<uint64_t>(lbo >> 4) << 16) | kLayout | (base >> 4)) + (offset >> 4);
    }
};

// Ordering around the asynchronous products.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory"); }
// Shared memory written by the generic proxy (plain stores, stmatrix, cp.async) and read next by
// the async proxy (wgmma, the TMA unit).
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Hold registers that an asynchronous product reads or writes at this point of the program (called
// after the wait): the compiler may not move their other uses across it (nor reuse an operand's
// register before the wait).
template <int kN>
__device__ __forceinline__ void hold_across_wgmma(float (&r)[kN][4]) {
#pragma unroll
    for (int i = 0; i < kN; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(r[i][e])::"memory");
}
template <int kN>
__device__ __forceinline__ void hold_across_wgmma(uint32_t (&r)[kN][4]) {
#pragma unroll
    for (int i = 0; i < kN; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(r[i][e])::"memory");
}

}  // namespace jfa
