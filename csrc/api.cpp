// pybind11 module jvp_flash_attn._cuda: torch-free entry points. Every argument is a plain
// Python value: device pointers as ints, shapes, (batch, row, head) element strides, the
// softmax scale, the tile description's device pointers, and the CUDA stream handle as an int.
// All checks on tensors, allocation and autograd live in python/jvp_flash_attn/backends/cuda_backend.py.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
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

py::object item(const py::dict& d, const char* key) {
    if (!d.contains(key)) throw std::invalid_argument(std::string("missing argument '") + key + "'");
    return d[key];
}
int64_t get_int(const py::dict& d, const char* key) { return item(d, key).cast<int64_t>(); }
template <class T>
T* get_ptr(const py::dict& d, const char* key) {
    return reinterpret_cast<T*>(static_cast<uintptr_t>(item(d, key).cast<uint64_t>()));
}
Strides get_strides(const py::dict& d, const char* key) {
    auto t = item(d, key).cast<std::tuple<int64_t, int64_t, int64_t>>();
    return Strides{std::get<0>(t), std::get<1>(t), std::get<2>(t)};
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

void fill_tiles(const py::dict& d, TileLists& lists, int& num_tiles, int& block_m, int& block_n) {
    lists.full_ptr = get_ptr<const int32_t>(d, "full_ptr");
    lists.full_idx = get_ptr<const int32_t>(d, "full_idx");
    lists.part_ptr = get_ptr<const int32_t>(d, "part_ptr");
    lists.part_idx = get_ptr<const int32_t>(d, "part_idx");
    num_tiles = static_cast<int>(get_int(d, "num_tiles"));
    block_m = static_cast<int>(get_int(d, "block_m"));
    block_n = static_cast<int>(get_int(d, "block_n"));
}

AttnParams common_params(const py::dict& d) {
    AttnParams p;
    p.batch = static_cast<int>(get_int(d, "batch"));
    p.seqlen_q = static_cast<int>(get_int(d, "seqlen_q"));
    p.seqlen_k = static_cast<int>(get_int(d, "seqlen_k"));
    p.heads_q = static_cast<int>(get_int(d, "heads_q"));
    p.heads_k = static_cast<int>(get_int(d, "heads_k"));
    p.head_dim_qk = static_cast<int>(get_int(d, "head_dim_qk"));
    p.head_dim_v = static_cast<int>(get_int(d, "head_dim_v"));
    p.scale = item(d, "scale").cast<float>();
    if (p.heads_k <= 0 || p.heads_q % p.heads_k != 0) throw std::invalid_argument("heads_q must be a multiple of heads_k");
    p.q = get_ptr<const void>(d, "q");
    p.k = get_ptr<const void>(d, "k");
    p.v = get_ptr<const void>(d, "v");
    p.q_stride = get_strides(d, "q_stride");
    p.k_stride = get_strides(d, "k_stride");
    p.v_stride = get_strides(d, "v_stride");
    p.lse = get_ptr<float>(d, "lse");
    fill_tiles(item(d, "q_tiles").cast<py::dict>(), p.q_tiles, p.num_q_tiles, p.q_tiles_block_m, p.q_tiles_block_n);
    const py::dict maps = item(d, "maps").cast<py::dict>();
    p.maps.q_seg = get_ptr<const int32_t>(maps, "q_seg");
    p.maps.q_pos = get_ptr<const int32_t>(maps, "q_pos");
    p.maps.k_seg = get_ptr<const int32_t>(maps, "k_seg");
    p.maps.k_pos = get_ptr<const int32_t>(maps, "k_pos");
    p.maps.rule = get_ptr<const int32_t>(maps, "rule");
    p.maps.num_k_segments = static_cast<int>(get_int(maps, "num_k_segments"));
    return p;
}

void run(Direction dir, const AttnParams& p, const py::dict& d) {
    require_gpu();
    const DType dt = parse_dtype(item(d, "dtype").cast<std::string>());
    const VariantKey key{static_cast<int>(dir), static_cast<int>(dt), p.head_dim_qk, p.head_dim_v};
    const auto it = registry().find(key);
    if (it == registry().end()) {
        throw std::invalid_argument(std::string("this build has no ") + direction_name(static_cast<int>(dir)) +
                                    " kernel for " + dtype_name(static_cast<int>(dt)) + " with head dims (" +
                                    std::to_string(p.head_dim_qk) + ", " + std::to_string(p.head_dim_v) + ")");
    }
    // This module links its own (static) CUDA runtime, whose current device is not the
    // caller's: select the device the tensors live on before launching on their stream.
    check_device(cudaSetDevice(static_cast<int>(get_int(d, "device"))));
    const auto stream = reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(get_int(d, "stream")));
    try {
        it->second(p, stream);
    } catch (const std::runtime_error& e) {
        // "no kernel image" and PTX errors depend on what the build holds: say it
        throw std::runtime_error(std::string(e.what()) + " (this build: " JFA_BUILD_SASS " + PTX " JFA_BUILD_PTX
                                 ", nvcc " JFA_BUILD_NVCC ")");
    }
}

void forward(const py::dict& d) {
    AttnParams p = common_params(d);
    p.o = get_ptr<void>(d, "o");
    p.o_stride = get_strides(d, "o_stride");
    run(Direction::kFwd, p, d);
}

void forward_jvp(const py::dict& d) {
    AttnParams p = common_params(d);
    if (d.contains("q_zero_tangent")) {   // optional: the mask's zero-tangent hint per tile
        p.q_zero_tangent = get_ptr<const int8_t>(d, "q_zero_tangent");
        p.k_zero_tangent = get_ptr<const int8_t>(d, "k_zero_tangent");
    }
    p.o = get_ptr<void>(d, "o");
    p.o_stride = get_strides(d, "o_stride");
    p.tq = get_ptr<const void>(d, "tq");
    p.tk = get_ptr<const void>(d, "tk");
    p.tv = get_ptr<const void>(d, "tv");
    p.to = get_ptr<void>(d, "to");
    p.tq_stride = get_strides(d, "tq_stride");
    p.tk_stride = get_strides(d, "tk_stride");
    p.tv_stride = get_strides(d, "tv_stride");
    p.to_stride = get_strides(d, "to_stride");
    run(Direction::kJvp, p, d);
}

void backward(const py::dict& d) {
    AttnParams p = common_params(d);
    p.o = get_ptr<void>(d, "o");
    p.o_stride = get_strides(d, "o_stride");
    p.do_ = get_ptr<const void>(d, "do");
    p.do_stride = get_strides(d, "do_stride");
    p.dq = get_ptr<void>(d, "dq");
    p.dk = get_ptr<void>(d, "dk");
    p.dv = get_ptr<void>(d, "dv");
    p.dq_stride = get_strides(d, "dq_stride");
    p.dk_stride = get_strides(d, "dk_stride");
    p.dv_stride = get_strides(d, "dv_stride");
    p.delta = get_ptr<float>(d, "delta");
    if (d.contains("dq_accum")) p.dq_accum = get_ptr<float>(d, "dq_accum");   // optional: the one-kernel backward
    fill_tiles(item(d, "k_tiles").cast<py::dict>(), p.k_tiles, p.num_k_tiles, p.k_tiles_block_m, p.k_tiles_block_n);
    run(Direction::kBwd, p, d);
}

py::list variants() {
    py::list out;
    for (const auto& kv : registry()) {
        const auto& [dir, dt, dqk, dv] = kv.first;
        out.append(py::make_tuple(direction_name(dir), dtype_name(dt), dqk, dv));
    }
    return out;
}

py::dict tile_shapes(int device) {
    auto shape = [](const TileShape& s) { return py::make_tuple(s.block_m, s.block_n); };
    py::dict d;
    d["fwd"] = shape(fwd_tile_shape(false, device));
    d["jvp"] = shape(fwd_tile_shape(true, device));
    d["bwd_q"] = shape(bwd_q_tile_shape(device));
    d["bwd_kv"] = shape(bwd_kv_tile_shape(device));
    d["path"] = sm90_path(device) ? "sm90a wgmma" : "mma.sync";
    // the fused backward's key description (a float32 dq_accum buffer selects it), where it is built
    d["bwd_fused"] = sm90_path(device) ? py::object(shape(kBwdFusedTilesSm90)) : py::object(py::none());
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

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "jvp_flash_attn compiled core: torch-free masked attention forward, backward and fused forward+JVP";
    m.def("forward", &jfa::forward, "o, lse = attention(q, k, v); arguments in one dict of ints/floats");
    m.def("forward_jvp", &jfa::forward_jvp, "o, to, lse in one fused pass; arguments in one dict");
    m.def("backward", &jfa::backward, "dq, dk, dv (dk/dv summed over GQA groups); arguments in one dict");
    m.def("variants", &jfa::variants, "(direction, dtype, head_dim_qk, head_dim_v) of every compiled kernel");
    m.def("tile_shapes", &jfa::tile_shapes, py::arg("device") = -1,
          "(block_m, block_n) of the tile description each walk needs on a device (-1: the portable path), "
          "and which kernel path serves its forward and JVP");
    m.def("device_count", &jfa::device_count, "visible CUDA devices (0 when none or no driver)");
    m.def("device_error", &jfa::device_error, "why no device is visible to this module's CUDA runtime, or None");
    m.def("compute_capability", &jfa::compute_capability, py::arg("device"),
          "(major, minor) of a device, or None; creates no context");
    m.def("build_info", &jfa::build_info,
          "what the build recorded: sass (arch list), ptx (embedded for newer GPUs), variants, git, nvcc, tiles");
}
