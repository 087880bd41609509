// Which kernel path serves a device: the Hopper wgmma forward/JVP when this build holds sm_90a
// code (JFA_SM90A, set by the build) and the device is compute capability 9.0; the portable
// mma.sync kernels otherwise. JFA_CUDA_SM90=0 in the environment forces the portable path and =1 the
// sm_90a one where it can run (to compare the two). Host code only; the tile shapes the Python side builds
// descriptions for follow the same answer.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "tile_shapes.h"

namespace jfa {

// The sm_90a kernels serve Hopper by default (they passed the GPU suite, compute-sanitizer and the
// wgmma self-test: bench/results/cuda_sm90_dev_1); JFA_CUDA_SM90=0 opts out.
constexpr bool kSm90ByDefault = true;

inline bool sm90_path(int device) {
#ifdef JFA_SM90A
    const char* env = std::getenv("JFA_CUDA_SM90");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    if (!kSm90ByDefault && (env == nullptr || std::strcmp(env, "1") != 0)) return false;
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return major == 9 && minor == 0;
#else
    (void)device;
    return false;
#endif
}

inline int current_device() {
    int d = 0;
    if (cudaGetDevice(&d) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return d;
}

inline TileShape fwd_tile_shape(bool jvp, int device) {
    if (sm90_path(device)) return jvp ? kJvpTilesSm90 : kFwdTilesSm90;
    return jvp ? kJvpTiles : kFwdTiles;
}

inline TileShape bwd_q_tile_shape(int device) { return sm90_path(device) ? kBwdQTilesSm90 : kBwdQTiles; }
inline TileShape bwd_kv_tile_shape(int device) { return sm90_path(device) ? kBwdKVTilesSm90 : kBwdKVTiles; }

}  // namespace jfa
