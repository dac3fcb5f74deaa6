// Kernels of the batch-hard triplet loss, forward and backward (host side and design:
// batch_hard.cu).
// Device code only (see device_utils.cuh). In an anonymous namespace: each kernel belongs to
// the one translation unit that includes this header.
#pragma once

#include "common/distance.h"
#include "common/triplet.h"
#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/dot_tile.cuh"
#include "cuda/engine/edge_scatter_kernels.cuh"
#include "cuda/engine/row_ops.cuh"
#include "cuda/engine/sweep_plan.h"

namespace fastmine::cuda {
namespace {

// ArgBest across the lanes whose ids differ only in the bits of `width - 1` (width a power of
// two <= 32): a butterfly. ArgBest::merge picks the best under a total order (NaN first,
// then by value, then lowest index), so every lane ends with the same winner.
template <typename acc_t>
__device__ __forceinline__ void warp_argbest(ArgBest<acc_t>& best, bool is_max, int width) {
  for (int off = width / 2; off > 0; off >>= 1) {
    ArgBest<acc_t> o;
    o.value = __shfl_xor_sync(kFullMask, best.value, off);
    o.index =
        static_cast<int64_t>(__shfl_xor_sync(kFullMask, static_cast<long long>(best.index), off));
    best.merge(o, is_max);
  }
}

// ---- forward, 1. per-column selection coefficients ----------------------------------------------

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    selection_coefs_kernel(const T* __restrict__ ref, int64_t m, int64_t dim, int64_t metric,
                           acc_t* __restrict__ col_a, acc_t* __restrict__ col_b) {
  const int64_t j = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (j >= m) return;  // warp-uniform
  const acc_t nr2 = warp_row_sqnorm<acc_t>(ref + j * dim, dim, lane);
  if (lane == 0) selection_coefs<acc_t>(metric, nr2, &col_a[j], &col_b[j]);
}

// ---- forward, 2. fused mining -------------------------------------------------------------------

// grid.x: row tiles of x; grid.y: column splits (split_tiles).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(TileCfg::THREADS)
    batch_hard_mine_kernel(const T* __restrict__ x, const int64_t* __restrict__ labels,
                           const T* __restrict__ ref, const int64_t* __restrict__ ref_labels,
                           const acc_t* __restrict__ col_a, const acc_t* __restrict__ col_b,
                           int64_t b, int64_t m, int64_t dim, bool has_exclude,
                           int64_t exclude_offset, int64_t tiles_per_split,
                           acc_t* __restrict__ part_pos_val, int64_t* __restrict__ part_pos_idx,
                           acc_t* __restrict__ part_neg_val, int64_t* __restrict__ part_neg_idx) {
  constexpr int TM = TileCfg::TM, TN = TileCfg::TN;
  __shared__ DotTileSmem<acc_t> sm;
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
  const int64_t row0 = int64_t(blockIdx.x) * TileCfg::BM;
  const int64_t split = blockIdx.y;
  const TileRange tiles = split_tiles(m, split, tiles_per_split);

  // This thread's rows: label and excluded column (-1: none; any negative never matches).
  int64_t lab[TM], excl[TM];
  ArgBest<acc_t> best_pos[TM], best_neg[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = row0 + TileCfg::row_of(ty, i);
    lab[i] = row < b ? labels[row] : 0;
    excl[i] = (has_exclude && row < b) ? row + exclude_offset : -1;
    best_pos[i].value = best_neg[i].value = acc_t(0);
    best_pos[i].index = best_neg[i].index = -1;
  }

  acc_t acc[TM][TN];
  for (int64_t t = tiles.begin; t < tiles.end; ++t) {  // block-uniform: dot_tile's barriers
    const int64_t col0 = t * TileCfg::BN;
    dot_tile<T, acc_t>(x, b, row0, ref, m, col0, dim, sm, acc);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t col = col0 + TileCfg::col_of(tx, j);
      if (col >= m) continue;
      const acc_t ca = col_a[col], cb = col_b[col];
      const int64_t rl = ref_labels[col];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        // Rows past B keep label 0 and collect junk candidates; they are never written.
        const acc_t s = selection_score(ca, cb, acc[i][j]);  // common/distance.h, as the CPU
        if (rl == lab[i]) {
          if (col != excl[i]) best_pos[i].offer(s, col, /*is_max=*/true);
        } else {
          best_neg[i].offer(s, col, /*is_max=*/false);
        }
      }
    }
  }

  // The 16 threads sharing a row are the 16 lanes of one half-warp (tx = lane % 16).
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    warp_argbest(best_pos[i], /*is_max=*/true, TileCfg::TX);
    warp_argbest(best_neg[i], /*is_max=*/false, TileCfg::TX);
    const int64_t row = row0 + TileCfg::row_of(ty, i);
    if (tx == 0 && row < b) {
      const int64_t o = split * b + row;
      part_pos_val[o] = best_pos[i].value;
      part_pos_idx[o] = best_pos[i].index;
      part_neg_val[o] = best_neg[i].value;
      part_neg_idx[o] = best_neg[i].index;
    }
  }
}

// ---- forward, 3. merge the splits, exact distances, triplet term --------------------------------

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads) batch_hard_finalize_kernel(
    const T* __restrict__ x, const T* __restrict__ ref, int64_t b, int64_t dim, int64_t n_splits,
    const acc_t* __restrict__ part_pos_val, const int64_t* __restrict__ part_pos_idx,
    const acc_t* __restrict__ part_neg_val, const int64_t* __restrict__ part_neg_idx, acc_t margin,
    int64_t metric, bool soft, acc_t* __restrict__ loss, int64_t* __restrict__ pos_idx,
    int64_t* __restrict__ neg_idx, acc_t* __restrict__ pos_dist, acc_t* __restrict__ neg_dist) {
  const int64_t i = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (i >= b) return;  // warp-uniform

  ArgBest<acc_t> bp, bn;
  bp.value = bn.value = acc_t(0);
  bp.index = bn.index = -1;
  for (int64_t s = lane; s < n_splits; s += kWarp) {
    ArgBest<acc_t> p, n;
    p.value = part_pos_val[s * b + i];
    p.index = part_pos_idx[s * b + i];
    n.value = part_neg_val[s * b + i];
    n.index = part_neg_idx[s * b + i];
    bp.merge(p, /*is_max=*/true);
    bn.merge(n, /*is_max=*/false);
  }
  warp_argbest(bp, /*is_max=*/true, kWarp);
  warp_argbest(bn, /*is_max=*/false, kWarp);
  const int64_t jp = bp.index, jn = bn.index;  // the same on every lane
  const T* xi = x + i * dim;

  if (jp >= 0 && jn >= 0) {
    const T* rp = ref + jp * dim;
    const T* rn = ref + jn * dim;
    PairAcc<acc_t> ap, an;
    for (int64_t k = lane; k < dim; k += kWarp) {
      const acc_t u = to_acc<acc_t>(xi[k]);
      ap.add(u, to_acc<acc_t>(rp[k]));
      an.add(u, to_acc<acc_t>(rn[k]));
    }
    warp_merge(ap);
    warp_merge(an);
    if (lane == 0) {
      const acc_t dp = ap.finalize(metric), dn = an.finalize(metric);
      pos_idx[i] = jp;
      neg_idx[i] = jn;
      pos_dist[i] = dp;
      neg_dist[i] = dn;
      loss[i] = triplet_term<acc_t>(dp - dn + margin, soft);
    }
  } else {
    // An invalid anchor adds 0, but a non-finite embedding must not yield a finite loss:
    // the CPU tests isfinite(|x_i|^2) with the norm in double; so do we.
    double s = 0.0;
    for (int64_t k = lane; k < dim; k += kWarp) {
      const double v = static_cast<double>(to_acc<acc_t>(xi[k]));
      s += v * v;
    }
    s = warp_sum(s);
    if (lane == 0) {
      pos_idx[i] = -1;
      neg_idx[i] = -1;
      pos_dist[i] = acc_t(0);
      neg_dist[i] = acc_t(0);
      loss[i] = isfinite(s) ? acc_t(0) : quiet_nan<acc_t>();
    }
  }
}

// ---- backward, 1. anchor side + edge records ----------------------------------------------------

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

// ---- backward, 3. reference side (2. is the engine's sort_edges) --------------------------------

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    bh_backward_ref_kernel(const T* __restrict__ x, const T* __restrict__ ref,
                           const int64_t* __restrict__ start, const int64_t* __restrict__ end,
                           const int64_t* __restrict__ sorted_edge,
                           const acc_t* __restrict__ edge_c, const acc_t* __restrict__ edge_cross,
                           const acc_t* __restrict__ edge_bv, int64_t m, int64_t dim,
                           int64_t k_chunks, T* __restrict__ gr) {
  int64_t j, k;
  if (!run_lane(m, dim, k_chunks, &j, &k)) return;
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
