// Kernels of the semi-hard triplet loss, forward and backward (host side and design:
// semi_hard.cu). Device code only (see device_utils.cuh), so that a host compiler can run
// them against a CUDA emulation shim. In an anonymous namespace: each kernel belongs to the
// one translation unit that includes this header.
#pragma once

#include <cstring>

#include "common/distance.h"
#include "common/semi_hard.h"
#include "cuda/engine/block_reduce.cuh"
#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/edge_scatter_kernels.cuh"
#include "cuda/engine/row_ops.cuh"
#include "cuda/engine/sort_keys.cuh"

namespace fastmine::cuda {
namespace {

// One block per anchor row in the count and pick kernels (block_reduce.cuh).
constexpr int kShThreads = kBlockThreads;

// Sort keys (sort_keys.cuh) in the order the pick kernel needs: the negatives' distances
// ascending, then NaN, then the columns that are not negatives.
template <typename acc_t>
constexpr sort_key_t<acc_t> kNotNegativeKey = ~sort_key_t<acc_t>(0);
static_assert(kNotNegativeKey<float> > kNanKey<float> && kNotNegativeKey<double> > kNanKey<double>);

// ---- 1. pairs per anchor ----------------------------------------------------------------------

// pairs[i] = #positives of anchor i (not the excluded column) if it has a negative, else 0;
// negs[i] = #negatives. One block per anchor.
__global__ void __launch_bounds__(kShThreads)
    sh_count_kernel(const int64_t* __restrict__ labels, const int64_t* __restrict__ ref_labels,
                    int64_t m, bool has_exclude, int64_t exclude_offset,
                    int64_t* __restrict__ pairs, int64_t* __restrict__ negs) {
  __shared__ int64_t sm[kBlockWarps];
  const int64_t i = blockIdx.x;
  const int64_t li = labels[i];
  const int64_t excl = has_exclude ? i + exclude_offset : -1;
  int64_t same = 0, excluded = 0;
  for (int64_t j = threadIdx.x; j < m; j += kShThreads) {
    const bool s = ref_labels[j] == li;
    same += s;
    excluded += s && j == excl;
  }
  same = block_sum(same, sm);
  excluded = block_sum(excluded, sm);
  if (threadIdx.x == 0) {
    negs[i] = m - same;
    pairs[i] = m - same > 0 ? same - excluded : 0;
  }
}

// ---- 2. sort keys of a panel's rows ------------------------------------------------------------

// key(r, j) = distance_key(d) for a negative, kNotNegativeKey otherwise.
template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    sh_keys_kernel(const acc_t* __restrict__ dist, const int64_t* __restrict__ labels,
                   const int64_t* __restrict__ ref_labels, int64_t r0, int64_t nr, int64_t m,
                   sort_key_t<acc_t>* __restrict__ keys, int32_t* __restrict__ cols) {
  const int64_t n = nr * m;
  for (int64_t e = int64_t(blockIdx.x) * kRowThreads + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * kRowThreads) {
    const int64_t r = e / m, j = e % m;
    keys[e] = ref_labels[j] == labels[r0 + r] ? kNotNegativeKey<acc_t> : distance_key(dist[e]);
    cols[e] = static_cast<int32_t>(j);
  }
}

// ---- 3. one triplet per positive
// -----------------------------------------------------------------

// First position in [lo, hi) whose distance is > v (upper_bound), over ascending number keys.
template <typename acc_t>
__device__ __forceinline__ int64_t upper_bound_keys(const sort_key_t<acc_t>* keys, int64_t lo,
                                                    int64_t hi, acc_t v) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (semi_hard_candidate(key_distance<acc_t>(keys[mid]), v))
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// One block per anchor row of the panel. sorted keys/cols: the row's negatives ascending (ties
// in column order: a stable sort), then NaN negatives (column order), then the rest. Each
// positive j (in column order, its slot = its rank) gets the first sorted negative farther than
// d_ij: the nearest semi-hard one with the lowest column on ties; else the easiest.
template <typename acc_t>
__global__ void __launch_bounds__(kShThreads)
    sh_pick_kernel(const acc_t* __restrict__ dist, const sort_key_t<acc_t>* __restrict__ keys,
                   const int32_t* __restrict__ cols, const int64_t* __restrict__ labels,
                   const int64_t* __restrict__ ref_labels, const int64_t* __restrict__ offsets,
                   const int64_t* __restrict__ negs, int64_t r0, int64_t m, bool has_exclude,
                   int64_t exclude_offset, int64_t* __restrict__ anchor_idx,
                   int64_t* __restrict__ pos_idx, int64_t* __restrict__ neg_idx) {
  __shared__ int sm[kBlockWarps];
  __shared__ int64_t n_num_s, easy_s, nan_s;
  const int64_t r = blockIdx.x, i = r0 + r;
  const int64_t off = offsets[i];
  if (offsets[i + 1] == off) return;  // block-uniform: no pair
  const sort_key_t<acc_t>* krow = keys + r * m;
  const int32_t* crow = cols + r * m;
  const acc_t* drow = dist + r * m;
  if (threadIdx.x == 0) {
    const int64_t n_neg = negs[i];
    int64_t lo = 0, hi = n_neg;  // first NaN among the negatives
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (krow[mid] >= kNanKey<acc_t>)
        hi = mid;
      else
        lo = mid + 1;
    }
    n_num_s = lo;
    nan_s = lo < n_neg ? crow[lo] : -1;
    easy_s = -1;
    if (lo > 0) {  // the farthest: the first of the run equal to the last number
      const sort_key_t<acc_t> top = krow[lo - 1];
      int64_t a = 0, b = lo - 1;
      while (a < b) {
        const int64_t mid = a + (b - a) / 2;
        if (krow[mid] < top)
          a = mid + 1;
        else
          b = mid;
      }
      easy_s = crow[a];
    }
  }
  __syncthreads();
  const int64_t n_num = n_num_s, easy = easy_s, nan_col = nan_s;
  const int64_t li = labels[i];
  const int64_t excl = has_exclude ? i + exclude_offset : -1;
  int64_t base = 0;
  for (int64_t j0 = 0; j0 < m; j0 += kShThreads) {
    const int64_t j = j0 + threadIdx.x;
    const bool pos = j < m && ref_labels[j] == li && j != excl;
    int chunk_total;  // the positives before this one in the chunk, and in all of it
    const int before = block_exclusive_scan(pos ? 1 : 0, sm, &chunk_total);
    if (pos) {
      const int64_t q = off + base + before;
      const acc_t v = drow[j] + acc_t(0);
      int64_t n = nan_col;
      if (n < 0) {
        const int64_t at = fm_isnan(v) ? n_num : upper_bound_keys(krow, 0, n_num, v);
        n = at < n_num ? int64_t(crow[at]) : easy;
      }
      anchor_idx[q] = i;
      pos_idx[q] = j;
      neg_idx[q] = n;
    }
    base += chunk_total;
  }
}

// ---- 4. exact distances and the term ----------------------------------------------------------

// One warp per pair: d(a, p) and d(a, n) by direct differences (PairAcc), then the term.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    sh_finalize_kernel(const T* __restrict__ x, const T* __restrict__ ref,
                       const int64_t* __restrict__ anchor_idx, const int64_t* __restrict__ pos_idx,
                       const int64_t* __restrict__ neg_idx, int64_t p, int64_t dim, acc_t margin,
                       int64_t metric, acc_t* __restrict__ loss, acc_t* __restrict__ pos_dist,
                       acc_t* __restrict__ neg_dist) {
  const int64_t q = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (q >= p) return;  // warp-uniform
  const T* xa = x + anchor_idx[q] * dim;
  const T* rp = ref + pos_idx[q] * dim;
  const T* rn = ref + neg_idx[q] * dim;
  PairAcc<acc_t> ap, an;
  for (int64_t k = lane; k < dim; k += kWarp) {
    const acc_t u = to_acc<acc_t>(xa[k]);
    ap.add(u, to_acc<acc_t>(rp[k]));
    an.add(u, to_acc<acc_t>(rn[k]));
  }
  warp_merge(ap);
  warp_merge(an);
  if (lane == 0) {
    const acc_t dp = ap.finalize(metric), dn = an.finalize(metric);
    pos_dist[q] = dp;
    neg_dist[q] = dn;
    loss[q] = semi_hard_term(dp, dn, margin);
  }
}

// flag |= 1 where some element of p[0, n) is not finite.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    sh_nonfinite_kernel(const T* __restrict__ p, int64_t n, int* __restrict__ flag) {
  int bad = 0;
  for (int64_t e = int64_t(blockIdx.x) * kRowThreads + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * kRowThreads) {
    const acc_of_t<T> v = to_acc<acc_of_t<T>>(p[e]);
    bad |= !is_finite_value(v);
  }
  if (bad) atomicOr(flag, 1);
}

template <typename acc_t>
__global__ void sh_nonfinite_value_kernel(const int* __restrict__ flag, acc_t* __restrict__ out) {
  *out = *flag ? quiet_nan<acc_t>() : acc_t(0);
}

// ---- backward
// ---------------------------------------------------------------------------------------

// One warp per pair q: edges 2q (to the positive) and 2q + 1 (to the negative), each with
// c = dL/dd and distance_grad's (au, cross, bv); keys for the two sorts (by anchor, by target).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    sh_backward_edges_kernel(const acc_t* __restrict__ grad_loss, const acc_t* __restrict__ grad_pd,
                             const acc_t* __restrict__ grad_nd, const T* __restrict__ x,
                             const T* __restrict__ ref, const int64_t* __restrict__ anchor_idx,
                             const int64_t* __restrict__ pos_idx,
                             const int64_t* __restrict__ neg_idx,
                             const acc_t* __restrict__ pos_dist, const acc_t* __restrict__ neg_dist,
                             int64_t p, int64_t dim, acc_t margin, int64_t metric,
                             edge_key_t* __restrict__ key_src, edge_key_t* __restrict__ key_dst,
                             int64_t* __restrict__ edge_id, acc_t* __restrict__ edge_c,
                             acc_t* __restrict__ edge_au, acc_t* __restrict__ edge_cross,
                             acc_t* __restrict__ edge_bv) {
  const int64_t q = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (q >= p) return;  // warp-uniform
  const int64_t a = anchor_idx[q], jp = pos_idx[q], jn = neg_idx[q];
  const acc_t dp = pos_dist[q], dn = neg_dist[q];
  acc_t nx2 = acc_t(0), np2 = acc_t(0), nn2 = acc_t(0);
  if (metric == kCosine) {
    nx2 = warp_row_sqnorm<acc_t>(x + a * dim, dim, lane);
    np2 = warp_row_sqnorm<acc_t>(ref + jp * dim, dim, lane);
    nn2 = warp_row_sqnorm<acc_t>(ref + jn * dim, dim, lane);
  }
  if (lane != 0) return;
  const acc_t t = grad_loss[q] * semi_hard_term_grad(dp, dn, margin);
  const DistGrad<acc_t> gp = distance_grad<acc_t>(metric, dp, nx2, np2);
  const DistGrad<acc_t> gn = distance_grad<acc_t>(metric, dn, nx2, nn2);
  for (int role = 0; role < 2; ++role) {
    const int64_t e = 2 * q + role;
    const DistGrad<acc_t>& g = role ? gn : gp;
    edge_id[e] = e;
    key_src[e] = edge_key_t(a);
    key_dst[e] = edge_key_t(role ? jn : jp);
    edge_c[e] = role ? -t + grad_nd[q] : t + grad_pd[q];
    edge_au[e] = g.au;
    edge_cross[e] = g.cross;
    edge_bv[e] = g.bv;
  }
}

// Row j of an output (rows `own`, the other side `peer`): one warp per (row, 32-column chunk);
// each lane sums its column over the row's edges, sorted, in ascending edge order:
//   out[j][k] = sum_e c_e (self_e own[j][k] + cross_e peer[partner(e)][k])
// with self = au, partner = the target for the anchor side; self = bv, partner = the anchor
// for the reference side. Rows without an edge get 0.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    sh_backward_rows_kernel(const T* __restrict__ own, const T* __restrict__ peer,
                            const int64_t* __restrict__ start, const int64_t* __restrict__ end,
                            const int64_t* __restrict__ sorted_edge,
                            const acc_t* __restrict__ edge_c, const acc_t* __restrict__ edge_self,
                            const acc_t* __restrict__ edge_cross,
                            const int64_t* __restrict__ anchor_idx,
                            const int64_t* __restrict__ pos_idx,
                            const int64_t* __restrict__ neg_idx, bool anchor_side, int64_t rows,
                            int64_t dim, int64_t k_chunks, T* __restrict__ out) {
  int64_t j, k;
  if (!run_lane(rows, dim, k_chunks, &j, &k)) return;
  const acc_t own_k = to_acc<acc_t>(own[j * dim + k]);
  acc_t acc = acc_t(0);
  for (int64_t s = start[j]; s < end[j]; ++s) {
    const int64_t e = sorted_edge[s];
    const int64_t q = e >> 1;
    const int64_t partner = anchor_side ? ((e & 1) ? neg_idx[q] : pos_idx[q]) : anchor_idx[q];
    acc +=
        edge_c[e] * (edge_self[e] * own_k + edge_cross[e] * to_acc<acc_t>(peer[partner * dim + k]));
  }
  out[j * dim + k] = from_acc<T>(acc);
}

}  // namespace
}  // namespace fastmine::cuda
