// Tile iteration over the mask's compact description and element-wise masking.
//
// A tile list for one outer tile is its FULL inner tiles followed by its PARTIAL ones. FULL
// tiles inside the matrix pay no masking arithmetic; PARTIAL tiles test each element against
// the per-token maps; tiles that cross the end of Sq or Sk also test bounds.
#pragma once

#include "params.h"

namespace jfa {

enum MaskRule : int { kRuleNone = 0, kRuleFull = 1, kRuleCausal = 2 };

struct TileWalk {
    const int32_t* full_idx;
    const int32_t* part_idx;
    int num_full;
    int num_total;

    __device__ __forceinline__ TileWalk(const TileLists& l, int outer) {
        const int f0 = l.full_ptr[outer], f1 = l.full_ptr[outer + 1];
        const int p0 = l.part_ptr[outer], p1 = l.part_ptr[outer + 1];
        full_idx = l.full_idx + f0;
        part_idx = l.part_idx + p0;
        num_full = f1 - f0;
        num_total = num_full + (p1 - p0);
    }
    __device__ __forceinline__ int tile(int i) const { return i < num_full ? full_idx[i] : part_idx[i - num_full]; }
    __device__ __forceinline__ bool partial(int i) const { return i >= num_full; }
};

// Whether query qi may attend to key kj; out-of-range indices are masked.
template <bool kRule>
__device__ __forceinline__ bool allowed(const TokenMaps& m, int qi, int kj, int sq, int sk) {
    if (qi >= sq || kj >= sk) return false;
    if (!kRule) return true;
    const int r = m.rule[m.q_seg[qi] * m.num_k_segments + m.k_seg[kj]];
    return r == kRuleFull || (r == kRuleCausal && m.q_pos[qi] >= m.k_pos[kj]);
}

// Set masked entries of a warp's C fragments to -inf (and, with kTangent, the same entries of
// the tangent scores ts to 0, so that a masked pair contributes nothing to the JVP even where
// its tangent score is not finite, while an allowed pair's p times its tangent score is formed
// as softmax's JVP forms it). The fragments cover a 16 x (8 kNB) block whose fragment-row index
// is `row0 + g (+8)` and column `col0 + 8 nb + 2t (+1)`; kTransposed says rows are keys and
// columns queries (the dK/dV kernel).
// row_allowed[r]: whether fragment row r (g, g + 8) keeps at least one of this thread's entries.
template <bool kRule, bool kTransposed, bool kTangent, int kNB, int kNT>
__device__ __forceinline__ void mask_tile(float (&s)[kNB][4], float (&ts)[kNT][4], const TokenMaps& m, int row0, int col0,
                                          int lane, int sq, int sk, bool (&row_allowed)[2]) {
    static_assert(!kTangent || kNT == kNB, "tangent scores cover the same block as the scores");
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int nb = 0; nb < kNB; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = row0 + g + ((e >> 1) << 3);
            const int c = col0 + nb * 8 + 2 * t + (e & 1);
            const bool ok = kTransposed ? allowed<kRule>(m, c, r, sq, sk) : allowed<kRule>(m, r, c, sq, sk);
            if (ok) {
                row_allowed[e >> 1] = true;
            } else {
                s[nb][e] = -INFINITY;
                if constexpr (kTangent) ts[nb][e] = 0.f;
            }
        }
    }
}

// Mask one tile's scores (and tangent scores) as the walk says: element-wise from the maps on a
// PARTIAL tile, by bounds alone on a FULL tile that crosses the end of Sq or Sk (edge), not at
// all otherwise. row_allowed: as in mask_tile (every row of a FULL tile inside the matrix keeps
// its entries). Without kTangent, ts is not touched (kernels without a JVP pass a placeholder).
template <bool kTransposed, bool kTangent, int kNB, int kNT>
__device__ __forceinline__ void mask_scores_and_tangents(float (&s)[kNB][4], float (&ts)[kNT][4], const AttnParams& p,
                                                         bool partial, bool edge, int row0, int col0, int lane,
                                                         bool (&row_allowed)[2]) {
    row_allowed[0] = row_allowed[1] = !partial && !edge;
    if (partial) {
        mask_tile<true, kTransposed, kTangent>(s, ts, p.maps, row0, col0, lane, p.seqlen_q, p.seqlen_k, row_allowed);
    } else if (edge) {
        mask_tile<false, kTransposed, kTangent>(s, ts, p.maps, row0, col0, lane, p.seqlen_q, p.seqlen_k, row_allowed);
    }
}
template <bool kTransposed, int kNB>
__device__ __forceinline__ void mask_scores(float (&s)[kNB][4], const AttnParams& p, bool partial, bool edge, int row0,
                                            int col0, int lane, bool (&row_allowed)[2]) {
    mask_scores_and_tangents<kTransposed, false>(s, s, p, partial, edge, row0, col0, lane, row_allowed);
}
template <bool kTransposed, int kNB>
__device__ __forceinline__ void mask_scores(float (&s)[kNB][4], const AttnParams& p, bool partial, bool edge, int row0,
                                            int col0, int lane) {
    bool unused[2];
    mask_scores<kTransposed>(s, p, partial, edge, row0, col0, lane, unused);
}

}  // namespace jfa
