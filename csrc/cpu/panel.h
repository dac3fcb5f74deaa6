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
  static constexpr int64_t kBlock = 64;  // columns per SIMD block of an epilogue

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
        // Branch-free blocks so that they vectorise; the rare near-duplicates (e.g. the
        // anchor against itself) are fixed after, revisiting only the blocks that hold one.
        for (int64_t b0 = 0; b0 < nc; b0 += kBlock) {
          const int64_t b1 = std::min(nc, b0 + kBlock);
          int flagged = 0;
#pragma omp simd reduction(+ : flagged)
          for (int64_t jj = b0; jj < b1; ++jj) {
            const T g = o[jj];
            flagged += needs_exact(xi2 + n2[jj] - T(2) * g, xi2, n2[jj]);
            o[jj] = distance_from_dot(met, g, xi2, n2[jj]);
          }
          if (flagged == 0 || met == kCosine) continue;
          for (int64_t jj = b0; jj < b1; ++jj) {
            if (near_duplicate(met, o[jj], xi2, n2[jj])) {
              o[jj] = T(accumulate_pair(xp + i * dim, rp + (c0 + jj) * dim, dim).finalize(met));
            }
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
    const int64_t met = metric;
    at::parallel_for(0, nr, 4, [&](int64_t a, int64_t e) {
      for (int64_t r = a; r < e; ++r) {
        const int64_t i = r0 + r;
        const T xi2 = nx2[i];
        const T* n2 = nr2.data() + c0;
        const T* dr = d + r * nc;
        T* wr = wp + r * nc;
        T* br = bp + r * nc;
        T acc = 0;
        int64_t first_flagged = nc;
        // Branch-free blocks (they vectorise); near-duplicates get weight 0 here and are
        // collected below from the blocks that hold one.
        for (int64_t b0 = 0; b0 < nc; b0 += kBlock) {
          const int64_t b1 = std::min(nc, b0 + kBlock);
          int flagged = 0;
#pragma omp simd reduction(+ : acc, flagged)
          for (int64_t jj = b0; jj < b1; ++jj) {
            const T w = weight(i, c0 + jj, dr[jj]);
            const DistGrad<T> q = distance_grad<T>(met, dr[jj], xi2, n2[jj]);
            const bool is_near = near_duplicate(met, dr[jj], xi2, n2[jj]) && w != T(0);
            flagged += is_near;
            const T wk = is_near ? T(0) : w;
            acc += wk * q.au;
            br[jj] = wk * q.bv;
            wr[jj] = wk * q.cross;
          }
          if (flagged > 0 && first_flagged == nc) first_flagged = b0;
        }
        row_coef[r] = acc;
        for (int64_t jj = first_flagged; jj < nc; ++jj) {
          const T w = weight(i, c0 + jj, dr[jj]);
          if (near_duplicate(met, dr[jj], xi2, n2[jj]) && w != T(0)) {
            const DistGrad<T> q = distance_grad<T>(met, dr[jj], xi2, n2[jj]);
            near[r].emplace_back(c0 + jj, double(w) * double(q.au));
          }
        }
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

  // A pair whose gradient would cancel in the GEMM form (see apply_weights). Cosine has no
  // (x_i - r_j) form and keeps the GEMM.
  static bool near_duplicate(int64_t met, T dist, T nu2, T nv2) {
    const T d2 = met == kEuclidean ? dist * dist : dist;
    return met != kCosine && needs_exact(d2, nu2, nv2);
  }

  // Scratch for one panel.
  at::Tensor panel_buffer() const { return at::empty({rows, m}, x.options()); }
};

// A (nr, nc) view at the front of a panel buffer (contiguous, row stride nc).
inline at::Tensor panel_view(const at::Tensor& buf, int64_t nr, int64_t nc) {
  return buf.view({-1}).narrow(0, 0, nr * nc).view({nr, nc});
}

}  // namespace fastmine::cpu
