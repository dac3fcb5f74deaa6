// Row-wise device helpers over (n, D) embeddings: squared norms (one warp per row) and the
// exact, direct-difference PairAcc of two rows (by one warp, or by one thread). The formulas
// are csrc/common/distance.h's; these only decide who adds what, in a fixed order.
#pragma once

#include "common/distance.h"
#include "cuda/device_utils.cuh"

namespace fastmine::cuda {

constexpr int kRowThreads = 256;                    // 8 warps per block, one row per warp
constexpr int kRowsPerBlock = kRowThreads / kWarp;

// Sum of squares of one row by a warp: lane l adds k = l, l + 32, ... in order, then the
// butterfly: every lane returns the same bits.
template <typename acc_t, typename T>
__device__ __forceinline__ acc_t warp_row_sqnorm(const T* __restrict__ row, int64_t dim,
                                                 int lane) {
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
__device__ __noinline__ PairAcc<acc_t> thread_pair_acc(const T* __restrict__ u, const T* __restrict__ v,
                                          int64_t dim) {
  PairAcc<acc_t> a;
  for (int64_t k = 0; k < dim; ++k) a.add(to_acc<acc_t>(u[k]), to_acc<acc_t>(v[k]));
  return a;
}

}  // namespace fastmine::cuda
