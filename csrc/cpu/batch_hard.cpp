// Batch-hard triplet loss on the CPU: row panels of X.R^T from BLAS, each reduced at once
// to (hardest positive, hardest negative) and dropped; the B x M matrix never exists.
// Backward uses the forward's mined indices only: O(B*D), deterministic.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/distance.h"
#include "common/triplet.h"
#include "cpu/batch_hard_symmetric.h"
#include "cpu/contract_cpu.h"
#include "cpu/engine/exact_distance.h"
#include "cpu/engine/hardest.h"
#include "cpu/engine/panel_rows.h"
#include "cpu/engine/row_groups.h"

namespace fastmine::cpu {
namespace {

constexpr int64_t kChunk = 256;  // columns per SIMD chunk of a row scan

// Selection score of column j (common/distance.h).
template <typename T>
inline T score(const T* ca, const T* cb, const T* g, int64_t j) {
  return selection_score(ca[j], cb[j], g[j]);
}

// Scalar scan with full NaN/tie semantics (ArgBest). Used for rows holding a non-finite
// score, where the SIMD max/min would be free to drop a NaN.
template <typename T>
void scan_row_exact(const T* g, const T* ca, const T* cb, const int64_t* rl, int64_t m, int64_t li,
                    int64_t excl, int64_t* pos, int64_t* neg) {
  ArgBest<T> bp, bn;
  for (int64_t j = 0; j < m; ++j) {
    T s = score(ca, cb, g, j);
    if (rl[j] == li) {
      if (j != excl) bp.offer(s, j, /*is_max=*/true);
    } else {
      bn.offer(s, j, /*is_max=*/false);
    }
  }
  *pos = bp.index;
  *neg = bn.index;
}

// Near-ties (engine/hardest.h): every candidate within `tol` of the best score is re-decided
// on its exact distance. A row where more than kMaxExactTies candidates are that close
// (collapsed embeddings) takes the lowest index among them.

// The anchor row and the reference set, for exact distances.
template <typename T>
struct RowGeometry {
  const T* x_row;
  const T* ref;
  int64_t dim, metric;
};

template <typename T>
int64_t resolve_near_ties(const T* g, const T* ca, const T* cb, const int64_t* rl, int64_t m,
                          int64_t li, int64_t excl, bool positive, T best, T tol,
                          const std::vector<T>& chunk_best, const RowGeometry<T>& geo) {
  const T* xr = geo.x_row;
  const T* rp = geo.ref;
  int64_t lowest = -1, count = 0;
  ArgBest<double> exact;
  for (int64_t c = 0; c < int64_t(chunk_best.size()); ++c) {
    const T cb_best = chunk_best[c];
    if (positive ? !(cb_best >= best - tol) : !(cb_best <= best + tol)) continue;
    const int64_t c1 = std::min(m, (c + 1) * kChunk);
    for (int64_t j = c * kChunk; j < c1; ++j) {
      const bool cand = positive ? (rl[j] == li && j != excl) : (rl[j] != li);
      if (!cand) continue;
      const T s = score(ca, cb, g, j);
      if (positive ? !(s >= best - tol) : !(s <= best + tol)) continue;
      if (lowest < 0) lowest = j;
      if (++count <= kMaxExactTies) {
        exact.offer(exact_distance(xr, rp + j * geo.dim, geo.dim, geo.metric), j, positive);
      }
    }
  }
  return count <= kMaxExactTies ? exact.index : lowest;
}

// Hardest positive (largest score) and hardest negative (smallest). Pass 1 finds the best
// value of each 256-column chunk with SIMD reductions; pass 2 revisits only the chunks
// within `tol` of the overall best (resolve_near_ties).
template <typename T>
void scan_row(const T* g, const T* ca, const T* cb, const int64_t* rl, int64_t m, int64_t li,
              int64_t excl, T tol, const RowGeometry<T>& geo, std::vector<T>& chunk_p,
              std::vector<T>& chunk_n, int64_t* pos, int64_t* neg) {
  const T inf = std::numeric_limits<T>::infinity();
  T best_p = -inf, best_n = inf;
  chunk_p.clear();
  chunk_n.clear();
  for (int64_t c0 = 0; c0 < m; c0 += kChunk) {
    const int64_t c1 = std::min(m, c0 + kChunk);
    T cp = -inf, cn = inf;
    int nonfinite = 0;
#pragma omp simd reduction(max : cp) reduction(min : cn) reduction(| : nonfinite)
    for (int64_t j = c0; j < c1; ++j) {
      const T s = score(ca, cb, g, j);
      const bool same = rl[j] == li;
      const T vp = (same && j != excl) ? s : -inf;
      const T vn = same ? inf : s;
      cp = vp > cp ? vp : cp;
      cn = vn < cn ? vn : cn;
      nonfinite |= !(s - s == T(0));  // NaN or +-inf
    }
    if (nonfinite) return scan_row_exact(g, ca, cb, rl, m, li, excl, pos, neg);
    chunk_p.push_back(cp);
    chunk_n.push_back(cn);
    best_p = cp > best_p ? cp : best_p;
    best_n = cn < best_n ? cn : best_n;
  }
  // A chunk best of -inf / +inf means no candidate there; none anywhere: no positive/negative.
  *pos = best_p == -inf
             ? -1
             : resolve_near_ties(g, ca, cb, rl, m, li, excl, true, best_p, tol, chunk_p, geo);
  *neg = best_n == inf
             ? -1
             : resolve_near_ties(g, ca, cb, rl, m, li, excl, false, best_n, tol, chunk_n, geo);
}

// Mining against any reference set: row panels of the full X.R^T, each row scanned at once.
template <typename T>
void mine_full_panels(const at::Tensor& x, const int64_t* lab, const at::Tensor& ref,
                      const int64_t* rlab, const std::vector<T>& nr2, int64_t metric,
                      bool has_exclude, int64_t exclude_offset, int64_t* pi, int64_t* ni) {
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* rp = ref.data_ptr<T>();
  std::vector<T> col_a(m), col_b(m);
  for (int64_t j = 0; j < m; ++j) selection_coefs<T>(metric, nr2[j], &col_a[j], &col_b[j]);
  const T max_nr2 = m > 0 ? *std::max_element(nr2.begin(), nr2.end()) : T(0);

  const int64_t rows = panel_rows(m, sizeof(T));
  at::Tensor panel = at::empty({rows, m}, x.options());
  const at::Tensor ref_t = ref.t();
  for (int64_t r0 = 0; r0 < b; r0 += rows) {
    const int64_t nr = std::min(rows, b - r0);
    at::Tensor gp = panel.narrow(0, 0, nr);
    at::mm_out(gp, x.narrow(0, r0, nr), ref_t);  // BLAS: the heavy part
    const T* g = gp.data_ptr<T>();
    at::parallel_for(0, nr, 4, [&](int64_t i0, int64_t i1) {
      std::vector<T> chunk_p, chunk_n;
      for (int64_t r = i0; r < i1; ++r) {
        const int64_t i = r0 + r;
        const int64_t excl = has_exclude ? i + exclude_offset : -1;
        const T* xi = xp + i * dim;
        const T tol = score_tolerance<T>(metric, T(squared_norm(xi, dim)), max_nr2, dim);
        const RowGeometry<T> geo{xi, rp, dim, metric};
        scan_row(g + r * m, col_a.data(), col_b.data(), rlab, m, lab[i], excl, tol, geo, chunk_p,
                 chunk_n, pi + i, ni + i);
      }
    });
  }
}

template <typename T>
void batch_hard_forward_impl(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
                             const at::Tensor& ref_labels, double margin, int64_t metric, bool soft,
                             bool has_exclude, int64_t exclude_offset, at::Tensor& loss,
                             at::Tensor& pos_idx, at::Tensor& neg_idx, at::Tensor& pos_dist,
                             at::Tensor& neg_dist) {
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* rp = ref.data_ptr<T>();
  const int64_t* lab = labels.data_ptr<int64_t>();
  const int64_t* rlab = ref_labels.data_ptr<int64_t>();
  int64_t* pi = pos_idx.data_ptr<int64_t>();
  int64_t* ni = neg_idx.data_ptr<int64_t>();

  const std::vector<T> nr2 = row_norms2(rp, m, dim);
  if (symmetric_mining_applies<T>(x, ref, labels, ref_labels, has_exclude, exclude_offset, nr2)) {
    SymmetricMiner<T>(x, lab, metric, has_exclude, nr2).run(pi, ni);
  } else {
    mine_full_panels<T>(x, lab, ref, rlab, nr2, metric, has_exclude, exclude_offset, pi, ni);
  }

  // The selected pairs' distances, exactly (direct differences), and the triplet term.
  T* lp = loss.data_ptr<T>();
  T* pd = pos_dist.data_ptr<T>();
  T* nd = neg_dist.data_ptr<T>();
  at::parallel_for(0, b, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* xi = xp + i * dim;
      if (pi[i] < 0 || ni[i] < 0) {
        pi[i] = ni[i] = -1;
        pd[i] = nd[i] = T(0);
        // An invalid anchor adds 0, but a non-finite embedding must not yield a finite loss.
        lp[i] = std::isfinite(squared_norm(xi, dim)) ? T(0) : std::numeric_limits<T>::quiet_NaN();
        continue;
      }
      const double dp = exact_distance(xi, rp + pi[i] * dim, dim, metric);
      const double dn = exact_distance(xi, rp + ni[i] * dim, dim, metric);
      pd[i] = T(dp);
      nd[i] = T(dn);
      lp[i] = T(triplet_term(dp - dn + margin, soft));
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_hard_triplet_cpu(
    const at::Tensor& x_, const at::Tensor& labels_, const at::Tensor& ref_,
    const at::Tensor& ref_labels_, double margin, int64_t metric, bool soft, bool has_exclude,
    int64_t exclude_offset, bool /*allow_tf32: CUDA tiles only*/) {
  contract::batch_hard_triplet<CpuSide>(x_, labels_, ref_, ref_labels_, margin, metric, has_exclude,
                                        exclude_offset);
  // The batch as its own reference set stays one tensor (symmetric_mining_applies).
  const at::Tensor x = dense(x_), ref = ref_.is_same(x_) ? x : dense(ref_);
  const at::Tensor labels = dense(labels_);
  const at::Tensor ref_labels = ref_labels_.is_same(labels_) ? labels : dense(ref_labels_);
  const int64_t b = x.size(0);
  at::Tensor loss = at::empty({b}, x.options());
  at::Tensor pos_dist = at::empty({b}, x.options());
  at::Tensor neg_dist = at::empty({b}, x.options());
  at::Tensor pos_idx = at::empty({b}, labels.options());
  at::Tensor neg_idx = at::empty({b}, labels.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_hard_triplet_cpu", [&] {
    batch_hard_forward_impl<scalar_t>(x, labels, ref, ref_labels, margin, metric, soft, has_exclude,
                                      exclude_offset, loss, pos_idx, neg_idx, pos_dist, neg_dist);
  });
  return {loss, pos_idx, neg_idx, pos_dist, neg_dist};
}

template <typename T>
void batch_hard_backward_impl(const at::Tensor& grad_loss, const at::Tensor& grad_pd,
                              const at::Tensor& grad_nd, const at::Tensor& x, const at::Tensor& ref,
                              const at::Tensor& pos_idx, const at::Tensor& neg_idx,
                              const at::Tensor& pos_dist, const at::Tensor& neg_dist, double margin,
                              int64_t metric, bool soft, at::Tensor& gx, at::Tensor& gr) {
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* rp = ref.data_ptr<T>();
  const T* gl = grad_loss.data_ptr<T>();
  const T* gpd = grad_pd.data_ptr<T>();
  const T* gnd = grad_nd.data_ptr<T>();
  const int64_t* pi = pos_idx.data_ptr<int64_t>();
  const int64_t* ni = neg_idx.data_ptr<int64_t>();
  const T* pd = pos_dist.data_ptr<T>();
  const T* nd = neg_dist.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  T* grp = gr.data_ptr<T>();

  // Edge e = 2*i + role (role 0: anchor->positive, 1: anchor->negative). Per edge: its
  // target row, dL/dd and the distance-gradient coefficients (csrc/common/distance.h).
  std::vector<int64_t> target(2 * b);
  std::vector<double> coef(2 * b);
  std::vector<DistGrad<double>> dg(2 * b);
  at::parallel_for(0, b, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      // An anchor counts when both of its rows are mined (the forward gives -1 to both of an
      // invalid anchor; the CUDA kernel applies the same rule).
      if (pi[i] < 0 || ni[i] < 0) {
        target[2 * i] = target[2 * i + 1] = -1;
        coef[2 * i] = coef[2 * i + 1] = 0;
        continue;
      }
      target[2 * i] = pi[i];
      target[2 * i + 1] = ni[i];
      const double z = double(pd[i]) - double(nd[i]) + margin;
      const double t = double(gl[i]) * triplet_term_grad(z, soft);
      coef[2 * i] = t + double(gpd[i]);
      coef[2 * i + 1] = -t + double(gnd[i]);
      const T* xi = xp + i * dim;
      const double nx2 = metric == kCosine ? squared_norm(xi, dim) : 0.0;
      for (int role = 0; role < 2; ++role) {
        const int64_t j = target[2 * i + role];
        const double nr2 = metric == kCosine ? squared_norm(rp + j * dim, dim) : 0.0;
        const double d = role == 0 ? double(pd[i]) : double(nd[i]);
        dg[2 * i + role] = distance_grad(metric, d, nx2, nr2);
      }
      // Anchor side: each anchor owns its row of grad_x.
      T* out = gxp + i * dim;
      for (int role = 0; role < 2; ++role) {
        const double c = coef[2 * i + role];
        const DistGrad<double>& q = dg[2 * i + role];
        const T* rj = rp + target[2 * i + role] * dim;
        for (int64_t k = 0; k < dim; ++k) {
          out[k] += T(c * (q.au * double(xi[k]) + q.cross * double(rj[k])));
        }
      }
    }
  });

  // Reference side: a row may be chosen by many anchors. The edges grouped by target
  // (row_groups.h: each row sums its edges in ascending edge order): deterministic.
  const RowGroups groups(m, 2 * b, [&](int64_t e) { return target[e]; });
  const std::vector<int64_t>& start = groups.start;
  const std::vector<int64_t>& order = groups.order;
  at::parallel_for(0, m, 64, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(dim);
    for (int64_t j = j0; j < j1; ++j) {
      if (start[j] == start[j + 1]) continue;
      std::fill(acc.begin(), acc.end(), 0.0);
      const T* rj = rp + j * dim;
      for (int64_t s = start[j]; s < start[j + 1]; ++s) {
        const int64_t e = order[s];
        const double c = coef[e];
        const DistGrad<double>& q = dg[e];
        const T* xi = xp + (e / 2) * dim;
        for (int64_t k = 0; k < dim; ++k)
          acc[k] += c * (q.cross * double(xi[k]) + q.bv * double(rj[k]));
      }
      T* out = grp + j * dim;
      for (int64_t k = 0; k < dim; ++k) out[k] = T(acc[k]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> batch_hard_triplet_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& grad_pos_dist, const at::Tensor& grad_neg_dist,
    const at::Tensor& x_, const at::Tensor& ref_, const at::Tensor& pos_idx,
    const at::Tensor& neg_idx, const at::Tensor& pos_dist, const at::Tensor& neg_dist,
    double margin, int64_t metric, bool soft) {
  contract::batch_hard_triplet_backward<CpuSide>(grad_loss, grad_pos_dist, grad_neg_dist, x_, ref_,
                                                 pos_idx, neg_idx, pos_dist, neg_dist, margin,
                                                 metric);
  const at::Tensor x = dense(x_), ref = dense(ref_);
  at::Tensor gx = at::zeros_like(x);
  at::Tensor gr = at::zeros_like(ref);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_hard_triplet_backward_cpu", [&] {
    batch_hard_backward_impl<scalar_t>(dense(grad_loss), dense(grad_pos_dist), dense(grad_neg_dist),
                                       x, ref, dense(pos_idx), dense(neg_idx), dense(pos_dist),
                                       dense(neg_dist), margin, metric, soft, gx, gr);
  });
  return {gx, gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("batch_hard_triplet", &batch_hard_triplet_cpu);
  m.impl("batch_hard_triplet_backward", &batch_hard_triplet_backward_cpu);
}

}  // namespace fastmine::cpu
