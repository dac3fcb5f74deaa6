// Per-pair loss terms of the all-pairs losses (contrastive, batch-all), shared by CPU and
// CUDA kernels.
#pragma once
#include "common/macros.h"

namespace fastmine {

// max(v, 0)^power and its derivative, for power 1 or 2 (the common choices) and any other
// positive power through exp/log. NaN propagates. Branch-free (both sides of each `?:` are
// plain values; a discarded one may be NaN), so that the CPU's per-pair loops vectorise;
// with power a compile-time constant 1 or 2 (cpu/engine/dispatch.h) the exp/log folds away.
template <typename acc_t>
FM_HD acc_t hinge_pow(acc_t v, acc_t power) {
  const acc_t r = power == acc_t(1) ? v : power == acc_t(2) ? v * v : fm_exp(power * fm_log(v));
  return v <= acc_t(0) ? acc_t(0) : r;  // a NaN v compares false: r, which is NaN
}

template <typename acc_t>
FM_HD acc_t hinge_pow_grad(acc_t v, acc_t power) {
  const acc_t r = power == acc_t(1)   ? (fm_isnan(v) ? v : acc_t(1))
                  : power == acc_t(2) ? acc_t(2) * v
                                      : power * fm_exp((power - acc_t(1)) * fm_log(v));
  return v <= acc_t(0) ? acc_t(0) : r;
}

// Contrastive (Hadsell, Chopra & LeCun 2006): same-label pairs are pulled within pos_margin,
// different-label pairs pushed beyond neg_margin. The hinge's argument:
template <typename acc_t>
FM_HD acc_t contrastive_hinge_arg(acc_t d, bool same, acc_t pos_margin, acc_t neg_margin) {
  return same ? d - pos_margin : neg_margin - d;
}

template <typename acc_t>
FM_HD acc_t contrastive_term(acc_t d, bool same, acc_t pos_margin, acc_t neg_margin, acc_t power) {
  return hinge_pow(contrastive_hinge_arg(d, same, pos_margin, neg_margin), power);
}

// d(term)/dd.
template <typename acc_t>
FM_HD acc_t contrastive_term_grad(acc_t d, bool same, acc_t pos_margin, acc_t neg_margin,
                                  acc_t power) {
  const acc_t g = hinge_pow_grad(contrastive_hinge_arg(d, same, pos_margin, neg_margin), power);
  return same ? g : -g;
}

// Whether a contrastive anchor's sums are NaN: its row is not finite (its squared norm is
// NaN or inf), so that it never yields a finite loss, pairs or not (as batch-hard).
template <typename acc_t>
FM_HD bool contrastive_anchor_poisoned(acc_t sqnorm) {
  return !(sqnorm - sqnorm == acc_t(0));
}

// Which reference columns pair with anchor row i. `triangle`: the batch against itself,
// each unordered pair once (j > i). Otherwise every column but the excluded one.
FM_HD bool pair_allowed(int64_t i, int64_t j, bool triangle, bool has_exclude,
                        int64_t exclude_offset) {
  return triangle ? j > i : !(has_exclude & (j == i + exclude_offset));
}

}  // namespace fastmine
