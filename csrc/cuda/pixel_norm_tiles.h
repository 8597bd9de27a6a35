// How pixel_norm_tiles (cuda/pixel_norm.cu) splits an NCHW-like [outer, channels, inner] tensor
// over blocks and threads, and the order its partial sums meet in. Free of torch and of CUDA headers
// so that tests/test_cuda_partition.py compiles it with the system g++ and checks, without a GPU,
// that every element is covered exactly once.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/host_device.h"

namespace gan_kernels {

constexpr int kPixelNormTileThreads = 256;
// Bytes of inner positions a tile holds per channel, widest first. A warp instruction then covers
// 128 contiguous bytes per channel where the shared-memory cache allows it; 32 bytes (one sector) is
// the narrowest tile still worth caching.
constexpr int kPixelNormTileBytes[] = {128, 64, 32};

// A block runs `slots` tiles side by side; a tile is `lanes` threads along the inner dimension, each
// moving `vec` contiguous elements per access, times `rows` threads striding the channels.
struct PixelNormTiles {
  int vec;
  int lanes;
  int rows;
  int slots;
  int64_t columns;          // accesses per (outer, channel): inner / vec
  int64_t tiles_per_outer;  // ceil(columns / lanes)
  int64_t tiles;
  int64_t block_tiles;  // groups of `slots` tiles, each one block's work per grid-stride step
  bool cached;          // the tile lives in shared memory between the reduction and the write
  size_t cache_bytes;   // dynamic shared memory of a block
};

GAN_KERNELS_HD int64_t pow2_at_least(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// The geometry of a launch. `vec` is 1 or the elements of a 16-byte access (the caller checks that
// inner is a multiple of it and the pointers are 16-byte aligned); `tensors` is what the cache holds
// per element (x, and in the backward the gradient too); `cache_budget` the dynamic shared memory a
// block may take. Small channel counts give several tiles per block, so no thread idles on a
// channel that does not exist; small inner sizes narrow the tile to what the positions need.
inline PixelNormTiles pixel_norm_tiles_geometry(int64_t outer, int64_t channels, int64_t inner, int elem_bytes, int vec,
                                                int tensors, size_t cache_budget) {
  PixelNormTiles t{};
  t.vec = vec;
  t.columns = inner / vec;
  auto shape = [&](int tile_bytes) {
    t.lanes = int(pow2_at_least(t.columns));
    const int widest = tile_bytes / (vec * elem_bytes);
    if (t.lanes > widest) t.lanes = widest < 1 ? 1 : widest;
    const int64_t most_rows = kPixelNormTileThreads / t.lanes;
    const int64_t rows = pow2_at_least(channels);
    t.rows = int(rows < most_rows ? rows : most_rows);
    t.slots = kPixelNormTileThreads / (t.lanes * t.rows);
    t.cache_bytes =
        size_t(t.slots) * size_t(channels) * size_t(t.lanes) * size_t(vec) * size_t(elem_bytes) * size_t(tensors);
  };
  t.cached = false;
  for (int tile_bytes : kPixelNormTileBytes) {
    shape(tile_bytes);
    if (t.cache_bytes <= cache_budget) {
      t.cached = true;
      break;
    }
  }
  if (!t.cached) {
    shape(kPixelNormTileBytes[0]);
    t.cache_bytes = 0;
  }
  t.tiles_per_outer = ceil_div(t.columns, t.lanes);
  t.tiles = outer * t.tiles_per_outer;
  t.block_tiles = ceil_div(t.tiles, t.slots);
  return t;
}

// Where thread `thread` of a block sits in its tile.
struct PixelNormTileThread {
  int lane;
  int row;
  int slot;
};

GAN_KERNELS_HD PixelNormTileThread pixel_norm_tile_thread(const PixelNormTiles& t, int thread) {
  return {thread % t.lanes, (thread / t.lanes) % t.rows, thread / (t.lanes * t.rows)};
}

// The first element a thread accesses in block tile `block_tile` (its channel `row`; channel c
// is `c * inner` further), or -1 where its tile or its column lies past the tensor.
GAN_KERNELS_HD int64_t pixel_norm_tile_start(const PixelNormTiles& t, PixelNormTileThread th, int64_t block_tile,
                                             int64_t channels, int64_t inner) {
  const int64_t tile = block_tile * t.slots + th.slot;
  const int64_t column = (tile % t.tiles_per_outer) * t.lanes + th.lane;
  if (tile >= t.tiles || column >= t.columns) return -1;
  return (tile / t.tiles_per_outer) * channels * inner + column * t.vec;
}

// The reduction over a tile's rows: first within a warp, by xor shuffles over these strides (rows of
// one slot and lane in the same warp), then over the warps of a slot through shared memory.
GAN_KERNELS_HD int pixel_norm_rows_per_warp(const PixelNormTiles& t) {
  const int per_warp = 32 / t.lanes;
  return per_warp < 1 ? 1 : (per_warp < t.rows ? per_warp : t.rows);
}
GAN_KERNELS_HD int pixel_norm_row_groups(const PixelNormTiles& t) { return t.rows / pixel_norm_rows_per_warp(t); }

// The shared-memory partial of (slot, row group, lane): `vec` consecutive accumulators from there.
GAN_KERNELS_HD int pixel_norm_partial_index(const PixelNormTiles& t, PixelNormTileThread th, int group) {
  return ((th.slot * pixel_norm_row_groups(t) + group) * t.lanes + th.lane) * t.vec;
}

// Accumulators the partials take at most, for any geometry of an element size. Shared memory is used
// only where a slot's rows span several warps (more than one row group): then slots * row groups *
// lanes * vec is 8 * lanes * vec (lanes under 32) or 256 (lanes 32 or more, which only vec 1 has),
// and lanes * vec is at most the widest tile's elements.
template <int kElemBytes> constexpr int kPixelNormPartials =
    8 * kPixelNormTileBytes[0] / kElemBytes > kPixelNormTileThreads ? 8 * kPixelNormTileBytes[0] / kElemBytes
                                                                    : kPixelNormTileThreads;

}  // namespace gan_kernels
