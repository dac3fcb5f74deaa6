// The distance matrix written out, one 64 x 64 tile per block: dot_tile's mainloop, then
// tile_distance per entry (exact where the dot-product form cancels). The forward of
// pairwise_distance, and the panels that semi-hard and the miner sort row by row. Device
// code only (see device_utils.cuh). In an anonymous namespace: each kernel belongs to the one
// translation unit that includes this header.
#pragma once

#include "common/distance.h"
#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/dot_tile.cuh"
#include "cuda/engine/row_ops.cuh"

namespace fastmine::cuda {
namespace {

// out[row * m + col] = d(x_row, y_col) for rows < b, columns < m. grid.x: column tiles (may
// be many), grid.y: row tiles (<= 65535, checked by the launcher).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(TileCfg::THREADS)
    pairwise_distance_kernel(const T* __restrict__ x, const T* __restrict__ y,
                             const acc_t* __restrict__ nx2, const acc_t* __restrict__ ny2,
                             int64_t b, int64_t m, int64_t dim, int64_t metric,
                             T* __restrict__ out) {
  __shared__ DotTileSmem<acc_t> sm;
  const int64_t row0 = int64_t(blockIdx.y) * TileCfg::BM;
  const int64_t col0 = int64_t(blockIdx.x) * TileCfg::BN;
  acc_t acc[TileCfg::TM][TileCfg::TN];
  dot_tile<T, acc_t>(x, b, row0, y, m, col0, dim, sm, acc);

  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
#pragma unroll
  for (int i = 0; i < TileCfg::TM; ++i) {
    const int64_t row = row0 + TileCfg::row_of(ty, i);
    if (row >= b) continue;
    const acc_t nxi = nx2[row];
#pragma unroll
    for (int j = 0; j < TileCfg::TN; ++j) {
      const int64_t col = col0 + TileCfg::col_of(tx, j);
      if (col >= m) continue;
      const acc_t d =
          tile_distance(metric, acc[i][j], nxi, ny2[col], x + row * dim, y + col * dim, dim);
      out[row * m + col] = from_acc<T>(d);
    }
  }
}

}  // namespace
}  // namespace fastmine::cuda
