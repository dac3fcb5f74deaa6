// Row panels of the distance matrix, for the all-pairs losses (contrastive, batch-all) and
// the pairwise-distance gradient. A panel's distances come from one BLAS GEMM and an
// epilogue (near-duplicates recomputed exactly); its gradient is applied from a panel of
// per-pair weights dL/dd with two more GEMMs. Peak memory O(panel * M), never O(B * M).
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

  // Distances of rows [r0, r0 + out.size(0)) against every reference row, into out.
  void distances(int64_t r0, at::Tensor& out) const {
    const int64_t nr = out.size(0);
    at::mm_out(out, x.narrow(0, r0, nr), ref.t());
    T* o = out.data_ptr<T>();
    const T* xp = x.data_ptr<T>();
    const T* rp = ref.data_ptr<T>();
    at::parallel_for(0, nr, 4, [&](int64_t a, int64_t e) {
      for (int64_t r = a; r < e; ++r) {
        const int64_t i = r0 + r;
        for (int64_t j = 0; j < m; ++j) {
          T& g = o[r * m + j];
          const T d2 = nx2[i] + nr2[j] - T(2) * g;
          if (metric != kCosine && needs_exact(d2, nx2[i], nr2[j])) {
            g = T(accumulate_pair(xp + i * dim, rp + j * dim, dim).finalize(metric));
          } else {
            g = distance_from_dot(metric, g, nx2[i], nr2[j]);
          }
        }
      }
    });
  }

  // Adds the gradient of sum_ij w_ij * d_ij over the panel rows [r0, r0 + nr):
  //   gx[i] = (sum_j w_ij au_ij) x_i + sum_j w_ij cross_ij r_j     (written: rows owned)
  //   gr[j] += (sum_i w_ij bv_ij) r_j + sum_i w_ij cross_ij x_i     (accumulated in order)
  // w (nr, M) holds the weights on entry and is overwritten with w * cross. dist is the
  // panel's distances. Panels must be applied in a fixed order for bitwise determinism.
  void apply_weights(int64_t r0, at::Tensor& w, const T* dist, at::Tensor& gx, at::Tensor& gr) const {
    const int64_t nr = w.size(0);
    T* wp = w.data_ptr<T>();
    std::vector<T> row_coef(nr), col_coef(m);
    // Row coefficient, then w <- w * cross; column coefficients in a second pass over
    // columns so that each is summed in row order by one thread.
    std::vector<T> bv(nr * m);
    at::parallel_for(0, nr, 4, [&](int64_t a, int64_t e) {
      for (int64_t r = a; r < e; ++r) {
        const int64_t i = r0 + r;
        T acc = 0;
        for (int64_t j = 0; j < m; ++j) {
          const int64_t k = r * m + j;
          const DistGrad<T> g = distance_grad<T>(metric, dist[k], nx2[i], nr2[j]);
          acc += wp[k] * g.au;
          bv[k] = wp[k] * g.bv;
          wp[k] *= g.cross;
        }
        row_coef[r] = acc;
      }
    });
    at::parallel_for(0, m, 256, [&](int64_t a, int64_t e) {
      for (int64_t j = a; j < e; ++j) {
        T acc = 0;
        for (int64_t r = 0; r < nr; ++r) acc += bv[r * m + j];
        col_coef[j] = acc;
      }
    });
    const at::Tensor xs = x.narrow(0, r0, nr);
    at::Tensor gxs = gx.narrow(0, r0, nr);
    at::Tensor rc = at::from_blob(row_coef.data(), {nr, 1}, x.options());
    at::Tensor cc = at::from_blob(col_coef.data(), {m, 1}, x.options());
    gxs.copy_(xs * rc);
    gxs.addmm_(w, ref);
    gr.addcmul_(ref, cc);
    gr.addmm_(w.t(), xs);
  }
};

}  // namespace fastmine::cpu
