// Online softmax over key tiles for the two rows (g, g + 8) that a lane holds in a warp's
// 16-row slice. The running max is kept in the log2 domain (scaled by scale * log2(e)) so exp2 is
// one instruction, and each exponent is one fused multiply-add of the raw score,
// exp2(s * scale_log2 - m). Row sums are per-lane partials and are reduced across the quad only at
// the end.
// Every multiply feeding an add, here and in fwd_parts.h, says how it rounds (__fmul_rn,
// __fsub_rn, __fmaf_rn, ...): left to the compiler, whether a multiply and an add fuse depended on
// the surrounding kernel, and kernels that ran the same products (the sm_90a cp.async forward,
// since removed, and the warp-specialised one, hinted or not) differed in lse by a rounding.
#pragma once

#include <type_traits>

#include "mma.h"

namespace jfa {

// How far (log2 units) a row's scores may rise above its running max before the accumulators are
// rescaled (OnlineSoftmax::update): p <= 2^8 leaves fp32 sums, bf16's range and fp16's (65,504)
// ample room for p itself. The fp16 JVP keeps 0 (rescale whenever a max grows): its p o tS is
// rounded to fp16 for the (p o tS) v product, and p up to 2^8 would overflow there once
// |scale tS| > 256, where the reference (p <= 1) overflows only past 65,504.
template <class Elem, bool kJvp>
constexpr int kRescaleBound = kJvp && std::is_same<Elem, __half>::value ? 0 : 8;

struct OnlineSoftmax {
    // Running max of the scaled scores, log2 domain, quad-uniform; lazily (update): it may trail
    // the true max by up to the bound.
    float m[2] = {-INFINITY, -INFINITY};
    float l[2] = {0.f, 0.f};              // per-lane partial of the running row sum
    // Per-lane partial: whether the row has met an allowed key. A row that has, but whose sum is
    // 0, had only -inf scores: softmax gives NaN there, not the o = 0 of a row with no allowed key.
    bool seen[2] = {false, false};

    // Turn the raw scores s into unnormalised probabilities exp2(s * scale_log2 - m) for the
    // running max m, which follows the scores' max lazily (kBound below); returns whether the
    // warp's accumulators must be multiplied by alpha (the factor by which each row's old
    // accumulators shrink; 1 where its m did not move). Warp-uniform, so that the caller's
    // rescale is a branch around the multiplies.
    //
    // The row max is taken of the raw scores and scaled once: scale > 0 (the Python API checks it)
    // and a correctly rounded product is monotone in s, so m is bitwise the max of the rounded
    // scaled scores, as when each score was scaled first. The exponent is then one FFMA,
    // s * scale_log2 - m rounded once:
    //   - a masked score (-inf, set by the mask step) gives -inf - m = -inf, so p = 0, for any
    //     finite m and for m_use = 0 (a row with no finite score yet);
    //   - a +inf score makes m = +inf, and its exponent inf - inf = NaN: the row is NaN, as
    //     softmax gives; the row's other scores give -inf, p = 0;
    //   - a NaN score gives NaN (fmaxf leaves it out of the max).
    // The row's maximal score gives the rounding error of its scaled product, not 0: p = 1 to
    // within an ulp of the exponent.
    //
    // Lazy rescaling (as FlashAttention-4 does): while no row of the warp has a score more than
    // kBound (log2 units) above its running max, every m stays as it is and nothing is rescaled,
    // so p <= 2^kBound (times 1 + an ulp). The sums and accumulators all hold the same stale m, so
    // o = acc / l, lse = m ln 2 + log l and the JVP's mu / l are the same quantities up to
    // rounding. Once a row of the warp exceeds it, every row of the warp moves m to its current
    // max. A row whose m is -inf moves at its first finite score (inf > kBound); where m and the new
    // max are both -inf, or both +inf, their difference is NaN, which compares false: m stays.
    template <int kBound, int kNB>
    __device__ __forceinline__ bool update(float (&s)[kNB][4], float scale_log2, float (&alpha)[2],
                                           const bool (&row_allowed)[2]) {
        float m_new[2];
        bool grows = false;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            seen[r] = seen[r] || row_allowed[r];
            float mx = -INFINITY;
#pragma unroll
            for (int nb = 0; nb < kNB; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
            m_new[r] = fmaxf(m[r], __fmul_rn(quad_max(mx), scale_log2));
            grows = grows || m_new[r] - m[r] > static_cast<float>(kBound);
        }
        const bool rescale = __any_sync(0xffffffffu, grows);
        alpha[0] = alpha[1] = 1.f;
        if (rescale) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                alpha[r] = exp2f(m[r] - (m_new[r] == -INFINITY ? 0.f : m_new[r]));
                m[r] = m_new[r];
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            // A row with no finite score so far keeps m = -inf; subtract 0 instead so that
            // exp2(-inf - m) is 0 rather than NaN.
            const float m_use = m[r] == -INFINITY ? 0.f : m[r];
            float sum = 0.f;
#pragma unroll
            for (int nb = 0; nb < kNB; ++nb) {
                s[nb][2 * r] = exp2f(__fmaf_rn(s[nb][2 * r], scale_log2, -m_use));
                s[nb][2 * r + 1] = exp2f(__fmaf_rn(s[nb][2 * r + 1], scale_log2, -m_use));
                sum += s[nb][2 * r] + s[nb][2 * r + 1];
            }
            l[r] = __fmaf_rn(l[r], alpha[r], sum);
        }
        return rescale;
    }
};

// Multiply row r's half of C fragments by f[r].
template <int kNB>
__device__ __forceinline__ void scale_rows(float (&acc)[kNB][4], const float (&f)[2]) {
#pragma unroll
    for (int nb = 0; nb < kNB; ++nb) {
        acc[nb][0] *= f[0];
        acc[nb][1] *= f[0];
        acc[nb][2] *= f[1];
        acc[nb][3] *= f[1];
    }
}

}  // namespace jfa
