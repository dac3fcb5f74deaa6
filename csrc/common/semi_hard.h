// The semi-hard rule (FaceNet; TensorFlow Addons' triplet_semihard_loss), shared by the CPU
// and CUDA kernels. For a positive pair (i, p) with distance d_ip:
//   n* = argmin d_in over the negatives with d_in > d_ip  (lowest index on exact ties),
//   else argmax d_in over all negatives                   (the easiest: TF's fallback),
// and a NaN among the anchor's negative distances wins over both (its lowest index), so a
// NaN can never be skipped by a comparison and yield a finite loss.
#pragma once
#include "common/macros.h"
#include "common/triplet.h"

namespace fastmine {

// Whether negative distance d_in is a semi-hard candidate for positive distance d_ip.
// Strict, as in TF: a negative exactly as far as the positive is not one. NaN: never.
template <typename acc_t>
FM_HD bool semi_hard_candidate(acc_t d_in, acc_t d_ip) {
  return d_in > d_ip;
}

// The chosen negative from two reductions over the anchor's negatives:
//   semi: ArgBest (is_max = false) over the candidates of this positive only (no NaN);
//   easy: ArgBest (is_max = true) over all negatives (NaN wins there: ArgBest's rule).
// -1 when the anchor has no negative.
template <typename acc_t>
FM_HD int64_t semi_hard_choice(const ArgBest<acc_t>& semi, const ArgBest<acc_t>& easy) {
  if (easy.index >= 0 && fm_isnan(easy.value)) return easy.index;
  return semi.index >= 0 ? semi.index : easy.index;
}

// The pair's term max(d_ip - d_in + margin, 0) (NaN stays NaN) and its derivative in z.
template <typename acc_t>
FM_HD acc_t semi_hard_term(acc_t d_pos, acc_t d_neg, acc_t margin) {
  return triplet_term(d_pos - d_neg + margin, /*soft=*/false);
}

template <typename acc_t>
FM_HD acc_t semi_hard_term_grad(acc_t d_pos, acc_t d_neg, acc_t margin) {
  return triplet_term_grad(d_pos - d_neg + margin, /*soft=*/false);
}

}  // namespace fastmine
