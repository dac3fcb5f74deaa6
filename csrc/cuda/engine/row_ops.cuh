// Row-wise device helpers over (n, D) embeddings: squared norms (one warp per row), the
// exact, direct-difference PairAcc of two rows (by one warp, or by one thread), and the
// distance of a matrix-epilogue entry (dot product, refined exactly where it cancels). The
// formulas are csrc/common/distance.h's; these only decide who adds what, in a fixed order.
#pragma once

#include "common/distance.h"
#include "cuda/engine/device_utils.cuh"

namespace fastmine::cuda {

constexpr int kRowThreads = 256;  // 8 warps per block, one row per warp
constexpr int kRowsPerBlock = kRowThreads / kWarp;

// Sum of squares of one row by a warp: lane l adds k = l, l + 32, ... in order, then the
// butterfly: every lane returns the same bits.
template <typename acc_t, typename T>
__device__ __forceinline__ acc_t warp_row_sqnorm(const T* __restrict__ row, int64_t dim, int lane) {
  acc_t s = acc_t(0);
  for (int64_t k = lane; k < dim; k += kWarp) {
    const acc_t v = to_acc<acc_t>(row[k]);
    s = fm_fma(v, v, s);
  }
  return warp_sum(s);
}

template <typename acc_t>
__device__ __forceinline__ void warp_merge(PairAcc<acc_t>& a) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    PairAcc<acc_t> o;
    o.diff2 = __shfl_xor_sync(kFullMask, a.diff2, off);
    o.dot = __shfl_xor_sync(kFullMask, a.dot, off);
    o.nu2 = __shfl_xor_sync(kFullMask, a.nu2, off);
    o.nv2 = __shfl_xor_sync(kFullMask, a.nv2, off);
    a.merge(o);  // a + o on one lane, o + a on its partner: equal bits
  }
}

// PairAcc of rows u, v by one thread (the rare exact recomputation in a matrix epilogue).
// Not inlined: the epilogue calls it from 16 unrolled places.
template <typename acc_t, typename T>
__device__ __noinline__ PairAcc<acc_t> thread_pair_acc(const T* __restrict__ u,
                                                       const T* __restrict__ v, int64_t dim) {
  PairAcc<acc_t> a;
  for (int64_t k = 0; k < dim; ++k) a.add(to_acc<acc_t>(u[k]), to_acc<acc_t>(v[k]));
  return a;
}

// The distance of one entry of a tiled X.R^T epilogue: from the dot product g and the squared
// norms, except where |u|^2 + |v|^2 - 2g cancels (needs_exact): recomputed there by direct
// differences from the rows u, v. The one rule of every matrix kernel (pairwise, contrastive,
// batch-all), so that a pair's distance is bitwise the same whichever kernel computes it.
template <typename acc_t, typename T>
__device__ __forceinline__ acc_t tile_distance(int64_t metric, acc_t g, acc_t nu2, acc_t nv2,
                                               const T* __restrict__ u, const T* __restrict__ v,
                                               int64_t dim) {
  const acc_t d2 = nu2 + nv2 - acc_t(2) * g;
  if (metric != kCosine && needs_exact(d2, nu2, nv2)) {
    return thread_pair_acc<acc_t>(u, v, dim).finalize(metric);
  }
  return distance_from_dot(metric, g, nu2, nv2);
}

// Kernels shared by several translation units: in an anonymous namespace, so that each .cu
// that includes this header owns its instantiations.
namespace {

// out[row] = |p[row]|^2 in acc_t, one warp per row.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    row_sqnorm_kernel(const T* __restrict__ p, int64_t n, int64_t dim, acc_t* __restrict__ out) {
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (row >= n) return;  // warp-uniform: the shuffles below see full warps
  const acc_t s = warp_row_sqnorm<acc_t>(p + row * dim, dim, lane);
  if (lane == 0) out[row] = s;
}

}  // namespace

}  // namespace fastmine::cuda
