// Device side of the deterministic scatter (host side and design: edge_scatter.cuh): the key
// type of an edge's target row, the run boundaries of the sorted keys, and the layout of the
// ops' kernels that sum the runs. Device code only
// (see device_utils.cuh). In an anonymous namespace: each kernel belongs to the one
// translation unit that includes this header.
#pragma once

#include <cstdint>

#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/row_ops.cuh"

namespace fastmine::cuda {
namespace {

// An edge's sort key: the row it adds into (CUB's radix sort wants an unsigned key).
using edge_key_t = unsigned long long;

constexpr int kScatterThreads = 256;

// [start[key], end[key]) = the run of `key` in the sorted keys[0, n); keys >= n_keys (a
// sentinel for edges that add nowhere) have no run. Rows without an edge keep the caller's
// zeros (an empty run).
__global__ void __launch_bounds__(kScatterThreads)
    segment_bounds_kernel(const edge_key_t* __restrict__ keys, int64_t n, int64_t n_keys,
                          int64_t* __restrict__ start, int64_t* __restrict__ end) {
  const int64_t p = int64_t(blockIdx.x) * kScatterThreads + threadIdx.x;
  if (p >= n) return;
  const edge_key_t key = keys[p];
  if (key >= edge_key_t(n_keys)) return;
  if (p == 0 || keys[p - 1] != key) start[key] = p;
  if (p == n - 1 || keys[p + 1] != key) end[key] = p + 1;
}

// A kernel that sums the runs runs one warp per (row, 32-column chunk), kRowThreads threads a
// block (launch: run_grid), so that a row many edges add into is still spread over D / 32
// warps: this lane's row and column (k_chunks = ceil(dim / 32)), or false past the end. The
// sums use no warp collective, so a lane past the end may leave on its own.
__device__ __forceinline__ bool run_lane(int64_t rows, int64_t dim, int64_t k_chunks, int64_t* row,
                                         int64_t* col) {
  const int64_t w = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (w >= rows * k_chunks) return false;
  *row = w / k_chunks;
  *col = (w % k_chunks) * kWarp + threadIdx.x % kWarp;
  return *col < dim;
}

}  // namespace
}  // namespace fastmine::cuda
