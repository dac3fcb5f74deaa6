// The backward of the all-pairs losses (contrastive, batch-all) on the GPU: the gradient of
// sum_ij w_ij d_ij, w_ij = dL/dd_ij given by a weight policy, with the algebra of
// csrc/cpu/engine/panel.h (q = distance_grad(d_ij, |x_i|^2, |r_j|^2)):
//   gx_i = (sum_j w q.au) x_i + sum_j (w q.cross) r_j
//   gr_j = (sum_i w q.bv) r_j + sum_i (w q.cross) x_i
//
// Row panels: for rows [r0, r0 + nr) against columns [c0, M), pair_weight_kernel
// (all_pairs_kernels.cuh) recomputes the distance tiles and writes the panel's weight matrix
// W = w q.cross (acc_t) and per-tile coefficient partials; two GEMMs (cuBLAS through torch's
// matmul, as pairwise.cu) then give  W R  (the panel's gx rows, complete: each row lives in
// one panel) and  W^T X_panel  (added to an acc_t gr accumulator, panel after panel).
//
// Each distance tile is computed once per panel and the two products run on cuBLAS, rather
// than in fused row-owner and column-owner loops (docs/design.md, "The all-pairs backward").
// Memory stays bounded: W is one panel, rows x M <= 2^25 entries (sweep_plan.h), never B x M.
// Everything is deterministic: the panel plan depends on the sizes only, partials are summed
// in tile order, panels are accumulated in order, and cuBLAS GEMMs are run-to-run
// reproducible.
#pragma once

#include <type_traits>

#include "cuda/engine/all_pairs_kernels.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/launchers.cuh"
#include "cuda/engine/sweep_plan.h"

namespace fastmine::cuda {
namespace {

template <typename T>
class AllPairsGrad {
 public:
  using acc_t = acc_of_t<T>;
  static constexpr ScalarType acc_st = scalar_type_of<acc_t>();

  // x: (B, D) rows of the panels (contiguous; may be a permuted copy of the anchors, see
  // apply_panel's row_map), ref: (M, D) contiguous; nx2, nr2: their squared norms (acc_t).
  AllPairsGrad(const Tensor& x, const Tensor& ref, const Tensor& nx2, const Tensor& nr2,
               int64_t metric, cudaStream_t stream)
      : x_(x),
        ref_(ref),
        nx2_(nx2),
        nr2_(nr2),
        x_acc_(kStoredAsAcc<T, acc_t> ? x : torch::stable::to(x, acc_st)),
        r_acc_(kStoredAsAcc<T, acc_t> ? ref : torch::stable::to(ref, acc_st)),
        col_coef_(torch::stable::new_zeros(x, {ref.size(0)}, acc_st)),
        gr_acc_(torch::stable::new_zeros(x, {ref.size(0), ref.size(1)}, acc_st)),
        m_(ref.size(0)),
        dim_(x.size(1)),
        metric_(metric),
        stream_(stream) {}

  // Applies the weights of rows [r0, r0 + nr) x columns [c0, M): writes the gradient rows
  // gx[row_map[r]] for r in [r0, r0 + nr) (row_map nullptr: gx[r]), and accumulates the
  // panel's share of gr. Call once per row, panels in a fixed order.
  template <typename Policy>
  void apply_panel(int64_t r0, int64_t nr, int64_t c0, const Policy& pol, Tensor& gx,
                   const int64_t* row_map) {
    if (nr <= 0) return;
    const int64_t nc = m_ - c0;
    const int64_t row_tiles = ceil_div(nr, TileCfg::BM);
    const int64_t col_tiles = ceil_div(nc, TileCfg::BN);
    STD_TORCH_CHECK(row_tiles <= 65535, "fastmine: backward panel of ", nr, " rows is too tall");
    Tensor w = torch::stable::new_empty(x_, {nr, nc}, acc_st);
    Tensor row_coef = torch::stable::new_zeros(x_, {nr}, acc_st);
    if (nc > 0) {
      Tensor row_part = torch::stable::new_empty(x_, {col_tiles * nr}, acc_st);
      Tensor col_part = torch::stable::new_empty(x_, {row_tiles * nc}, acc_st);
      const dim3 grid(grid_1d(col_tiles, "all-pairs backward"), static_cast<unsigned>(row_tiles));
      pair_weight_kernel<T, acc_t, Policy><<<grid, TileCfg::THREADS, 0, stream_>>>(
          cptr<T>(x_), cptr<T>(ref_), cptr<acc_t>(nx2_), cptr<acc_t>(nr2_), dim_, metric_, r0, nr,
          c0, nc, pol, mptr<acc_t>(w), mptr<acc_t>(row_part), mptr<acc_t>(col_part));
      check_launch("pair_weight_kernel");
      launch_sum_chunks<acc_t>(cptr<acc_t>(row_part), col_tiles, nr, mptr<acc_t>(row_coef),
                               /*accumulate=*/false, stream_);
      launch_sum_chunks<acc_t>(cptr<acc_t>(col_part), row_tiles, nc, mptr<acc_t>(col_coef_) + c0,
                               /*accumulate=*/true, stream_);
    }
    Tensor xs = torch::stable::narrow(x_acc_, 0, r0, nr);
    Tensor rs = torch::stable::narrow(r_acc_, 0, c0, nc);
    // gx rows: a * x + W R.
    const Tensor wr = matmul_in(w, rs, acc_st);
    check_product(wr, nr);
    T* out = mptr<T>(gx) + (row_map == nullptr ? r0 * dim_ : 0);
    launch_combine<T, acc_t>(cptr<acc_t>(row_coef), cptr<T>(x_) + r0 * dim_, cptr<acc_t>(wr), nr,
                             dim_, out, stream_, row_map == nullptr ? nullptr : row_map + r0);
    // gr rows [c0, M): += W^T X_panel.
    if (nc > 0) {
      const Tensor wtx = matmul_in(torch::stable::transpose(w, 0, 1), xs, acc_st);
      check_product(wtx, nc);
      launch_add_into<acc_t>(mptr<acc_t>(gr_acc_) + c0 * dim_, cptr<acc_t>(wtx), nc * dim_,
                             stream_);
    }
  }

  // gr = c * r + (sum over panels of W^T X): after the last panel.
  void finish(Tensor& gr) {
    launch_combine<T, acc_t>(cptr<acc_t>(col_coef_), cptr<T>(ref_), cptr<acc_t>(gr_acc_), m_, dim_,
                             mptr<T>(gr), stream_);
  }

 private:
  void check_product(const Tensor& p, int64_t rows) const {
    STD_TORCH_CHECK(
        p.scalar_type() == acc_st && p.dim() == 2 && p.size(0) == rows && p.size(1) == dim_,
        "fastmine: unexpected matmul result in the all-pairs backward");
  }

  Tensor x_, ref_, nx2_, nr2_, x_acc_, r_acc_, col_coef_, gr_acc_;
  int64_t m_, dim_, metric_;
  cudaStream_t stream_;
};

}  // namespace
}  // namespace fastmine::cuda
