// Checks the partitions of csrc/cuda/pixel_norm_tiles.h and csrc/cuda/minibatch_std_tiles.h on the CPU:
// for awkward shapes, walking blocks, threads and their loops as the kernels do, every element is
// accessed exactly once, accesses are aligned to their width, and each pixel-norm sum meets every
// channel row of its tile exactly once. Built and run by tests/test_cuda_partition.py; prints the
// number of cases and exits 1 on the first failures.
#include <bitset>
#include <cstdio>
#include <vector>

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
  std::printf("%d cases, %d failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
