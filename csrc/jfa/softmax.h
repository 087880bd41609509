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

#include "mma.h"

namespace jfa {

struct OnlineSoftmax {
    float m[2] = {-INFINITY, -INFINITY};  // running max of the scaled scores, log2 domain (quad-uniform)
    float l[2] = {0.f, 0.f};              // per-lane partial of the running row sum
    // Per-lane partial: whether the row has met an allowed key. A row that has, but whose sum is
    // 0, had only -inf scores: softmax gives NaN there, not the o = 0 of a row with no allowed key.
    bool seen[2] = {false, false};

    // Turn the raw scores s into unnormalised probabilities exp2(s * scale_log2 - m) for the
    // new running max; returns the factor by which each row's old accumulators must shrink.
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
    template <int kNB>
    __device__ __forceinline__ void update(float (&s)[kNB][4], float scale_log2, float (&alpha)[2],
                                           const bool (&row_allowed)[2]) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            seen[r] = seen[r] || row_allowed[r];
            float mx = -INFINITY;
#pragma unroll
            for (int nb = 0; nb < kNB; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
            const float m_new = fmaxf(m[r], __fmul_rn(quad_max(mx), scale_log2));
            // A row with no finite score so far keeps m = -inf; subtract 0 instead so that
            // exp2(-inf - m) is 0 rather than NaN.
            const float m_use = m_new == -INFINITY ? 0.f : m_new;
            alpha[r] = exp2f(m[r] - m_use);
            m[r] = m_new;
            float sum = 0.f;
#pragma unroll
            for (int nb = 0; nb < kNB; ++nb) {
                s[nb][2 * r] = exp2f(__fmaf_rn(s[nb][2 * r], scale_log2, -m_use));
                s[nb][2 * r + 1] = exp2f(__fmaf_rn(s[nb][2 * r + 1], scale_log2, -m_use));
                sum += s[nb][2 * r] + s[nb][2 * r + 1];
            }
            l[r] = __fmaf_rn(l[r], alpha[r], sum);
        }
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
