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
#include "cpu/contract_cpu.h"
#include "cpu/engine/dispatch.h"
#include "cpu/engine/exact_distance.h"
#include "cpu/engine/fixed_gemm.h"
#include "cpu/engine/panel_rows.h"

namespace fastmine::cpu {

// apply_weights' default: no per-row work besides the weights.
struct NoRowHook {
  template <typename T>
  void operator()(int64_t, int64_t, const T*) const {}
};

template <typename T>
struct Panels {
  static constexpr int64_t kBlock = 64;      // columns per SIMD block of an epilogue
  static constexpr int64_t kChunkRows = 16;  // rows per task and per column partial (apply_weights)

  at::Tensor x, ref;  // contiguous (B, D), (M, D)
  int64_t b, m, dim, metric, rows;
  std::vector<T> nx2, nr2;  // squared row norms

  Panels(const at::Tensor& x_, const at::Tensor& ref_, int64_t metric_)
      : x(dense(x_)),
        ref(dense(ref_)),
        b(x.size(0)),
        m(ref.size(0)),
        dim(x.size(1)),
        metric(metric_),
        rows(panel_rows(m, sizeof(T))),
        nx2(row_norms2(x.data_ptr<T>(), b, dim)),
        nr2(row_norms2(ref.data_ptr<T>(), m, dim)) {}

  // Distances of rows [r0, r0 + out.size(0)) to columns [c0, c0 + out.size(1)), into out.
  void distances(int64_t r0, int64_t c0, at::Tensor& out) const {
    const int64_t nr = out.size(0), nc = out.size(1);
    mm_fixed(out, x.narrow(0, r0, nr), ref.narrow(0, c0, nc).t());
    const T* xp = x.data_ptr<T>();
    const T* rp = ref.data_ptr<T>();
    const T* n2 = nr2.data() + c0;
    with_metric(metric, [&](auto metric_const) {
      constexpr int64_t met = decltype(metric_const)::value;
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
    });
  }

  // Adds the gradient of sum_ij w_ij * d_ij over the panel (rows [r0, r0 + nr), columns
  // [c0, c0 + nc)), where w_ij = weight(i, j, d_ij) = dL/dd:
  //   gx[i]  = (sum_j w au) x_i + sum_j (w cross) r_j      (rows owned: written)
  //   gr[j] += (sum_i w bv) r_j + sum_i (w cross) x_i      (accumulated)
  // with (au, cross, bv) from distance_grad. dist holds the panel's distances; wbuf (nr, nc)
  // receives w * cross and may be dist itself (each entry is read before it is written), so a
  // caller done with the distances needs no second buffer. The bv terms are only ever needed
  // as column sums, which are accumulated per fixed row chunk (never a (nr, nc) matrix) and
  // combined in chunk order: bitwise deterministic whatever the thread count.
  //
  // row_hook(r, i, dist_row) runs on each row just before its weights, while the row is hot
  // in cache: a loss that needs its own per-row sums gets them without another pass.
  //
  // The GEMM form subtracts two large terms when x_i ~ r_j, so near-duplicate pairs (the
  // forward's needs_exact criterion; euclidean metrics, where cross = -au) leave the GEMM
  // and are applied as w au (x_i - r_j) from direct differences, after it, in row order.
  template <typename WeightFn, typename RowHook = NoRowHook>
  void apply_weights(int64_t r0, int64_t c0, const at::Tensor& dist, at::Tensor& wbuf,
                     const WeightFn& weight, at::Tensor& gx, at::Tensor& gr,
                     const RowHook& row_hook = RowHook{}) const {
    const int64_t nr = dist.size(0), nc = dist.size(1);
    const int64_t n_chunks = (nr + kChunkRows - 1) / kChunkRows;
    std::vector<T> row_coef(nr);
    std::vector<T> col_part(n_chunks * nc);  // per chunk: sum over its rows of w * bv
    std::vector<std::vector<std::pair<int64_t, double>>> near(nr);  // (column, w * au)
    const T* d = dist.data_ptr<T>();
    T* wp = wbuf.data_ptr<T>();
    with_metric(metric, [&](auto metric_const) {
      constexpr int64_t met = decltype(metric_const)::value;
      at::parallel_for(0, n_chunks, 1, [&](int64_t c_begin, int64_t c_end) {
        for (int64_t c = c_begin; c < c_end; ++c) {
          T* colp = col_part.data() + c * nc;
          std::fill(colp, colp + nc, T(0));
          for (int64_t r = c * kChunkRows; r < std::min(nr, (c + 1) * kChunkRows); ++r) {
            const int64_t i = r0 + r;
            const T xi2 = nx2[i];
            const T* n2 = nr2.data() + c0;
            const T* dr = d + r * nc;
            T* wr = wp + r * nc;
            row_hook(r, i, dr);
            T acc = 0;
            for (int64_t b0 = 0; b0 < nc; b0 += kBlock) {
              const int64_t b1 = std::min(nc, b0 + kBlock);
              int flagged = 0;
#pragma omp simd reduction(+ : flagged)
              for (int64_t jj = b0; jj < b1; ++jj)
                flagged += near_duplicate(met, dr[jj], xi2, n2[jj]);
              // The rare near-duplicates are collected before wr (maybe dr) is overwritten.
              for (int64_t jj = b0; flagged > 0 && jj < b1; ++jj) {
                const T w = weight(i, c0 + jj, dr[jj]);
                if (near_duplicate(met, dr[jj], xi2, n2[jj]) && w != T(0)) {
                  const DistGrad<T> q = distance_grad<T>(met, dr[jj], xi2, n2[jj]);
                  near[r].emplace_back(c0 + jj, double(w) * double(q.au));
                }
              }
              // Branch-free (it vectorises); near-duplicates get weight 0 in the GEMM.
#pragma omp simd reduction(+ : acc)
              for (int64_t jj = b0; jj < b1; ++jj) {
                const T dj = dr[jj];
                const T w = weight(i, c0 + jj, dj);
                const DistGrad<T> q = distance_grad<T>(met, dj, xi2, n2[jj]);
                const T wk = near_duplicate(met, dj, xi2, n2[jj]) ? T(0) : w;
                acc += wk * q.au;
                colp[jj] += wk * q.bv;
                wr[jj] = wk * q.cross;
              }
            }
            row_coef[r] = acc;
          }
        }
      });
    });
    // Column sums of w * bv, chunk partials added in chunk order.
    at::Tensor col_sum = at::empty({nc, 1}, x.options());
    T* cs = col_sum.data_ptr<T>();
    at::parallel_for(0, nc, 1024, [&](int64_t a, int64_t e) {
      for (int64_t jj = a; jj < e; ++jj) cs[jj] = col_part[jj];
      for (int64_t c = 1; c < n_chunks; ++c) {
        const T* colp = col_part.data() + c * nc;
#pragma omp simd
        for (int64_t jj = a; jj < e; ++jj) cs[jj] += colp[jj];
      }
    });
    const at::Tensor& w = wbuf;
    const at::Tensor xs = x.narrow(0, r0, nr), rs = ref.narrow(0, c0, nc);
    at::Tensor gxs = gx.narrow(0, r0, nr), grs = gr.narrow(0, c0, nc);
    const at::Tensor rc = at::from_blob(row_coef.data(), {nr, 1}, x.options());
    at::mul_out(gxs, xs, rc);
    addmm_reduce_fixed(gxs, w, rs);
    grs.addcmul_(rs, col_sum);
    addmm_rows_fixed(grs, w.t(), xs);
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
