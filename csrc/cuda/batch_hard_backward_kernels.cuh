// Kernels of the batch-hard triplet backward (host side and design: batch_hard_backward.cu).
// Device code only (see device_utils.cuh). In an anonymous namespace: each kernel belongs to
// the one translation unit that includes this header.
#pragma once

#include "common/distance.h"
#include "common/triplet.h"
#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/edge_scatter_kernels.cuh"
#include "cuda/engine/row_ops.cuh"

namespace fastmine::cuda {
namespace {

// ---- 1. anchor side + edge records
// ---------------------------------------------------------------

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads) bh_backward_anchor_kernel(
    const acc_t* __restrict__ grad_loss, const acc_t* __restrict__ grad_pd,
    const acc_t* __restrict__ grad_nd, const T* __restrict__ x, const T* __restrict__ ref,
    const int64_t* __restrict__ pos_idx, const int64_t* __restrict__ neg_idx,
    const acc_t* __restrict__ pos_dist, const acc_t* __restrict__ neg_dist, int64_t b, int64_t m,
    int64_t dim, acc_t margin, int64_t metric, bool soft, T* __restrict__ gx,
    edge_key_t* __restrict__ edge_key, int64_t* __restrict__ edge_id, acc_t* __restrict__ edge_c,
    acc_t* __restrict__ edge_cross, acc_t* __restrict__ edge_bv) {
  const int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (i >= b) return;  // warp-uniform
  const int64_t jp = pos_idx[i], jn = neg_idx[i];
  // The forward sets both to -1 or both to valid rows. Out-of-range indices (a hand-made
  // call) are treated as invalid rather than read out of bounds.
  const bool valid = jp >= 0 && jp < m && jn >= 0 && jn < m;
  if (lane == 0) {
    edge_id[2 * i] = 2 * i;
    edge_id[2 * i + 1] = 2 * i + 1;
    edge_key[2 * i] = valid ? edge_key_t(jp) : edge_key_t(m);
    edge_key[2 * i + 1] = valid ? edge_key_t(jn) : edge_key_t(m);
  }
  T* gxi = gx + i * dim;
  if (!valid) {
    for (int64_t k = lane; k < dim; k += kWarp) gxi[k] = from_acc<T>(acc_t(0));
    return;
  }
  const T* xi = x + i * dim;
  const T* rp = ref + jp * dim;
  const T* rn = ref + jn * dim;
  const acc_t dp = pos_dist[i], dn = neg_dist[i];
  const acc_t t = grad_loss[i] * triplet_term_grad<acc_t>(dp - dn + margin, soft);
  const acc_t c_pos = t + grad_pd[i];
  const acc_t c_neg = -t + grad_nd[i];

  acc_t nx2 = acc_t(0), np2 = acc_t(0), nn2 = acc_t(0);
  if (metric == kCosine) {  // only cosine's gradient needs the norms
    nx2 = warp_row_sqnorm<acc_t>(xi, dim, lane);
    np2 = warp_row_sqnorm<acc_t>(rp, dim, lane);
    nn2 = warp_row_sqnorm<acc_t>(rn, dim, lane);
  }
  const DistGrad<acc_t> qp = distance_grad<acc_t>(metric, dp, nx2, np2);
  const DistGrad<acc_t> qn = distance_grad<acc_t>(metric, dn, nx2, nn2);

  for (int64_t k = lane; k < dim; k += kWarp) {
    const acc_t xk = to_acc<acc_t>(xi[k]);
    const acc_t g = c_pos * (qp.au * xk + qp.cross * to_acc<acc_t>(rp[k])) +
                    c_neg * (qn.au * xk + qn.cross * to_acc<acc_t>(rn[k]));
    gxi[k] = from_acc<T>(g);
  }
  if (lane == 0) {
    edge_c[2 * i] = c_pos;
    edge_cross[2 * i] = qp.cross;
    edge_bv[2 * i] = qp.bv;
    edge_c[2 * i + 1] = c_neg;
    edge_cross[2 * i + 1] = qn.cross;
    edge_bv[2 * i + 1] = qn.bv;
  }
}

// ---- 3. reference side
// ----------------------------------------------------------------------------

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    bh_backward_ref_kernel(const T* __restrict__ x, const T* __restrict__ ref,
                           const int64_t* __restrict__ start, const int64_t* __restrict__ end,
                           const int64_t* __restrict__ sorted_edge,
                           const acc_t* __restrict__ edge_c, const acc_t* __restrict__ edge_cross,
                           const acc_t* __restrict__ edge_bv, int64_t m, int64_t dim,
                           int64_t k_chunks, T* __restrict__ gr) {
  const int64_t w = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (w >= m * k_chunks) return;
  const int64_t j = w / k_chunks;
  const int64_t k = (w % k_chunks) * kWarp + lane;
  if (k >= dim) return;  // no warp collectives below: lanes may leave on their own
  const int64_t s0 = start[j], s1 = end[j];
  const acc_t rjk = to_acc<acc_t>(ref[j * dim + k]);
  acc_t acc = acc_t(0);
  for (int64_t s = s0; s < s1; ++s) {  // ascending edge order: the CPU's order
    const int64_t e = sorted_edge[s];
    const int64_t i = e >> 1;
    acc += edge_c[e] * (edge_cross[e] * to_acc<acc_t>(x[i * dim + k]) + edge_bv[e] * rjk);
  }
  gr[j * dim + k] = from_acc<T>(acc);
}

}  // namespace
}  // namespace fastmine::cuda
