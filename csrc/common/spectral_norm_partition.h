// How the CUDA kernels of cuda/spectral_norm.cu split each layer over blocks, warps and lanes: the
// power iteration's W v and W^T u, and the normalisation W / sigma with its backward; and the order
// their sums run in. Torch-free and free of CUDA headers, so that tests/test_cuda_partition.py compiles
// it with the system g++ and checks, without a GPU, that every element of W is read exactly once per
// phase, every entry of W v and W^T u and every element of the normalisation's output written once.
//
// Everything here is a function of the layer's own shape and access width (16 bytes when its W and
// v allow it, see spectral_vector_width), never of the other layers in a launch: a layer's bits are
// the same batched and alone.
#pragma once

#include <cstdint>

#include "common/host_device.h"
#include "common/spectral_norm.h"

namespace gan_kernels {

constexpr int kSpectralThreads = 256;  // a power-iteration block
constexpr int kSpectralWarps = kSpectralThreads / 32;
// W v: a warp makes at most this many steps along its part of a row (unless a row is split 8 ways),
// so that no warp's chain of loads outlasts the others' by much: a row longer than that is split
// into 2, 4 or 8 slices, each a warp's, whose sums then meet in slice order.
constexpr int kSpectralMvSteps = 16;
// W^T u: a row group of 16 lanes reads 16 * 16 bytes of a row; the block's 16 row groups stride the
// rows. u is staged in shared memory this many rows at a time (a multiple of the group count, so a
// group's rows keep their order across tiles).
constexpr int kSpectralMtvLanes = 16;
constexpr int kSpectralRowGroups = kSpectralThreads / kSpectralMtvLanes;
constexpr int kSpectralRowTile = 1024;

// Elements per access: 16 bytes where every run of `run` elements that an access must stay within is a
// whole number of them and the pointers are 16-byte aligned, else one. The run is a row segment (inner)
// where an access needs one row and neighbouring columns (the power iteration, the normalisation's
// backward), the whole weight where it needs no coordinates (W / sigma, <G, W>).
GAN_KERNELS_HD int spectral_vector_width(int64_t run, int element_bytes, bool aligned) {
  const int widest = 16 / element_bytes;
  return aligned && run % widest == 0 ? widest : 1;
}

// Element (r, c) of the matrix of a contiguous weight viewed as [outer, rows, inner]: column
// c = o * inner + i. With outer == 1 a row is contiguous.
GAN_KERNELS_HD int64_t spectral_element(int64_t rows, int64_t inner, int64_t r, int64_t c) {
  return (c / inner) * rows * inner + r * inner + c % inner;
}

// ---- W v ------------------------------------------------------------------------------------------

// Slices per row: the fewest (1, 2, 4 or 8) that keep each warp within kSpectralMvSteps steps.
GAN_KERNELS_HD int spectral_mv_slices(int64_t cols, int vec) {
  const int64_t steps = ceil_div(cols / vec, 32);
  int slices = 1;
  while (slices < kSpectralWarps && ceil_div(steps, slices) > kSpectralMvSteps) slices *= 2;
  return slices;
}

// A block computes kSpectralWarps / slices whole rows (complete dot products, no cross-block sum).
GAN_KERNELS_HD int64_t spectral_mv_blocks(int64_t rows, int slices) { return ceil_div(rows, kSpectralWarps / slices); }

// Warp w of a block works on row block * rows_per_block + w / slices, slice w % slices of it.
GAN_KERNELS_HD int64_t spectral_mv_row(int64_t block, int warp, int slices) {
  return block * (kSpectralWarps / slices) + warp / slices;
}

// A lane's k-th access in its slice starts at column ((k * slices + slice) * 32 + lane) * vec: the
// slices of a row take turns at 32 * vec neighbouring columns. The lane makes this many steps, and
// sums them in k order.
GAN_KERNELS_HD int64_t spectral_mv_column(int64_t k, int slices, int slice, int lane, int vec) {
  return ((k * slices + slice) * 32 + lane) * vec;
}
GAN_KERNELS_HD int64_t spectral_mv_steps(int64_t cols, int vec, int slices, int slice, int lane) {
  const int64_t accesses = cols / vec;
  const int64_t first = int64_t(slice) * 32 + lane;
  return accesses > first ? ceil_div(accesses - first, 32 * int64_t(slices)) : 0;
}

// A lane's walk along the columns c0, c0 + step, ... of row 0 (row r is r * inner further), without a
// 64-bit division per step (a call on the GPU, which spilled): `at` is spectral_element(rows, inner, 0, c).
struct SpectralColumnWalk {
  int64_t at;
  int64_t i;  // c % inner
  int64_t step_at;
  int64_t step_i;  // step % inner
  int64_t inner;
  int64_t wrap;  // from the end of a row segment to the start of the next segment of the same row

  // A layer without columns (inner == 0) takes no step: its walk is all zeros rather than a division by 0.
  GAN_KERNELS_HD SpectralColumnWalk(int64_t rows, int64_t inner_, int64_t c0, int64_t step)
      : at(inner_ > 0 ? spectral_element(rows, inner_, 0, c0) : 0),
        i(inner_ > 0 ? c0 % inner_ : 0),
        step_at(inner_ > 0 ? (step / inner_) * rows * inner_ + step % inner_ : 0),
        step_i(inner_ > 0 ? step % inner_ : 0),
        inner(inner_),
        wrap((rows - 1) * inner_) {}

  GAN_KERNELS_HD void advance() {
    at += step_at;
    i += step_i;
    if (i >= inner) {
      i -= inner;
      at += wrap;
    }
  }
};

// ---- W^T u ----------------------------------------------------------------------------------------

// A block owns kSpectralMtvLanes * vec neighbouring columns, a lane of each row group vec of them. At
// least one block, so that a layer without columns still gets the block that writes u.
GAN_KERNELS_HD int64_t spectral_mtv_blocks(int64_t cols, int vec) {
  const int64_t blocks = ceil_div(cols, int64_t(kSpectralMtvLanes) * vec);
  return blocks < 1 ? 1 : blocks;
}
GAN_KERNELS_HD int64_t spectral_mtv_column(int64_t block, int lane, int vec) {
  return (block * kSpectralMtvLanes + lane) * vec;
}

// Within a tile of `tile_rows` rows, row group g sums rows g, g + 16, ... (this many, in that order);
// the groups' sums of a column then meet in group order. So each column of W^T u is summed in an
// order set by the row count alone, whatever the access width or the block.
GAN_KERNELS_HD int64_t spectral_mtv_group_rows(int64_t tile_rows, int group) {
  return tile_rows > group ? ceil_div(tile_rows - group, kSpectralRowGroups) : 0;
}

// ---- W / sigma and its backward ------------------------------------------------------------------

// A layer's numel / vec accesses are dealt out grid-stride over its spectral_normalize_blocks(numel)
// blocks (common/spectral_norm.h): thread t of block b makes accesses b * threads + t, then every
// blocks * threads further, and the backward's <G, W> sums them in that order. So, as the block count,
// a function of the layer's own size and access width.
GAN_KERNELS_HD int64_t spectral_normalize_first(int64_t block, int thread) {
  return block * kSpectralNormalizeThreads + thread;
}
GAN_KERNELS_HD int64_t spectral_normalize_steps(int64_t accesses, int blocks, int64_t first) {
  return accesses > first ? ceil_div(accesses - first, int64_t(blocks) * kSpectralNormalizeThreads) : 0;
}

// n / d and n % d for 0 <= n < 2^31 and d > 0, in 32 bits when d <= n: a 64-bit division is a
// subroutine call on the GPU, whose saved registers made the normalisation backward spill (seen in the
// SASS); a 32-bit one is inline.
struct SpectralSmallDivision {
  int64_t quotient;
  int64_t remainder;
};
GAN_KERNELS_HD SpectralSmallDivision spectral_divide_small(int64_t n, int64_t d) {
  if (d > n) return {0, n};
  const auto quotient = static_cast<int64_t>(static_cast<uint32_t>(n) / static_cast<uint32_t>(d));
  return {quotient, n - quotient * d};
}

// A thread's start and the grid's step in the normalisation: below 2^31 elements, for spectral_divide_small.
constexpr int64_t kSpectralNormalizeSpan = kSpectralMaxBlocksPerLayer * kSpectralNormalizeThreads * 16;
static_assert(kSpectralNormalizeSpan < (int64_t(1) << 31), "the walk's divisions need 32-bit operands");

// The row and column of a thread's elements in the backward's formula, which reads u[r] and v[c] for
// element o * rows * inner + r * inner + i (c = o * inner + i): found by divisions at the thread's first
// element, then advanced by a fixed step with carries, not a division per element. For a layer with
// elements (rows, inner > 0) and a start and step below kSpectralNormalizeSpan; with those and inner
// multiples of the access width, an access never leaves its row segment. The element's own position is
// the caller's (a pointer advanced by the step): one register pair fewer here.
struct SpectralElementWalk {
  int64_t r;
  int64_t i;
  int64_t c;
  // The step's parts, each at most the step, so 32 bits: fewer registers.
  int32_t step_r;  // (step / inner) % rows
  int32_t step_i;  // step % inner
  int32_t step_c;  // the step's whole multiples of rows * inner, as columns, plus step_i
  int64_t rows;
  int64_t inner;

  GAN_KERNELS_HD SpectralElementWalk(int64_t rows_, int64_t inner_, int64_t first, int64_t step)
      : rows(rows_), inner(inner_) {
    split(first, r, i, c);
    int64_t parts[3];
    split(step, parts[0], parts[1], parts[2]);
    step_r = static_cast<int32_t>(parts[0]);
    step_i = static_cast<int32_t>(parts[1]);
    step_c = static_cast<int32_t>(parts[2]);
  }

  // i and r each carry at most once: step_i < inner, and r + step_r + 1 < 2 * rows.
  GAN_KERNELS_HD void advance() {
    r += step_r;
    i += step_i;
    c += step_c;
    if (i >= inner) {
      i -= inner;
      c -= inner;
      ++r;
    }
    if (r >= rows) {
      r -= rows;
      c += inner;
    }
  }

 private:
  // Element e's row, its offset in the row segment, and its column.
  GAN_KERNELS_HD void split(int64_t e, int64_t& row, int64_t& offset, int64_t& column) const {
    const SpectralSmallDivision segment = spectral_divide_small(e, inner);
    const SpectralSmallDivision block = spectral_divide_small(segment.quotient, rows);
    row = block.remainder;
    offset = segment.remainder;
    column = block.quotient * inner + segment.remainder;
  }
};

// ---- the power iteration's launch --------------------------------------------------------------

// A power-iteration step of every layer is one launch (cuda/spectral_norm.cu): its blocks take tickets
// in the order they start, and ticket t does block t - first[s] of segment s, where segment s holds
// [first[s], first[s + 1]). A segment without blocks holds none.
GAN_KERNELS_HD int spectral_segment_of_block(const int* first, int segments, int64_t ticket) {
  int segment = 0;
  while (segment + 1 < segments && first[segment + 1] <= ticket) ++segment;
  return segment;
}

// W v's blocks in a power-iteration launch: at least one, so that a layer without rows still gets the
// block that finishes it when there is no step (sigma = u . (W v), an empty sum).
GAN_KERNELS_HD int64_t spectral_chain_mv_blocks(int64_t rows, int64_t cols, int vec) {
  const int64_t blocks = spectral_mv_blocks(rows, spectral_mv_slices(cols, vec));
  return blocks < 1 ? 1 : blocks;
}

// The segments in ticket order. With a step: W v of layers 0 and 1, W^T u of layer 0, W v of layer 2,
// W^T u of layer 1, ..., W^T u of the last layer. W^T u of a layer needs all of its W v and re-reads the
// same W: one layer later, its W v blocks have long started (they wait for nothing), and L2 still
// holds most of the W they read. Without a step (eval): W v of each layer in order.
struct SpectralChainSegment {
  int layer;
  bool mtv;  // W^T u, else W v
};
GAN_KERNELS_HD int spectral_chain_segments(int count, bool step) { return step ? 2 * count : count; }
GAN_KERNELS_HD SpectralChainSegment spectral_chain_segment(int count, bool step, int segment) {
  if (!step || segment == 0) return {segment, false};
  if (segment == 2 * count - 1) return {count - 1, true};
  return segment % 2 == 1 ? SpectralChainSegment{(segment + 1) / 2, false}
                          : SpectralChainSegment{segment / 2 - 1, true};
}

}  // namespace gan_kernels
