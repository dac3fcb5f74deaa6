// The centroid triplet bound on the CPU (formula: csrc/common/centroid.h).
//
// The B x C distances and both gradients go through BLAS GEMMs in the input dtype, O(B C D);
// what the expanded (GEMM) form gets wrong through cancellation is redone from direct
// differences in double: O(B D) for the own classes plus the rare near pairs.
//
// Forward, per block of samples:
//   G = (X_blk - mu) (C - mu)^T (GEMM), d^2 = |x_i - mu|^2 + |c_m - mu|^2 - 2 G_im
//   (distance_from_dot; norms and d^2 in double), d = sqrt(d^2). The GEMM's rounding is
//   relative to the squared norms, so
//    * mu, the centroids' mean, is subtracted first (distances do not change): data far from
//      the origin compared with their spread (a common offset) keep their precision;
//    * entries with needs_exact(d^2, norms) (x_i ~ c_m: the expanded form has lost the
//      digits), with d^2 so small that underflow in the float products matters, or with a
//      d^2 not finite in T (overflow; NaN/inf inputs) are recomputed by direct differences;
//    * so is every sample's own-class distance, always: training drives x_i onto c_{y_i},
//      its coefficient is the largest, and it costs O(D) per sample.
//   Then each row's loss (centroid_row_loss). The distances are returned for the backward.
//
// Backward, with w_im = centroid_grad_weight(g_i, coef_im, d_im), W = (w_im):
//   grad x_i = sum_m w_im (x_i - c_m)  = rowsum(W)_i (x_i - mu) - (W (C - mu))_i
//   grad c_m = -sum_i w_im (x_i - c_m) = colsum(W)_m (c_m - mu) - (W^T (X - mu))_m
// The expanded form subtracts two terms |x - mu| / d times larger than the result, and
// w = g / d is largest exactly where d is small. So the own class of every sample and every
// pair the forward's criteria would recompute (read off the saved d) leave the GEMMs (weight
// 0 in W) and are applied after them as w_im (x_i - c_m) from direct differences, with w_im
// from the distance recomputed in double, in a fixed order (grad x: own class, then m
// ascending; grad c: own-class samples, then the others, i ascending). Row and column sums
// of W are taken in double; the final combination per entry too, rounded once to T.
//
// Determinism: every sum has a fixed order and no atomics. A multi-threaded BLAS call may
// split a product differently for different thread counts (MKL does, e.g. for small odd
// M), so the GEMMs are cut into blocks whose size depends on the shape alone, at least two
// of them (at::parallel_for then runs them inside a parallel region, where MKL is
// single-threaded; with one torch thread MKL has one thread too): results are bitwise the
// same run to run and for any thread count. B = 1 (one block) takes the exact path only.

// The row loops below are SIMD only if GCC may evaluate both sides of a select: under its
// default -ftrapping-math it keeps a conditional division (centroid_grad_weight's d = 0
// case) or float conversion scalar. Floating-point exception flags are never read here, and
// libtorch itself is built with -fno-trapping-math; results are unchanged (no reassociation,
// no fast-math). Set before every include so that all inline functions agree on it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

#include "cpu/engine/vec_math.h"  // first: selects ATen's SIMD implementation (see there)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common/centroid.h"
#include "common/distance.h"
#include "cpu/contract_cpu.h"
#include "cpu/engine/exact_distance.h"

namespace fastmine::cpu {
namespace {

constexpr int64_t kMaxBlock = 64;  // rows (samples or centroids) per GEMM block

// Block size for n rows: a function of n only (never of the thread count), and at most half
// of n so that n >= 2 gives at least two blocks (see the top of the file).
int64_t block_rows(int64_t n) { return std::clamp<int64_t>((n + 1) / 2, 1, kMaxBlock); }

int64_t num_blocks(int64_t n, int64_t rows) { return (n + rows - 1) / rows; }

// task_guard: the GEMMs run on at::parallel_for's worker threads, whose thread-local
// dispatch state is the default one: each task excludes autograd itself (the inputs may
// require grad; this kernel runs below autograd), or at::mm_out would refuse them.

// The sum of u[0..n), in double (lane_sum: vectorises, fixed order).
template <typename T>
double sum_in_double(const T* u, int64_t n) {
  return lane_sum(n, [&](int64_t k) { return double(u[k]); });
}

template <typename T>
std::vector<double> norms2(const T* p, int64_t n, int64_t d) {
  std::vector<double> out(n);
  at::parallel_for(0, n, 64, [&](int64_t a, int64_t e) {
    for (int64_t i = a; i < e; ++i) out[i] = squared_norm(p + i * d, d);
  });
  return out;
}

// Below this d^2 the GEMM's absolute error (products under T's smallest normal, flushed or
// denormal: up to D * min) is not negligible against d^2, and the weight 1/d of the
// backward may overflow T: such pairs are exact ones as well.
template <typename T>
T underflow_d2(int64_t d) {
  return T(2) * T(d) * std::numeric_limits<T>::min() / std::numeric_limits<T>::epsilon();
}

// One row of the forward epilogue: the GEMM's dot products g[0..nc) become d^2 =
// |x|^2 + |c_m|^2 - 2 g (distance_from_dot in double), or -1 where d^2 is to be recomputed
// (needs_exact, under `tiny` or not finite in T). Returns how many were marked.
template <typename T>
int squared_from_dot(T* __restrict row, const double* __restrict nc2, double xi2, double tiny,
                     double t_max, int64_t nc) {
  for (int64_t m = 0; m < nc; ++m) {
    const double d2 = distance_from_dot<double>(kSqEuclidean, double(row[m]), xi2, nc2[m]);
    // | not ||: branch-free, SIMD
    const bool redo = needs_exact(d2, xi2, nc2[m]) | (d2 < tiny) | !(d2 <= t_max);
    row[m] = redo ? T(-1) : T(d2);
  }
  int marked = 0;
  for (int64_t m = 0; m < nc; ++m) marked += row[m] < T(0);
  return marked;
}

// A pair of the backward applied by direct differences besides the own class: d small
// against the norms (needs_exact, as in the forward) or in absolute terms (tiny).
template <typename T>
bool exact_pair(T dist, T nu2, T nv2, T tiny) {
  const T d2 = dist * dist;
  return needs_exact(d2, nu2, nv2) | (d2 < tiny);
}

// One row of the backward's W: w_im = centroid_grad_weight(g_i, coef_im, d_im), but 0 for
// the own class and for the exact pairs (all pairs if all_exact), which are applied by
// direct differences. Returns how many exact pairs there are besides the own class.
template <typename T>
int weight_row(T* __restrict w_row, const T* __restrict dist_row, const T* __restrict nc2, T xi2,
               T tiny, T upstream, T k, int64_t label, bool all_exact, int64_t nc) {
  if (all_exact) {
    std::fill(w_row, w_row + nc, T(0));
    return int(nc - 1);
  }
  for (int64_t m = 0; m < nc; ++m) {
    const bool own = m == label;
    const T dm = dist_row[m];
    const T w = centroid_grad_weight(upstream, centroid_coef(own, k), dm);
    w_row[m] = (own | exact_pair(dm, xi2, nc2[m], tiny)) ? T(0) : w;
  }
  int others = 0;
  for (int64_t m = 0; m < nc; ++m) others += exact_pair(dist_row[m], xi2, nc2[m], tiny);
  return others - int(exact_pair(dist_row[label], xi2, nc2[label], tiny));
}

// The GEMM operands, shifted by the centroids' mean mu: distances and the gradient's
// (x_i - c_m) do not change, but |x - mu|^2 + |c - mu|^2 is what the expanded form's
// rounding scales with (see the top). mu is rounded to T; a component that is not finite
// (inf/NaN input) is taken as 0, so a non-finite centroid spoils only its own entries.
template <typename T>
struct Shifted {
  int64_t d = 0;
  std::vector<T> mu;       // (D,)
  at::Tensor c;            // (C, D): c_m - mu
  std::vector<double> n2;  // |c_m - mu|^2

  Shifted() = default;
  explicit Shifted(const at::Tensor& cent) : d(cent.size(1)), mu(d) {
    const int64_t nc = cent.size(0);
    const T* cp = cent.data_ptr<T>();
    std::vector<double> sum(d, 0.0);
    for (int64_t m = 0; m < nc; ++m) {
      for (int64_t j = 0; j < d; ++j) sum[j] += double(cp[m * d + j]);
    }
    for (int64_t j = 0; j < d; ++j) {
      const T v = T(sum[j] / double(nc));
      mu[j] = std::isfinite(v) ? v : T(0);
    }
    c = at::empty_like(cent);
    shift_rows(cp, nc, c.data_ptr<T>());
    n2 = norms2(c.data_ptr<T>(), nc, d);
  }

  // dst (n, D) = src (n, D) - mu
  void shift_rows(const T* src, int64_t n, T* dst) const {
    const T* u = mu.data();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < d; ++j) dst[i * d + j] = src[i * d + j] - u[j];
    }
  }
};

template <typename T>
T exact_distance(const T* u, const T* v, int64_t d) {
  return static_cast<T>(std::sqrt(squared_distance(u, v, d)));
}

template <typename T>
void forward_impl(const at::Tensor& x, const int64_t* lp, const at::Tensor& c, at::Tensor& loss,
                  at::Tensor& dist) {
  const int64_t b = x.size(0), d = x.size(1), nc = c.size(0);
  const T* xp = x.data_ptr<T>();
  const T* cp = c.data_ptr<T>();
  T* dp = dist.data_ptr<T>();
  T* out = loss.data_ptr<T>();
  const T k = centroid_other_weight<T>(nc);
  const bool gemm = b >= 2;  // one block would be a multi-threaded BLAS call: exact instead
  const Shifted<T> s = gemm ? Shifted<T>(c) : Shifted<T>();
  const at::Tensor cst = gemm ? s.c.t() : at::Tensor();
  // A distance from the GEMM is kept only where it is accurate and fits T.
  const double t_max = double(std::numeric_limits<T>::max());
  const double tiny = double(underflow_d2<T>(d));
  const int64_t rows = block_rows(b);
  at::parallel_for(0, num_blocks(b, rows), 1, [&](int64_t blk0, int64_t blk1) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see task_guard above
    const at::Tensor xs = gemm ? at::empty({rows, d}, x.options()) : at::Tensor();
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t r0 = blk * rows, nr = std::min(rows, b - r0);
      if (gemm) {
        s.shift_rows(xp + r0 * d, nr, xs.data_ptr<T>());
        at::Tensor g = dist.narrow(0, r0, nr);
        at::mm_out(g, xs.narrow(0, 0, nr), cst);
      }
      for (int64_t i = r0; i < r0 + nr; ++i) {
        const T* xi = xp + i * d;
        T* row = dp + i * nc;
        if (gemm) {
          // d^2 from the dot products, then d: an entry to recompute gets d^2 = -1, so d = NaN
          // (every other entry is finite and >= 0). ATen's SIMD sqrt is correctly rounded, as
          // std::sqrt, which does not vectorise (errno).
          const double xi2 = squared_norm(xs.data_ptr<T>() + (i - r0) * d, d);
          const int marked = squared_from_dot(row, s.n2.data(), xi2, tiny, t_max, nc);
          at::vec::map([](at::vec::Vectorized<T> v) { return v.sqrt(); }, row, row, nc);
          for (int64_t m = 0; marked > 0 && m < nc; ++m) {
            if (std::isnan(row[m])) row[m] = exact_distance(xi, cp + m * d, d);
          }
        } else {
          for (int64_t m = 0; m < nc; ++m) row[m] = exact_distance(xi, cp + m * d, d);
        }
        row[lp[i]] = exact_distance(xi, cp + lp[i] * d, d);
        out[i] = centroid_row_loss(row, lp[i], nc, k);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> centroid_triplet_cpu(const at::Tensor& x_,
                                                        const at::Tensor& labels_,
                                                        const at::Tensor& c_) {
  contract::centroid_triplet<CpuSide>(x_, labels_, c_);
  const at::Tensor x = dense(x_), labels = dense(labels_), c = dense(c_);
  const int64_t b = x.size(0), nc = c.size(0);
  const int64_t* lp = labels.data_ptr<int64_t>();
  at::Tensor loss = at::empty({b}, x.options());
  at::Tensor dist = at::empty({b, nc}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "centroid_triplet_cpu",
                             [&] { forward_impl<scalar_t>(x, lp, c, loss, dist); });
  return {loss, dist};
}

template <typename T>
void backward_impl(const at::Tensor& grad, const at::Tensor& x, const int64_t* lp,
                   const at::Tensor& c, const at::Tensor& dist, bool need_centroid_grad,
                   at::Tensor& gx, at::Tensor& gc) {
  const int64_t b = x.size(0), d = x.size(1), nc = c.size(0);
  const T* xp = x.data_ptr<T>();
  const T* cp = c.data_ptr<T>();
  const T* dp = dist.data_ptr<T>();
  const T* gp = grad.data_ptr<T>();
  const T k = centroid_other_weight<T>(nc);
  const bool gemm = b >= 2;  // else every pair is applied by direct differences
  const Shifted<T> s = gemm ? Shifted<T>(c) : Shifted<T>();
  std::vector<T> nc2(s.n2.begin(), s.n2.end());  // needs_exact's norms, as in the forward
  const T tiny = underflow_d2<T>(d);
  // The weight of a pair applied by direct differences, in double from the distance
  // recomputed in double (not the saved one, rounded to T): w (x_i - c_m) is then as
  // accurate as the oracle's term, and symmetric terms cancel as they do there.
  const double k64 = centroid_other_weight<double>(nc);
  const auto exact_weight = [&](int64_t i, int64_t m) {
    const double dim = std::sqrt(squared_distance(xp + i * d, cp + m * d, d));
    return centroid_grad_weight(double(gp[i]), centroid_coef(m == lp[i], k64), dim);
  };
  const bool whole = need_centroid_grad && gemm;  // W and X - mu kept whole for W^T (X - mu)
  // W without the exact pairs; the exact pairs' weights: the own class per sample, the
  // others listed.
  at::Tensor w_mat = at::empty({whole ? b : 0, nc}, x.options());
  at::Tensor xs_mat = at::empty({whole ? b : 0, d}, x.options());
  std::vector<double> row_sum(b), own_w(b);
  std::vector<std::vector<std::pair<int64_t, double>>> near(b);  // per sample: (m, w), m ascending
  const int64_t rows = block_rows(b), n_blocks = num_blocks(b, rows);
  // For grad c: the column sums of W per block of samples (rows in order), taken while the
  // rows are in cache; the blocks are added in order afterwards.
  std::vector<double> col_part(whole ? n_blocks * nc : 0);
  T* gxp = gx.data_ptr<T>();
  at::parallel_for(0, n_blocks, 1, [&](int64_t blk0, int64_t blk1) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see task_guard above
    std::vector<double> acc(d);
    const at::Tensor w_local = whole ? w_mat : at::empty({rows, nc}, x.options());
    const at::Tensor xs_local = whole ? xs_mat : at::empty({gemm ? rows : 0, d}, x.options());
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t r0 = blk * rows, nr = std::min(rows, b - r0);
      const at::Tensor w_blk = w_local.narrow(0, whole ? r0 : 0, nr);
      T* wp = w_blk.data_ptr<T>();
      T* xsp = gemm ? xs_local.data_ptr<T>() + (whole ? r0 : 0) * d : nullptr;
      if (gemm) s.shift_rows(xp + r0 * d, nr, xsp);
      double* part = whole ? col_part.data() + blk * nc : nullptr;
      if (part != nullptr) std::fill(part, part + nc, 0.0);
      for (int64_t i = r0; i < r0 + nr; ++i) {
        const int64_t yi = lp[i];
        const T xi2 = gemm ? T(squared_norm(xsp + (i - r0) * d, d)) : T(0);
        const T* dr = dp + i * nc;
        T* wr = wp + (i - r0) * nc;
        const int others = weight_row(wr, dr, nc2.data(), xi2, tiny, gp[i], k, yi, !gemm, nc);
        row_sum[i] = sum_in_double(wr, nc);
        if (part != nullptr) {
          for (int64_t m = 0; m < nc; ++m) part[m] += double(wr[m]);
        }
        own_w[i] = exact_weight(i, yi);
        for (int64_t m = 0; others > 0 && m < nc; ++m) {
          if (m != yi && (!gemm || exact_pair(dr[m], xi2, nc2[m], tiny))) {
            near[i].emplace_back(m, exact_weight(i, m));
          }
        }
      }
      if (gemm) {
        at::Tensor q = gx.narrow(0, r0, nr);
        at::mm_out(q, w_blk, s.c);  // W (C - mu)
      }
      // grad x_i = rowsum_i (x_i - mu) - (W (C - mu))_i + the exact pairs: the own class,
      // then the listed ones, m ascending.
      for (int64_t i = r0; i < r0 + nr; ++i) {
        const T* xi = xp + i * d;
        const T* cy = cp + lp[i] * d;
        T* o = gxp + i * d;
        const double rs = row_sum[i], wo = own_w[i];
        for (int64_t j = 0; j < d; ++j) {
          const double gemm_part = gemm ? rs * double(xsp[(i - r0) * d + j]) - double(o[j]) : 0.0;
          acc[j] = gemm_part + wo * (double(xi[j]) - double(cy[j]));
        }
        for (const auto& [m, w] : near[i]) {
          const T* cm = cp + m * d;
          for (int64_t j = 0; j < d; ++j) acc[j] += w * (double(xi[j]) - double(cm[j]));
        }
        for (int64_t j = 0; j < d; ++j) o[j] = T(acc[j]);
      }
    }
  });
  if (!need_centroid_grad) return;
  // Per centroid, its exact pairs in sample order: own-class samples (CSR by label), then
  // the listed near pairs.
  std::vector<int64_t> own_start(nc + 1, 0), own_list(b);
  for (int64_t i = 0; i < b; ++i) ++own_start[lp[i] + 1];
  for (int64_t m = 0; m < nc; ++m) own_start[m + 1] += own_start[m];
  {
    std::vector<int64_t> fill(own_start.begin(), own_start.end() - 1);
    for (int64_t i = 0; i < b; ++i) own_list[fill[lp[i]]++] = i;
  }
  std::vector<std::vector<std::pair<int64_t, double>>> near_c(nc);  // per centroid: (i, w)
  for (int64_t i = 0; i < b; ++i) {
    for (const auto& [m, w] : near[i]) near_c[m].emplace_back(i, w);
  }
  T* gcp = gc.data_ptr<T>();
  const T* csp = gemm ? s.c.template data_ptr<T>() : nullptr;
  const int64_t crows = block_rows(nc);
  at::parallel_for(0, num_blocks(nc, crows), 1, [&](int64_t blk0, int64_t blk1) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see task_guard above
    std::vector<double> acc(d), col_sum(crows);
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t m0 = blk * crows, nm = std::min(crows, nc - m0);
      std::fill(col_sum.begin(), col_sum.end(), 0.0);
      double* cs = col_sum.data();
      for (int64_t blk_i = 0; gemm && blk_i < n_blocks; ++blk_i) {  // sample blocks in order
        const double* part = col_part.data() + blk_i * nc + m0;
        for (int64_t mm = 0; mm < nm; ++mm) cs[mm] += part[mm];
      }
      if (gemm) {
        at::Tensor p = gc.narrow(0, m0, nm);
        at::mm_out(p, w_mat.narrow(1, m0, nm).t(), xs_mat);  // W^T (X - mu)
      }
      // grad c_m = colsum_m (c_m - mu) - (W^T (X - mu))_m - the exact pairs (own class, then
      // the listed ones, samples ascending).
      for (int64_t m = m0; m < m0 + nm; ++m) {
        const T* cm = cp + m * d;
        T* o = gcp + m * d;
        const double csm = cs[m - m0];
        for (int64_t j = 0; j < d; ++j) {
          acc[j] = gemm ? csm * double(csp[m * d + j]) - double(o[j]) : 0.0;
        }
        for (int64_t t = own_start[m]; t < own_start[m + 1]; ++t) {
          const int64_t i = own_list[t];
          const double w = own_w[i];
          const T* xi = xp + i * d;
          for (int64_t j = 0; j < d; ++j) acc[j] -= w * (double(xi[j]) - double(cm[j]));
        }
        for (const auto& [i, w] : near_c[m]) {
          const T* xi = xp + i * d;
          for (int64_t j = 0; j < d; ++j) acc[j] -= w * (double(xi[j]) - double(cm[j]));
        }
        for (int64_t j = 0; j < d; ++j) o[j] = T(acc[j]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> centroid_triplet_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& labels_, const at::Tensor& c_,
    const at::Tensor& dist_, bool need_centroid_grad) {
  contract::centroid_triplet_backward<CpuSide>(grad_, x_, labels_, c_, dist_);
  const at::Tensor x = dense(x_), labels = dense(labels_), c = dense(c_);
  const at::Tensor grad = dense(grad_), dist = dense(dist_);
  const int64_t b = x.size(0), d = x.size(1), nc = c.size(0);
  const int64_t* lp = labels.data_ptr<int64_t>();
  at::Tensor gx = at::empty({b, d}, x.options());
  at::Tensor gc =
      need_centroid_grad ? at::empty({nc, d}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "centroid_triplet_backward_cpu", [&] {
    backward_impl<scalar_t>(grad, x, lp, c, dist, need_centroid_grad, gx, gc);
  });
  return {gx, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("centroid_triplet", &centroid_triplet_cpu);
  m.impl("centroid_triplet_backward", &centroid_triplet_backward_cpu);
}

}  // namespace fastmine::cpu
