// Block-wide integer reductions for kernels that run one 256-thread block per row (semi-hard's
// count and pick, the miner's passes): a sum that every thread gets, and an exclusive prefix
// sum of 0/1 flags in thread order. Integers, so the results do not depend on the order of
// the additions. Every thread of the block must call them (they synchronise, and reuse their
// shared scratch on the next call). Device code only (see device_utils.cuh).
#pragma once

#include <cstdint>

#include "cuda/engine/device_utils.cuh"

namespace fastmine::cuda {

constexpr int kBlockThreads = 256;
constexpr int kBlockWarps = kBlockThreads / kWarp;

// Sum of v over the block. smem: kBlockWarps entries of shared memory.
__device__ __forceinline__ int64_t block_sum(int64_t v, int64_t* smem) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  int64_t total = 0;
  for (int w = 0; w < kBlockWarps; ++w) total += smem[w];
  __syncthreads();  // smem is reused by the next call
  return total;
}

// Exclusive prefix sum of a 0/1 flag over the block in thread order; *total gets the sum.
// smem: kBlockWarps entries of shared memory.
__device__ __forceinline__ int block_exclusive_scan(int flag, int* smem, int* total) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  int inc = flag;
#pragma unroll
  for (int off = 1; off < kWarp; off <<= 1) {
    const int o = __shfl_up_sync(kFullMask, inc, off);
    if (lane >= off) inc += o;
  }
  if (lane == kWarp - 1) smem[warp] = inc;
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < kBlockWarps; ++w) {
    if (w < warp) before += smem[w];
    all += smem[w];
  }
  __syncthreads();
  *total = all;
  return before + inc - flag;
}

}  // namespace fastmine::cuda
