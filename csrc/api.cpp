// pybind11 module jvp_flash_attn._cuda: torch-free entry points. A launch takes the kernels'
// parameter struct (AttnParams, bound below: device pointers as ints, shapes, (batch, row, head)
// element strides, the softmax scale, the kernel family, the tile descriptions' device pointers),
// the dtype, the device and the CUDA stream handle as an int. All work on tensors (checks,
// allocation, autograd) lives in python/jvp_flash_attn/backends/ (cuda_launch_args.py builds the struct).
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <tuple>
#include <utility>
#include <type_traits>
#include <stdexcept>
#include <string>
#include <vector>

#include "jfa/arch.h"
#include "jfa/params.h"
#include "jfa/registry.h"
#include "jfa/tile_shapes.h"

namespace py = pybind11;

// What the build recorded (csrc/build_info.py sets these; a build by other means leaves them empty).
#ifndef JFA_BUILD_SASS
#define JFA_BUILD_SASS ""
#endif
#ifndef JFA_BUILD_PTX
#define JFA_BUILD_PTX ""
#endif
#ifndef JFA_BUILD_VARIANTS
#define JFA_BUILD_VARIANTS ""
#endif
#ifndef JFA_BUILD_GIT
#define JFA_BUILD_GIT "unknown"
#endif
#ifndef JFA_BUILD_NVCC
#define JFA_BUILD_NVCC ""
#endif
#ifndef JFA_BUILD_TILES
#define JFA_BUILD_TILES ""
#endif

namespace jfa {

std::map<VariantKey, LaunchFn>& registry() {
    static std::map<VariantKey, LaunchFn> r;
    return r;
}

namespace {

const char* direction_name(int d) {
    switch (static_cast<Direction>(d)) {
        case Direction::kFwd: return "fwd";
        case Direction::kJvp: return "jvp";
        case Direction::kBwd: return "bwd";
    }
    return "?";
}

const char* dtype_name(int d) { return static_cast<DType>(d) == DType::kBF16 ? "bf16" : "fp16"; }

DType parse_dtype(const std::string& s) {
    if (s == "bf16") return DType::kBF16;
    if (s == "fp16") return DType::kF16;
    throw std::invalid_argument("dtype must be 'bf16' or 'fp16', got '" + s + "'");
}

void require_gpu() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();  // clear the sticky-free error so later calls report their own
        throw std::runtime_error(std::string("jvp_flash_attn CUDA extension: no CUDA GPU is available (") +
                                 (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") + ")");
    }
}

void check_device(cudaError_t e) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("jvp_flash_attn CUDA: selecting the device: ") + cudaGetErrorString(e));
}

// The pointers a direction reads or writes must be set (a missing one would be a null access on the GPU).
using Required = std::initializer_list<std::pair<const void*, const char*>>;

void require(Required fields) {
    for (const auto& [ptr, name] : fields) {
        if (ptr == nullptr) throw std::invalid_argument(std::string("jvp_flash_attn CUDA: the parameter '") + name + "' is not set");
    }
}

void run(Direction dir, const AttnParams& p, const std::string& dtype, int device, uint64_t stream_handle,
         Required direction_fields) {
    require_gpu();
    if (p.heads_k <= 0 || p.heads_q % p.heads_k != 0) throw std::invalid_argument("heads_q must be a multiple of heads_k");
    require({{p.q, "q"}, {p.k, "k"}, {p.v, "v"}, {p.o, "o"}, {p.lse, "lse"}, {p.q_tiles.full_ptr, "q_tiles"},
             {p.maps.rule, "maps"}});
    require(direction_fields);
    const DType dt = parse_dtype(dtype);
    const VariantKey key{static_cast<int>(dir), static_cast<int>(dt), p.head_dim_qk, p.head_dim_v};
    const auto it = registry().find(key);
    if (it == registry().end()) {
        throw std::invalid_argument(std::string("this build has no ") + direction_name(static_cast<int>(dir)) +
                                    " kernel for " + dtype_name(static_cast<int>(dt)) + " with head dims (" +
                                    std::to_string(p.head_dim_qk) + ", " + std::to_string(p.head_dim_v) + ")");
    }
    if (p.family == KernelFamily::kSm90 && !sm90_capable(device)) {
        throw std::invalid_argument("jvp_flash_attn CUDA: the sm_90a kernel family was chosen for device " +
                                    std::to_string(device) + ", which cannot run it (or this build does not hold it)");
    }
    // This module links its own (static) CUDA runtime, whose current device is not the
    // caller's: select the device the tensors live on before launching on their stream.
    check_device(cudaSetDevice(device));
    const auto stream = reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(stream_handle));
    try {
        it->second(p, stream);
    } catch (const std::runtime_error& e) {
        // "no kernel image" and PTX errors depend on what the build holds: say it
        throw std::runtime_error(std::string(e.what()) + " (this build: " JFA_BUILD_SASS " + PTX " JFA_BUILD_PTX
                                 ", nvcc " JFA_BUILD_NVCC ")");
    }
}

void forward(const AttnParams& p, const std::string& dtype, int device, uint64_t stream) {
    run(Direction::kFwd, p, dtype, device, stream, {});
}

void forward_jvp(const AttnParams& p, const std::string& dtype, int device, uint64_t stream) {
    run(Direction::kJvp, p, dtype, device, stream, {{p.tq, "tq"}, {p.tk, "tk"}, {p.tv, "tv"}, {p.to, "to"}});
}

void backward(const AttnParams& p, const std::string& dtype, int device, uint64_t stream) {
    if (p.dq_order == DqOrder::kKeyTile) {
        require({{p.dq_accum, "dq_accum"}, {p.dq_semaphore, "dq_semaphore"}, {p.dq_turns.full_ptr, "dq_turns"}});
    }
    // dq_groups buffers (and semaphores) only in the ordered form; the fast form adds into one
    const bool pow2 = p.dq_groups >= 1 && (p.dq_groups & (p.dq_groups - 1)) == 0;
    if (!pow2 || (p.dq_groups > 1 && p.dq_order != DqOrder::kKeyTile)) {
        throw std::invalid_argument("jvp_flash_attn CUDA: dq_groups must be 1, or a power of two in the ordered "
                                    "(key_tile) backward; got " + std::to_string(p.dq_groups));
    }
    run(Direction::kBwd, p, dtype, device, stream,
        {{p.do_, "do_"}, {p.dq, "dq"}, {p.dk, "dk"}, {p.dv, "dv"}, {p.delta, "delta"}, {p.k_tiles.full_ptr, "k_tiles"}});
}

py::list variants() {
    py::list out;
    for (const auto& kv : registry()) {
        const auto& [dir, dt, dqk, dv] = kv.first;
        out.append(py::make_tuple(direction_name(dir), dtype_name(dt), dqk, dv));
    }
    return out;
}

KernelFamily parse_family(const std::string& s) {
    if (s == "sm90a") return KernelFamily::kSm90;
    if (s == "portable") return KernelFamily::kPortable;
    throw std::invalid_argument("kernel family must be 'sm90a' or 'portable', got '" + s + "'");
}

// (block_m, block_n) of each walk of a kernel family at the given head dims; None for a walk the
// family has no kernel for.
py::dict tile_shapes(const std::string& family, int head_dim_qk, int head_dim_v) {
    const KernelFamily f = parse_family(family);
    const int head_dim = tile_head_dim(head_dim_qk, head_dim_v);
    auto shape = [f, head_dim](Walk walk) {
        const TileShape s = tile_shape(walk, f, head_dim);
        return s.block_m > 0 ? py::object(py::make_tuple(s.block_m, s.block_n)) : py::object(py::none());
    };
    py::dict d;
    d["fwd"] = shape(Walk::kFwd);
    d["jvp"] = shape(Walk::kJvp);
    d["bwd_q"] = shape(Walk::kBwdQ);
    d["bwd_kv"] = shape(Walk::kBwdKV);
    d["bwd_fused"] = shape(Walk::kBwdFused);
    return d;
}

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start < s.size()) {
        const size_t end = std::min(s.find(';', start), s.size());
        if (end > start) out.push_back(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

py::dict build_info() {
    py::dict d;
    d["sass"] = split(JFA_BUILD_SASS);
    d["ptx"] = std::string(JFA_BUILD_PTX);
    d["variants"] = std::string(JFA_BUILD_VARIANTS);
    d["git"] = std::string(JFA_BUILD_GIT);
    d["nvcc"] = std::string(JFA_BUILD_NVCC);
    d["tiles"] = std::string(JFA_BUILD_TILES);
    d["cuda_runtime"] = CUDART_VERSION;   // the static runtime linked in, e.g. 13000
    return d;
}

// (major, minor) of a device, read without creating a context (importing the package must not).
py::object compute_capability(int device) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
        cudaGetLastError();
        return py::none();
    }
    return py::make_tuple(major, minor);
}

// Why this module's runtime sees no device (e.g. a driver older than the linked runtime), or None.
py::object device_error() {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return py::str(cudaGetErrorString(e));
    }
    return py::none();
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

}  // namespace
}  // namespace jfa

// Device pointers cross as ints, strides as (batch, row, head) tuples.
template <class T>
uint64_t address(T* ptr) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ptr)); }
template <class T>
T* pointer(uint64_t address) { return reinterpret_cast<T*>(static_cast<uintptr_t>(address)); }

#define JFA_POINTER(Struct, field)                                                                          \
    def_property(#field, [](const Struct& s) { return address(s.field); },                                 \
                 [](Struct& s, uint64_t a) { s.field = pointer<std::remove_pointer_t<decltype(s.field)>>(a); })
#define JFA_STRIDES(field)                                                                                  \
    def_property(#field, [](const AttnParams& s) { return std::make_tuple(s.field.batch, s.field.row, s.field.head); }, \
                 [](AttnParams& s, std::tuple<int64_t, int64_t, int64_t> t) {                                \
                     s.field = Strides{std::get<0>(t), std::get<1>(t), std::get<2>(t)};                     \
                 })

void bind_params(py::module_& m) {
    using jfa::AttnParams;
    using jfa::KernelFamily;
    using jfa::Strides;
    using jfa::TileLists;
    using jfa::TokenMaps;
    py::enum_<KernelFamily>(m, "KernelFamily").value("portable", KernelFamily::kPortable).value("sm90a", KernelFamily::kSm90);
    py::enum_<jfa::DqOrder>(m, "DqOrder").value("arrival", jfa::DqOrder::kArrival).value("key_tile", jfa::DqOrder::kKeyTile);
    py::class_<TileLists>(m, "TileLists", "CSR lists of a tile description (jfa/params.h)")
        .def(py::init<>())
        .JFA_POINTER(TileLists, full_ptr).JFA_POINTER(TileLists, full_idx)
        .JFA_POINTER(TileLists, part_ptr).JFA_POINTER(TileLists, part_idx).JFA_POINTER(TileLists, part_runs)
        .JFA_POINTER(TileLists, order);
    py::class_<TokenMaps>(m, "TokenMaps", "per-token maps of PARTIAL tiles (jfa/params.h)")
        .def(py::init<>())
        .JFA_POINTER(TokenMaps, q_seg).JFA_POINTER(TokenMaps, q_pos).JFA_POINTER(TokenMaps, k_seg)
        .JFA_POINTER(TokenMaps, k_pos).JFA_POINTER(TokenMaps, rule)
        .def_readwrite("num_k_segments", &TokenMaps::num_k_segments);
    py::class_<AttnParams>(m, "AttnParams", "the one struct the kernels see (jfa/params.h); unset pointers are null")
        .def(py::init<>())
        .def_readwrite("batch", &AttnParams::batch).def_readwrite("seqlen_q", &AttnParams::seqlen_q)
        .def_readwrite("seqlen_k", &AttnParams::seqlen_k).def_readwrite("heads_q", &AttnParams::heads_q)
        .def_readwrite("heads_k", &AttnParams::heads_k).def_readwrite("head_dim_qk", &AttnParams::head_dim_qk)
        .def_readwrite("head_dim_v", &AttnParams::head_dim_v).def_readwrite("scale", &AttnParams::scale)
        .def_readwrite("family", &AttnParams::family)
        .JFA_POINTER(AttnParams, q).JFA_POINTER(AttnParams, k).JFA_POINTER(AttnParams, v)
        .JFA_POINTER(AttnParams, tq).JFA_POINTER(AttnParams, tk).JFA_POINTER(AttnParams, tv)
        .JFA_POINTER(AttnParams, o).JFA_POINTER(AttnParams, to).JFA_POINTER(AttnParams, lse)
        .JFA_STRIDES(q_stride).JFA_STRIDES(k_stride).JFA_STRIDES(v_stride).JFA_STRIDES(tq_stride)
        .JFA_STRIDES(tk_stride).JFA_STRIDES(tv_stride).JFA_STRIDES(o_stride).JFA_STRIDES(to_stride)
        .JFA_POINTER(AttnParams, do_).JFA_POINTER(AttnParams, dq).JFA_POINTER(AttnParams, dk)
        .JFA_POINTER(AttnParams, dv).JFA_POINTER(AttnParams, delta).JFA_POINTER(AttnParams, dq_accum)
        .def_readwrite("dq_order", &AttnParams::dq_order).def_readwrite("dq_turns", &AttnParams::dq_turns)
        .JFA_POINTER(AttnParams, dq_semaphore)
        .def_readwrite("dq_groups", &AttnParams::dq_groups).def_readwrite("dq_group_tiles", &AttnParams::dq_group_tiles)
        .JFA_STRIDES(do_stride).JFA_STRIDES(dq_stride).JFA_STRIDES(dk_stride).JFA_STRIDES(dv_stride)
        .def_readwrite("q_tiles", &AttnParams::q_tiles).def_readwrite("k_tiles", &AttnParams::k_tiles)
        .def_readwrite("maps", &AttnParams::maps)
        .def_readwrite("zero_tangent_hint", &AttnParams::zero_tangent_hint)
        .JFA_POINTER(AttnParams, q_zero_tangent).JFA_POINTER(AttnParams, k_zero_tangent)
        .def_readwrite("num_q_tiles", &AttnParams::num_q_tiles).def_readwrite("num_k_tiles", &AttnParams::num_k_tiles)
        .def_readwrite("q_tiles_block_m", &AttnParams::q_tiles_block_m)
        .def_readwrite("q_tiles_block_n", &AttnParams::q_tiles_block_n)
        .def_readwrite("k_tiles_block_m", &AttnParams::k_tiles_block_m)
        .def_readwrite("k_tiles_block_n", &AttnParams::k_tiles_block_n);
}

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "jvp_flash_attn compiled core: torch-free masked attention forward, backward and fused forward+JVP";
    bind_params(m);
    const char* launch_args = "(params: AttnParams, dtype: 'bf16' or 'fp16', device, stream handle)";
    m.def("forward", &jfa::forward, py::arg("params"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
          (std::string("o, lse = attention(q, k, v) ") + launch_args).c_str());
    m.def("forward_jvp", &jfa::forward_jvp, py::arg("params"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
          (std::string("o, to, lse in one fused pass ") + launch_args).c_str());
    m.def("backward", &jfa::backward, py::arg("params"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
          (std::string("dq, dk, dv (dk/dv summed over GQA groups); the fused form when dq_accum is set ") +
           launch_args).c_str());
    m.def("variants", &jfa::variants, "(direction, dtype, head_dim_qk, head_dim_v) of every compiled kernel");
    m.def("tile_shapes", &jfa::tile_shapes, py::arg("family"), py::arg("head_dim_qk"), py::arg("head_dim_v"),
          "(block_m, block_n) of the tile description each walk of a kernel family ('sm90a' or 'portable') "
          "needs at these head dims, None where the family has no such kernel");
    m.def("sm90_capable", &jfa::sm90_capable, py::arg("device"),
          "whether a device can run the sm_90a kernel family (this build holds it, compute capability 9.0)");
    m.def("device_count", &jfa::device_count, "visible CUDA devices (0 when none or no driver)");
    m.def("device_error", &jfa::device_error, "why no device is visible to this module's CUDA runtime, or None");
    m.def("compute_capability", &jfa::compute_capability, py::arg("device"),
          "(major, minor) of a device, or None; creates no context");
    m.def("build_info", &jfa::build_info,
          "what the build recorded: sass (arch list), ptx (embedded for newer GPUs), variants, git, nvcc, tiles");
}
