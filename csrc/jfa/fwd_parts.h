// Pieces shared by the forward / fused forward+JVP kernels of both paths (mma.sync and wgmma):
// per-head pointers, 16-bit row stores, the JVP's tangent probabilities and the epilogue.
// They work on m16n8 C fragments, which both paths' accumulators are made of (per warp, 16 rows).
#pragma once

#include "mma.h"
#include "params.h"
#include "softmax.h"

namespace jfa {

template <class Elem>
__device__ __forceinline__ const Elem* head_ptr(const void* base, const Strides& s, int b, int h) {
    return static_cast<const Elem*>(base) + b * s.batch + h * s.head;
}
template <class Elem>
__device__ __forceinline__ Elem* head_ptr(void* base, const Strides& s, int b, int h) {
    return static_cast<Elem*>(base) + b * s.batch + h * s.head;
}

// The operands of one (batch, query head): q, k, v and, for the JVP, their tangents (k, v, tk,
// tv of the query head's kv head under GQA).
template <class Elem, bool kJvp>
struct FwdHeads {
    const Elem *q, *k, *v, *tq, *tk, *tv;
    __device__ __forceinline__ FwdHeads(const AttnParams& p, int b, int h, int hk)
        : q(head_ptr<Elem>(p.q, p.q_stride, b, h)),
          k(head_ptr<Elem>(p.k, p.k_stride, b, hk)),
          v(head_ptr<Elem>(p.v, p.v_stride, b, hk)),
          tq(kJvp ? head_ptr<Elem>(p.tq, p.tq_stride, b, h) : nullptr),
          tk(kJvp ? head_ptr<Elem>(p.tk, p.tk_stride, b, hk) : nullptr),
          tv(kJvp ? head_ptr<Elem>(p.tv, p.tv_stride, b, hk) : nullptr) {}
};

// The key/value stages after the query tile(s) of the kernel whose warps all load (fwd_kernel.h):
// stage st holds k, [tk,] v, [tv] (the tangents for the JVP).
template <class Tr, class KTile, class VTile, bool kJvp>
struct FwdKVStages {
    uint32_t s0;   // shared address of the (aligned) base

    __device__ __forceinline__ KTile k(int st, int which) const {   // which: 0 k, 1 tk
        return KTile{s0 + Tr::kQBytes + st * Tr::kStageBytes + which * KTile::kBytes};
    }
    __device__ __forceinline__ VTile v(int st, int which) const {   // which: 0 v, 1 tv
        return VTile{s0 + Tr::kQBytes + st * Tr::kStageBytes + (kJvp ? 2 : 1) * KTile::kBytes + which * VTile::kBytes};
    }
    // Start the copies of key tile k0 into stage st; for the JVP the tangents' too, unless
    // tangents() says they are zero (asked after the other copies are issued).
    template <class Elem, class Tangents>
    __device__ __forceinline__ void load(const AttnParams& p, const FwdHeads<Elem, kJvp>& x, int k0, int st,
                                         Tangents&& tangents, int tid) const {
        k(st, 0).template load_async<Tr::kThreads>(x.k, p.k_stride.row, k0, p.seqlen_k, tid);
        v(st, 0).template load_async<Tr::kThreads>(x.v, p.v_stride.row, k0, p.seqlen_k, tid);
        if (kJvp && tangents()) {
            k(st, 1).template load_async<Tr::kThreads>(x.tk, p.tk_stride.row, k0, p.seqlen_k, tid);
            v(st, 1).template load_async<Tr::kThreads>(x.tv, p.tv_stride.row, k0, p.seqlen_k, tid);
        }
    }
};

// Store a warp's 16 x (8 kNB) fp32 block (times row factor f) as 16-bit pairs; rows >= limit skipped.
template <class Elem, int kNB>
__device__ __forceinline__ void store_rows(Elem* out, int64_t row_stride, int row0, int limit, const float (&acc)[kNB][4],
                                           const float (&f)[2], int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + g + 8 * r;
        if (row >= limit) continue;
        Elem* dst = out + row * row_stride + 2 * t;
#pragma unroll
        for (int nb = 0; nb < kNB; ++nb) {
            *reinterpret_cast<uint32_t*>(dst + nb * 8) =
                ElemOps<Elem>::pack(acc[nb][2 * r] * f[r], acc[nb][2 * r + 1] * f[r]);
        }
    }
}

// JVP, per key tile: with p~ the unnormalised probabilities (softmax already applied to s) and
// ts the raw tangent scores tq k^T + q tk^T, turn ts into p~ o (scale ts) and add its row sums to
// mu (rescaled by alpha like the accumulators). The mask step has set the tangent scores of
// masked keys to 0, so they contribute nothing; an allowed key's p~ multiplies its tangent score
// as written, so p~ = 0 (a score of -inf) times an infinite tangent score is NaN, as in softmax's JVP.
template <int kNB>
__device__ __forceinline__ void tangent_probs(float (&ts)[kNB][4], const float (&s)[kNB][4], float (&mu)[2],
                                              const float (&alpha)[2], float scale) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float sum = 0.f;
#pragma unroll
        for (int nb = 0; nb < kNB; ++nb) {
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; ++e) {
                ts[nb][e] = s[nb][e] * ts[nb][e] * scale;
                sum = __fadd_rn(sum, ts[nb][e]);   // rounded as written (softmax.h)
            }
        }
        mu[r] = __fmaf_rn(mu[r], alpha[r], sum);
    }
}

// Normalise and write o (and to = acc_t / l - (mu / l) o) and lse for a warp's 16 rows from
// row0. A row with no allowed key has l = 0: o = 0, to = 0, lse = -inf; a row with allowed keys
// but l = 0 (all their scores -inf) gives NaN, as softmax does.
template <class Elem, bool kJvp, int kNBO>
__device__ __forceinline__ void fwd_epilogue(const AttnParams& p, int b, int h, int row0, int lane, const OnlineSoftmax& sm,
                                             float (&mu)[2], const float (&acc_o)[kNBO][4], float (&acc_t)[kJvp ? kNBO : 1][4]) {
    float inv_l[2], lse[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const float l = quad_sum(sm.l[r]);
        const bool seen = quad_any(sm.seen[r]);
        inv_l[r] = l == 0.f ? (seen ? NAN : 0.f) : 1.f / l;
        lse[r] = l == 0.f ? (seen ? NAN : -INFINITY) : __fmaf_rn(sm.m[r], kLn2, logf(l));
        mu[r] = quad_sum(mu[r]) * inv_l[r];
    }
    store_rows<Elem, kNBO>(head_ptr<Elem>(p.o, p.o_stride, b, h), p.o_stride.row, row0, p.seqlen_q, acc_o, inv_l, lane);
    if constexpr (kJvp) {
#pragma unroll
        for (int nb = 0; nb < kNBO; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc_t[nb][e] = __fmaf_rn(-mu[e >> 1], acc_o[nb][e], acc_t[nb][e]);
        }
        store_rows<Elem, kNBO>(head_ptr<Elem>(p.to, p.to_stride, b, h), p.to_stride.row, row0, p.seqlen_q, acc_t, inv_l, lane);
    }
    if ((lane & 3) == 0) {
        float* lse_row = p.lse + (static_cast<int64_t>(b) * p.heads_q + h) * p.seqlen_q;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + (lane >> 2) + 8 * r;
            if (row < p.seqlen_q) lse_row[row] = lse[r];
        }
    }
}

}  // namespace jfa
