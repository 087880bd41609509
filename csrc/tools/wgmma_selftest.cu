// Self-test of the sm_90a verbs in jfa/wgmma.h on one warpgroup, against a host product:
//   ss: C = A B^T with A (64 x 128) and B (N x 128) K-major in swizzled panels
//   rs: C = A V   with A (64 x 128) in registers (m16n8k16 A-fragment order) and V (128 x N) N-major
// for N = 64 and 128. Prints the largest error of each and exits 1 on a mismatch.
//   nvcc -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I csrc csrc/tools/wgmma_selftest.cu -o /tmp/wgmma_selftest
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "jfa/wgmma.h"

using namespace jfa;
using Elem = __nv_bfloat16;
constexpr int kM = 64, kK = 128;

template <int N>
__global__ void selftest_kernel(const Elem* a, const Elem* b, const Elem* v, float* c_ss, float* c_rs) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ char smem[];
    const uint32_t s0 = (smem_addr(smem) + 1023) & ~1023u;
    const PanelTile<kM, kK> sA{s0};
    const PanelTile<N, kK> sB{s0 + PanelTile<kM, kK>::kBytes};
    const PanelTile<kK, N> sV{s0 + PanelTile<kM, kK>::kBytes + PanelTile<N, kK>::kBytes};
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    sA.load_async<128>(a, kK, 0, kM, tid);
    sB.template load_async<128>(b, kK, 0, N, tid);
    sV.template load_async<128>(v, N, 0, kK, tid);
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();

    float acc[N / 8][4];
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kK / 16; ++ks) Wgmma<Elem, N>::ss(acc, sA.desc_k_major(0, ks), sB.desc_k_major(0, ks), ks > 0);
    wgmma_commit();
    wgmma_wait<0>();
    hold_across_wgmma(acc);
    const int g = lane >> 2, t = lane & 3;
    for (int nb = 0; nb < N / 8; ++nb)
        for (int e = 0; e < 4; ++e) c_ss[(warp * 16 + g + 8 * (e >> 1)) * N + nb * 8 + 2 * t + (e & 1)] = acc[nb][e];

    // A fragments straight from global memory in the m16n8k16 order.
    uint32_t af[kK / 16][4];
    auto pair = [&](int r, int col) {
        const Elem* x = a + r * kK + col;
        __nv_bfloat162 p2{x[0], x[1]};
        return *reinterpret_cast<uint32_t*>(&p2);
    };
    for (int ks = 0; ks < kK / 16; ++ks) {
        const int r = warp * 16 + g, c = ks * 16 + 2 * t;
        af[ks][0] = pair(r, c);
        af[ks][1] = pair(r + 8, c);
        af[ks][2] = pair(r, c + 8);
        af[ks][3] = pair(r + 8, c + 8);
    }
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kK / 16; ++ks) Wgmma<Elem, N>::rs(acc, af[ks], sV.desc_n_major(ks), ks > 0);
    wgmma_commit();
    wgmma_wait<0>();
    hold_across_wgmma(acc);
    hold_across_wgmma(af);
    for (int nb = 0; nb < N / 8; ++nb)
        for (int e = 0; e < 4; ++e) c_rs[(warp * 16 + g + 8 * (e >> 1)) * N + nb * 8 + 2 * t + (e & 1)] = acc[nb][e];
#endif
}

#define CHECK(x)                                                                           \
    do {                                                                                   \
        cudaError_t e_ = (x);                                                              \
        if (e_ != cudaSuccess) {                                                           \
            std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
            std::exit(2);                                                                  \
        }                                                                                  \
    } while (0)

template <int N>
bool run() {
    std::vector<Elem> a(kM * kK), b(N * kK), v(kK * N);
    std::vector<float> fa(a.size()), fb(b.size()), fv(v.size());
    auto fill = [](std::vector<Elem>& x, std::vector<float>& f) {
        for (size_t i = 0; i < x.size(); ++i) {
            x[i] = __float2bfloat16(static_cast<float>(std::rand()) / RAND_MAX * 2.f - 1.f);
            f[i] = __bfloat162float(x[i]);
        }
    };
    fill(a, fa);
    fill(b, fb);
    fill(v, fv);
    Elem *da, *db, *dv;
    float *dss, *drs;
    CHECK(cudaMalloc(&da, a.size() * 2));
    CHECK(cudaMalloc(&db, b.size() * 2));
    CHECK(cudaMalloc(&dv, v.size() * 2));
    CHECK(cudaMalloc(&dss, kM * N * 4));
    CHECK(cudaMalloc(&drs, kM * N * 4));
    CHECK(cudaMemcpy(da, a.data(), a.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dv, v.data(), v.size() * 2, cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dss, 0xff, kM * N * 4));  // NaN: an unwritten element shows
    CHECK(cudaMemset(drs, 0xff, kM * N * 4));
    const int smem = (kM * kK + N * kK + kK * N) * 2 + 1024;
    CHECK(cudaFuncSetAttribute(selftest_kernel<N>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    selftest_kernel<N><<<1, 128, smem>>>(da, db, dv, dss, drs);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    std::vector<float> ss(kM * N), rs(kM * N);
    CHECK(cudaMemcpy(ss.data(), dss, ss.size() * 4, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(rs.data(), drs, rs.size() * 4, cudaMemcpyDeviceToHost));
    double err_ss = 0, err_rs = 0;
    for (int i = 0; i < kM; ++i)
        for (int j = 0; j < N; ++j) {
            double ref_ss = 0, ref_rs = 0;
            for (int k = 0; k < kK; ++k) {
                ref_ss += static_cast<double>(fa[i * kK + k]) * fb[j * kK + k];
                ref_rs += static_cast<double>(fa[i * kK + k]) * fv[k * N + j];
            }
            const double e1 = std::fabs(ss[i * N + j] - ref_ss), e2 = std::fabs(rs[i * N + j] - ref_rs);
            err_ss = std::isnan(e1) ? INFINITY : std::fmax(err_ss, e1);
            err_rs = std::isnan(e2) ? INFINITY : std::fmax(err_rs, e2);
        }
    const bool ok = err_ss < 1e-3 && err_rs < 1e-3;
    std::printf("N=%d  ss max error %.3g  rs (v transposed) max error %.3g  %s\n", N, err_ss, err_rs, ok ? "ok" : "MISMATCH");
    return ok;
}

int main() {
    const bool ok = run<64>() & run<128>();
    return ok ? 0 : 1;
}
