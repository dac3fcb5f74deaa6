// Kernels of margin-filtered triplet mining (host side: miners.cu). Device code only (see
// device_utils.cuh), so that a host compiler can build them against a CUDA emulation shim.
//
// They work on a chunk of anchor rows [a0, a0 + rows) whose distances to all M reference
// rows sit in `dist` (rows x M, row-major, from the pairwise distance kernel). The selection
// rule is common/miners.h's, the one the CPU kernels use.
#pragma once

#include "common/miners.h"
#include "cuda/engine/block_reduce.cuh"
#include "cuda/engine/device_utils.cuh"

namespace fastmine::cuda {
namespace {

constexpr int kMineThreads = kBlockThreads;  // one block per anchor row (block_reduce.cuh)

// Row status (one per anchor): no triplet, ok, or a non-finite candidate distance.
enum MineStatus : int32_t { kMineNone = 0, kMineOk = 1, kMineNonFinite = 2 };

// Per chunk row r (anchor i = a0 + r): keys[r, j] = d(i, j) for negatives, +inf elsewhere
// (so that a segmented sort puts the n_neg negatives first), n_neg[r], and status[i].
template <typename acc_t>
__global__ void __launch_bounds__(kMineThreads)
    mine_keys_kernel(const acc_t* __restrict__ dist, int64_t m, int64_t a0,
                     const int64_t* __restrict__ labels, const int64_t* __restrict__ ref_labels,
                     bool has_exclude, int64_t exclude_offset, acc_t* __restrict__ keys,
                     int64_t* __restrict__ n_neg_out, int32_t* __restrict__ status) {
  __shared__ int64_t smem[kBlockWarps];
  const int64_t r = blockIdx.x, i = a0 + r;
  const int64_t li = labels[i], excl = has_exclude ? i + exclude_offset : -1;
  const acc_t* d = dist + r * m;
  acc_t* k = keys + r * m;
  int64_t n_neg = 0, n_pos = 0, bad = 0;
  for (int64_t j = threadIdx.x; j < m; j += kMineThreads) {
    const bool neg = ref_labels[j] != li;
    const bool pos = !neg && j != excl;
    k[j] = neg ? d[j] : positive_infinity<acc_t>();
    n_neg += neg;
    n_pos += pos;
    bad += (neg || pos) && !is_finite_value(d[j]);
  }
  n_neg = block_sum(n_neg, smem);
  n_pos = block_sum(n_pos, smem);
  bad = block_sum(bad, smem);
  if (threadIdx.x == 0) {
    n_neg_out[r] = n_neg;
    status[i] = (n_neg == 0 || n_pos == 0) ? kMineNone : (bad ? kMineNonFinite : kMineOk);
  }
}

// counts[i] = number of selected triplets of anchor i: per positive, the bisections of
// triplet_interval_count in the row's sorted negative distances.
template <typename acc_t>
__global__ void __launch_bounds__(kMineThreads)
    mine_count_kernel(const acc_t* __restrict__ dist, const acc_t* __restrict__ sorted, int64_t m,
                      int64_t a0, const int64_t* __restrict__ labels,
                      const int64_t* __restrict__ ref_labels, bool has_exclude,
                      int64_t exclude_offset, int64_t type, acc_t margin,
                      const int64_t* __restrict__ n_neg, const int32_t* __restrict__ status,
                      int64_t* __restrict__ counts) {
  __shared__ int64_t smem[kBlockWarps];
  const int64_t r = blockIdx.x, i = a0 + r;
  if (status[i] != kMineOk) {  // block-uniform
    if (threadIdx.x == 0) counts[i] = 0;
    return;
  }
  const int64_t li = labels[i], excl = has_exclude ? i + exclude_offset : -1;
  const acc_t* d = dist + r * m;
  const acc_t* s = sorted + r * m;
  int64_t c = 0;
  for (int64_t j = threadIdx.x; j < m; j += kMineThreads) {
    if (ref_labels[j] == li && j != excl) {
      c += triplet_interval_count<acc_t>(type, s, n_neg[r], d[j], margin);
    }
  }
  c = block_sum(c, smem);
  if (threadIdx.x == 0) counts[i] = c;
}

// Writes anchor i's triplets into [offsets[i], offsets[i] + counts[i]) in PML's order:
// positives ascending, and for each the selected negatives ascending (a block scan over the
// columns in index order). The same predicate on the same distances as the count, so the
// slice is filled exactly; *mismatch is raised (and nothing written out of the slice) if not.
template <typename acc_t>
__global__ void __launch_bounds__(kMineThreads)
    mine_fill_kernel(const acc_t* __restrict__ dist, int64_t m, int64_t a0,
                     const int64_t* __restrict__ labels, const int64_t* __restrict__ ref_labels,
                     bool has_exclude, int64_t exclude_offset, int64_t type, acc_t margin,
                     const int64_t* __restrict__ counts, const int64_t* __restrict__ offsets,
                     int64_t* __restrict__ out_a, int64_t* __restrict__ out_p,
                     int64_t* __restrict__ out_n, int32_t* __restrict__ mismatch) {
  __shared__ int smem[kBlockWarps];
  const int64_t r = blockIdx.x, i = a0 + r;
  if (counts[i] == 0) return;  // block-uniform
  const int64_t li = labels[i], excl = has_exclude ? i + exclude_offset : -1;
  const acc_t* d = dist + r * m;
  const int64_t end = offsets[i] + counts[i];
  int64_t at = offsets[i];
  for (int64_t p = 0; p < m; ++p) {
    if (ref_labels[p] != li || p == excl) continue;  // block-uniform
    const acc_t d_ap = d[p];
    for (int64_t j0 = 0; j0 < m; j0 += kMineThreads) {
      const int64_t j = j0 + threadIdx.x;
      const int sel =
          j < m && ref_labels[j] != li && triplet_selected<acc_t>(type, d_ap, d[j], margin);
      int total;
      const int before = block_exclusive_scan(sel, smem, &total);
      if (sel && at + before < end) {
        out_a[at + before] = i;
        out_p[at + before] = p;
        out_n[at + before] = j;
      }
      at += total;
    }
  }
  if (threadIdx.x == 0 && at != end) atomicOr(mismatch, 1);
}

}  // namespace
}  // namespace fastmine::cuda
