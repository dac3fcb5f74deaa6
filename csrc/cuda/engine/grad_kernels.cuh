// Elementwise kernels that finish a gradient of the form  g[i] = coef[i] * v[i] + prod[i]
// (prod: a GEMM's result, W.R or W^T.X), and the fixed-order sums of per-chunk partials that
// produce the coefficients. Shared by pairwise.cu and the all-pairs losses (all_pairs.cuh).
// Device code only (see device_utils.cuh). In an anonymous namespace: each kernel belongs to
// the one translation unit that includes this header.
#pragma once

#include "cuda/engine/device_utils.cuh"

namespace fastmine::cuda {
namespace {

constexpr int kBwdThreads = 256;

// c[j] = (accumulate ? c[j] : 0) + sum over chunks ch = 0, 1, ... (in that order) of
// partial[ch * n + j]. One thread per j: the order of the additions never depends on the
// launch, so the result is bitwise reproducible.
template <typename acc_t>
__global__ void __launch_bounds__(kBwdThreads)
    sum_chunks_kernel(const acc_t* __restrict__ partial, int64_t n_chunks, int64_t n,
                      acc_t* __restrict__ c, bool accumulate = false) {
  const int64_t j = int64_t(blockIdx.x) * kBwdThreads + threadIdx.x;
  if (j >= n) return;
  acc_t s = accumulate ? c[j] : acc_t(0);
  for (int64_t ch = 0; ch < n_chunks; ++ch) s += partial[ch * n + j];
  c[j] = s;
}

// out[row_map[i], k] = coef[i] * v[i, k] + prod[i, k]   (prod: (n, D) in acc_t).
// row_map == nullptr: the identity. v and prod are row-major (n, D); out has D columns.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kBwdThreads)
    combine_kernel(const acc_t* __restrict__ coef, const T* __restrict__ v,
                   const acc_t* __restrict__ prod, int64_t n, int64_t dim, T* __restrict__ out,
                   const int64_t* __restrict__ row_map = nullptr) {
  const int64_t total = n * dim;
  const int64_t stride = int64_t(gridDim.x) * kBwdThreads;
  for (int64_t e = int64_t(blockIdx.x) * kBwdThreads + threadIdx.x; e < total; e += stride) {
    const int64_t i = e / dim;
    const int64_t o = row_map == nullptr ? e : row_map[i] * dim + (e - i * dim);
    out[o] = from_acc<T>(coef[i] * to_acc<acc_t>(v[e]) + prod[e]);
  }
}

// dst[e] += src[e]: one fixed addition per element (the across-panel accumulation).
template <typename acc_t>
__global__ void __launch_bounds__(kBwdThreads)
    add_into_kernel(acc_t* __restrict__ dst, const acc_t* __restrict__ src, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * kBwdThreads;
  for (int64_t e = int64_t(blockIdx.x) * kBwdThreads + threadIdx.x; e < n; e += stride) {
    dst[e] += src[e];
  }
}

}  // namespace
}  // namespace fastmine::cuda
