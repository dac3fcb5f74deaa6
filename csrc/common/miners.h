// Margin-filtered triplet selection (pytorch-metric-learning's TripletMarginMiner), one
// definition for the CPU and CUDA kernels, for the counting and the filling pass alike.
//
// For a triplet (a, p, n) the miner looks at t = d(a, n) - d(a, p), computed in the
// distance's own type (as PML does), and keeps it when
//   all:      t <= margin
//   hard:     t <= margin  and  t <= 0
//   semihard: t <= margin  and  t > 0        (strict at 0)
//   easy:     t > margin                      (strict at margin)
// i.e. exactly PML 2.9's comparisons: "<=" on the upper bounds, ">" on the lower ones.
//
// For a fixed positive, t is a monotone (non-decreasing) function of d(a, n): floating
// subtraction of a constant is monotone. So the upper condition holds on a prefix and the
// lower one on a suffix of the anchor's negatives sorted by distance, and the selected
// negatives are one interval [lo, hi) of that order, found by two bisections. Counting
// (bisection) and filling (bisection, or a scan in index order) evaluate the same two
// predicates below on the same numbers, so they always agree.
#pragma once
#include "common/macros.h"

namespace fastmine {

// Triplet types, shared with fastmine/miners.py (TRIPLET_TYPES).
enum TripletType : int64_t {
  kTripletAll = 0,
  kTripletHard = 1,
  kTripletSemihard = 2,
  kTripletEasy = 3
};

// t = d_an - d_ap, in the distance type.
template <typename T>
FM_HD T triplet_margin_value(T d_ap, T d_an) {
  return d_an - d_ap;
}

// The lower condition (true on a suffix of the sorted negatives): t > 0 for semihard,
// t > margin for easy, always true for all/hard.
template <typename T>
FM_HD bool triplet_above_lower(int64_t type, T t, T margin) {
  if (type == kTripletSemihard) return t > T(0);
  if (type == kTripletEasy) return t > margin;
  return true;
}

// The upper condition (true on a prefix): t <= margin for all/semihard, t <= margin and
// t <= 0 for hard, always true for easy.
template <typename T>
FM_HD bool triplet_below_upper(int64_t type, T t, T margin) {
  if (type == kTripletEasy) return true;
  if (type == kTripletHard) return t <= margin && t <= T(0);
  return t <= margin;
}

// Both: the triplet is selected.
template <typename T>
FM_HD bool triplet_selected(int64_t type, T d_ap, T d_an, T margin) {
  const T t = triplet_margin_value(d_ap, d_an);
  return triplet_above_lower(type, t, margin) && triplet_below_upper(type, t, margin);
}

// The selected interval [*lo, *hi) of `sorted` (n negative distances, ascending) for a
// positive at distance d_ap. Empty when *lo >= *hi. Distances must be finite (the callers
// refuse non-finite ones: a NaN would break the monotonicity the bisection relies on).
template <typename T>
FM_HD void triplet_interval(int64_t type, const T* sorted, int64_t n, T d_ap, T margin, int64_t* lo,
                            int64_t* hi) {
  // lo: the first rank whose t passes the lower condition.
  int64_t a = 0, b = n;
  while (a < b) {
    const int64_t mid = a + (b - a) / 2;
    if (triplet_above_lower(type, triplet_margin_value(d_ap, sorted[mid]), margin)) {
      b = mid;
    } else {
      a = mid + 1;
    }
  }
  *lo = a;
  // hi: the first rank whose t fails the upper condition.
  a = 0;
  b = n;
  while (a < b) {
    const int64_t mid = a + (b - a) / 2;
    if (triplet_below_upper(type, triplet_margin_value(d_ap, sorted[mid]), margin)) {
      a = mid + 1;
    } else {
      b = mid;
    }
  }
  *hi = a;
}

// Number of selected negatives for one positive.
template <typename T>
FM_HD int64_t triplet_interval_count(int64_t type, const T* sorted, int64_t n, T d_ap, T margin) {
  int64_t lo, hi;
  triplet_interval(type, sorted, n, d_ap, margin, &lo, &hi);
  return hi > lo ? hi - lo : 0;
}

}  // namespace fastmine
