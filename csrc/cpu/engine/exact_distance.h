// Exact (direct-difference) distances and squared norms of rows, accumulated in double on
// the CPU.
#pragma once
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#include "common/distance.h"

namespace fastmine::cpu {

template <typename scalar_t>
PairAcc<double> accumulate_pair(const scalar_t* u, const scalar_t* v, int64_t dim) {
  PairAcc<double> acc;
  for (int64_t k = 0; k < dim; ++k) acc.add(double(u[k]), double(v[k]));
  return acc;
}

// The sum over k in [0, n) of term(k), in double, with eight independent partial sums: the
// compiler may put the loop in SIMD registers without reassociating anything (one running
// sum is a single long dependency chain: 4x slower at n = 128), and the lanes are added in a
// fixed order, so the result is bitwise reproducible.
template <typename Term>
double lane_sum(int64_t n, Term term) {
  constexpr int64_t kLanes = 8;
  double lane[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lane[l] += term(k + l);
  }
  double s = 0.0;
  for (; k < n; ++k) s += term(k);
  for (int64_t l = 0; l < kLanes; ++l) s += lane[l];
  return s;
}

// ||u - v||^2 from direct differences (no cancellation), accumulated in double.
template <typename T>
double squared_distance(const T* u, const T* v, int64_t d) {
  return lane_sum(d, [&](int64_t k) {
    const double diff = static_cast<double>(u[k]) - static_cast<double>(v[k]);
    return diff * diff;
  });
}

// d(u, v) from direct differences, in double: PairAcc's distance (its finalize), with the
// euclidean metrics' one sum taken in lane_sum's SIMD-friendly order (a mined pair's
// distance is O(D) on the critical path).
template <typename T>
double exact_distance(const T* u, const T* v, int64_t dim, int64_t metric) {
  if (metric == kCosine) return accumulate_pair(u, v, dim).finalize(metric);
  PairAcc<double> acc;
  acc.diff2 = squared_distance(u, v, dim);
  return acc.finalize(metric);
}

// |u|^2, accumulated in double.
template <typename scalar_t>
double squared_norm(const scalar_t* u, int64_t dim) {
  return lane_sum(dim, [&](int64_t k) { return double(u[k]) * double(u[k]); });
}

// Squared norm of each of the n rows of a contiguous (n, dim) array.
template <typename T>
std::vector<T> row_norms2(const T* p, int64_t n, int64_t dim) {
  std::vector<T> out(n);
  at::parallel_for(0, n, 256, [&](int64_t a, int64_t e) {
    for (int64_t i = a; i < e; ++i) out[i] = T(squared_norm(p + i * dim, dim));
  });
  return out;
}

}  // namespace fastmine::cpu
