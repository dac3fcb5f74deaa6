// How the tile sweeps cut their work: column splits of a sweep, row panels of a backward,
// anchor chunks of batch-all. Plain host C++ (no CUDA, no torch), so the emulator harness
// plans exactly like the launchers.
//
// Determinism: every plan here is a function of the problem's sizes only, never of timing,
// and every reduction over a plan's pieces runs in piece order. So the same inputs give
// bitwise-identical results run after run. One plan also reads the device's SM count
// (plan_splits_for_sms): that of batch-hard's mining, whose merge of the pieces is exact in
// any order and cut, so its results do not depend on the device either.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/macros.h"

namespace fastmine::cuda {

constexpr int64_t kTile = 64;  // TileCfg::BM == TileCfg::BN (checked in all_pairs_kernels.cuh)

inline int64_t plan_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Column splits of a sweep over col_tiles column tiles: split s covers the column tiles
// [s * tiles_per_split, (s + 1) * tiles_per_split). At most kMaxSplits splits (so the
// partial buffers are at most kMaxSplits x B), at least one tile each. Each block of a
// sweep thus does at least ceil(col_tiles / 32) tiles of dot products per partial it writes,
// and a small B still fills the GPU (row tiles x up to 32 splits).
struct SweepSplits {
  int64_t tiles_per_split = 1, n_splits = 0;
};
constexpr int64_t kMaxSplits = 32;

inline SweepSplits plan_splits(int64_t col_tiles, int64_t tiles_per_split_override = 0) {
  SweepSplits s;
  if (col_tiles <= 0) return s;
  s.tiles_per_split = tiles_per_split_override > 0
                          ? tiles_per_split_override
                          : std::max<int64_t>(1, plan_ceil_div(col_tiles, kMaxSplits));
  s.n_splits = plan_ceil_div(col_tiles, s.tiles_per_split);
  return s;
}

// Column splits that fill the device: enough blocks for two per SM when B is small (row_tiles
// row tiles), never more splits than column tiles, and no empty split. For a sweep whose
// pieces merge exactly in any order only (batch-hard's arg-best): the cut depends on the
// device, the result must not.
inline SweepSplits plan_splits_for_sms(int64_t col_tiles, int64_t row_tiles, int64_t sms) {
  if (col_tiles <= 0) return SweepSplits{};
  const int64_t want = plan_ceil_div(2 * sms, row_tiles);
  const int64_t n = std::min<int64_t>(std::max<int64_t>(want, 1), col_tiles);
  return plan_splits(col_tiles, plan_ceil_div(col_tiles, n));
}

// The column tiles [begin, end) that split `split` of a sweep over m columns covers
// (plan_splits' cut: the last split may be shorter). Device code reads it too.
struct TileRange {
  int64_t begin, end;
};
FM_HD TileRange split_tiles(int64_t m, int64_t split, int64_t tiles_per_split) {
  const int64_t col_tiles = (m + kTile - 1) / kTile;
  const int64_t t0 = split * tiles_per_split;
  return TileRange{t0, t0 + tiles_per_split < col_tiles ? t0 + tiles_per_split : col_tiles};
}

// Rows of one backward panel: its (rows x M) weight matrix holds at most ~kPanelElems
// entries (128 MiB in float32); a multiple of the tile height, at least one tile, at most
// 2^20 rows (grid.y <= 16384 row tiles). Memory stays O(M), never O(B * M), and each panel's
// two GEMMs are still large.
constexpr int64_t kPanelElems = int64_t(1) << 25;

inline int64_t plan_panel_rows(int64_t m) {
  const int64_t rows = std::min<int64_t>(kPanelElems / std::max<int64_t>(m, 1), int64_t(1) << 20);
  return std::max<int64_t>(kTile, rows / kTile * kTile);
}

// Batch-all: anchors (in label-sorted order) are processed in chunks whose sorted-positive
// lists fit a scratch budget of kPositiveBudget entries (and, for a backward, whose rows fit
// one panel). k[a] <= M <= budget, so every chunk holds at least one anchor. Returns the
// chunk boundaries: chunk c is [bounds[c], bounds[c + 1]).
constexpr int64_t kPositiveBudget = int64_t(1) << 23;

inline int64_t positive_budget(int64_t m, int64_t override_budget = 0) {
  return std::max<int64_t>(override_budget > 0 ? override_budget : kPositiveBudget, m);
}

inline std::vector<int64_t> plan_chunks(const int64_t* k, int64_t b, int64_t budget,
                                        int64_t max_rows) {
  std::vector<int64_t> bounds{0};
  int64_t a0 = 0, used = 0;
  for (int64_t a = 0; a < b; ++a) {
    if (a > a0 && (used + k[a] > budget || a - a0 >= max_rows)) {
      bounds.push_back(a);
      a0 = a;
      used = 0;
    }
    used += k[a];
  }
  if (b > 0) bounds.push_back(b);
  return bounds;
}

// Batch-all's positive pass over label-sorted anchors [a0, a1) and label-sorted reference
// rows: the positives of row tile t (anchors [a0 + 64 t, min(a0 + 64 (t + 1), a1))) all lie
// in the sorted columns [lo[first anchor], hi[last anchor]) (both bounds grow with the
// label). The widest such range, in column tiles: the grid's x extent for the chunk.
inline int64_t positive_pass_col_tiles(const int64_t* lo, const int64_t* hi, int64_t a0,
                                       int64_t a1) {
  int64_t tiles = 0;
  for (int64_t r = a0; r < a1; r += kTile) {
    const int64_t last = std::min(r + kTile, a1) - 1;
    tiles = std::max(tiles, plan_ceil_div(std::max<int64_t>(hi[last] - lo[r], 0), kTile));
  }
  return tiles;
}

}  // namespace fastmine::cuda
