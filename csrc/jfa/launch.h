// Launch templates: grid, block, dynamic shared memory and error checks per direction.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "arch.h"
#include "bwd_kernel.h"
#include "bwd_kernel_sm90.h"
#include "bwd_kernel_sm90_warp_specialised.h"
#include "fwd_kernel.h"
#include "fwd_kernel_sm90_warp_specialised.h"
#include "registry.h"
#include "tensor_maps.h"

namespace jfa {

inline void check_cuda(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("jvp_flash_attn CUDA: ") + what + ": " + cudaGetErrorString(e));
}

inline void check_tiles(int built_m, int built_n, int want_m, int want_n, const char* which) {
    if (built_m != want_m || built_n != want_n) {
        throw std::invalid_argument(std::string("jvp_flash_attn CUDA: ") + which + " tile description was built for " +
                                    std::to_string(built_m) + "x" + std::to_string(built_n) + " tiles, the kernel uses " +
                                    std::to_string(want_m) + "x" + std::to_string(want_n));
    }
}

inline void check_grid_y(int y) {
    if (y > 65535) throw std::invalid_argument("jvp_flash_attn CUDA: batch x heads must be at most 65535, got " + std::to_string(y));
}

template <class Kernel>
void set_smem(Kernel kernel, int bytes) {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
               "raising the dynamic shared memory limit");
}

// A forward or JVP kernel over the query tiles; `extra` follows the params (the tensor maps of the
// warp-specialised kernels).
template <class Tr, class Kernel, class... Extra>
void launch_fwd_with(Kernel kernel, bool jvp, const AttnParams& p, cudaStream_t stream, const Extra&... extra) {
    check_tiles(p.q_tiles_block_m, p.q_tiles_block_n, Tr::kBlockM, Tr::kBlockN, "query");
    check_grid_y(p.batch * p.heads_q);
    if (p.num_q_tiles == 0) return;
    set_smem(kernel, Tr::kSmemBytes);
    kernel<<<dim3(p.num_q_tiles, p.batch * p.heads_q), Tr::kThreads, Tr::kSmemBytes, stream>>>(p, extra...);
    check_cuda(cudaGetLastError(), jvp ? "launching the forward+JVP kernel" : "launching the forward kernel");
}

// The tensor map of one operand, boxes of `box` rows: a query-side one (q, tq, dO: Sq rows of Hq
// heads) or a key-side one (k, v, tk, tv: Sk rows of Hk heads).
template <class Elem>
bool encode_query_operand(CUtensorMap* map, const AttnParams& p, const void* x, const Strides& s, int cols, int box) {
    return encode_panel_map(map, std::is_same_v<Elem, __nv_bfloat16>, x, s, p.batch, p.seqlen_q, p.heads_q, cols, box);
}
template <class Elem>
bool encode_key_operand(CUtensorMap* map, const AttnParams& p, const void* x, const Strides& s, int cols, int box) {
    return encode_panel_map(map, std::is_same_v<Elem, __nv_bfloat16>, x, s, p.batch, p.seqlen_k, p.heads_k, cols, box);
}

// The tensor maps of the warp-specialised kernels (q, k, v, and tq, tk, tv for the JVP); false when
// the TMA unit cannot describe an operand (the Python side passes 16-byte aligned pointers and
// strides, none of them 0, which it always can).
template <class Tr, bool kJvp>
bool encode_fwd_maps(const AttnParams& p, FwdTensorMaps& maps) {
    using E = typename Tr::Elem;
    constexpr int kDQK = Tr::kDQK, kDV = Tr::kDV, bm = Tr::kBlockM, bn = Tr::kBlockN;
    const bool ok = encode_query_operand<E>(&maps.q, p, p.q, p.q_stride, kDQK, bm) &&
                    encode_key_operand<E>(&maps.k, p, p.k, p.k_stride, kDQK, bn) &&
                    encode_key_operand<E>(&maps.v, p, p.v, p.v_stride, kDV, bn);
    return ok && (!kJvp || (encode_query_operand<E>(&maps.tq, p, p.tq, p.tq_stride, kDQK, bm) &&
                            encode_key_operand<E>(&maps.tk, p, p.tk, p.tk_stride, kDQK, bn) &&
                            encode_key_operand<E>(&maps.tv, p, p.tv, p.tv_stride, kDV, bn)));
}

// The tensor maps of the warp-specialised backward (q, dO by query tile, k, v by key tile).
template <class Tr>
bool encode_bwd_maps(const AttnParams& p, BwdTensorMaps& maps) {
    using E = typename Tr::Elem;
    return encode_query_operand<E>(&maps.q, p, p.q, p.q_stride, Tr::kDQK, Tr::kBlockM) &&
           encode_query_operand<E>(&maps.do_, p, p.do_, p.do_stride, Tr::kDV, Tr::kBlockM) &&
           encode_key_operand<E>(&maps.k, p, p.k, p.k_stride, Tr::kDQK, Tr::kBlockN) &&
           encode_key_operand<E>(&maps.v, p, p.v, p.v_stride, Tr::kDV, Tr::kBlockN);
}

// A direction whose tensor maps could not be encoded: the driver lacks the encoder, or an operand
// is one the TMA unit cannot describe (the Python side passes none such).
[[noreturn]] inline void refuse_unencodable(const std::string& what) {
    if (encode_tiled_fn() == nullptr) {
        throw std::runtime_error("jvp_flash_attn CUDA: the " + what +
                                 " needs the driver's tensor-map encoder (cuTensorMapEncodeTiled), which this "
                                 "driver does not provide");
    }
    throw std::invalid_argument("jvp_flash_attn CUDA: the TMA unit cannot describe an operand of the " + what +
                                " (its pointer or strides); pass tensors with 16-byte aligned, non-zero strides");
}

template <class Elem, int kDQK, int kDV, bool kJvp>
void launch_fwd(const AttnParams& p, cudaStream_t stream) {
    const bool hint = kJvp && p.zero_tangent_hint;   // the JVP's hinted instantiation
    if (hint && p.k_zero_tangent == nullptr) {
        throw std::invalid_argument("jvp_flash_attn CUDA: the zero-tangent hint needs k_zero_tangent");
    }
    if (p.family == KernelFamily::kSm90) {
        using TrWarpSpecialised = FwdWarpSpecialisedTraitsSm90<Elem, kDQK, kDV, kJvp>;
        FwdTensorMaps maps{};
        if (!encode_fwd_maps<TrWarpSpecialised, kJvp>(p, maps)) refuse_unencodable(kJvp ? "forward+JVP" : "forward");
        if (hint) {
            launch_fwd_with<TrWarpSpecialised>(attention_fwd_kernel_sm90_warp_specialised<TrWarpSpecialised, kJvp>, kJvp,
                                               p, stream, maps);
        } else {
            launch_fwd_with<TrWarpSpecialised>(attention_fwd_kernel_sm90_warp_specialised<TrWarpSpecialised>, kJvp, p,
                                               stream, maps);
        }
    } else {
        using Tr = FwdTraits<Elem, kDQK, kDV, kJvp>;
        launch_fwd_with<Tr>(attention_fwd_kernel<Tr, kJvp>, kJvp, p, stream);
    }
}

// delta = rowsum(dO o O), the first pass of both backward forms.
template <class Elem>
void launch_bwd_delta(const AttnParams& p, cudaStream_t stream) {
    constexpr int kDeltaRows = 8;
    attention_bwd_delta_kernel<Elem><<<dim3((p.seqlen_q + kDeltaRows - 1) / kDeltaRows, p.batch * p.heads_q),
                                       32 * kDeltaRows, 0, stream>>>(p);
    check_cuda(cudaGetLastError(), "launching the backward preprocess kernel");
}

// The portable family's two-kernel backward: tile checks first, then delta, dK/dV and dQ.
template <class Elem, class TrKV, class TrQ, class KVKernel, class QKernel>
void launch_bwd_with(KVKernel kv, QKernel q, const AttnParams& p, cudaStream_t stream) {
    check_tiles(p.q_tiles_block_m, p.q_tiles_block_n, TrQ::kBlockM, TrQ::kBlockN, "query");
    check_tiles(p.k_tiles_block_m, p.k_tiles_block_n, TrKV::kBlockM, TrKV::kBlockN, "key");
    check_grid_y(p.batch * p.heads_q);
    if (p.seqlen_q == 0 || p.seqlen_k == 0) return;
    launch_bwd_delta<Elem>(p, stream);
    set_smem(kv, TrKV::kSmemBytes);
    kv<<<dim3(p.num_k_tiles, p.batch * p.heads_k), TrKV::kThreads, TrKV::kSmemBytes, stream>>>(p);
    check_cuda(cudaGetLastError(), "launching the dK/dV kernel");
    set_smem(q, TrQ::kSmemBytes);
    q<<<dim3(p.num_q_tiles, p.batch * p.heads_q), TrQ::kThreads, TrQ::kSmemBytes, stream>>>(p);
    check_cuda(cudaGetLastError(), "launching the dQ kernel");
}

// The one-kernel backward (sm_90a): zero the float32 dQ buffer (B x Hq x Sq rounded up to whole query
// tiles, x Dqk; dq_groups of them in the ordered form), delta, the fused dK/dV/dQ kernel, then
// dq = scale * buffer (the groups' buffers summed in order first).
template <class Elem, int kDQK, int kDV>
void launch_bwd_fused(const AttnParams& p, cudaStream_t stream) {
    using Tr = BwdWarpSpecialisedTraitsSm90<Elem, kDQK, kDV>;
    check_tiles(p.k_tiles_block_m, p.k_tiles_block_n, Tr::kBlockM, Tr::kBlockN, "key");
    check_grid_y(p.batch * p.heads_q);
    if (p.seqlen_q == 0 || p.seqlen_k == 0) return;
    BwdTensorMaps maps{};
    if (!encode_bwd_maps<Tr>(p, maps)) refuse_unencodable("backward");
    const int64_t rows = static_cast<int64_t>(p.batch) * p.heads_q * p.seqlen_q;
    const int64_t padded = static_cast<int64_t>(p.batch) * p.heads_q * ((p.seqlen_q + Tr::kBlockM - 1) / Tr::kBlockM) * Tr::kBlockM;
    // the ordered form's groups (params.h, dq_groups): one buffer and one set of semaphores each
    const int64_t groups = p.dq_groups;
    if (groups < 1 || (groups > 1 && p.dq_group_tiles != padded / Tr::kBlockM)) {
        throw std::invalid_argument("jvp_flash_attn CUDA: dq_group_tiles must be the dQ tiles of one group's buffer (" +
                                    std::to_string(padded / Tr::kBlockM) + "), got " + std::to_string(p.dq_group_tiles));
    }
    check_cuda(cudaMemsetAsync(p.dq_accum, 0, groups * padded * kDQK * sizeof(float), stream), "zeroing the dQ buffer");
    if (p.dq_order == DqOrder::kKeyTile) {
        check_cuda(cudaMemsetAsync(p.dq_semaphore, 0, groups * (padded / Tr::kBlockM) * sizeof(int32_t), stream),
                   "zeroing the dQ semaphores");
    }
    launch_bwd_delta<Elem>(p, stream);
    auto kernel = attention_bwd_kernel_sm90_warp_specialised<Tr>;
    set_smem(kernel, Tr::kSmemBytes);
    kernel<<<dim3(p.num_k_tiles, p.batch * p.heads_k), Tr::kThreads, Tr::kSmemBytes, stream>>>(p, maps);
    check_cuda(cudaGetLastError(), "launching the fused backward kernel");
    constexpr int kThreads = 256;
    const int64_t work = rows * (kDQK / kDQConvertCols);
    const auto convert = groups > 1 ? attention_bwd_dq_convert_kernel<Elem, kDQK, Tr::kBlockM, true>
                                    : attention_bwd_dq_convert_kernel<Elem, kDQK, Tr::kBlockM, false>;
    convert<<<static_cast<unsigned>((work + kThreads - 1) / kThreads), kThreads, 0, stream>>>(p);
    check_cuda(cudaGetLastError(), "launching the dQ conversion kernel");
}

template <class Elem, int kDQK, int kDV>
void launch_bwd(const AttnParams& p, cudaStream_t stream) {
    if (p.family == KernelFamily::kSm90) {   // the fused backward is the family's only one
        if (p.dq_accum == nullptr) {
            throw std::invalid_argument("jvp_flash_attn CUDA: the sm_90a backward is the fused one, which needs dq_accum");
        }
        launch_bwd_fused<Elem, kDQK, kDV>(p, stream);
    } else {
        using TrKV = BwdKVTraits<Elem, kDQK, kDV>;
        using TrQ = BwdQTraits<Elem, kDQK, kDV>;
        launch_bwd_with<Elem, TrKV, TrQ>(attention_bwd_kv_kernel<TrKV>, attention_bwd_q_kernel<TrQ>, p, stream);
    }
}

}  // namespace jfa
