// Row panels of the distance matrix, for the all-pairs losses (contrastive, batch-all) and
// the pairwise-distance gradient. A panel's distances come from one BLAS GEMM and an
// epilogue (near-duplicates recomputed exactly); its gradient is applied from per-pair
// weights dL/dd with two more GEMMs. Peak memory O(panel * M), never O(B * M).
//
// A panel is rows [r0, r0 + nr) against reference columns [c0, M): c0 > 0 lets a loss over
// the unordered pairs of a batch skip the lower triangle (j < r0 <= i), halving the work.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "common/distance.h"
#include "cpu/checks.h"
#include "cpu/exact_distance.h"

namespace fastmine::cpu {

template <typename T>
struct Panels {
  at::Tensor x, ref;  // contiguous (B, D), (M, D)
  int64_t b, m, dim, metric, rows;
  std::vector<T> nx2, nr2;  // squared row norms

  Panels(const at::Tensor& x_, const at::Tensor& ref_, int64_t metric_)
      : x(x_.contiguous()), ref(ref_.contiguous()), b(x.size(0)), m(ref.size(0)),
        dim(x.size(1)), metric(metric_), rows(panel_rows(m, sizeof(T))),
        nx2(row_norms2(x.data_ptr<T>(), b, dim)), nr2(row_norms2(ref.data_ptr<T>(), m, dim)) {}

  // Distances of rows [r0, r0 + out.size(0)) to columns [c0, c0 + out.size(1)), into out.
  void distances(int64_t r0, int64_t c0, at::Tensor& out) const {
    const int64_t nr = out.size(0), nc = out.size(1);
    at::mm_out(out, x.narrow(0, r0, nr), ref.narrow(0, c0, nc).t());
    const T* xp = x.data_ptr<T>();
    const T* rp = ref.data_ptr<T>();
    const T* n2 = nr2.data() + c0;
    const int64_t met = metric;
    at::parallel_for(0, nr, 4, [&](int64_t a, int64_t e) {
      for (int64_t r = a; r < e; ++r) {
        const int64_t i = r0 + r;
        const T xi2 = nx2[i];
        T* o = out.data_ptr<T>() + r * nc;
        int flagged = 0;
        // Branch-free so that it vectorises; the rare near-duplicates are fixed after.
#pragma omp simd reduction(+ : flagged)
        for (int64_t jj = 0; jj < nc; ++jj) {
          const T g = o[jj];
          flagged += needs_exact(xi2 + n2[jj] - T(2) * g, xi2, n2[jj]);
          o[jj] = distance_from_dot(met, g, xi2, n2[jj]);
        }
        if (flagged == 0 || met == kCosine) continue;
        for (int64_t jj = 0; jj < nc; ++jj) {
          const T d2 = met == kEuclidean ? o[jj] * o[jj] : o[jj];
          if (needs_exact(d2, xi2, n2[jj])) {
            o[jj] = T(accumulate_pair(xp + i * dim, rp + (c0 + jj) * dim, dim).finalize(met));
          }
        }
      }
    });
  }

  // Adds the gradient of sum_ij w_ij * d_ij over the panel (rows [r0, r0 + nr), columns
  // [c0, c0 + nc)), where w_ij = weight(i, j, d_ij) = dL/dd:
  //   gx[i]  = (sum_j w au) x_i + sum_j (w cross) r_j      (rows owned: written)
  //   gr[j] += (sum_i w bv) r_j + sum_i (w cross) x_i      (accumulated)
  // with (au, cross, bv) from distance_grad. dist holds the panel's distances; wbuf and bvbuf
  // are (nr, nc) scratch. Apply panels in a fixed order for bitwise determinism.
  //
  // That GEMM form subtracts two large terms when x_i ~ r_j, so near-duplicate pairs (the
  // forward's needs_exact criterion; euclidean metrics, where cross = -au) leave the GEMM
  // and are applied as w au (x_i - r_j) from direct differences, after it, in row order.
  template <typename WeightFn>
  void apply_weights(int64_t r0, int64_t c0, const at::Tensor& dist, at::Tensor& wbuf,
                     at::Tensor& bvbuf, const WeightFn& weight, at::Tensor& gx,
                     at::Tensor& gr) const {
    const int64_t nr = dist.size(0), nc = dist.size(1);
    std::vector<T> row_coef(nr);
    std::vector<std::vector<std::pair<int64_t, double>>> near(nr);  // (column, w * au)
    const T* d = dist.data_ptr<T>();
    T* wp = wbuf.data_ptr<T>();
    T* bp = bvbuf.data_ptr<T>();
    at::parallel_for(0, nr, 4, [&](int64_t a, int64_t e) {
      for (int64_t r = a; r < e; ++r) {
        const int64_t i = r0 + r;
        T acc = 0;
        for (int64_t jj = 0; jj < nc; ++jj) {
          const int64_t k = r * nc + jj, j = c0 + jj;
          const T w = weight(i, j, d[k]);
          const DistGrad<T> q = distance_grad<T>(metric, d[k], nx2[i], nr2[j]);
          const T d2 = metric == kEuclidean ? d[k] * d[k] : d[k];
          if (metric != kCosine && w != T(0) && needs_exact(d2, nx2[i], nr2[j])) {
            near[r].emplace_back(j, double(w) * double(q.au));
            bp[k] = wp[k] = T(0);
            continue;
          }
          acc += w * q.au;
          bp[k] = w * q.bv;
          wp[k] = w * q.cross;
        }
        row_coef[r] = acc;
      }
    });
    const at::Tensor xs = x.narrow(0, r0, nr), rs = ref.narrow(0, c0, nc);
    at::Tensor gxs = gx.narrow(0, r0, nr), grs = gr.narrow(0, c0, nc);
    const at::Tensor rc = at::from_blob(row_coef.data(), {nr, 1}, x.options());
    gxs.copy_(xs * rc);
    gxs.addmm_(wbuf, rs);
    grs.addcmul_(rs, bvbuf.sum(0).unsqueeze(1));
    grs.addmm_(wbuf.t(), xs);
    const T* xp = x.data_ptr<T>();
    const T* rp = ref.data_ptr<T>();
    T* gxp = gx.data_ptr<T>();
    T* grp = gr.data_ptr<T>();
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t i = r0 + r;
      for (const auto& [j, c] : near[r]) {
        for (int64_t k = 0; k < dim; ++k) {
          const double t = c * (double(xp[i * dim + k]) - double(rp[j * dim + k]));
          gxp[i * dim + k] += T(t);
          grp[j * dim + k] -= T(t);
        }
      }
    }
  }

  // Scratch for one panel.
  at::Tensor panel_buffer() const { return at::empty({rows, m}, x.options()); }
};

// A (nr, nc) view at the front of a panel buffer (contiguous, row stride nc).
inline at::Tensor panel_view(const at::Tensor& buf, int64_t nr, int64_t nc) {
  return buf.view({-1}).narrow(0, 0, nr * nc).view({nr, nc});
}

}  // namespace fastmine::cpu
