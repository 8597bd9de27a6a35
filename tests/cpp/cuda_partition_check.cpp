// Checks the partitions of csrc/cuda/pixel_norm_tiles.h, csrc/cuda/minibatch_std_tiles.h and
// csrc/common/spectral_norm_partition.h on the CPU: for awkward shapes, walking blocks, threads and
// their loops as the kernels do, every element is accessed exactly once, accesses are aligned to their
// width, each pixel-norm sum meets every channel row of its tile exactly once, each column of the
// spectral norm's W^T u is summed over its rows in the order set by the row count alone, its power
// iteration's W^T u of a layer comes after that layer's W v (which it waits for), and the
// normalisation backward's walk gives every access the row and column a division would. Built and run
// by tests/test_cuda_partition.py; prints the number of cases and exits 1 on the first failures.
#include <bitset>
#include <cstdio>
#include <vector>

#include "common/spectral_norm_partition.h"
#include "cuda/minibatch_std_tiles.h"
#include "cuda/pixel_norm_tiles.h"

using namespace gan_kernels;

namespace {

int failures = 0;
int cases = 0;

#define CHECK(cond, ...)               \
  do {                                 \
    if (!(cond) && failures++ < 20) {  \
      std::printf("FAIL %s: ", #cond); \
      std::printf(__VA_ARGS__);        \
      std::printf("\n");               \
    }                                  \
  } while (0)

int partials_capacity(int elem) {
  switch (elem) {
    case 2: return kPixelNormPartials<2>;
    case 4: return kPixelNormPartials<4>;
    default: return kPixelNormPartials<8>;
  }
}

// The rows of a slot that each thread's sum holds, as pixel_norm_tiles combines them.
using Rows = std::bitset<kPixelNormTileThreads>;

void pixel_norm_case(int64_t outer, int64_t channels, int64_t inner, int elem, int vec, int tensors, size_t budget) {
  ++cases;
  const PixelNormTiles t = pixel_norm_tiles_geometry(outer, channels, inner, elem, vec, tensors, budget);
  char name[160];
  std::snprintf(name, sizeof(name), "pixel norm [%lld, %lld, %lld] elem %d vec %d tensors %d budget %zu",
                (long long)outer, (long long)channels, (long long)inner, elem, vec, tensors, budget);
  CHECK(t.lanes * t.rows * t.slots == kPixelNormTileThreads, "%s: %d lanes x %d rows x %d slots", name, t.lanes, t.rows,
        t.slots);
  CHECK(t.lanes * vec * elem <= kPixelNormTileBytes[0], "%s: tile of %d bytes", name, t.lanes * vec * elem);
  CHECK(!t.cached || t.cache_bytes <= budget, "%s: cache %zu bytes", name, t.cache_bytes);
  const int rows_per_warp = pixel_norm_rows_per_warp(t);
  const int groups = pixel_norm_row_groups(t);
  CHECK(rows_per_warp * groups == t.rows, "%s: %d x %d row groups", name, rows_per_warp, groups);
  std::vector<int> seen(size_t(outer * channels * inner), 0);
  const int capacity = partials_capacity(elem);
  for (int64_t block_tile = 0; block_tile < t.block_tiles; ++block_tile) {
    std::vector<Rows> sums(kPixelNormTileThreads);
    std::vector<int> cache_seen(size_t(t.slots * channels * t.lanes), 0);  // the cache is reused per block tile
    for (int thread = 0; thread < kPixelNormTileThreads; ++thread) {
      const PixelNormTileThread th = pixel_norm_tile_thread(t, thread);
      sums[thread].set(th.row);
      const int64_t start = pixel_norm_tile_start(t, th, block_tile, channels, inner);
      if (start < 0) continue;
      CHECK(start % vec == 0, "%s: access at %lld", name, (long long)start);
      // The kernel's loops over the thread's channels, in the tensor and in the cache.
      const int cache_first = (th.slot * int(channels) + th.row) * t.lanes + th.lane;
      int cached_at = cache_first;
      for (int64_t c = th.row, at = start + th.row * inner; c < channels;
           c += t.rows, at += t.rows * inner, cached_at += t.rows * t.lanes) {
        for (int j = 0; j < vec; ++j) ++seen[size_t(at + j)];
        if (t.cached) ++cache_seen[size_t(cached_at)];
      }
    }
    // The shuffles: partners in the same warp, slot and lane, each adding rows not yet held.
    for (int offset = t.lanes; offset < t.lanes * rows_per_warp; offset *= 2) {
      std::vector<Rows> next = sums;
      for (int thread = 0; thread < kPixelNormTileThreads; ++thread) {
        const int partner = thread ^ offset;
        const PixelNormTileThread a = pixel_norm_tile_thread(t, thread), b = pixel_norm_tile_thread(t, partner);
        CHECK(partner / 32 == thread / 32 && a.slot == b.slot && a.lane == b.lane, "%s: shuffle %d <-> %d", name,
              thread, partner);
        CHECK((sums[thread] & sums[partner]).none(), "%s: rows summed twice at offset %d", name, offset);
        next[thread] |= sums[partner];
      }
      sums = next;
    }
    if (groups > 1) {  // one writer per row group, then every thread adds its slot's groups
      std::vector<Rows> partials(static_cast<size_t>(capacity));
      std::vector<int> written(static_cast<size_t>(capacity), 0);
      for (int thread = 0; thread < kPixelNormTileThreads; ++thread) {
        const PixelNormTileThread th = pixel_norm_tile_thread(t, thread);
        if (th.row % rows_per_warp != 0) continue;
        const int at = pixel_norm_partial_index(t, th, th.row / rows_per_warp);
        CHECK(at >= 0 && at + vec <= capacity, "%s: partial %d of %d", name, at, capacity);
        if (at < 0 || at + vec > capacity) return;
        for (int j = 0; j < vec; ++j) ++written[size_t(at + j)];
        partials[size_t(at)] = sums[thread];
      }
      for (int w : written) CHECK(w <= 1, "%s: a partial written %d times", name, w);
      for (int thread = 0; thread < kPixelNormTileThreads; ++thread) {
        const PixelNormTileThread th = pixel_norm_tile_thread(t, thread);
        Rows total;
        for (int group = 0; group < groups; ++group) {
          const Rows& part = partials[size_t(pixel_norm_partial_index(t, th, group))];
          CHECK((total & part).none(), "%s: rows summed twice across warps", name);
          total |= part;
        }
        sums[thread] = total;
      }
    }
    for (int s : cache_seen) CHECK(s <= 1, "%s: a cache entry used by %d accesses", name, s);
    for (int thread = 0; thread < kPixelNormTileThreads; ++thread) {
      CHECK(int(sums[thread].count()) == t.rows, "%s: thread %d sums %zu of %d rows", name, thread,
            sums[thread].count(), t.rows);
    }
  }
  for (size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == 1, "%s: element %zu accessed %d times", name, i, seen[i]);
}

void minibatch_std_case(int64_t groups, int64_t group_size, int64_t features, int64_t channels, int64_t pixels,
                        bool channels_last, int vec) {
  ++cases;
  MinibatchStdParams p{};
  p.groups = groups;
  p.group_size = group_size;
  p.features = features;
  p.channels = channels;
  p.pixels = pixels;
  p.channels_last = channels_last;
  const MinibatchStdTiles t = minibatch_std_tiles(p, vec);
  char name[160];
  std::snprintf(name, sizeof(name), "minibatch std M %lld G %lld F %lld C %lld P %lld %s vec %d (got %d)",
                (long long)groups, (long long)group_size, (long long)features, (long long)channels, (long long)pixels,
                channels_last ? "NHWC" : "NCHW", vec, t.vec);
  const int64_t n = groups * group_size;
  const int64_t block = channels / features;
  std::vector<int> seen_x(size_t(n * channels * pixels), 0);
  std::vector<int> seen_y(size_t(n * (channels + features) * pixels), 0);
  // Channel of an element at `offset` within a sample of `width` channels.
  auto channel = [&](int64_t offset, int64_t width) { return channels_last ? offset % width : offset / pixels; };
  for (int64_t tile = 0; tile < groups * features * t.tiles_per_feature; ++tile) {
    const MinibatchStdTile tl = minibatch_std_tile(t, features, tile);
    CHECK(tl.group * features + tl.feature == tile / t.tiles_per_feature, "%s: tile %lld", name, (long long)tile);
    for (int64_t i = 0; i < tl.accesses; ++i) {
      const MinibatchStdAccess a = minibatch_std_access(t, tl, i);
      for (int64_t g = 0; g < group_size; ++g) {
        const int64_t sample = g * groups + tl.group;
        const int64_t x_at = sample * t.x_sample_stride + a.x_at;
        const int64_t y_at = sample * t.y_sample_stride + a.y_at;
        CHECK(x_at % t.vec == 0 && y_at % t.vec == 0, "%s: unaligned access", name);
        for (int j = 0; j < t.vec; ++j) {
          ++seen_x[size_t(x_at + j)];
          ++seen_y[size_t(y_at + j)];
          CHECK(channel(a.x_at + j, channels) / block == tl.feature, "%s: x element of another feature", name);
          CHECK(channel(a.y_at + j, channels + features) / block == tl.feature, "%s: y element of another feature",
                name);
        }
      }
    }
  }
  for (size_t i = 0; i < seen_x.size(); ++i)
    CHECK(seen_x[i] == 1, "%s: x element %zu seen %d times", name, i, seen_x[i]);
  for (size_t i = 0; i < seen_y.size(); ++i) {
    const bool stat = channel(int64_t(i) % ((channels + features) * pixels), channels + features) >= channels;
    CHECK(seen_y[i] == (stat ? 0 : 1), "%s: y element %zu seen %d times", name, i, seen_y[i]);
  }
}

// The power iteration's W v (mv_kernel) and W^T u (mtv_kernel) over a weight viewed as [outer, rows,
// inner], with accesses of `vec` elements.
void spectral_case(int64_t outer, int64_t rows, int64_t inner, int vec) {
  ++cases;
  const int64_t cols = outer * inner;
  char name[160];
  std::snprintf(name, sizeof(name), "spectral norm [%lld, %lld, %lld] vec %d", (long long)outer, (long long)rows,
                (long long)inner, vec);
  // W v: whole rows per block, each row in `slices` warps, lanes along the columns.
  std::vector<int> seen(size_t(rows * cols), 0);
  std::vector<int> rows_written(size_t(rows), 0);
  const int slices = spectral_mv_slices(cols, vec);
  CHECK(slices == 1 || slices == 2 || slices == 4 || slices == 8, "%s: %d slices", name, slices);
  for (int64_t block = 0; block < spectral_mv_blocks(rows, slices); ++block) {
    for (int warp = 0; warp < kSpectralWarps; ++warp) {
      const int slice = warp % slices;
      const int64_t r = spectral_mv_row(block, warp, slices);
      if (r >= rows) continue;
      for (int lane = 0; lane < 32; ++lane) {
        const int64_t steps = spectral_mv_steps(cols, vec, slices, slice, lane);
        CHECK(steps <= kSpectralMvSteps || slices == kSpectralWarps, "%s: %lld steps in %d slices", name,
              (long long)steps, slices);
        SpectralColumnWalk walk(rows, inner, spectral_mv_column(0, slices, slice, lane, vec), 32 * slices * vec);
        for (int64_t k = 0; k < steps; ++k, walk.advance()) {
          const int64_t c = spectral_mv_column(k, slices, slice, lane, vec);
          CHECK(walk.at == spectral_element(rows, inner, 0, c), "%s: walk at %lld for column %lld", name,
                (long long)walk.at, (long long)c);
          const int64_t at = r * inner + walk.at;
          CHECK(at % vec == 0 && c % inner + vec <= inner, "%s: access of row %lld at column %lld", name, (long long)r,
                (long long)c);
          for (int e = 0; e < vec; ++e) ++seen[size_t(at + e)];
        }
      }
    }
    // The threads that add a row's slices (partial[t * slices + s], written by warp t * slices + s).
    const int rows_per_block = kSpectralWarps / slices;
    for (int t = 0; t < rows_per_block; ++t) {
      const int64_t r = block * rows_per_block + t;
      if (r >= rows) continue;
      ++rows_written[size_t(r)];
      for (int s = 0; s < slices; ++s) {
        CHECK(spectral_mv_row(block, t * slices + s, slices) == r && (t * slices + s) % slices == s,
              "%s: row %lld adds the slice of warp %d", name, (long long)r, t * slices + s);
      }
    }
  }
  for (size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == 1, "%s: W v reads element %zu %d times", name, i, seen[i]);
  for (size_t r = 0; r < rows_written.size(); ++r)
    CHECK(rows_written[r] == 1, "%s: W v row %zu written %d times", name, r, rows_written[r]);

  // W^T u: a block per kSpectralMtvLanes * vec columns, row groups striding the rows tile by tile.
  std::fill(seen.begin(), seen.end(), 0);
  std::vector<int> cols_written(size_t(cols), 0);
  const int64_t blocks = spectral_mtv_blocks(cols, vec);
  CHECK(blocks >= 1, "%s: no W^T u block writes u", name);
  for (int64_t block = 0; block < blocks; ++block) {
    for (int lane = 0; lane < kSpectralMtvLanes; ++lane) {
      const int64_t c0 = spectral_mtv_column(block, lane, vec);
      if (c0 >= cols) continue;
      CHECK(c0 % inner + vec <= inner, "%s: column access at %lld crosses a row segment", name, (long long)c0);
      const int64_t base = spectral_element(rows, inner, 0, c0);
      for (int group = 0; group < kSpectralRowGroups; ++group) {
        int64_t previous = -1;  // the group's rows, in the order it adds them
        for (int64_t t0 = 0; t0 < rows; t0 += kSpectralRowTile) {
          const int64_t tile_rows = std::min(rows - t0, int64_t(kSpectralRowTile));
          for (int64_t j = 0; j < spectral_mtv_group_rows(tile_rows, group); ++j) {
            const int64_t r = t0 + group + j * kSpectralRowGroups;
            CHECK(r < rows && r % kSpectralRowGroups == group && r > previous, "%s: group %d adds row %lld after %lld",
                  name, group, (long long)r, (long long)previous);
            previous = r;
            const int64_t at = base + r * inner;
            CHECK(at == spectral_element(rows, inner, r, c0) && at % vec == 0, "%s: access at %lld", name,
                  (long long)at);
            for (int e = 0; e < vec; ++e) ++seen[size_t(at + e)];
          }
        }
      }
    }
    for (int t = 0; t < kSpectralMtvLanes * vec; ++t) {  // the threads that add the groups' sums and write W^T u
      CHECK(t < kSpectralThreads, "%s: column %d of a block has no thread", name, t);
      const int64_t c = spectral_mtv_column(block, 0, vec) + t;
      if (c < cols) ++cols_written[size_t(c)];
    }
  }
  for (size_t i = 0; i < seen.size(); ++i)
    CHECK(seen[i] == 1, "%s: W^T u reads element %zu %d times", name, i, seen[i]);
  for (size_t c = 0; c < cols_written.size(); ++c)
    CHECK(cols_written[c] == 1, "%s: W^T u column %zu written %d times", name, c, cols_written[c]);
}

// The normalisation of a weight viewed as [outer, rows, inner] with accesses of `vec` elements: W / sigma
// and <G, W> (vec dividing numel) and the backward's formula (vec dividing inner, so the walk's row and
// column hold for a whole access), over the layer's blocks.
void spectral_normalize_case(int64_t outer, int64_t rows, int64_t inner, int vec) {
  ++cases;
  const int64_t numel = outer * rows * inner;
  char name[160];
  std::snprintf(name, sizeof(name), "spectral normalise [%lld, %lld, %lld] vec %d", (long long)outer, (long long)rows,
                (long long)inner, vec);
  const int blocks = spectral_normalize_blocks(numel);
  CHECK(blocks >= 1 && blocks <= kSpectralMaxBlocksPerLayer, "%s: %d blocks", name, blocks);
  const bool walks = inner % vec == 0;
  std::vector<int> seen(size_t(numel), 0);
  for (int block = 0; block < blocks; ++block) {
    for (int thread = 0; thread < kSpectralNormalizeThreads; ++thread) {
      const int64_t first = spectral_normalize_first(block, thread);
      const int64_t steps = spectral_normalize_steps(numel / vec, blocks, first);
      const int64_t stride = int64_t(blocks) * kSpectralNormalizeThreads * vec;
      if (steps == 0) continue;
      SpectralElementWalk walk(rows, inner, first * vec, stride);
      for (int64_t k = 0; k < steps; ++k, walk.advance()) {
        const int64_t at = (first + k * blocks * kSpectralNormalizeThreads) * vec;
        CHECK(at + vec <= numel, "%s: access at %lld", name, (long long)at);
        if (at + vec > numel) return;
        for (int e = 0; e < vec; ++e) ++seen[size_t(at + e)];
        if (!walks) continue;
        const int64_t r = at / inner % rows, c = at / (rows * inner) * inner + at % inner;
        CHECK(walk.r == r && walk.c == c && walk.i == at % inner,
              "%s: walk at element %lld: row %lld column %lld, want %lld, %lld", name, (long long)at, (long long)walk.r,
              (long long)walk.c, (long long)r, (long long)c);
        CHECK(at % inner + vec <= inner, "%s: access at %lld crosses a row segment", name, (long long)at);
      }
    }
  }
  for (size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == 1, "%s: element %zu written %d times", name, i, seen[i]);
}

// A power-iteration launch's tickets: every ticket belongs to the segment whose range holds it,
// segments without blocks included.
void spectral_tickets_case(const std::vector<int>& segment_blocks) {
  ++cases;
  std::vector<int> first(1, 0);
  for (int b : segment_blocks) first.push_back(first.back() + b);
  const int segments = int(segment_blocks.size());
  for (int ticket = 0; ticket < first.back(); ++ticket) {
    const int s = spectral_segment_of_block(first.data(), segments, ticket);
    CHECK(s >= 0 && s < segments && first[size_t(s)] <= ticket && ticket < first[size_t(s) + 1],
          "%d segments: ticket %d given to segment %d", segments, ticket, s);
  }
}

// The power iteration's schedule: each layer's W v once, and with a step its W^T u once, after its W v
// (whose blocks it waits for: a wait for a later segment could deadlock) and, but for the last layer,
// after the next layer's W v.
void spectral_chain_case(int count, bool step) {
  ++cases;
  std::vector<int> mv_at(size_t(count), -1);
  std::vector<int> mtv_at(size_t(count), -1);
  const int segments = spectral_chain_segments(count, step);
  for (int s = 0; s < segments; ++s) {
    const SpectralChainSegment segment = spectral_chain_segment(count, step, s);
    CHECK(segment.layer >= 0 && segment.layer < count, "%d layers: segment %d is layer %d", count, s, segment.layer);
    if (segment.layer < 0 || segment.layer >= count) return;
    int& at = (segment.mtv ? mtv_at : mv_at)[size_t(segment.layer)];
    CHECK(at == -1, "%d layers: layer %d's %s twice", count, segment.layer, segment.mtv ? "W^T u" : "W v");
    at = s;
  }
  for (int l = 0; l < count; ++l) {
    CHECK(mv_at[size_t(l)] >= 0, "%d layers: no W v of layer %d", count, l);
    if (!step) {
      CHECK(mtv_at[size_t(l)] == -1 && mv_at[size_t(l)] == l, "%d layers, no step: layer %d at %d", count, l,
            mv_at[size_t(l)]);
      continue;
    }
    CHECK(mtv_at[size_t(l)] > mv_at[size_t(l)], "%d layers: layer %d's W^T u at %d, its W v at %d", count, l,
          mtv_at[size_t(l)], mv_at[size_t(l)]);
    if (l + 1 < count) {
      CHECK(mtv_at[size_t(l)] > mv_at[size_t(l) + 1], "%d layers: layer %d's W^T u before the next W v", count, l);
    }
  }
}

}  // namespace

int main() {
  // Pixel norm: channels around the slot and row limits, inner sizes below, at and past a tile, odd
  // and not a multiple of the vector, every element size, both tensor counts, cached and not.
  const int64_t channel_counts[] = {1, 2, 3, 5, 31, 32, 33, 67, 300, 513};
  const int64_t inner_sizes[] = {2, 3, 8, 16, 24, 35, 64, 100, 136};
  for (int elem : {2, 4, 8}) {
    for (int tensors : {1, 2}) {
      for (int64_t channels : channel_counts) {
        for (int64_t inner : inner_sizes) {
          const int widest = 16 / elem;
          for (size_t budget : {size_t(48 * 1024 - 4096), size_t(1024), size_t(0)}) {
            pixel_norm_case(3, channels, inner, elem, 1, tensors, budget);
            if (inner % widest == 0) pixel_norm_case(3, channels, inner, elem, widest, tensors, budget);
          }
        }
      }
    }
  }
  // Minibatch stddev: fixed and other group sizes, features, pixels that do and do not allow
  // 16-byte accesses, more than one tile per feature block, both layouts.
  for (bool channels_last : {false, true}) {
    for (int vec : {1, 2, 4, 8}) {
      minibatch_std_case(2, 4, 1, 512, 16, channels_last, vec);  // 8192 positions: 4 tiles
      minibatch_std_case(3, 2, 2, 6, 9, channels_last, vec);
      minibatch_std_case(1, 8, 4, 32, 4, channels_last, vec);
      minibatch_std_case(2, 3, 1, 5, 7, channels_last, vec);
      minibatch_std_case(2, 4, 3, 24, 1, channels_last, vec);
      minibatch_std_case(1, 1, 1, 16, 3000, channels_last, vec);  // rows longer than a tile
      minibatch_std_case(5, 4, 8, 64, 8, channels_last, vec);
    }
  }
  // Spectral norm: rows around the rows per block and past a u tile, one and several row segments
  // (ConvTranspose's dim 1), columns below, at and past a block's 32 * vec, every access width the
  // segment length allows.
  const int64_t segment_shapes[][2] = {{1, 1},    {1, 3}, {1, 8}, {1, 100}, {1, 128}, {1, 129},
                                       {1, 1000}, {2, 8}, {3, 9}, {4, 16},  {7, 5},   {5, 64}};
  for (const auto& shape : segment_shapes) {
    for (int64_t rows : {1, 2, 9, 16, 17, 40}) {
      for (int vec : {1, 2, 4, 8}) {
        if (shape[1] % vec == 0) spectral_case(shape[0], rows, shape[1], vec);
      }
    }
  }
  spectral_case(1, 2 * kSpectralRowTile + 5, 24, 8);
  spectral_case(3, kSpectralRowTile + 1, 4, 4);
  for (int vec : {1, 4, 8}) {  // rows long enough for 2, 4 and 8 slices, and more steps than 8 slices hold
    for (int64_t cols : {32 * 17 * 8, 32 * 33 * 8, 32 * 65 * 8, 32 * 200 * 8 + 8}) spectral_case(1, 19, cols, vec);
  }
  spectral_case(8, 3, 96, 4);
  spectral_case(1, 0, 7, 1);
  spectral_case(1, 5, 0, 1);
  // Normalisation: every access width that numel or inner allows, inner not a multiple of the widest,
  // outer > 1, empty layers, one block part full, the 256-block cap with several steps per thread
  // (512 x 4608 and an odd size), and steps that are and are not a multiple of the load batch.
  const int64_t normalize_shapes[][3] = {{1, 7, 5},       {1, 8, 13},      {1, 40, 128}, {6, 5, 9},    {24, 16, 16},
                                         {3, 1, 1},       {1, 1, 1},       {7, 3, 2},    {1, 0, 7},    {1, 5, 0},
                                         {0, 4, 4},       {1, 64, 128},    {2, 33, 40},  {1, 1, 4104}, {1, 512, 4608},
                                         {1, 1023, 1031}, {1, 1024, 1025}, {512, 3, 640}};
  for (const auto& shape : normalize_shapes) {
    for (int vec : {1, 2, 4, 8}) {
      if ((shape[0] * shape[1] * shape[2]) % vec == 0) spectral_normalize_case(shape[0], shape[1], shape[2], vec);
    }
  }
  spectral_tickets_case({5});
  spectral_tickets_case({0, 3, 0, 0, 1, 7, 0});
  spectral_tickets_case({1, 1, 1, 2, 40, 1});
  for (int count : {1, 2, 3, 7, kMaxSpectralLayers}) {
    spectral_chain_case(count, true);
    spectral_chain_case(count, false);
  }
  for (int64_t rows : {0, 1, 9}) {  // every layer gets a W v block, even without rows
    CHECK(spectral_chain_mv_blocks(rows, 5, 1) >= 1, "a layer of %lld rows has no W v block", (long long)rows);
  }
  std::printf("%d cases, %d failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
