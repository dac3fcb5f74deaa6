// Kernels of the contrastive loss (host side and design: contrastive.cu). Device code only
// (see device_utils.cuh). In an anonymous namespace: each kernel belongs to the one
// translation unit that includes this header.
#pragma once

#include "common/distance.h"
#include "common/pair_losses.h"
#include "cuda/engine/device_utils.cuh"
#include "cuda/engine/dot_tile.cuh"
#include "cuda/engine/row_ops.cuh"
#include "cuda/engine/sweep_plan.h"

namespace fastmine::cuda {
namespace {

template <typename acc_t>
struct ContrastiveParams {
  acc_t pos_margin, neg_margin, power;
  bool triangle, has_exclude;
  int64_t exclude_offset;
};

// With `triangle` (pairs j > i only), a tile at (row0, col0) has a pair iff its last column
// lies beyond its first row.
__device__ __forceinline__ bool triangle_tile_live(int64_t row0, int64_t col0) {
  return col0 + TileCfg::BN - 1 > row0;
}

// The per-anchor partials: kSums acc_t sums and kCounts int64 counts per (split, row), each
// quantity a [n_splits, B] plane.
enum ContrastiveSum { kPosSum = 0, kNegSum = 1, kSums = 2 };
enum ContrastiveCount {
  kPosNonzero = 0,
  kPosPairs = 1,
  kNegNonzero = 2,
  kNegPairs = 3,
  kCounts = 4
};

// ---- forward: sweep ---------------------------------------------------------------------------

// grid.x: row tiles of x; grid.y: column splits (sweep_plan.h's split_tiles); with
// `triangle`, only the tiles at or right of the diagonal. Each block writes its partials for every
// row it owns, also when its range is empty (zeros), so the finalize never reads garbage.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(TileCfg::THREADS)
    contrastive_forward_kernel(const T* __restrict__ x, const int64_t* __restrict__ labels,
                               const T* __restrict__ ref, const int64_t* __restrict__ ref_labels,
                               const acc_t* __restrict__ nx2, const acc_t* __restrict__ nr2,
                               int64_t b, int64_t m, int64_t dim, int64_t metric,
                               ContrastiveParams<acc_t> p, int64_t tiles_per_split,
                               int64_t n_splits, acc_t* __restrict__ part_sum,
                               int64_t* __restrict__ part_cnt) {
  constexpr int TM = TileCfg::TM, TN = TileCfg::TN;
  __shared__ DotTileSmem<acc_t> sm;
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
  const int64_t row0 = int64_t(blockIdx.x) * TileCfg::BM;
  const int64_t split = blockIdx.y;
  TileRange tiles = split_tiles(m, split, tiles_per_split);
  if (p.triangle) {
    while (tiles.begin < tiles.end && !triangle_tile_live(row0, tiles.begin * TileCfg::BN)) {
      ++tiles.begin;
    }
  }

  int64_t lab[TM];
  acc_t nxr[TM], pos_s[TM], neg_s[TM];
  int pos_nz[TM], pos_n[TM], neg_nz[TM], neg_n[TM];  // <= tiles_per_split * TN per thread
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = row0 + TileCfg::row_of(ty, i);
    lab[i] = row < b ? labels[row] : 0;
    nxr[i] = row < b ? nx2[row] : acc_t(0);
    pos_s[i] = neg_s[i] = acc_t(0);
    pos_nz[i] = pos_n[i] = neg_nz[i] = neg_n[i] = 0;
  }

  acc_t acc[TM][TN];
  for (int64_t t = tiles.begin; t < tiles.end; ++t) {  // block-uniform: dot_tile's barriers
    const int64_t col0 = t * TileCfg::BN;
    dot_tile<T, acc_t>(x, b, row0, ref, m, col0, dim, sm, acc);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int64_t col = col0 + TileCfg::col_of(tx, j);
      if (col >= m) continue;
      const int64_t rl = ref_labels[col];
      const acc_t nrj = nr2[col];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int64_t row = row0 + TileCfg::row_of(ty, i);
        if (row >= b || !pair_allowed(row, col, p.triangle, p.has_exclude, p.exclude_offset)) {
          continue;
        }
        const acc_t d =
            tile_distance(metric, acc[i][j], nxr[i], nrj, x + row * dim, ref + col * dim, dim);
        const bool same = rl == lab[i];
        const acc_t term = contrastive_term<acc_t>(d, same, p.pos_margin, p.neg_margin, p.power);
        if (same) {
          pos_s[i] += term;
          pos_nz[i] += term > acc_t(0);
          pos_n[i] += 1;
        } else {
          neg_s[i] += term;
          neg_nz[i] += term > acc_t(0);
          neg_n[i] += 1;
        }
      }
    }
  }

  const int64_t plane = n_splits * b;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t row = row0 + TileCfg::row_of(ty, i);
    const int64_t o = split * b + row;
    const acc_t ps = tile_row_sum(pos_s[i]), ns = tile_row_sum(neg_s[i]);
    const int pnz = tile_row_sum(pos_nz[i]), pn = tile_row_sum(pos_n[i]);
    const int nnz = tile_row_sum(neg_nz[i]), nn = tile_row_sum(neg_n[i]);
    if (tx == 0 && row < b) {
      part_sum[kPosSum * plane + o] = ps;
      part_sum[kNegSum * plane + o] = ns;
      part_cnt[kPosNonzero * plane + o] = pnz;
      part_cnt[kPosPairs * plane + o] = pn;
      part_cnt[kNegNonzero * plane + o] = nnz;
      part_cnt[kNegPairs * plane + o] = nn;
    }
  }
}

// ---- forward: finalize ------------------------------------------------------------------------

// One thread per anchor: the splits' partials summed in split order (deterministic); NaN sums
// for a non-finite anchor row (nx2: the squared row norms).
template <typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    contrastive_finalize_kernel(int64_t b, int64_t n_splits, const acc_t* __restrict__ nx2,
                                const acc_t* __restrict__ part_sum,
                                const int64_t* __restrict__ part_cnt, acc_t* __restrict__ pos_sum,
                                int64_t* __restrict__ pos_nonzero, int64_t* __restrict__ pos_pairs,
                                acc_t* __restrict__ neg_sum, int64_t* __restrict__ neg_nonzero,
                                int64_t* __restrict__ neg_pairs) {
  const int64_t i = int64_t(blockIdx.x) * kRowThreads + threadIdx.x;
  if (i >= b) return;
  const int64_t plane = n_splits * b;
  acc_t s[kSums] = {acc_t(0), acc_t(0)};
  int64_t c[kCounts] = {0, 0, 0, 0};
  for (int64_t sp = 0; sp < n_splits; ++sp) {
    const int64_t o = sp * b + i;
    for (int q = 0; q < kSums; ++q) s[q] += part_sum[q * plane + o];
    for (int q = 0; q < kCounts; ++q) c[q] += part_cnt[q * plane + o];
  }
  if (contrastive_anchor_poisoned(nx2[i])) s[kPosSum] = s[kNegSum] = quiet_nan<acc_t>();
  pos_sum[i] = s[kPosSum];
  neg_sum[i] = s[kNegSum];
  pos_nonzero[i] = c[kPosNonzero];
  pos_pairs[i] = c[kPosPairs];
  neg_nonzero[i] = c[kNegNonzero];
  neg_pairs[i] = c[kNegPairs];
}

// ---- backward: the weight policy of pair_weight_kernel (all_pairs_kernels.cuh) -----------------

// w_ij = grad_{pos|neg}[i] * d(contrastive_term)/dd over the allowed pairs, 0 elsewhere.
template <typename acc_t>
struct ContrastiveWeights {
  const int64_t* __restrict__ labels;
  const int64_t* __restrict__ ref_labels;
  const acc_t* __restrict__ grad_pos;
  const acc_t* __restrict__ grad_neg;
  ContrastiveParams<acc_t> p;

  __device__ __forceinline__ bool tile_live(int64_t row0, int64_t col0) const {
    return !p.triangle || triangle_tile_live(row0, col0);
  }
  __device__ __forceinline__ acc_t weight(int64_t row, int64_t col, acc_t d) const {
    if (!pair_allowed(row, col, p.triangle, p.has_exclude, p.exclude_offset)) return acc_t(0);
    const bool same = ref_labels[col] == labels[row];
    return (same ? grad_pos[row] : grad_neg[row]) *
           contrastive_term_grad<acc_t>(d, same, p.pos_margin, p.neg_margin, p.power);
  }
};

}  // namespace
}  // namespace fastmine::cuda
