// The hardest candidate of each anchor, found from selection scores (common/distance.h),
// with near-ties decided on exact distances.
//
// A selection score comes from a BLAS dot product, so two candidates at the same true
// distance can score differently by rounding (BLAS need not round identical columns alike).
// Scores further apart than a rounding bound `tol` order their candidates correctly; within
// it, the candidates are re-decided on their exact distances (double, direct differences),
// where true duplicates tie exactly and the lowest index wins. The result is the exact
// hardest candidate whatever the order the scores were computed in.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/distance.h"
#include "cpu/engine/exact_distance.h"

namespace fastmine::cpu {

// Exact distances one anchor may spend on near-ties. Beyond it (collapsed embeddings: every
// candidate within rounding of every other), the leader so far is kept: the candidates are
// equal up to rounding, and docs/semantics.md ("Distances") lets either be chosen.
constexpr int kMaxExactTies = 32;

// Rounding bound of a selection score, for one anchor: scores are |r|^2 - 2<x, r>
// (|.| <= |x|^2 + 2|x||r| + |r|^2 <= 2(|x|^2 + max|r|^2)) or -<x, r>/|r| (<= |x|); a dot
// product of D terms is off by about sqrt(D) eps times that scale. Generous by design:
// a wider band costs a few exact distances, a narrower one a wrong tie.
template <typename T>
T score_tolerance(int64_t metric, T nx2, T max_nr2, int64_t dim) {
  const double eps = std::numeric_limits<T>::epsilon();
  const double scale =
      metric == kCosine ? std::sqrt(double(nx2)) : 2.0 * (double(nx2) + double(max_nr2));
  return T(16.0 * std::sqrt(double(dim)) * eps * scale);
}

// Streaming hardest candidate of n anchors for one role (hardest positive: the largest
// distance; hardest negative: the smallest), as structure-of-arrays so that a SIMD loop can
// offer one candidate to many anchors at once. Candidates may be offered in any order; the
// outcome is the exact hardest (lowest index on exact ties) as long as no anchor runs out
// of its kMaxExactTies exact distances.
//
// Per anchor: `best` is the best score offered so far (the near-tie band is measured from
// it), `index` the leader (-1: none yet). A score beyond best by more than tol takes the
// lead outright; one within tol is a near-tie, decided by consider() on exact distances.
template <typename T>
struct Hardest {
  bool largest;  // true: positives (keep the largest distance)
  std::vector<T> best;
  std::vector<int32_t> index;
  std::vector<double> exact;      // exact distance of candidate exact_of[a] to anchor a
  std::vector<int32_t> exact_of;  // -1: none computed
  std::vector<int32_t> budget;    // exact distances left

  Hardest(int64_t n, bool largest_)
      : largest(largest_),
        best(n,
             largest_ ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity()),
        index(n, -1),
        exact(n, 0.0),
        exact_of(n, -1),
        budget(n, kMaxExactTies + 1) {}

  // Whether score s takes the lead from best outright / is too far behind to matter.
  static bool beyond(bool largest, T s, T best, T tol) {
    return largest ? s > best + tol : s < best - tol;
  }
  static bool behind(bool largest, T s, T best, T tol) {
    return largest ? s < best - tol : s > best + tol;
  }

  // Offers candidate j with score s to anchor a. dist(a, j) is the exact distance.
  template <typename ExactDist>
  void consider(int64_t a, T s, int64_t j, T tol, const ExactDist& dist) {
    if (index[a] < 0 || beyond(largest, s, best[a], tol)) {
      best[a] = s;
      index[a] = int32_t(j);
      return;
    }
    if (behind(largest, s, best[a], tol)) return;
    if (largest ? s > best[a] : s < best[a]) best[a] = s;
    if (budget[a] < 2) return;  // out of exact distances: the leader stays
    if (exact_of[a] != index[a]) {
      exact[a] = dist(a, index[a]);
      exact_of[a] = index[a];
      --budget[a];
    }
    const double dj = dist(a, j);
    --budget[a];
    const bool wins = largest ? dj > exact[a] : dj < exact[a];
    if (wins || (dj == exact[a] && j < index[a])) {
      index[a] = int32_t(j);
      exact[a] = dj;
      exact_of[a] = int32_t(j);
    }
  }
};

}  // namespace fastmine::cpu
