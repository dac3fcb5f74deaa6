// One definition of each distance and of its gradient, for CPU and CUDA kernels alike.
//
// Two ways to get a distance:
//  * from a dot product and squared norms (the GEMM path): cheap, used to *select*
//    (argmax/argmin) and for the pairwise matrix;
//  * from the two vectors directly (PairAcc): exact, no cancellation, used for every
//    distance that enters a loss value or a gradient.
#pragma once
#include <cmath>
#include "common/macros.h"

namespace fastmine {

template <typename acc_t>
FM_HD acc_t clamp_norm(acc_t norm) {
  return norm > acc_t(kCosineEps) ? norm : acc_t(kCosineEps);
}

// Distance from g = <u, v>, nu2 = |u|^2, nv2 = |v|^2. Squared euclidean is clamped at 0;
// a NaN anywhere stays NaN (a plain max(x, 0) would turn it into 0 on the GPU).
template <typename acc_t>
FM_HD acc_t distance_from_dot(int64_t metric, acc_t g, acc_t nu2, acc_t nv2) {
  if (metric == kCosine) {
    return acc_t(1) - g / (clamp_norm(fm_sqrt(nu2)) * clamp_norm(fm_sqrt(nv2)));
  }
  acc_t d2 = nu2 + nv2 - acc_t(2) * g;
  d2 = d2 < acc_t(0) ? acc_t(0) : d2;  // NaN compares false: kept
  return metric == kSqEuclidean ? d2 : fm_sqrt(d2);
}

// The expanded form |u|^2 + |v|^2 - 2<u,v> loses all relative precision when u ~ v.
// Entries whose squared distance is below this fraction of |u|^2 + |v|^2 are recomputed
// exactly by the matrix kernels (rare for real data, cheap: O(D) each).
template <typename acc_t>
FM_HD bool needs_exact(acc_t d2, acc_t nu2, acc_t nv2) {
  return d2 < acc_t(1e-2) * (nu2 + nv2);
}

// Selection score with the row's constant dropped: for a fixed anchor u, ordering columns
// by  col_a[j] + col_b[j] * <u, v_j>  is ordering them by d(u, v_j).
//   euclidean / sqeuclidean:  col_a = |v|^2,  col_b = -2
//   cosine:                   col_a = 0,      col_b = -1 / max(|v|, eps)
template <typename acc_t>
FM_HD void selection_coefs(int64_t metric, acc_t nv2, acc_t* col_a, acc_t* col_b) {
  if (metric == kCosine) {
    *col_a = acc_t(0);
    *col_b = acc_t(-1) / clamp_norm(fm_sqrt(nv2));
  } else {
    *col_a = nv2;
    *col_b = acc_t(-2);
  }
}

// The selection score itself. A fused multiply-add on every backend, so that a vectorised
// and a scalar evaluation of the same score agree bit for bit.
template <typename acc_t>
FM_HD acc_t selection_score(acc_t col_a, acc_t col_b, acc_t g) {
  return fm_fma(col_b, g, col_a);
}

// Exact accumulation of one pair: feed (u_k, v_k) for every k, then finalize.
template <typename acc_t>
struct PairAcc {
  acc_t diff2 = 0, dot = 0, nu2 = 0, nv2 = 0;
  FM_HD void add(acc_t u, acc_t v) {
    acc_t t = u - v;
    diff2 += t * t;
    dot += u * v;
    nu2 += u * u;
    nv2 += v * v;
  }
  FM_HD void merge(const PairAcc& o) {
    diff2 += o.diff2;
    dot += o.dot;
    nu2 += o.nu2;
    nv2 += o.nv2;
  }
  FM_HD acc_t finalize(int64_t metric) const {
    if (metric == kCosine) return distance_from_dot(metric, dot, nu2, nv2);
    return metric == kSqEuclidean ? diff2 : fm_sqrt(diff2);
  }
};

// Gradient of d = d(u, v) as a combination of the two vectors:
//   dd/du = au * u + av * v,   dd/dv = bu * u + bv * v,   with av == bu (the cross term).
// d is the pair's distance and nu2, nv2 the squared norms (only cosine needs them).
// Euclidean at d = 0 has gradient 0 (never NaN).
//
// Each coefficient has a function of its own that returns a plain value: a CPU loop under
// `omp simd` vectorises only when no struct is returned inside it.
//
// Cosine: d = 1 - s / (cu cv), cu = max(|u|, eps): dd/du = -v/(cu cv) + s/(cu^2 cv) * dcu/du,
// dcu/du = u/|u| where |u| > eps and 0 where clamped. s = (1 - d) cu cv.
template <typename acc_t>
FM_HD acc_t euclidean_inverse(acc_t d) {
  const acc_t inv = d > acc_t(0) ? acc_t(1) / d : acc_t(0);
  return fm_isnan(d) ? d : inv;
}

// au (and, with the norms swapped, bv).
template <typename acc_t>
FM_HD acc_t distance_grad_self(int64_t metric, acc_t d, acc_t n_self2) {
  if (metric == kSqEuclidean) return acc_t(2);
  if (metric == kEuclidean) return euclidean_inverse(d);
  const acc_t n = fm_sqrt(n_self2), c = clamp_norm(n);
  return n > acc_t(kCosineEps) ? (acc_t(1) - d) / (c * c) : acc_t(0);
}

template <typename acc_t>
FM_HD acc_t distance_grad_cross(int64_t metric, acc_t d, acc_t nu2, acc_t nv2) {
  if (metric == kSqEuclidean) return acc_t(-2);
  if (metric == kEuclidean) return -euclidean_inverse(d);
  return acc_t(-1) / (clamp_norm(fm_sqrt(nu2)) * clamp_norm(fm_sqrt(nv2)));
}

template <typename acc_t>
struct DistGrad {
  acc_t au, cross, bv;  // cross = av = bu
};

template <typename acc_t>
FM_HD DistGrad<acc_t> distance_grad(int64_t metric, acc_t d, acc_t nu2, acc_t nv2) {
  return {distance_grad_self(metric, d, nu2), distance_grad_cross(metric, d, nu2, nv2),
          distance_grad_self(metric, d, nv2)};
}

}  // namespace fastmine
