// The one struct the kernels see: raw device pointers, shapes, element strides, the
// softmax scale and the mask's compact tile description. No torch types anywhere.
#pragma once

#include <cstdint>

#include "tile_shapes.h"

namespace jfa {

// CSR lists over tiles (see python/jvp_flash_attn/masks/tiles.py): for tile t of the outer
// axis, the inner tiles idx[ptr[t] .. ptr[t+1]) are FULL (no masking arithmetic) or PARTIAL
// (masked element-wise from the per-token maps).
// part_runs: per PARTIAL entry, kTileRunFields int32 (masks/tiles.py, partial_tile_runs) that let
// a kernel test the tile's pairs by arithmetic when its tokens fall in two segments or fewer per side.
// order: the order a walk takes an outer tile's entries, at offset full_ptr[t] + part_ptr[t]: the
// entries' indices (FULL ones 0.., then PARTIAL ones) by increasing inner tile; nullptr: FULL
// entries first (masks/tiles.py, k_walk_order; the ordered backward's key-side walk takes it).
constexpr int kTileRunFields = 8;
struct TileLists {
    const int32_t* full_ptr = nullptr;
    const int32_t* full_idx = nullptr;
    const int32_t* part_ptr = nullptr;
    const int32_t* part_idx = nullptr;
    const int32_t* part_runs = nullptr;
    const int32_t* order = nullptr;
};

// In which order the fused backward adds each block's dQ tile into the float32 buffer.
enum class DqOrder : int { kArrival = 0, kKeyTile = 1 };

// Per-token maps for PARTIAL tiles: allowed(i, j) = rule[q_seg[i], k_seg[j]] == 1, or == 2 and
// q_pos[i] >= k_pos[j]. rule is (num_q_segments, num_k_segments) row-major.
struct TokenMaps {
    const int32_t* q_seg = nullptr;
    const int32_t* q_pos = nullptr;
    const int32_t* k_seg = nullptr;
    const int32_t* k_pos = nullptr;
    const int32_t* rule = nullptr;
    int num_k_segments = 0;
};

// Element strides of a (B, S, H, D) tensor with unit stride on D.
struct Strides {
    int64_t batch = 0;
    int64_t row = 0;
    int64_t head = 0;
};

struct AttnParams {
    // Shapes.
    int batch = 0;
    int seqlen_q = 0;
    int seqlen_k = 0;
    int heads_q = 0;
    int heads_k = 0;      // heads_q % heads_k == 0; query head h reads kv head h / (heads_q / heads_k)
    int head_dim_qk = 0;
    int head_dim_v = 0;
    float scale = 0.f;    // softmax scale applied to q k^T
    // The kernel family the caller chose for the device (checked against it before launching); the
    // tile descriptions below are built for that family's tile shapes.
    KernelFamily family = KernelFamily::kPortable;

    // Forward / JVP inputs and outputs. 16-bit element pointers are void* so one struct
    // serves fp16 and bf16; the kernel casts them to its element type.
    const void* q = nullptr;
    const void* k = nullptr;
    const void* v = nullptr;
    const void* tq = nullptr;
    const void* tk = nullptr;
    const void* tv = nullptr;
    void* o = nullptr;
    void* to = nullptr;
    float* lse = nullptr;   // (B, Hq, Sq), contiguous
    Strides q_stride, k_stride, v_stride, tq_stride, tk_stride, tv_stride, o_stride, to_stride;

    // Backward. do_ and o are read; dq/dk/dv written; delta = rowsum(dO * O), fp32 (B, Hq, Sq).
    const void* do_ = nullptr;
    void* dq = nullptr;
    void* dk = nullptr;
    void* dv = nullptr;
    float* delta = nullptr;
    // The sm_90a family's backward (its only one, the fused kernel) adds dQ / scale into this
    // float32 (B, Hq, Sq, Dqk) buffer with bulk reduce-adds and then converts it into dq; the
    // launcher refuses an sm_90a backward without it. The portable family does not read it.
    float* dq_accum = nullptr;
    // The order of those adds. kArrival: as the blocks get there (the fast form). kKeyTile: every
    // dQ tile receives its adds in decreasing key-tile order, so dq is bitwise repeatable: a block
    // waits until dq_semaphore of the tile (one int32 per batch x query head x query tile, zeroed
    // by the launcher) equals its turn, the key tile's rank among those that visit the query tile
    // (dq_turns, one per entry of the k_tiles lists), adds, waits for the add to complete and
    // counts the semaphore up. With dq_groups > 1 (below) each group of key tiles has its own
    // buffer, semaphores and turns.
    DqOrder dq_order = DqOrder::kArrival;
    TileLists dq_turns;        // full_idx / part_idx: turns, laid out as the k_tiles lists' entries
    int32_t* dq_semaphore = nullptr;
    Strides do_stride, dq_stride, dk_stride, dv_stride;

    // Tile description: q_tiles walks key tiles per query tile (forward, JVP, dQ);
    // k_tiles walks query tiles per key tile (dK/dV).
    TileLists q_tiles;
    TileLists k_tiles;
    TokenMaps maps;
    // Zero-tangent hint of the JVP, per tile of the q_tiles description: 1 where every token's
    // tangent is promised to be zero. zero_tangent_hint selects the sm_90a JVP's hinted
    // instantiation, which skips the loads and products of key tiles flagged in k_zero_tangent
    // (required then); the other kernels ignore the hint.
    bool zero_tangent_hint = false;
    const int8_t* q_zero_tangent = nullptr;   // per query tile (block_m rows)
    const int8_t* k_zero_tangent = nullptr;   // per key tile (block_n keys)
    int num_q_tiles = 0;    // query tiles of the q_tiles description (grid of fwd/JVP/dQ)
    int num_k_tiles = 0;    // key tiles of the k_tiles description (grid of dK/dV)
    // The (block_m, block_n) each description was built for; checked against the kernel's
    // tile shape on launch.
    int q_tiles_block_m = 0;
    int q_tiles_block_n = 0;
    int k_tiles_block_m = 0;
    int k_tiles_block_n = 0;

    // The ordered form's dQ groups (DqOrder::kKeyTile; the fast form takes 1): key tile u adds
    // into group u mod dq_groups (a power of two: 1, 2, 4, ...), so the key tiles that run side
    // by side (launched one after the other) fall in different groups. Each group has its own
    // float32 buffer and its own semaphores, group-major: group g's buffer at dq_accum + g x
    // dq_group_tiles dQ tiles, its semaphores at dq_semaphore + g x dq_group_tiles; its adds come
    // in decreasing key-tile order among its own key tiles (dq_turns are ranks within the group);
    // the conversion pass sums the groups' buffers in the order g = 0, 1, ... Splitting a dQ
    // tile's chain of turns into dq_groups shorter ones lets them run side by side. Placed last
    // so that the fields before keep their offsets.
    int dq_groups = 1;
    int dq_group_tiles = 0;   // dQ tiles per group: B x Hq x query tiles of k_tiles_block_m rows
};

}  // namespace jfa
