// Kernels of the batch-all triplet loss, forward and backward (host side and design:
// batch_all.cu). Device code only (see device_utils.cuh). In an anonymous namespace: each
// kernel belongs to the one translation unit that includes this header.
//
// Positive lists. Anchors and reference rows are put in label order (engine/permute.cuh: a
// stable sort of the labels; ties keep the original order). In that order the positives of
// anchor a are the contiguous run [lo[a], hi[a]) of sorted reference rows, minus the excluded
// one (sorted position excl[a], -1 if none): K[a] of them. Anchor a's list lives at scratch
// entries [off[a], off[a] + K[a]) (off: exclusive prefix sums of K, relative to the chunk's
// first anchor), first in column order (the positive at sorted position s goes to slot
// s - lo[a] - (excl[a] in [0, s))), then sorted by distance.
//
// Negative sweeps: every (anchor, negative) pair of the X.R^T sweep, against the anchor's
// sorted positives, forward (hinge sums and counts) and backward (per-positive counts).
#pragma once

#include "common/batch_all.h"
#include "common/distance.h"
#include "common/triplet.h"
#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/dot_tile.cuh"
#include "cuda/engine/row_ops.cuh"
#include "cuda/engine/sweep_plan.h"

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

// ---- positive lists: each anchor's run of positives ---------------------------------------------

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

// ---- positive lists: distances, sorted, scanned -------------------------------------------------

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

// ---- negative sweeps ----------------------------------------------------------------------------

// The operands of a sweep of label-sorted anchors (rows of xs) against every reference row.
template <typename T, typename acc_t>
struct NegativeSweep {
  const T* __restrict__ xs;                // (B, D) anchors in label order
  const int64_t* __restrict__ sorted_lab;  // (B,) their labels
  const T* __restrict__ ref;               // (M, D) reference rows, caller's order
  const int64_t* __restrict__ ref_labels;
  const acc_t* __restrict__ nxs2;
  const acc_t* __restrict__ nr2;
  int64_t m, dim, metric;
};

// Runs dot_tile over the column tiles of `tiles` for the row tile at row0 (rows < a1) and calls
// fn(i, a, d) for each of this thread's pairs (row a = row0 + row_of(ty, i), column) whose
// column is a negative of a (a different label), d its distance. Block-uniform loop.
template <typename T, typename acc_t, typename Fn>
__device__ __forceinline__ void sweep_negatives(const NegativeSweep<T, acc_t>& s, int64_t row0,
                                                int64_t a1, TileRange tiles, DotTileSmem<acc_t>& sm,
                                                const int64_t (&lab)[TileCfg::TM],
                                                const acc_t (&nxr)[TileCfg::TM], Fn&& fn) {
  constexpr int TM = TileCfg::TM, TN = TileCfg::TN;
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
  acc_t acc[TM][TN];
  for (int64_t t = tiles.begin; t < tiles.end; ++t) {
    const int64_t col0 = t * TileCfg::BN;
    dot_tile<T, acc_t>(s.xs, a1, row0, s.ref, s.m, col0, s.dim, sm, acc);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t col = col0 + TileCfg::col_of(tx, j);
      if (col >= s.m) continue;
      const int64_t rl = s.ref_labels[col];
      const acc_t nrj = s.nr2[col];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int64_t a = row0 + TileCfg::row_of(ty, i);
        if (a >= a1 || rl == lab[i]) continue;
        fn(i, a,
           tile_distance(s.metric, acc[i][j], nxr[i], nrj, s.xs + a * s.dim, s.ref + col * s.dim,
                         s.dim));
      }
    }
  }
}

// This thread's rows of the row tile at row0: labels and norms (rows past a1: junk, unused).
template <typename T, typename acc_t>
__device__ __forceinline__ void load_rows(const NegativeSweep<T, acc_t>& s, int64_t row0,
                                          int64_t a1, int64_t (&lab)[TileCfg::TM],
                                          acc_t (&nxr)[TileCfg::TM]) {
  const int ty = threadIdx.x / TileCfg::TX;
#pragma unroll
  for (int i = 0; i < TileCfg::TM; ++i) {
    const int64_t a = row0 + TileCfg::row_of(ty, i);
    lab[i] = a < a1 ? s.sorted_lab[a] : 0;
    nxr[i] = a < a1 ? s.nxs2[a] : acc_t(0);
  }
}

// ---- negative sweeps: forward -------------------------------------------------------------------

// grid (row tiles of the chunk [a0, a1), column splits). For each (anchor, negative):
// hinge: one bisection in the anchor's sorted positives, then suffix[first] +
// (K - first)(margin - d_n) and K - first active triplets (common/batch_all.h); soft: the K
// softplus terms (no closed form, as on the CPU). Per-row sums in double, reduced over the
// row's 16 lanes, written as [n_splits, a1 - a0] partials (every row, every split).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(TileCfg::THREADS)
    batch_all_forward_kernel(NegativeSweep<T, acc_t> s, ChunkView<acc_t> c,
                             const double* __restrict__ suffix, double margin, bool soft,
                             int64_t tiles_per_split, double* __restrict__ part_sum,
                             int64_t* __restrict__ part_act, int32_t* __restrict__ part_nan) {
  constexpr int TM = TileCfg::TM;
  __shared__ DotTileSmem<acc_t> sm;
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
  const int64_t row0 = c.a0 + int64_t(blockIdx.x) * TileCfg::BM;
  const int64_t split = blockIdx.y;
  const TileRange tiles = split_tiles(s.m, split, tiles_per_split);

  int64_t lab[TM], kk[TM], base[TM];
  acc_t nxr[TM];
  load_rows(s, row0, c.a1, lab, nxr);
  double sum[TM];
  int64_t act[TM];
  int nan[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t a = row0 + TileCfg::row_of(ty, i);
    kk[i] = a < c.a1 ? c.k[a] : 0;
    base[i] = a < c.a1 ? c.base(a) : 0;
    sum[i] = 0.0;
    act[i] = 0;
    nan[i] = 0;
  }
  const acc_t margin_acc = static_cast<acc_t>(margin);

  sweep_negatives(s, row0, c.a1, tiles, sm, lab, nxr, [&](int i, int64_t, acc_t d) {
    nan[i] |= fm_isnan(d) ? 1 : 0;
    const int64_t k = kk[i];
    if (k == 0) return;
    const acc_t* p = c.pos + base[i];
    if (soft) {
      for (int64_t q = 0; q < k; ++q) {
        const acc_t t = triplet_term<acc_t>(p[q] - d + margin_acc, true);
        sum[i] += double(t);
        act[i] += t > acc_t(0) ? 1 : 0;
      }
    } else {
      const int64_t first = batch_all_first_active(p, k, batch_all_threshold(d, margin));
      sum[i] += batch_all_hinge_sum(first < k ? suffix[base[i] + first] : 0.0, k - first, margin,
                                    double(d));
      act[i] += k - first;
    }
  });

  const int64_t rows = c.a1 - c.a0;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t a = row0 + TileCfg::row_of(ty, i);
    const double ts = tile_row_sum(sum[i]);
    const int64_t ta = tile_row_sum(act[i]);
    const int tn = tile_row_sum(nan[i]);
    if (tx == 0 && a < c.a1) {
      const int64_t o = split * rows + (a - c.a0);
      part_sum[o] = ts;
      part_act[o] = ta;
      part_nan[o] = tn > 0 ? 1 : 0;
    }
  }
}

// One thread per anchor of the chunk: the partials summed in split order, the CPU's NaN rule
// (a non-finite anchor row, or any NaN candidate distance: loss NaN, no active triplet), the
// outputs written at the anchor's original index perm_x[a].
template <typename acc_t>
__global__ void __launch_bounds__(kFlatThreads)
    batch_all_finalize_kernel(ChunkView<acc_t> c, int64_t b, int64_t m,
                              const int64_t* __restrict__ perm_x, const int64_t* __restrict__ info,
                              const acc_t* __restrict__ nxs2, const int32_t* __restrict__ pos_nan,
                              int64_t n_splits, const double* __restrict__ part_sum,
                              const int64_t* __restrict__ part_act,
                              const int32_t* __restrict__ part_nan, acc_t* __restrict__ loss,
                              int64_t* __restrict__ valid, int64_t* __restrict__ active) {
  const int64_t a = c.a0 + int64_t(blockIdx.x) * kFlatThreads + threadIdx.x;
  if (a >= c.a1) return;
  const int64_t rows = c.a1 - c.a0, r = a - c.a0;
  double sum = 0.0;
  int64_t act = 0;
  bool nan = pos_nan[a] != 0 || !isfinite(nxs2[a]);
  for (int64_t sp = 0; sp < n_splits; ++sp) {
    sum += part_sum[sp * rows + r];
    act += part_act[sp * rows + r];
    nan = nan || part_nan[sp * rows + r] != 0;
  }
  const int64_t i = perm_x[a];
  const int64_t n_neg = m - (info[kHi * b + a] - info[kLo * b + a]);
  valid[i] = c.k[a] * n_neg;
  loss[i] = nan ? quiet_nan<acc_t>() : static_cast<acc_t>(sum);
  active[i] = nan ? 0 : act;
}

// ---- negative sweeps: backward, per-positive weights --------------------------------------------

// Hinge. grid (row tiles of the chunk, column splits). For each (anchor, negative): first =
// the bisection's rank; the positives of rank >= first each gain one active negative:
// diff[base + first] += 1 (a difference array over ranks; an integer atomicAdd, which is
// order-independent, hence deterministic). first == 0 (every positive active, common) is
// counted per row first and added once per block; first == K adds nothing. NaN negatives
// set neg_nan[a] (atomicOr, idem).
template <typename T, typename acc_t>
__global__ void __launch_bounds__(TileCfg::THREADS)
    batch_all_count_kernel(NegativeSweep<T, acc_t> s, ChunkView<acc_t> c, double margin,
                           int64_t tiles_per_split, int32_t* __restrict__ diff,
                           int32_t* __restrict__ neg_nan) {
  constexpr int TM = TileCfg::TM;
  __shared__ DotTileSmem<acc_t> sm;
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
  const int64_t row0 = c.a0 + int64_t(blockIdx.x) * TileCfg::BM;
  const TileRange tiles = split_tiles(s.m, blockIdx.y, tiles_per_split);

  int64_t lab[TM], kk[TM], base[TM];
  acc_t nxr[TM];
  load_rows(s, row0, c.a1, lab, nxr);
  int all_active[TM], nan[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t a = row0 + TileCfg::row_of(ty, i);
    kk[i] = a < c.a1 ? c.k[a] : 0;
    base[i] = a < c.a1 ? c.base(a) : 0;
    all_active[i] = 0;
    nan[i] = 0;
  }

  sweep_negatives(s, row0, c.a1, tiles, sm, lab, nxr, [&](int i, int64_t, acc_t d) {
    nan[i] |= fm_isnan(d) ? 1 : 0;
    const int64_t k = kk[i];
    if (k == 0) return;
    const int64_t first =
        batch_all_first_active(c.pos + base[i], k, batch_all_threshold(d, margin));
    if (first == 0) {
      ++all_active[i];
    } else if (first < k) {
      atomicAdd(&diff[base[i] + first], 1);
    }
  });

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t a = row0 + TileCfg::row_of(ty, i);
    const int n0 = tile_row_sum(all_active[i]);
    const int nn = tile_row_sum(nan[i]);
    if (tx == 0 && a < c.a1) {
      if (n0 > 0) atomicAdd(&diff[base[i]], n0);
      if (nn > 0) atomicOr(&neg_nan[a], 1);
    }
  }
}

// Soft margin: the weight of positive q is sum over negatives n of sigmoid(p_q - d_n +
// margin), a float sum, so no atomics: grid (row tiles of the chunk) only, each block owns
// its rows and walks every column tile in order; the tile's distances go to shared memory
// and lane l of warp w adds, for rows w, w + 8, ... and positives l, l + 32, ..., the tile's
// 64 columns in order into wsum (zeroed by the host). A fixed order: deterministic.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(TileCfg::THREADS)
    batch_all_soft_count_kernel(NegativeSweep<T, acc_t> s, ChunkView<acc_t> c, double margin,
                                acc_t* __restrict__ wsum, int32_t* __restrict__ neg_nan) {
  constexpr int TM = TileCfg::TM, TN = TileCfg::TN, BN = TileCfg::BN;
  union Smem {
    DotTileSmem<acc_t> dot;
    acc_t d[TileCfg::BM][BN + 1];
  };
  static_assert(sizeof(acc_t[TileCfg::BM][BN + 1]) <= sizeof(DotTileSmem<acc_t>),
                "the distance tile reuses the mainloop's shared memory");
  __shared__ Smem sm;
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t row0 = c.a0 + int64_t(blockIdx.x) * TileCfg::BM;
  const int64_t col_tiles = (s.m + BN - 1) / BN;
  const acc_t margin_acc = static_cast<acc_t>(margin);

  int64_t lab[TM];
  acc_t nxr[TM];
  load_rows(s, row0, c.a1, lab, nxr);
  int nan[TM] = {0, 0, 0, 0};
  acc_t acc[TM][TN];
  for (int64_t t = 0; t < col_tiles; ++t) {
    const int64_t col0 = t * BN;
    dot_tile<T, acc_t>(s.xs, c.a1, row0, s.ref, s.m, col0, s.dim, sm.dot, acc);
    // dot_tile ended with a barrier: the mainloop's buffers are free for the distances.
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int64_t a = row0 + TileCfg::row_of(ty, i);
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int64_t col = col0 + TileCfg::col_of(tx, j);
        acc_t d = acc_t(0);
        if (a < c.a1 && col < s.m) {
          d = tile_distance(s.metric, acc[i][j], nxr[i], s.nr2[col], s.xs + a * s.dim,
                            s.ref + col * s.dim, s.dim);
          if (s.ref_labels[col] != lab[i] && fm_isnan(d)) nan[i] = 1;
        }
        sm.d[TileCfg::row_of(ty, i)][TileCfg::col_of(tx, j)] = d;
      }
    }
    __syncthreads();
    const int64_t ncols = s.m - col0 < BN ? s.m - col0 : BN;
    for (int r = warp; r < TileCfg::BM; r += TileCfg::THREADS / kWarp) {
      const int64_t a = row0 + r;
      if (a >= c.a1) break;
      const int64_t k = c.k[a], base = c.base(a);
      const int64_t la = s.sorted_lab[a];
      for (int64_t q = lane; q < k; q += kWarp) {
        const acc_t p = c.pos[base + q];
        acc_t w = acc_t(0);
        for (int64_t cc = 0; cc < ncols; ++cc) {
          if (s.ref_labels[col0 + cc] == la) continue;
          w += triplet_term_grad<acc_t>(p - sm.d[r][cc] + margin_acc, true);
        }
        wsum[base + q] += w;
      }
    }
    __syncthreads();  // the distances are read before the next mainloop overwrites them
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t a = row0 + TileCfg::row_of(ty, i);
    const int nn = tile_row_sum(nan[i]);
    if (tx == 0 && a < c.a1 && nn > 0) atomicOr(&neg_nan[a], 1);
  }
}

// Anchor states for the weight policy.
enum AnchorState : int32_t { kNoWeights = 0, kWeights = 1, kNanWeights = 2 };

// One warp per anchor of the chunk: its state (no positive or no negative: every weight 0,
// as the CPU's `continue`; a NaN candidate or a non-finite row: every candidate's weight NaN;
// else normal) and, if normal, the weight of each positive, written at its column-order slot:
// grad_i * (number of active negatives) — the inclusive prefix sum of `diff` over ranks
// (hinge; windows of 32 with a shuffle scan, in order) — or grad_i * wsum (soft).
template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    positive_weights_kernel(ChunkView<acc_t> c, int64_t b, int64_t m,
                            const int64_t* __restrict__ info, const acc_t* __restrict__ nxs2,
                            const int32_t* __restrict__ pos_nan,
                            const int32_t* __restrict__ neg_nan, const acc_t* __restrict__ grad,
                            const int64_t* __restrict__ perm_x,
                            const int32_t* __restrict__ pos_slot, const int32_t* __restrict__ diff,
                            const acc_t* __restrict__ wsum, bool soft, acc_t* __restrict__ w_slot,
                            int32_t* __restrict__ state) {
  const int64_t a = c.a0 + int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (a >= c.a1) return;  // warp-uniform
  const int64_t k = c.k[a], base = c.base(a);
  const int64_t n_neg = m - (info[kHi * b + a] - info[kLo * b + a]);
  const bool nan = pos_nan[a] != 0 || neg_nan[a] != 0 || !isfinite(nxs2[a]);
  const int32_t st = (k == 0 || n_neg == 0) ? kNoWeights : (nan ? kNanWeights : kWeights);
  if (lane == 0) state[a] = st;
  if (st != kWeights) return;  // warp-uniform
  const acc_t g = grad[perm_x[a]];
  if (soft) {
    for (int64_t q = lane; q < k; q += kWarp)
      w_slot[base + pos_slot[base + q]] = g * wsum[base + q];
    return;
  }
  int carry = 0;
  for (int64_t start = 0; start < k; start += kWarp) {
    const int64_t q = start + lane;
    int v = q < k ? diff[base + q] : 0;
#pragma unroll
    for (int o = 1; o < kWarp; o <<= 1) {
      const int t = __shfl_up_sync(kFullMask, v, o);
      if (lane >= o) v += t;
    }
    v += carry;
    if (q < k) w_slot[base + pos_slot[base + q]] = g * static_cast<acc_t>(v);
    carry = __shfl_sync(kFullMask, v, kWarp - 1);
  }
}

// ---- backward: the weight policy of pair_weight_kernel (all_pairs_kernels.cuh) -----------------

// Rows are label-sorted anchors of one chunk, columns the reference rows in the caller's
// order. dL/dd for a positive: its slot's weight (positive_weights_kernel); for a negative:
// -grad_i * (number of active positives) by the same bisection as the forward (hinge), or
// -grad_i * sum over positives of sigmoid(p_q - d_n + margin) (soft); the excluded column 0.
template <typename acc_t>
struct BatchAllWeights {
  ChunkView<acc_t> c;
  const int64_t* __restrict__ sorted_lab;
  const int64_t* __restrict__ ref_labels;
  const int64_t* __restrict__ rank_r;  // sorted position of each reference row
  const int64_t* __restrict__ info;
  int64_t b;
  const int32_t* __restrict__ state;
  const int64_t* __restrict__ perm_x;
  const acc_t* __restrict__ grad;
  const acc_t* __restrict__ w_slot;
  double margin;
  bool soft;

  __device__ __forceinline__ bool tile_live(int64_t, int64_t) const { return true; }

  __device__ __forceinline__ acc_t weight(int64_t a, int64_t j, acc_t d) const {
    const int32_t st = state[a];
    if (st == kNoWeights) return acc_t(0);
    if (ref_labels[j] == sorted_lab[a]) {
      const int64_t s = rank_r[j], ex = info[kExcl * b + a];
      if (s == ex) return acc_t(0);
      if (st == kNanWeights) return quiet_nan<acc_t>();
      const int64_t slot = s - info[kLo * b + a] - ((ex >= 0 && ex < s) ? 1 : 0);
      return w_slot[c.base(a) + slot];
    }
    if (st == kNanWeights) return quiet_nan<acc_t>();
    const int64_t k = c.k[a];
    const acc_t* p = c.pos + c.base(a);
    const acc_t g = grad[perm_x[a]];
    if (soft) {
      const acc_t margin_acc = static_cast<acc_t>(margin);
      acc_t w = acc_t(0);
      for (int64_t q = 0; q < k; ++q) w += triplet_term_grad<acc_t>(p[q] - d + margin_acc, true);
      return -g * w;
    }
    const int64_t first = batch_all_first_active(p, k, batch_all_threshold(d, margin));
    return -g * static_cast<acc_t>(k - first);
  }
};

}  // namespace
}  // namespace fastmine::cuda
