// Batch-all, part 1: each anchor's sorted list of positive distances (host side and design:
// batch_all.cu). Device code only (see device_utils.cuh). In an anonymous namespace: each
// kernel belongs to the one translation unit that includes this header.
//
// Anchors and reference rows are put in label order (a stable radix sort of the labels; ties
// keep the original order). In that order the positives of anchor a are the contiguous run
// [lo[a], hi[a]) of sorted reference rows, minus the excluded one (sorted position excl[a],
// -1 if none): K[a] of them. Anchor a's list lives at scratch entries [off[a], off[a] + K[a])
// (off: exclusive prefix sums of K, relative to the chunk's first anchor), first in column
// order (the positive at sorted position s goes to slot s - lo[a] - (excl[a] in [0, s))),
// then sorted by distance.
#pragma once

#include "common/distance.h"
#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/dot_tile.cuh"
#include "cuda/engine/row_ops.cuh"

namespace fastmine::cuda {
namespace {

constexpr int kFlatThreads = 256;

// Per label-sorted anchor: the planes of the int64 `info` tensor [kInfoPlanes, B].
enum AnchorInfo { kLo = 0, kHi = 1, kExcl = 2, kPosCount = 3, kInfoPlanes = 4 };

// One chunk of label-sorted anchors [a0, a1) and its positive lists (chunk-local scratch).
template <typename acc_t>
struct ChunkView {
  int64_t a0, a1;
  const int64_t* __restrict__ k;    // K per sorted anchor (global)
  const int64_t* __restrict__ off;  // exclusive prefix of K (global, B + 1 entries)
  const acc_t* __restrict__ pos;    // the chunk's sorted positive distances
  __device__ __forceinline__ int64_t base(int64_t a) const { return off[a] - off[a0]; }
};

// ---- label order
// ---------------------------------------------------------------------------------

__global__ void __launch_bounds__(kFlatThreads) iota_kernel(int64_t* __restrict__ p, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * kFlatThreads + threadIdx.x;
  if (e < n) p[e] = e;
}

// inv[perm[s]] = s.
__global__ void __launch_bounds__(kFlatThreads)
    inverse_perm_kernel(const int64_t* __restrict__ perm, int64_t n, int64_t* __restrict__ inv) {
  const int64_t s = int64_t(blockIdx.x) * kFlatThreads + threadIdx.x;
  if (s < n) inv[perm[s]] = s;
}

// dst[r, :] = src[perm[r], :] for r < n (a row gather; dim = 1 gathers a vector).
template <typename T>
__global__ void __launch_bounds__(kFlatThreads)
    gather_rows_kernel(const T* __restrict__ src, const int64_t* __restrict__ perm, int64_t n,
                       int64_t dim, T* __restrict__ dst) {
  const int64_t total = n * dim;
  const int64_t stride = int64_t(gridDim.x) * kFlatThreads;
  for (int64_t e = int64_t(blockIdx.x) * kFlatThreads + threadIdx.x; e < total; e += stride) {
    const int64_t r = e / dim;
    dst[e] = src[perm[r] * dim + (e - r * dim)];
  }
}

// First position in sorted[0, n) whose value is > v (upper) or >= v (lower).
__device__ __forceinline__ int64_t label_bound(const int64_t* __restrict__ sorted, int64_t n,
                                               int64_t v, bool upper) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    const bool right = upper ? sorted[mid] <= v : sorted[mid] < v;
    if (right)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// info[*, a] for each label-sorted anchor a (anchor perm_x[a] of the caller's order).
__global__ void __launch_bounds__(kFlatThreads)
    anchor_groups_kernel(const int64_t* __restrict__ sorted_lab, const int64_t* __restrict__ perm_x,
                         const int64_t* __restrict__ sorted_rlab,
                         const int64_t* __restrict__ rank_r, const int64_t* __restrict__ ref_labels,
                         int64_t b, int64_t m, bool has_exclude, int64_t exclude_offset,
                         int64_t* __restrict__ info) {
  const int64_t a = int64_t(blockIdx.x) * kFlatThreads + threadIdx.x;
  if (a >= b) return;
  const int64_t l = sorted_lab[a];
  const int64_t lo = label_bound(sorted_rlab, m, l, /*upper=*/false);
  const int64_t hi = label_bound(sorted_rlab, m, l, /*upper=*/true);
  const int64_t e = perm_x[a] + exclude_offset;
  const int64_t ex = (has_exclude && e >= 0 && e < m && ref_labels[e] == l) ? rank_r[e] : -1;
  info[kLo * b + a] = lo;
  info[kHi * b + a] = hi;
  info[kExcl * b + a] = ex;
  info[kPosCount * b + a] = hi - lo - (ex >= 0 ? 1 : 0);
}

// out[r] = off[a0 + r] - off[a0], r in [0, n]: a chunk's segment offsets for the sort.
__global__ void __launch_bounds__(kFlatThreads)
    local_offsets_kernel(const int64_t* __restrict__ off, int64_t a0, int64_t n,
                         int64_t* __restrict__ out) {
  const int64_t r = int64_t(blockIdx.x) * kFlatThreads + threadIdx.x;
  if (r <= n) out[r] = off[a0 + r] - off[a0];
}

// ---- positive distances
// --------------------------------------------------------------------------

// Block-sparse sweep over label-sorted anchors [a0, a1) (rows of xs) and label-sorted
// reference rows (rs): grid (column tiles, row tiles of the chunk); row tile t covers the
// sorted columns [lo[first row], hi[last row]) from there in steps of 64 (blocks past the end
// leave at once). With P x K labels that is one or two tiles per row tile; with two big
// classes, about half of the matrix; at worst (a reference set with many labels that no
// anchor has, interleaved with the anchors' labels) the whole matrix, i.e. one more sweep. Writes
// each positive's distance (tile_distance: the same bits as every other kernel's for this pair) at
// its column-order slot, and the slot itself into pos_slot (if not null: the values the sort
// carries along).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(TileCfg::THREADS)
    positive_distances_kernel(const T* __restrict__ xs, const T* __restrict__ rs,
                              const acc_t* __restrict__ nxs2, const acc_t* __restrict__ nrs2,
                              int64_t dim, int64_t metric, int64_t a0, int64_t a1,
                              const int64_t* __restrict__ info, int64_t b,
                              const int64_t* __restrict__ off, acc_t* __restrict__ pos_d,
                              int32_t* __restrict__ pos_slot) {
  constexpr int TM = TileCfg::TM, TN = TileCfg::TN;
  __shared__ DotTileSmem<acc_t> sm;
  const int64_t* lo = info + kLo * b;
  const int64_t* hi = info + kHi * b;
  const int64_t* excl = info + kExcl * b;
  const int64_t row0 = a0 + int64_t(blockIdx.y) * TileCfg::BM;
  const int64_t last = (row0 + TileCfg::BM < a1 ? row0 + TileCfg::BM : a1) - 1;
  const int64_t span_hi = hi[last];
  const int64_t col0 = lo[row0] + int64_t(blockIdx.x) * TileCfg::BN;
  if (col0 >= span_hi) return;  // block-uniform, before any barrier

  acc_t acc[TM][TN];
  dot_tile<T, acc_t>(xs, a1, row0, rs, span_hi, col0, dim, sm, acc);
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t a = row0 + TileCfg::row_of(ty, i);
    if (a >= a1) continue;
    const int64_t la = lo[a], ha = hi[a], ex = excl[a];
    const int64_t base = off[a] - off[a0];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t s = col0 + TileCfg::col_of(tx, j);
      if (s < la || s >= ha || s == ex) continue;
      const int64_t slot = s - la - ((ex >= 0 && ex < s) ? 1 : 0);
      pos_d[base + slot] =
          tile_distance(metric, acc[i][j], nxs2[a], nrs2[s], xs + a * dim, rs + s * dim, dim);
      if (pos_slot != nullptr) pos_slot[base + slot] = static_cast<int32_t>(slot);
    }
  }
}

// One warp per anchor of the chunk, over its sorted list: pos_nan[a] = any NaN in it, and
// (suffix != nullptr) suffix[base + q] = sum of the list's entries q.. in double, by windows
// of 32 from the end (a shuffle scan in each, plus the carry): a fixed order.
template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    positive_scan_kernel(ChunkView<acc_t> c, double* __restrict__ suffix,
                         int32_t* __restrict__ pos_nan) {
  const int64_t a = c.a0 + int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (a >= c.a1) return;  // warp-uniform
  const int64_t k = c.k[a], base = c.base(a);
  const acc_t* p = c.pos + base;
  int nan = 0;
  double carry = 0.0;
  for (int64_t end = k; end > 0; end -= kWarp) {
    const int64_t q = end - kWarp + lane;
    const double v = q >= 0 ? double(p[q]) : 0.0;
    nan |= fm_isnan(v) ? 1 : 0;
    if (suffix != nullptr) {
      double s = v;
#pragma unroll
      for (int o = 1; o < kWarp; o <<= 1) {
        const double t = __shfl_down_sync(kFullMask, s, o);
        if (lane + o < kWarp) s += t;
      }
      s += carry;
      if (q >= 0) suffix[base + q] = s;
      carry = __shfl_sync(kFullMask, s, 0);
    }
  }
  nan = warp_sum(nan);
  if (lane == 0) pos_nan[a] = nan > 0 ? 1 : 0;
}

}  // namespace
}  // namespace fastmine::cuda
