// Tile iteration over the mask's compact description and element-wise masking.
//
// A tile list for one outer tile holds its FULL inner tiles and its PARTIAL ones. FULL
// tiles inside the matrix pay no masking arithmetic; PARTIAL tiles test each element, by
// arithmetic from the tile's runs where its tokens fall in two segments or fewer per side (every
// partial tile of masks whose segments are as long as a tile), else against the per-token maps;
// tiles that cross the end of Sq or Sk also test bounds.
#pragma once

#include "params.h"

namespace jfa {

enum MaskRule : int { kRuleNone = 0, kRuleFull = 1, kRuleCausal = 2 };

// One outer tile's lists. An entry index i names FULL entry i below num_full, else PARTIAL entry
// i - num_full; a walk's step s takes entry(s): the lists' order where one is given (the ordered
// backward's key-side walk: by increasing query tile, so that in the frame and chunk masks a
// higher key tile reaches each query tile no later than the lower ones, the order its dQ adds
// take), else FULL entries first. The forward, JVP and dQ walks never carry an order and use the
// step as the entry.
struct TileWalk {
    const int32_t* full_idx;
    const int32_t* part_idx;
    const int32_t* part_runs;
    const int32_t* order;
    int num_full;
    int num_total;

    __device__ __forceinline__ TileWalk(const TileLists& l, int outer) {
        const int f0 = l.full_ptr[outer], f1 = l.full_ptr[outer + 1];
        const int p0 = l.part_ptr[outer], p1 = l.part_ptr[outer + 1];
        full_idx = l.full_idx + f0;
        part_idx = l.part_idx + p0;
        part_runs = l.part_runs == nullptr ? nullptr : l.part_runs + static_cast<int64_t>(p0) * kTileRunFields;
        order = l.order == nullptr ? nullptr : l.order + f0 + p0;
        num_full = f1 - f0;
        num_total = num_full + (p1 - p0);
    }
    __device__ __forceinline__ int entry(int s) const { return order != nullptr ? __ldg(order + s) : s; }
    __device__ __forceinline__ int tile(int i) const { return i < num_full ? full_idx[i] : part_idx[i - num_full]; }
    __device__ __forceinline__ bool partial(int i) const { return i >= num_full; }
    // The runs of PARTIAL entry i (nullptr: none given, or not a PARTIAL entry).
    __device__ __forceinline__ const int32_t* runs(int i) const {
        return part_runs != nullptr && i >= num_full ? part_runs + (i - num_full) * kTileRunFields : nullptr;
    }
};

// A PARTIAL tile's runs (masks/tiles.py, partial_tile_runs): each side cut once, at the first
// token of its second segment, and per (query run, key run) the bound that kj - qi must not
// exceed (int32 max: FULL; int32 min: NONE; the runs' segment starts k_start - q_start: CAUSAL).
// Loaded once per tile; then a pair's test is two compares, two selects and one more compare.
struct TileRuns {
    int q_cut = 0, k_cut = 0, b00 = 0, b01 = 0, b10 = 0, b11 = 0, simple = 0;   // simple 0: look the pairs up
    TileRuns() = default;
    __device__ __forceinline__ explicit TileRuns(const int32_t* r) {
        const int4 a = __ldg(reinterpret_cast<const int4*>(r));
        const int4 b = __ldg(reinterpret_cast<const int4*>(r) + 1);
        q_cut = a.x, k_cut = a.y, b00 = a.z, b01 = a.w, b10 = b.x, b11 = b.y, simple = b.z;
    }
    __device__ __forceinline__ bool allowed(int qi, int kj) const {
        const bool cc = kj >= k_cut;
        const int bound = qi >= q_cut ? (cc ? b11 : b10) : (cc ? b01 : b00);
        return kj - qi <= bound;
    }
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
__device__ __forceinline__ void mask_tile(float (&s)[kNB][4], float (&ts)[kNT][4], const TokenMaps& m, const int32_t* runs,
                                          int row0, int col0, int lane, int sq, int sk, bool (&row_allowed)[2]) {
    static_assert(!kTangent || kNT == kNB, "tangent scores cover the same block as the scores");
    const int g = lane >> 2, t = lane & 3;
    auto each_element = [&](auto&& allowed_pair) {
#pragma unroll
        for (int nb = 0; nb < kNB; ++nb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = row0 + g + ((e >> 1) << 3);
                const int c = col0 + nb * 8 + 2 * t + (e & 1);
                const int qi = kTransposed ? c : r, kj = kTransposed ? r : c;
                if (qi < sq && kj < sk && allowed_pair(qi, kj)) {
                    row_allowed[e >> 1] = true;
                } else {
                    s[nb][e] = -INFINITY;
                    if constexpr (kTangent) ts[nb][e] = 0.f;
                }
            }
        }
    };
    if constexpr (!kRule) {
        each_element([](int, int) { return true; });
    } else {
        const TileRuns tr = runs != nullptr ? TileRuns(runs) : TileRuns();
        if (tr.simple) {
            each_element([&](int qi, int kj) { return tr.allowed(qi, kj); });
        } else {
            each_element([&](int qi, int kj) { return allowed<true>(m, qi, kj, sq, sk); });
        }
    }
}

// Mask one tile's scores (and tangent scores) as the walk says at entry i: on a PARTIAL tile
// element-wise, by arithmetic from the tile's runs where it is simple, else from the per-token
// maps; by bounds alone on a FULL tile that crosses the end of Sq or Sk (edge); not at all
// otherwise. row_allowed: as in mask_tile (every row of a FULL tile inside the matrix keeps its
// entries). Without kTangent, ts is not touched (kernels without a JVP pass a placeholder).
template <bool kTransposed, bool kTangent, int kNB, int kNT>
__device__ __forceinline__ void mask_scores_and_tangents(float (&s)[kNB][4], float (&ts)[kNT][4], const AttnParams& p,
                                                         const TileWalk& walk, int i, bool edge, int row0, int col0,
                                                         int lane, bool (&row_allowed)[2]) {
    const bool partial = walk.partial(i);
    row_allowed[0] = row_allowed[1] = !partial && !edge;
    if (partial) {
        mask_tile<true, kTransposed, kTangent>(s, ts, p.maps, walk.runs(i), row0, col0, lane, p.seqlen_q, p.seqlen_k,
                                               row_allowed);
    } else if (edge) {
        mask_tile<false, kTransposed, kTangent>(s, ts, p.maps, nullptr, row0, col0, lane, p.seqlen_q, p.seqlen_k,
                                                row_allowed);
    }
}
template <bool kTransposed, int kNB>
__device__ __forceinline__ void mask_scores(float (&s)[kNB][4], const AttnParams& p, const TileWalk& walk, int i,
                                            bool edge, int row0, int col0, int lane, bool (&row_allowed)[2]) {
    mask_scores_and_tangents<kTransposed, false>(s, s, p, walk, i, edge, row0, col0, lane, row_allowed);
}
template <bool kTransposed, int kNB>
__device__ __forceinline__ void mask_scores(float (&s)[kNB][4], const AttnParams& p, const TileWalk& walk, int i,
                                            bool edge, int row0, int col0, int lane) {
    bool unused[2];
    mask_scores<kTransposed>(s, p, walk, i, edge, row0, col0, lane, unused);
}

}  // namespace jfa
