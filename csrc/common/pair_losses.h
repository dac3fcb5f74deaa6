// Per-pair loss terms of the all-pairs losses (contrastive, batch-all), shared by CPU and
// CUDA kernels.
#pragma once
#include "common/macros.h"

namespace fastmine {

// max(v, 0)^power and its derivative, for power 1 or 2 (the common choices) and any other
// positive power through exp/log. NaN propagates. With power a compile-time constant 1 or 2
// (cpu/engine/dispatch.h) the exp/log branch folds away and the callers' loops vectorise.
template <typename acc_t>
FM_HD acc_t hinge_pow(acc_t v, acc_t power) {
  if (fm_isnan(v)) return v;
  if (!(v > acc_t(0))) return acc_t(0);
  if (power == acc_t(1)) return v;
  if (power == acc_t(2)) return v * v;
  return fm_exp(power * fm_log(v));
}

template <typename acc_t>
FM_HD acc_t hinge_pow_grad(acc_t v, acc_t power) {
  if (fm_isnan(v)) return v;
  if (!(v > acc_t(0))) return acc_t(0);
  if (power == acc_t(1)) return acc_t(1);
  if (power == acc_t(2)) return acc_t(2) * v;
  return power * fm_exp((power - acc_t(1)) * fm_log(v));
}

// Contrastive (Hadsell, Chopra & LeCun 2006): same-label pairs are pulled within pos_margin,
// different-label pairs pushed beyond neg_margin.
template <typename acc_t>
FM_HD acc_t contrastive_term(acc_t d, bool same, acc_t pos_margin, acc_t neg_margin, acc_t power) {
  return same ? hinge_pow(d - pos_margin, power) : hinge_pow(neg_margin - d, power);
}

// d(term)/dd.
template <typename acc_t>
FM_HD acc_t contrastive_term_grad(acc_t d, bool same, acc_t pos_margin, acc_t neg_margin,
                                  acc_t power) {
  return same ? hinge_pow_grad(d - pos_margin, power) : -hinge_pow_grad(neg_margin - d, power);
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
  if (triangle) return j > i;
  return !(has_exclude && j == i + exclude_offset);
}

}  // namespace fastmine
