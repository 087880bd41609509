// Tile shapes per walk, shared by the kernels' traits and the host module (which tells the
// Python side which tile descriptions to build). Plain constants: no CUDA needed to read them.
#pragma once

namespace jfa {

struct TileShape {
    int block_m;  // query rows per tile
    int block_n;  // key rows per tile
    int warps;
};

constexpr TileShape kFwdTiles{128, 64, 8};
constexpr TileShape kJvpTiles{128, 64, 8};
constexpr TileShape kBwdQTiles{128, 64, 8};   // dQ: walks key tiles per query tile
constexpr TileShape kBwdKVTiles{64, 128, 8};  // dK/dV: walks query tiles per key tile

}  // namespace jfa
