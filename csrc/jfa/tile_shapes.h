// Tile shapes per walk, shared by the kernels' traits and the host module (which tells the
// Python side which tile descriptions to build). Plain constants: no CUDA needed to read them.
#pragma once

namespace jfa {

struct TileShape {
    int block_m;  // query rows per tile
    int block_n;  // key rows per tile
    int warps;
};

// Each default can be overridden at build time (JFA_TILES, see csrc/build_ext.py) to time
// alternatives without editing code; the module reports the shapes it was built with.
#ifndef JFA_FWD_M
#define JFA_FWD_M 128
#endif
#ifndef JFA_FWD_N
#define JFA_FWD_N 64
#endif
#ifndef JFA_FWD_W
#define JFA_FWD_W 8
#endif
#ifndef JFA_JVP_M
#define JFA_JVP_M 128
#endif
#ifndef JFA_JVP_N
#define JFA_JVP_N 32
#endif
#ifndef JFA_JVP_W
#define JFA_JVP_W 8
#endif
#ifndef JFA_BWD_Q_M
#define JFA_BWD_Q_M 128
#endif
#ifndef JFA_BWD_Q_N
#define JFA_BWD_Q_N 64
#endif
#ifndef JFA_BWD_Q_W
#define JFA_BWD_Q_W 8
#endif
#ifndef JFA_BWD_KV_M
#define JFA_BWD_KV_M 64
#endif
#ifndef JFA_BWD_KV_N
#define JFA_BWD_KV_N 128
#endif
#ifndef JFA_BWD_KV_W
#define JFA_BWD_KV_W 8
#endif

// Hopper wgmma path (sm_90a): every warpgroup (4 warps) owns 64 query rows.
#ifndef JFA_FWD90_M
#define JFA_FWD90_M 128
#endif
#ifndef JFA_FWD90_N
#define JFA_FWD90_N 128
#endif
#ifndef JFA_JVP90_M
#define JFA_JVP90_M 128
#endif
#ifndef JFA_JVP90_N
#define JFA_JVP90_N 64
#endif
// The backward on sm_90a: one warpgroup of 64 rows per block (queries in dQ, keys in dK/dV), so
// two blocks share an SM (dQ: 97 KiB of shared memory, 230 registers; dK/dV: 99 KiB, 255) and one's
// pointwise work overlaps the other's products.
#ifndef JFA_BWDQ90_M
#define JFA_BWDQ90_M 64
#endif
#ifndef JFA_BWDQ90_N
#define JFA_BWDQ90_N 64
#endif
#ifndef JFA_BWDKV90_M
#define JFA_BWDKV90_M 64
#endif
#ifndef JFA_BWDKV90_N
#define JFA_BWDKV90_N 64
#endif

// The fused backward on sm_90a: 64 query rows x 128 keys, two warpgroups of 64 keys; dQ's two
// 64-column halves are one per warpgroup. (64 keys in one warpgroup, two blocks per SM, sent twice
// the dQ bytes to the reduce-add per product: bench/NOTES_cuda.md, item 8.)
#ifndef JFA_BWDF90_M
#define JFA_BWDF90_M 64
#endif
#ifndef JFA_BWDF90_N
#define JFA_BWDF90_N 128
#endif

constexpr TileShape kFwdTiles{JFA_FWD_M, JFA_FWD_N, JFA_FWD_W};
constexpr TileShape kJvpTiles{JFA_JVP_M, JFA_JVP_N, JFA_JVP_W};
constexpr TileShape kBwdQTiles{JFA_BWD_Q_M, JFA_BWD_Q_N, JFA_BWD_Q_W};    // dQ: walks key tiles per query tile
constexpr TileShape kBwdKVTiles{JFA_BWD_KV_M, JFA_BWD_KV_N, JFA_BWD_KV_W};  // dK/dV: walks query tiles per key tile
constexpr TileShape kFwdTilesSm90{JFA_FWD90_M, JFA_FWD90_N, JFA_FWD90_M / 16};
constexpr TileShape kJvpTilesSm90{JFA_JVP90_M, JFA_JVP90_N, JFA_JVP90_M / 16};
constexpr TileShape kBwdQTilesSm90{JFA_BWDQ90_M, JFA_BWDQ90_N, JFA_BWDQ90_M / 16};
constexpr TileShape kBwdKVTilesSm90{JFA_BWDKV90_M, JFA_BWDKV90_N, JFA_BWDKV90_N / 16};
constexpr TileShape kBwdFusedTilesSm90{JFA_BWDF90_M, JFA_BWDF90_N, JFA_BWDF90_N / 16};

}  // namespace jfa
