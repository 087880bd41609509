// Host side of the TMA loads: encode a tensor map for one (B, S, H, D) 16-bit operand (element
// strides as in params.h, unit stride on D) whose boxes are one 64-column panel of `box_rows`
// rows, in the 128-byte-swizzled layout of PanelTile (wgmma.h). The driver's encoder is reached
// through the runtime (cudaGetDriverEntryPointByVersion), so the module does not link libcuda.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "params.h"
#include "wgmma.h"

namespace jfa {

using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

inline EncodeTiledFn encode_tiled_fn() {
    static EncodeTiledFn fn = [] {
        void* f = nullptr;
        cudaDriverEntryPointQueryResult status{};
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &status) !=
                cudaSuccess ||
            status != cudaDriverEntryPointSuccess) {
            cudaGetLastError();
            f = nullptr;
        }
        return reinterpret_cast<EncodeTiledFn>(f);
    }();
    return fn;
}

// False when the driver cannot describe the operand (no encoder, or a pointer / stride the TMA
// unit does not accept); the launcher then reports an error.
inline bool encode_panel_map(CUtensorMap* map, bool bf16, const void* base, const Strides& s, int batch, int rows,
                             int heads, int cols, int box_rows) {
    const EncodeTiledFn encode = encode_tiled_fn();
    if (encode == nullptr || batch <= 0 || rows <= 0 || heads <= 0) return false;
    // A dimension of extent 1 is never stepped along; give it a stride the encoder accepts
    // whatever the tensor's own stride for it is.
    const int64_t row_bytes = rows == 1 ? int64_t{cols} * 2 : s.row * 2, packed = row_bytes * rows;
    const cuuint64_t dims[4] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows),
                                static_cast<cuuint64_t>(heads), static_cast<cuuint64_t>(batch)};
    const cuuint64_t strides[3] = {static_cast<cuuint64_t>(row_bytes),
                                   static_cast<cuuint64_t>(heads == 1 ? packed : s.head * 2),
                                   static_cast<cuuint64_t>(batch == 1 ? packed * heads : s.batch * 2)};
    const cuuint32_t box[4] = {static_cast<cuuint32_t>(kPanelElems), static_cast<cuuint32_t>(box_rows), 1, 1};
    const cuuint32_t unit[4] = {1, 1, 1, 1};
    return encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4,
                  const_cast<void*>(base), dims, strides, box, unit, CU_TENSOR_MAP_INTERLEAVE_NONE,
                  CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

}  // namespace jfa
