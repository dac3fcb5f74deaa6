// Batch-all triplet loss by sorted positives, shared by CPU and CUDA kernels (the rule of
// csrc/cpu/batch_all.cpp, written once).
//
// For an anchor with K positive distances sorted ascending, p[0] <= ... <= p[K-1], the
// positives whose hinge is active against a negative at distance d_n are those with
// p[q] > d_n - margin: a suffix [first, K) of the order. Then, with suffix[q] = sum of
// p[q..K):
//   sum over q of max(p[q] - d_n + margin, 0) = suffix[first] + (K - first) (margin - d_n)
//   number of active triplets                 = K - first
//   d(hinge sum)/d(d_n) = -(K - first);  d/d(p[q]) = 1 for q >= first, else 0.
// The threshold and the sums are in double whatever the distance type: the suffix form
// subtracts two sums that grow with K, so float would lose the small hinges.
#pragma once
#include "common/macros.h"

namespace fastmine {

// A positive at distance p is active against a negative at d_n iff p > batch_all_threshold.
template <typename dist_t>
FM_HD double batch_all_threshold(dist_t d_n, double margin) {
  return double(d_n) - margin;
}

// First rank q in [0, k] with double(sorted[q]) > threshold (k if none): an upper bound by
// bisection. A NaN threshold compares false everywhere and gives k (the caller's NaN rule
// takes over).
template <typename dist_t>
FM_HD int64_t batch_all_first_active(const dist_t* sorted, int64_t k, double threshold) {
  int64_t lo = 0, hi = k;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (double(sorted[mid]) > threshold) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// Hinge sum of one negative over its active positives (suffix_first = suffix[first], 0 when
// first == K).
FM_HD double batch_all_hinge_sum(double suffix_first, int64_t active, double margin, double d_n) {
  return suffix_first + double(active) * (margin - d_n);
}

}  // namespace fastmine
