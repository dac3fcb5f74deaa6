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

template <typename scalar_t>
double squared_norm(const scalar_t* u, int64_t dim) {
  double s = 0;
  for (int64_t k = 0; k < dim; ++k) s += double(u[k]) * double(u[k]);
  return s;
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
