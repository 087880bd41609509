// Tile shapes per kernel. Every warp owns 16 rows of the tile it iterates with (query rows in
// the forward, JVP and dQ kernels; key rows in the dK/dV kernel), so kBlockRows = 16 kNWarps.
#pragma once

#include "mma.h"
#include "tile_shapes.h"

namespace jfa {

template <class Elem_, int kDQK_, int kDV_, int kBlockM_, int kBlockN_, int kNWarps_>
struct Traits {
    using Elem = Elem_;
    static constexpr int kDQK = kDQK_;          // q/k head dim
    static constexpr int kDV = kDV_;            // v head dim
    static constexpr int kBlockM = kBlockM_;    // query rows per tile
    static constexpr int kBlockN = kBlockN_;    // key rows per tile
    static constexpr int kNWarps = kNWarps_;
    static constexpr int kThreads = 32 * kNWarps;
    static constexpr int kWarpRows = 16;        // rows of one m16n8k16 product
    static_assert(kDQK % 64 == 0 && kDV % 64 == 0, "head dims are multiples of 64 (swizzled 128-byte rows)");
    static_assert(kBlockM % 16 == 0 && kBlockN % 16 == 0, "tiles are multiples of the 16-row mma step");
};

// Forward and fused forward+JVP: the warps split the query tile.
template <int kDQK, int kDV, bool kJvp>
constexpr TileShape fwd_tiles() { return kJvp ? kJvpTiles<kDQK, kDV> : kFwdTiles<kDQK, kDV>; }

template <class Elem, int kDQK, int kDV, bool kJvp, int kM = fwd_tiles<kDQK, kDV, kJvp>().block_m,
          int kN = fwd_tiles<kDQK, kDV, kJvp>().block_n, int kW = fwd_tiles<kDQK, kDV, kJvp>().warps>
struct FwdTraits : Traits<Elem, kDQK, kDV, kM, kN, kW> {
    using Base = Traits<Elem, kDQK, kDV, kM, kN, kW>;
    static_assert(Base::kBlockM == Base::kWarpRows * Base::kNWarps, "one 16-row slice per warp");
    static constexpr int kStages = 2;           // key/value tiles in flight
    static constexpr int kQBytes = (kJvp ? 2 : 1) * Base::kBlockM * kDQK * 2;
    static constexpr int kStageBytes = (kJvp ? 2 : 1) * Base::kBlockN * (kDQK + kDV) * 2;
    static constexpr int kSmemBytes = kQBytes + kStages * kStageBytes;
};

// Forward and fused forward+JVP on the Hopper wgmma path: warpgroups of 4 warps split the query
// tile 64 rows each; tiles live in 128-byte-swizzled panels (wgmma.h), 1024-byte aligned.
constexpr int kSmemPerSm90 = 228 * 1024;   // shared memory of an H100/H200 SM (1 KiB of it reserved per block)

template <int kDQK, int kDV, bool kJvp>
constexpr TileShape fwd_tiles_sm90() { return kJvp ? kJvpTilesSm90<kDQK, kDV> : kFwdTilesSm90<kDQK, kDV>; }

// The warp-specialised forward and forward+JVP (fwd_kernel_sm90_warp_specialised.h): one producer
// warpgroup that loads tiles by TMA and two consumer warpgroups of 64 query rows, the only sm_90a
// forward and JVP; tile shapes kFwdTilesSm90, kJvpTilesSm90 of the head dims. Key tiles (k [, tk]) and value
// tiles (v [, tv]) have their own stages, each with a "full" and an "empty" barrier, so keys are
// released after the score products while values are still read. The barriers sit after the
// (1024-byte aligned) tiles.
template <class Elem, int kDQK, int kDV, bool kJvp, int kM = fwd_tiles_sm90<kDQK, kDV, kJvp>().block_m,
          int kN = fwd_tiles_sm90<kDQK, kDV, kJvp>().block_n, int kW = fwd_tiles_sm90<kDQK, kDV, kJvp>().warps>
struct FwdWarpSpecialisedTraitsSm90 : Traits<Elem, kDQK, kDV, kM, kN, kW + 4> {
    using Base = Traits<Elem, kDQK, kDV, kM, kN, kW + 4>;
    static_assert(Base::kBlockM == 128, "two consumer warpgroups of 64 query rows");
    static_assert(Base::kBlockN == 64 || Base::kBlockN == 128 || Base::kBlockN == 176 || Base::kBlockN == 192 ||
                      Base::kBlockN == 224,
                  "wgmma products are generated for N = 64, 128, 176, 192 and 224 (generate_wgmma.py)");
    static constexpr bool kTangents = kJvp;
    static constexpr int kOperands = kJvp ? 2 : 1;   // a tile and, for the JVP, its tangent
    static constexpr int kConsumerThreads = 256;
    static constexpr int kStages = 2;
    static constexpr int kQBytes = Base::kBlockM * kDQK * 2;   // one query tile
    static constexpr int kKBytes = Base::kBlockN * kDQK * 2;   // one key tile
    static constexpr int kVBytes = Base::kBlockN * kDV * 2;    // one value tile
    static constexpr int kKOffset = kOperands * kQBytes;
    static constexpr int kVOffset = kKOffset + kStages * kOperands * kKBytes;
    static constexpr int kBarOffset = kVOffset + kStages * kOperands * kVBytes;
    static constexpr int kBarBytes = 8 * (1 + 4 * kStages);
    static constexpr int kSmemBytes = kBarOffset + kBarBytes + 1024;  // + room to align the base
    static_assert(kSmemBytes <= kSmemPerSm90 - 1024, "the block must fit an SM");
};

// dK/dV: the warps split the key tile, and the kernel walks the query tiles of its key tile.
template <class Elem, int kDQK, int kDV, int kM = kBwdKVTiles<kDQK, kDV>.block_m,
          int kN = kBwdKVTiles<kDQK, kDV>.block_n, int kW = kBwdKVTiles<kDQK, kDV>.warps>
struct BwdKVTraits : Traits<Elem, kDQK, kDV, kM, kN, kW> {
    using Base = Traits<Elem, kDQK, kDV, kM, kN, kW>;
    static_assert(Base::kBlockN == Base::kWarpRows * Base::kNWarps, "one 16-key slice per warp");
    static constexpr int kStages = 2;
    static constexpr int kKVBytes = Base::kBlockN * (kDQK + kDV) * 2;
    static constexpr int kStageBytes = Base::kBlockM * (kDQK + kDV) * 2 + 2 * Base::kBlockM * 4;
    static constexpr int kSmemBytes = kKVBytes + kStages * kStageBytes;
};

// dQ: the warps split the query tile, and the kernel walks the key tiles of its query tile.
template <class Elem, int kDQK, int kDV, int kM = kBwdQTiles<kDQK, kDV>.block_m,
          int kN = kBwdQTiles<kDQK, kDV>.block_n, int kW = kBwdQTiles<kDQK, kDV>.warps>
struct BwdQTraits : Traits<Elem, kDQK, kDV, kM, kN, kW> {
    using Base = Traits<Elem, kDQK, kDV, kM, kN, kW>;
    static_assert(Base::kBlockM == Base::kWarpRows * Base::kNWarps, "one 16-row slice per warp");
    static constexpr int kStages = 2;
    static constexpr int kQBytes = Base::kBlockM * (kDQK + kDV) * 2;
    static constexpr int kStageBytes = Base::kBlockN * (kDQK + kDV) * 2;
    static constexpr int kSmemBytes = kQBytes + kStages * kStageBytes;
};

}  // namespace jfa
