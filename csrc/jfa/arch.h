// Whether a device can run the Hopper kernel family: the build holds sm_90a code (JFA_SM90A, set by
// the build) and the device is compute capability 9.0. Which family a call runs is decided on the
// Python side (python/jvp_flash_attn/backends/cuda_kernel_choice.py) and passed down in the
// parameters; the module checks it here. Host code only.
#pragma once

#include <cuda_runtime.h>

namespace jfa {

inline bool sm90_capable(int device) {
#ifdef JFA_SM90A
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

}  // namespace jfa
