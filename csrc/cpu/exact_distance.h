// Exact (direct-difference) distance between two rows, accumulated in double on the CPU.
#pragma once
#include <cstdint>
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

}  // namespace fastmine::cpu
