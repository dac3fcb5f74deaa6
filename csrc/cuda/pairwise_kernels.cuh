// Kernels of the pairwise distance matrix's backward (host side: pairwise.cu; the forward's
// kernel is the engine's, engine/distance_matrix.cuh). Device code only (see
// device_utils.cuh). In an anonymous namespace: each kernel belongs to the one translation
// unit that includes this header.
#pragma once

#include "common/distance.h"
#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/distance_matrix.cuh"
#include "cuda/engine/grad_kernels.cuh"

namespace fastmine::cuda {
namespace {

// One block per row i: W[i, :] = G * q.cross (acc_t, the GEMM operand) and
// a[i] = sum_j G_ij q.au. Thread t adds j = t, t + 256, ... in order; then a fixed tree.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kBwdThreads)
    pd_backward_rows_kernel(const T* __restrict__ grad, const T* __restrict__ dist,
                            const acc_t* __restrict__ nx2, const acc_t* __restrict__ ny2, int64_t m,
                            int64_t metric, acc_t* __restrict__ w, acc_t* __restrict__ a) {
  __shared__ acc_t warp_part[kBwdThreads / kWarp];
  const int64_t i = blockIdx.x;
  const acc_t nxi = nx2[i];
  acc_t s = acc_t(0);
  for (int64_t j = threadIdx.x; j < m; j += kBwdThreads) {
    const int64_t k = i * m + j;
    const acc_t g = to_acc<acc_t>(grad[k]);
    const DistGrad<acc_t> q = distance_grad<acc_t>(metric, to_acc<acc_t>(dist[k]), nxi, ny2[j]);
    w[k] = g * q.cross;
    s += g * q.au;
  }
  s = warp_sum(s);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warp_part[warp] = s;
  __syncthreads();
  if (warp == 0) {
    acc_t t = lane < kBwdThreads / kWarp ? warp_part[lane] : acc_t(0);
    t = warp_sum(t);
    if (lane == 0) a[i] = t;
  }
}

// grid (column blocks, row chunks): partial[chunk, j] = sum over the chunk's rows, in order,
// of G_ij q.bv. Chunks depend only on B (never on the device), so results are the same on
// every GPU.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kBwdThreads)
    pd_backward_cols_kernel(const T* __restrict__ grad, const T* __restrict__ dist,
                            const acc_t* __restrict__ nx2, const acc_t* __restrict__ ny2, int64_t b,
                            int64_t m, int64_t metric, int64_t rows_per_chunk,
                            acc_t* __restrict__ partial) {
  const int64_t j = int64_t(blockIdx.x) * kBwdThreads + threadIdx.x;
  if (j >= m) return;
  const int64_t chunk = blockIdx.y;
  const int64_t i0 = chunk * rows_per_chunk;
  const int64_t i1 = i0 + rows_per_chunk < b ? i0 + rows_per_chunk : b;
  const acc_t nyj = ny2[j];
  acc_t s = acc_t(0);
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t k = i * m + j;
    const acc_t g = to_acc<acc_t>(grad[k]);
    const DistGrad<acc_t> q = distance_grad<acc_t>(metric, to_acc<acc_t>(dist[k]), nx2[i], nyj);
    s += g * q.bv;
  }
  partial[chunk * m + j] = s;
}

}  // namespace
}  // namespace fastmine::cuda
