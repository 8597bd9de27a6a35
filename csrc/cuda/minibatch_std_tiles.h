// How group_positions (cuda/minibatch_std.cu) splits the positions of each (group, feature) block
// over tiles and threads. Free of torch and of CUDA headers so that tests/test_cuda_partition.py
// compiles it with the system g++ and checks, without a GPU, that every element is covered once.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "common/host_device.h"
#include "common/minibatch_std.h"

namespace gan_kernels {

constexpr int kMinibatchStdThreads = 256;
// Positions (each read G times) per tile: 2048 gives ~1000 blocks at [64, 512, 16, 16], enough to
// fill an H100 while keeping the per-tile partials few.
constexpr int64_t kMinibatchStdTilePositions = 2048;

// The shared block layout plus the split of a block's rows into tiles, and the elements each access
// moves along the contiguous columns.
struct MinibatchStdTiles : MinibatchStdLayout {
  int64_t rows_per_tile;
  int64_t tiles_per_feature;
  int vec;
};

// `vec` elements per access where every row of x and y starts a multiple of it from a 16-byte
// aligned pointer (the caller checks the pointers): the columns and each stride are multiples of it.
inline MinibatchStdTiles minibatch_std_tiles(const MinibatchStdParams& p, int vec) {
  MinibatchStdTiles t{minibatch_std_layout(p), 0, 0, 1};
  for (int64_t stride :
       {t.cols, t.feature_stride, t.x_row_stride, t.y_row_stride, t.x_sample_stride, t.y_sample_stride}) {
    if (stride % vec != 0) vec = 1;
  }
  t.vec = vec;
  t.rows_per_tile = kMinibatchStdTilePositions / (t.cols > 0 ? t.cols : 1);
  if (t.rows_per_tile < 1) t.rows_per_tile = 1;
  t.tiles_per_feature = ceil_div(t.rows, t.rows_per_tile);
  return t;
}

// Tile `tile` (of groups * features * tiles_per_feature): its (group, feature) block and first row.
struct MinibatchStdTile {
  int64_t group;
  int64_t feature;
  int64_t row0;
  int64_t accesses;  // positions / vec
};

GAN_KERNELS_HD MinibatchStdTile minibatch_std_tile(const MinibatchStdTiles& t, int64_t features, int64_t tile) {
  const int64_t group_feature = tile / t.tiles_per_feature;
  const int64_t row0 = (tile % t.tiles_per_feature) * t.rows_per_tile;
  const int64_t rows = t.rows - row0 < t.rows_per_tile ? t.rows - row0 : t.rows_per_tile;
  return {group_feature / features, group_feature % features, row0, rows * (t.cols / t.vec)};
}

// Access i of a tile (threads take i = thread, thread + 256, ...): where its first element lies in
// sample 0's x and y; member g of the group adds (g * groups + group) times the sample strides.
struct MinibatchStdAccess {
  int64_t x_at;
  int64_t y_at;
};

GAN_KERNELS_HD MinibatchStdAccess minibatch_std_access(const MinibatchStdTiles& t, const MinibatchStdTile& tile,
                                                       int64_t i) {
  const int64_t cols = t.cols / t.vec;
  const int64_t row = tile.row0 + i / cols;
  const int64_t col = (i % cols) * t.vec;
  const int64_t at = tile.feature * t.feature_stride + col;
  return {at + row * t.x_row_stride, at + row * t.y_row_stride};
}

}  // namespace gan_kernels
