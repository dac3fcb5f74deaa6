// Hinge / soft-margin triplet terms and the tie rule, shared by CPU and CUDA.
#pragma once
#include "common/macros.h"

namespace fastmine {

// l(z) = max(z, 0) or softplus(z). NaN in, NaN out.
template <typename acc_t>
FM_HD acc_t triplet_term(acc_t z, bool soft) {
  if (soft) {
    acc_t az = z < acc_t(0) ? -z : z;
    acc_t pos = z > acc_t(0) ? z : acc_t(0);
    if (fm_isnan(z)) return z;
    return pos + fm_log1p(fm_exp(-az));  // stable softplus
  }
  return z > acc_t(0) ? z : (fm_isnan(z) ? z : acc_t(0));
}

// dl/dz: 1{z > 0} for the hinge (0 at the kink), sigmoid(z) for softplus.
template <typename acc_t>
FM_HD acc_t triplet_term_grad(acc_t z, bool soft) {
  if (fm_isnan(z)) return z;
  if (soft) {
    if (z >= acc_t(0)) return acc_t(1) / (acc_t(1) + fm_exp(-z));
    acc_t e = fm_exp(z);
    return e / (acc_t(1) + e);
  }
  return z > acc_t(0) ? acc_t(1) : acc_t(0);
}

// Running arg-extremum with the rules of docs/semantics.md: the lowest index wins exact ties,
// and a NaN candidate wins over every number (so a NaN distance can never be skipped
// silently).
// Feed candidates in any order; merge() is order-independent, hence deterministic.
template <typename acc_t>
struct ArgBest {
  acc_t value;
  int64_t index = -1;
  // is_max: keep the largest value; else the smallest.
  FM_HD bool better(acc_t v, int64_t j, bool is_max) const {
    if (index < 0) return true;
    bool vn = fm_isnan(v), bn = fm_isnan(value);
    if (vn || bn) return vn && (!bn || j < index);
    if (v == value) return j < index;
    return is_max ? v > value : v < value;
  }
  FM_HD void offer(acc_t v, int64_t j, bool is_max) {
    if (better(v, j, is_max)) {
      value = v;
      index = j;
    }
  }
  FM_HD void merge(const ArgBest& o, bool is_max) {
    if (o.index >= 0) offer(o.value, o.index, is_max);
  }
};

}  // namespace fastmine
