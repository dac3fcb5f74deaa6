// The backward's tile kernel of the all-pairs losses (contrastive, batch-all): recomputes a
// tile of distances and turns it into the per-pair weights of the gradient (host side and
// design: all_pairs.cuh). Device code only (see device_utils.cuh). In an anonymous
// namespace: each kernel belongs to the one translation unit that includes this header.
#pragma once

#include "common/distance.h"
#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/dot_tile.cuh"
#include "cuda/engine/row_ops.cuh"
#include "cuda/engine/sweep_plan.h"

namespace fastmine::cuda {

static_assert(TileCfg::BM == kTile && TileCfg::BN == kTile, "sweep_plan.h's tile size");

namespace {

// A weight policy (see contrastive_kernels.cuh, batch_all_kernels.cuh) provides
//   __device__ bool tile_live(int64_t row0, int64_t col0) const
//       false: no pair of the 64 x 64 tile at (row0, col0) can have a weight (the tile is
//       skipped: no dot products, zero weights). Block-uniform by construction.
//   __device__ acc_t weight(int64_t row, int64_t col, acc_t d) const
//       w = dL/dd of the pair, d its distance (tile_distance's).
//
// For a panel of rows [r0, r0 + nr) and columns [c0, c0 + nc), grid (column tiles, row
// tiles) of the panel, each block one 64 x 64 tile, with q = distance_grad(d, |x|^2, |r|^2):
//   w_cross[r - r0, c - c0] = w q.cross                    (the GEMM operand, (nr, nc))
//   row_part[blockIdx.x, r - r0] = sum over the tile's columns of w q.au
//   col_part[blockIdx.y, c - c0] = sum over the tile's rows of w q.bv
// The sums inside a tile run in a fixed order (per thread, then a butterfly over the 16
// lanes of a row, or a fixed walk over the 16 thread rows of a column); the host sums the
// partials in tile order: bitwise reproducible, no atomics.
template <typename T, typename acc_t, typename Policy>
__global__ void __launch_bounds__(TileCfg::THREADS)
    pair_weight_kernel(const T* __restrict__ x, const T* __restrict__ ref,
                       const acc_t* __restrict__ nx2, const acc_t* __restrict__ nr2, int64_t dim,
                       int64_t metric, int64_t r0, int64_t nr, int64_t c0, int64_t nc, Policy pol,
                       acc_t* __restrict__ w_cross, acc_t* __restrict__ row_part,
                       acc_t* __restrict__ col_part) {
  constexpr int TM = TileCfg::TM, TN = TileCfg::TN;
  __shared__ DotTileSmem<acc_t> sm;
  __shared__ acc_t col_red[TileCfg::TY][TileCfg::BN];
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
  const int64_t prow0 = int64_t(blockIdx.y) * TileCfg::BM;  // panel-local
  const int64_t pcol0 = int64_t(blockIdx.x) * TileCfg::BN;
  const int64_t row0 = r0 + prow0, col0 = c0 + pcol0;
  const int64_t row_end = r0 + nr, col_end = c0 + nc;

  const bool live = pol.tile_live(row0, col0);
  acc_t acc[TM][TN];
  if (live) dot_tile<T, acc_t>(x, row_end, row0, ref, col_end, col0, dim, sm, acc);

  acc_t rsum[TM], csum[TN];
#pragma unroll
  for (int i = 0; i < TM; ++i) rsum[i] = acc_t(0);
#pragma unroll
  for (int j = 0; j < TN; ++j) csum[j] = acc_t(0);

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = row0 + TileCfg::row_of(ty, i);
    if (row >= row_end) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t col = col0 + TileCfg::col_of(tx, j);
      if (col >= col_end) continue;
      acc_t wc = acc_t(0);
      if (live) {
        const acc_t d = tile_distance(metric, acc[i][j], nx2[row], nr2[col], x + row * dim,
                                      ref + col * dim, dim);
        const acc_t w = pol.weight(row, col, d);
        // No shortcut for w == 0: as on the CPU (panel.h), a NaN distance poisons the
        // coefficient sums even where its weight is 0 (0 * NaN).
        const DistGrad<acc_t> q = distance_grad<acc_t>(metric, d, nx2[row], nr2[col]);
        wc = w * q.cross;
        rsum[i] += w * q.au;
        csum[j] += w * q.bv;
      }
      w_cross[(row - r0) * nc + (col - c0)] = wc;
    }
  }

  // Row partials: the 16 lanes of a row (a half-warp), butterfly.
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const acc_t s = tile_row_sum(rsum[i]);
    const int64_t row = row0 + TileCfg::row_of(ty, i);
    if (tx == 0 && row < row_end) row_part[int64_t(blockIdx.x) * nr + (row - r0)] = s;
  }
  // Column partials: each thread's 4-row sums, then thread rows ty = 0..15 in order.
#pragma unroll
  for (int j = 0; j < TN; ++j) col_red[ty][TileCfg::col_of(tx, j)] = csum[j];
  __syncthreads();
  if (threadIdx.x < TileCfg::BN) {
    const int64_t col = col0 + threadIdx.x;
    acc_t s = acc_t(0);
#pragma unroll
    for (int t = 0; t < TileCfg::TY; ++t) s += col_red[t][threadIdx.x];
    if (col < col_end) col_part[int64_t(blockIdx.y) * nc + (col - c0)] = s;
  }
}

}  // namespace
}  // namespace fastmine::cuda
