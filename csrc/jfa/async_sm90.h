// Hopper's asynchronous machinery for warp-specialised kernels (sm_90): transaction barriers
// (mbarrier) in shared memory, tile loads by the tensor memory accelerator (TMA) that complete
// on such a barrier, named barriers that order two warpgroups, and register reallocation between
// warpgroups (setmaxnreg, sm_90a only).
#pragma once

#include <cuda.h>   // CUtensorMap (the type only; maps are encoded on the host, tensor_maps.h)

#include <cstdint>

namespace jfa {

// A barrier in shared memory that completes a phase when `count` threads have arrived and every
// byte announced with arrive_expect_tx has landed. Phases alternate parity 0, 1, 0, ...
struct MBarrier {
    uint32_t addr;   // shared address, 8-byte aligned

    __device__ __forceinline__ void init(int count) const {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(count) : "memory");
    }
    __device__ __forceinline__ void arrive() const {
        asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(addr) : "memory");
    }
    // Arrive and announce `bytes` that asynchronous copies will deliver to this phase.
    __device__ __forceinline__ void arrive_expect_tx(int bytes) const {
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(addr), "r"(bytes) : "memory");
    }
    // Block until the phase of the given parity has completed (a fresh barrier counts as having
    // completed the phase of parity 1, so producers start by waiting on parity 1).
    __device__ __forceinline__ void wait(int parity) const {
        asm volatile(
            "{\n"
            ".reg .pred done;\n"
            "WAIT_%=:\n"
            "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
            "@!done bra WAIT_%=;\n"
            "}\n" ::"r"(addr),
            "r"(parity)
            : "memory");
    }
};

// Barrier initialisation visible to the asynchronous proxy (the TMA unit) before first use.
__device__ __forceinline__ void fence_barrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// One box of a 4-D tensor map (coordinates innermost first: column, row, head, batch) into shared
// memory at dst, completing `bar`'s transaction. Out-of-range rows arrive as zeros and count.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, const MBarrier& bar, int c0, int c1,
                                            int c2, int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], [%6];\n"
        ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar.addr)
        : "memory");
}

__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Named barriers (ids 1-15; 0 is __syncthreads): sync waits until `threads` have arrived or synced,
// arrive only counts this warp in.
__device__ __forceinline__ void named_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Move registers between warpgroups: every thread of the executing warpgroup now has kRegs.
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Tensor maps of one forward (q, k, v) or forward+JVP call (and tq, tk, tv), passed by value (as
// a __grid_constant__ kernel parameter, the form the TMA unit reads them from).
struct FwdTensorMaps {
    CUtensorMap q, k, v, tq, tk, tv;
};

}  // namespace jfa
