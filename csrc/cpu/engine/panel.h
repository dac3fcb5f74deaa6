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

  // Dot products <x_i, r_j> of rows [r0, r0 + out.size(0)) and columns [c0, c0 + out.size(1)),
  // into out: the GEMM of distances() without its epilogue, for a loss that fuses the
  // distance into its own per-pair pass.
  void dots(int64_t r0, int64_t c0, at::Tensor& out) const {
    mm_fixed(out, x.narrow(0, r0, out.size(0)), ref.narrow(0, c0, out.size(1)).t());
  }

  // The gradient of sum_ij w_ij * d_ij over a panel (rows [r0, r0 + nr), columns
  // [c0, c0 + nc)), where w_ij = dL/dd:
  //   gx[i]  = (sum_j w au) x_i + sum_j (w cross) r_j      (rows owned: written)
  //   gr[j] += (sum_i w bv) r_j + sum_i (w cross) x_i      (accumulated)
  // with (au, cross, bv) from distance_grad, in two steps:
  //   * weigh_rows: a per-row function gives each row's w * cross (into a (nr, nc) buffer),
  //     its sum of w au and its w bv, accumulated into column partials per fixed chunk of
  //     rows (never a second (nr, nc) matrix);
  //   * apply_gradient: the chunk partials added in chunk order, and the two GEMMs.
  // Bitwise deterministic whatever the thread count.
  //
  // The GEMM form subtracts two large terms when x_i ~ r_j, so near-duplicate pairs (the
  // forward's needs_exact criterion; euclidean metrics, where cross = -au) leave the GEMM:
  // the row function lists them with their w au, and they are applied as w au (x_i - r_j)
  // from direct differences, after it, in row order.
  using NearList = std::vector<std::pair<int64_t, double>>;  // (column, w * au)

  struct Weights {
    int64_t nr, nc, n_chunks;
    std::vector<T> row_coef;     // per row: sum_j w au
    std::vector<T> col_part;     // per chunk: sum over its rows of w bv, per column
    std::vector<NearList> near;  // per row
  };

  // row_fn(r, colp, near) handles panel row r: writes its w * cross, adds its w bv into
  // colp[0, nc), lists its near-duplicates in near, and returns its sum of w au.
  template <typename RowFn>
  Weights weigh_rows(int64_t nr, int64_t nc, const RowFn& row_fn) const {
    const int64_t n_chunks = (nr + kChunkRows - 1) / kChunkRows;
    Weights w{nr,
              nc,
              n_chunks,
              std::vector<T>(nr),
              std::vector<T>(n_chunks * nc),
              std::vector<NearList>(nr)};
    at::parallel_for(0, n_chunks, 1, [&](int64_t c_begin, int64_t c_end) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        T* colp = w.col_part.data() + c * nc;
        std::fill(colp, colp + nc, T(0));
        for (int64_t r = c * kChunkRows; r < std::min(nr, (c + 1) * kChunkRows); ++r) {
          w.row_coef[r] = row_fn(r, colp, w.near[r]);
        }
      }
    });
    return w;
  }

  // Applies weigh_rows' result; wbuf (nr, nc) holds the w * cross.
  void apply_gradient(int64_t r0, int64_t c0, const at::Tensor& wbuf, Weights& wt, at::Tensor& gx,
                      at::Tensor& gr) const {
    const int64_t nr = wt.nr, nc = wt.nc;
    // Column sums of w * bv, chunk partials added in chunk order.
    at::Tensor col_sum = at::empty({nc, 1}, x.options());
    T* cs = col_sum.data_ptr<T>();
    at::parallel_for(0, nc, 1024, [&](int64_t a, int64_t e) {
      for (int64_t jj = a; jj < e; ++jj) cs[jj] = wt.col_part[jj];
      for (int64_t c = 1; c < wt.n_chunks; ++c) {
        const T* colp = wt.col_part.data() + c * nc;
#pragma omp simd
        for (int64_t jj = a; jj < e; ++jj) cs[jj] += colp[jj];
      }
    });
    const at::Tensor xs = x.narrow(0, r0, nr), rs = ref.narrow(0, c0, nc);
    at::Tensor gxs = gx.narrow(0, r0, nr), grs = gr.narrow(0, c0, nc);
    const at::Tensor rc = at::from_blob(wt.row_coef.data(), {nr, 1}, x.options());
    at::mul_out(gxs, xs, rc);
    addmm_reduce_fixed(gxs, wbuf, rs);
    grs.addcmul_(rs, col_sum);
    addmm_rows_fixed(grs, wbuf.t(), xs);
    const T* xp = x.data_ptr<T>();
    const T* rp = ref.data_ptr<T>();
    T* gxp = gx.data_ptr<T>();
    T* grp = gr.data_ptr<T>();
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t i = r0 + r;
      for (const auto& [j, c] : wt.near[r]) {
        for (int64_t k = 0; k < dim; ++k) {
          const double t = c * (double(xp[i * dim + k]) - double(rp[j * dim + k]));
          gxp[i * dim + k] += T(t);
          grp[j * dim + k] -= T(t);
        }
      }
    }
  }

  // Both steps for weights given by weight(i, j, d_ij). dist holds the panel's distances;
  // wbuf (nr, nc) receives w * cross and may be dist itself (each entry is read before it
  // is written), so a caller done with the distances needs no second buffer.
  template <typename WeightFn>
  void apply_weights(int64_t r0, int64_t c0, const at::Tensor& dist, at::Tensor& wbuf,
                     const WeightFn& weight, at::Tensor& gx, at::Tensor& gr) const {
    const int64_t nr = dist.size(0), nc = dist.size(1);
    const T* d = dist.data_ptr<T>();
    T* wp = wbuf.data_ptr<T>();
    with_metric(metric, [&](auto metric_const) {
      constexpr int64_t met = decltype(metric_const)::value;
      Weights wt = weigh_rows(nr, nc, [&](int64_t r, T* colp, NearList& near) {
        const int64_t i = r0 + r;
        const T xi2 = nx2[i];
        const T* n2 = nr2.data() + c0;
        const T* dr = d + r * nc;
        T* wr = wp + r * nc;
        T acc = 0;
        for (int64_t b0 = 0; b0 < nc; b0 += kBlock) {
          const int64_t b1 = std::min(nc, b0 + kBlock);
          int flagged = 0;
#pragma omp simd reduction(+ : flagged)
          for (int64_t jj = b0; jj < b1; ++jj) flagged += near_duplicate(met, dr[jj], xi2, n2[jj]);
          // The rare near-duplicates are collected before wr (maybe dr) is overwritten.
          for (int64_t jj = b0; flagged > 0 && jj < b1; ++jj) {
            const T w = weight(i, c0 + jj, dr[jj]);
            if (near_duplicate(met, dr[jj], xi2, n2[jj]) && w != T(0)) {
              const DistGrad<T> q = distance_grad<T>(met, dr[jj], xi2, n2[jj]);
              near.emplace_back(c0 + jj, double(w) * double(q.au));
            }
          }
          // Branch-free and struct-free (it vectorises); near-duplicates get weight 0 in the
          // GEMM.
#pragma omp simd reduction(+ : acc)
          for (int64_t jj = b0; jj < b1; ++jj) {
            const T dj = dr[jj];
            const T w = weight(i, c0 + jj, dj);
            const T wk = near_duplicate(met, dj, xi2, n2[jj]) ? T(0) : w;
            acc += wk * distance_grad_self<T>(met, dj, xi2);
            colp[jj] += wk * distance_grad_self<T>(met, dj, n2[jj]);
            wr[jj] = wk * distance_grad_cross<T>(met, dj, xi2, n2[jj]);
          }
        }
        return acc;
      });
      apply_gradient(r0, c0, wbuf, wt, gx, gr);
    });
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
