// Tile shapes: one constexpr function of (walk, kernel family, head dim), read by the kernels'
// traits and by the host module (which tells the Python side which tile descriptions to build).
// No CUDA needed.
#pragma once

namespace jfa {

// The two kernel families: mma.sync products and cp.async loads on every GPU from sm_80, and
// wgmma products with TMA loads on sm_90a. The Python side picks one per device and passes it down.
enum class KernelFamily : int { kPortable = 0, kSm90 = 1 };

// What a tile description is walked by: the forward, the JVP, dQ (key tiles per query tile), dK/dV
// (query tiles per key tile; these two: the portable family's two-kernel backward) and the fused
// backward (query tiles per key tile, dQ added by bulk reduce-adds; the sm_90a family's).
enum class Walk : int { kFwd = 0, kJvp = 1, kBwdQ = 2, kBwdKV = 3, kBwdFused = 4 };

struct TileShape {
    int block_m;  // query rows per tile
    int block_n;  // key rows per tile
    int warps;
};

constexpr TileShape kNoTileShape{0, 0, 0};  // a walk the family has no kernel for

// The head dim a kernel's registers and shared memory scale with: the larger of q/k's and v's.
constexpr int tile_head_dim(int head_dim_qk, int head_dim_v) { return head_dim_qk > head_dim_v ? head_dim_qk : head_dim_v; }

constexpr TileShape default_tile_shape(Walk walk, KernelFamily family, int head_dim) {
    if (family == KernelFamily::kSm90) {
        // Warpgroups (4 warps) of 64 rows: query rows in the forward and JVP. The widest key
        // tiles whose score accumulators fit the registers without a spill pay the per-tile
        // hand-offs, row maxima and rescales once per more keys (bench/NOTES_cuda.md, items 22 and
        // 24): the forward 176 keys at d = 128 (+5-8 % on W1-W8 over 128; 192 spills), 224 at
        // d = 64 (+8 % on W8 over 128; 256 spills); the JVP, with two accumulators per product,
        // 64 keys at d = 128 and 128 at d = 64 (+8 % on W8). The backward is the fused one only:
        // 128 keys, two warpgroups of 64 keys (64 keys in one warpgroup, two blocks per SM, sent
        // twice the dQ bytes to the reduce-add per product: bench/NOTES_cuda.md, item 8). At
        // d = 128, 64-query steps, dQ's two 64-column halves one per warpgroup (dK and dV take 128
        // of the 240 registers); at d = 64, 128-query steps, which pay the per-step work
        // (barriers, hand-offs, lse / delta rows, dQ staging) once per 128 queries, as
        // FlashAttention-3 and -4 do there (+21 % on W8: bench/NOTES_cuda.md, item 23).
        switch (walk) {
            case Walk::kFwd: return head_dim <= 64 ? TileShape{128, 224, 8} : TileShape{128, 176, 8};
            case Walk::kJvp: return head_dim <= 64 ? TileShape{128, 128, 8} : TileShape{128, 64, 8};
            case Walk::kBwdQ: return kNoTileShape;
            case Walk::kBwdKV: return kNoTileShape;
            case Walk::kBwdFused: return head_dim <= 64 ? TileShape{128, 128, 8} : TileShape{64, 128, 8};
        }
    }
    // Every warp owns 16 rows: query rows in the forward, JVP and dQ, keys in dK/dV.
    switch (walk) {
        case Walk::kFwd: return {128, 64, 8};
        case Walk::kJvp: return {128, 32, 8};
        case Walk::kBwdQ: return {128, 64, 8};
        case Walk::kBwdKV: return {64, 128, 8};
        case Walk::kBwdFused: return kNoTileShape;
    }
    return kNoTileShape;
}

// Build-time overrides, to time alternatives without editing code (JFA_TILES, see csrc/build_ext.py,
// which writes JFA_TILE_OVERRIDES as a list of TileOverride initialisers, each followed by a comma).
struct TileOverride {
    Walk walk;
    KernelFamily family;
    int head_dim;   // tile_head_dim of the kernels it applies to; 0: every head dim
    TileShape shape;
};

#ifndef JFA_TILE_OVERRIDES
#define JFA_TILE_OVERRIDES
#endif
inline constexpr TileOverride kTileOverrides[] = {JFA_TILE_OVERRIDES TileOverride{Walk::kFwd, KernelFamily::kPortable,
                                                                                  0, kNoTileShape}};

constexpr TileShape tile_shape(Walk walk, KernelFamily family, int head_dim) {
    for (const TileOverride& o : kTileOverrides) {
        if (o.shape.block_m > 0 && o.walk == walk && o.family == family && (o.head_dim == 0 || o.head_dim == head_dim)) {
            return o.shape;
        }
    }
    return default_tile_shape(walk, family, head_dim);
}

// The shapes by name, as the kernels' traits read them, for q/k head dim kDQK and v head dim kDV.
template <int kDQK, int kDV>
constexpr TileShape kFwdTiles = tile_shape(Walk::kFwd, KernelFamily::kPortable, tile_head_dim(kDQK, kDV));
template <int kDQK, int kDV>
constexpr TileShape kJvpTiles = tile_shape(Walk::kJvp, KernelFamily::kPortable, tile_head_dim(kDQK, kDV));
template <int kDQK, int kDV>
constexpr TileShape kBwdQTiles = tile_shape(Walk::kBwdQ, KernelFamily::kPortable, tile_head_dim(kDQK, kDV));
template <int kDQK, int kDV>
constexpr TileShape kBwdKVTiles = tile_shape(Walk::kBwdKV, KernelFamily::kPortable, tile_head_dim(kDQK, kDV));
template <int kDQK, int kDV>
constexpr TileShape kFwdTilesSm90 = tile_shape(Walk::kFwd, KernelFamily::kSm90, tile_head_dim(kDQK, kDV));
template <int kDQK, int kDV>
constexpr TileShape kJvpTilesSm90 = tile_shape(Walk::kJvp, KernelFamily::kSm90, tile_head_dim(kDQK, kDV));
template <int kDQK, int kDV>
constexpr TileShape kBwdFusedTilesSm90 = tile_shape(Walk::kBwdFused, KernelFamily::kSm90, tile_head_dim(kDQK, kDV));

}  // namespace jfa
