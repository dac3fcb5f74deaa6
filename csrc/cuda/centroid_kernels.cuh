// Device kernels of the centroid triplet bound (formula: csrc/common/centroid.h). Device
// code only (see device_utils.cuh), also compiled against the CUDA emulator for testing.
//
// Everything is a direct difference (no dot-product form; see common/centroid.h) and every
// sum has a fixed order: bitwise reproducible, no float atomics.
//   distances:  one warp per (sample, centroid) pair, lanes over D, butterfly sum;
//   row loss:   one thread per sample, centroids in index order;
//   grad x:     one thread per (i, k): sum over centroids m in order;
//   grad c:     one thread per (m, k) and chunk of samples, i in order within the chunk; the
//               chunks' partials are then added in chunk order (sum_chunks_kernel).
#pragma once

#include "common/centroid.h"
#include "cuda/engine/device_utils.cuh"

namespace fastmine::cuda {
namespace {

constexpr int kCentroidThreads = 256;
constexpr int kCentroidWarps = kCentroidThreads / kWarp;

// dist[i * C + m] = ||x_i - c_m|| for the B * C pairs, one warp each (grid-stride).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kCentroidThreads)
    centroid_dist_kernel(const T* __restrict__ x, const T* __restrict__ c, int64_t b, int64_t nc,
                         int64_t dim, acc_t* __restrict__ dist) {
  const int lane = threadIdx.x % kWarp;
  const int64_t pairs = b * nc;
  const int64_t stride = int64_t(gridDim.x) * kCentroidWarps;
  for (int64_t p = int64_t(blockIdx.x) * kCentroidWarps + threadIdx.x / kWarp; p < pairs;
       p += stride) {
    const int64_t i = p / nc, m = p - i * nc;
    acc_t s = acc_t(0);
    for (int64_t k = lane; k < dim; k += kWarp) {
      const acc_t d = to_acc<acc_t>(x[i * dim + k]) - to_acc<acc_t>(c[m * dim + k]);
      s = fm_fma(d, d, s);
    }
    s = warp_sum(s);
    if (lane == 0) dist[p] = fm_sqrt(s);
  }
}

// loss[i] from its distance row. A label out of [0, C) (checked on the host where it can be)
// gives NaN rather than an out-of-bounds read.
template <typename acc_t>
__global__ void __launch_bounds__(kCentroidThreads)
    centroid_loss_kernel(const acc_t* __restrict__ dist, const int64_t* __restrict__ labels,
                         int64_t b, int64_t nc, acc_t* __restrict__ loss) {
  const int64_t i = int64_t(blockIdx.x) * kCentroidThreads + threadIdx.x;
  if (i >= b) return;
  const int64_t y = labels[i];
  loss[i] = (y >= 0 && y < nc)
                ? centroid_row_loss(dist + i * nc, y, nc, centroid_other_weight<acc_t>(nc))
                : quiet_nan<acc_t>();
}

template <typename acc_t>
__device__ __forceinline__ acc_t centroid_weight(const acc_t* __restrict__ grad,
                                                 const int64_t* __restrict__ labels,
                                                 const acc_t* __restrict__ dist, int64_t nc,
                                                 acc_t k, int64_t i, int64_t m) {
  const int64_t y = labels[i];
  if (y < 0 || y >= nc) return quiet_nan<acc_t>();
  return centroid_grad_weight(grad[i], centroid_coef(m == y, k), dist[i * nc + m]);
}

// gx[i, k] = sum_m w_im (x_ik - c_mk), m in order.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kCentroidThreads)
    centroid_grad_x_kernel(const acc_t* __restrict__ grad, const T* __restrict__ x,
                           const int64_t* __restrict__ labels, const T* __restrict__ c,
                           const acc_t* __restrict__ dist, int64_t b, int64_t nc, int64_t dim,
                           T* __restrict__ gx) {
  const acc_t k = centroid_other_weight<acc_t>(nc);
  const int64_t total = b * dim;
  const int64_t stride = int64_t(gridDim.x) * kCentroidThreads;
  for (int64_t e = int64_t(blockIdx.x) * kCentroidThreads + threadIdx.x; e < total; e += stride) {
    const int64_t i = e / dim, j = e - i * dim;
    const acc_t xv = to_acc<acc_t>(x[e]);
    acc_t s = acc_t(0);
    for (int64_t m = 0; m < nc; ++m) {
      const acc_t w = centroid_weight(grad, labels, dist, nc, k, i, m);
      s = fm_fma(w, xv - to_acc<acc_t>(c[m * dim + j]), s);
    }
    gx[e] = from_acc<T>(s);
  }
}

// partial[chunk, m * D + k] = -sum over the chunk's samples i (in order) of w_im (x_ik - c_mk).
// grid.y = chunk.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kCentroidThreads)
    centroid_grad_c_kernel(const acc_t* __restrict__ grad, const T* __restrict__ x,
                           const int64_t* __restrict__ labels, const T* __restrict__ c,
                           const acc_t* __restrict__ dist, int64_t b, int64_t nc, int64_t dim,
                           int64_t rows_per_chunk, acc_t* __restrict__ partial) {
  const acc_t k = centroid_other_weight<acc_t>(nc);
  const int64_t total = nc * dim;
  const int64_t i0 = int64_t(blockIdx.y) * rows_per_chunk;
  const int64_t i1 = i0 + rows_per_chunk < b ? i0 + rows_per_chunk : b;
  const int64_t stride = int64_t(gridDim.x) * kCentroidThreads;
  for (int64_t e = int64_t(blockIdx.x) * kCentroidThreads + threadIdx.x; e < total; e += stride) {
    const int64_t m = e / dim, j = e - m * dim;
    const acc_t cv = to_acc<acc_t>(c[e]);
    acc_t s = acc_t(0);
    for (int64_t i = i0; i < i1; ++i) {
      const acc_t w = centroid_weight(grad, labels, dist, nc, k, i, m);
      s = fm_fma(w, cv - to_acc<acc_t>(x[i * dim + j]), s);
    }
    partial[int64_t(blockIdx.y) * total + e] = s;
  }
}

}  // namespace
}  // namespace fastmine::cuda
