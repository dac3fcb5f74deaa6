// Device side of the deterministic scatter (host side and design: edge_scatter.cuh): the key
// type of an edge's target row, and the run boundaries of the sorted keys. Device code only
// (see device_utils.cuh). In an anonymous namespace: each kernel belongs to the one
// translation unit that includes this header.
#pragma once

#include <cstdint>

#include "cuda/engine/device_utils.cuh"

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

}  // namespace
}  // namespace fastmine::cuda
