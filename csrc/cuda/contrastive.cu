// Contrastive loss on the GPU (Hadsell, Chopra & LeCun 2006), forward and backward. Same
// outputs and rules as csrc/cpu/contrastive.cpp; the terms are common/pair_losses.h's.
//
// Forward, flash-attention style (the B x M matrix is never written):
//  1. squared row norms (one warp per row);
//  2. contrastive_forward_kernel, grid (row tiles, column splits): dot_tile over the split's
//     column tiles (with `triangle`, tiles entirely at or below the diagonal are skipped);
//     the epilogue turns each dot product into a distance (tile_distance: exact where the
//     expanded form cancels), then the per-row sums and counts of the terms, reduced over the
//     16 lanes of a row and written as [n_splits, B] partials;
//  3. contrastive_finalize_kernel: the partials summed in split order; NaN sums for an
//     anchor whose row is not finite.
// The split plan depends on M only (sweep_plan.h): bitwise-identical results on every run
// and every GPU. Sums of non-negative terms in the accumulation type (float for
// float32/float16/bfloat16): at most ~M/32 sequential additions per thread, then fixed trees.
//
// Backward: all_pairs.cuh (row panels, weights w = grad * d(term)/dd recomputed per tile,
// two cuBLAS GEMMs per panel), with `triangle` panels starting at their diagonal.
#include "common/distance.h"
#include "common/pair_losses.h"
#include "cuda/contract_cuda.cuh"
#include "cuda/contrastive_kernels.cuh"
#include "cuda/engine/all_pairs.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/launchers.cuh"
#include "cuda/engine/sweep_plan.h"
#include "cuda/op_entry.cuh"

namespace fastmine::cuda {
namespace {

constexpr const char* kFwd = "contrastive";
constexpr const char* kBwd = "contrastive_backward";

template <typename acc_t>
ContrastiveParams<acc_t> make_params(double pos_margin, double neg_margin, double power,
                                     bool triangle, bool has_exclude, int64_t exclude_offset) {
  return ContrastiveParams<acc_t>{static_cast<acc_t>(pos_margin),
                                  static_cast<acc_t>(neg_margin),
                                  static_cast<acc_t>(power),
                                  triangle,
                                  has_exclude,
                                  exclude_offset};
}

// ---- forward ---------------------------------------------------------------------------------

template <typename T>
void contrastive_forward(const Tensor& x, const Tensor& labels, const Tensor& ref,
                         const Tensor& ref_labels, int64_t metric,
                         const ContrastiveParams<acc_of_t<T>>& p, Tensor* out,
                         cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  constexpr ScalarType acc_st = scalar_type_of<acc_t>();
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1);
  const int64_t row_tiles = ceil_div(b, TileCfg::BM);
  const SweepSplits sp = plan_splits(ceil_div(m, TileCfg::BN));

  Tensor nx2 = torch::stable::new_empty(x, {b}, acc_st);
  Tensor nr2 = torch::stable::new_empty(x, {m}, acc_st);
  launch_row_sqnorm<T, acc_t>(cptr<T>(x), b, dim, mptr<acc_t>(nx2), stream);
  launch_row_sqnorm<T, acc_t>(cptr<T>(ref), m, dim, mptr<acc_t>(nr2), stream);

  const int64_t plane = std::max<int64_t>(sp.n_splits, 1) * b;
  Tensor part_sum = torch::stable::new_empty(x, {kSums * plane}, acc_st);
  Tensor part_cnt = torch::stable::new_empty(x, {kCounts * plane}, ScalarType::Long);
  if (sp.n_splits > 0) {
    const dim3 grid(grid_1d(row_tiles, kFwd), static_cast<unsigned>(sp.n_splits));
    contrastive_forward_kernel<T, acc_t><<<grid, TileCfg::THREADS, 0, stream>>>(
        cptr<T>(x), cptr<int64_t>(labels), cptr<T>(ref), cptr<int64_t>(ref_labels),
        cptr<acc_t>(nx2), cptr<acc_t>(nr2), b, m, dim, metric, p, sp.tiles_per_split, sp.n_splits,
        mptr<acc_t>(part_sum), mptr<int64_t>(part_cnt));
    check_launch("contrastive_forward_kernel");
  }
  contrastive_finalize_kernel<acc_t>
      <<<grid_1d(ceil_div(b, kRowThreads), kFwd), kRowThreads, 0, stream>>>(
          b, sp.n_splits, cptr<acc_t>(nx2), cptr<acc_t>(part_sum), cptr<int64_t>(part_cnt),
          mptr<acc_t>(out[0]), mptr<int64_t>(out[1]), mptr<int64_t>(out[2]), mptr<acc_t>(out[3]),
          mptr<int64_t>(out[4]), mptr<int64_t>(out[5]));
  check_launch("contrastive_finalize_kernel");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> contrastive_cuda(
    Tensor x_, Tensor labels_, Tensor ref_, Tensor ref_labels_, double pos_margin,
    double neg_margin, double power, int64_t metric, bool triangle, bool has_exclude,
    int64_t exclude_offset, bool allow_tf32) {
  contract::contrastive<CudaSide>(kFwd, x_, labels_, ref_, ref_labels_, pos_margin, neg_margin,
                                  power, metric, triangle, has_exclude, exclude_offset);
  const OpEntry entry(x_);
  const Tensor x = dense(x_), ref = dense(ref_);
  const Tensor labels = dense(labels_);
  const Tensor ref_labels = dense(ref_labels_);
  const int64_t b = x.size(0);
  const ScalarType st = x.scalar_type();
  Tensor out[6] = {torch::stable::new_empty(x, {b}, entry.acc_st),
                   torch::stable::new_empty(x, {b}, ScalarType::Long),
                   torch::stable::new_empty(x, {b}, ScalarType::Long),
                   torch::stable::new_empty(x, {b}, entry.acc_st),
                   torch::stable::new_empty(x, {b}, ScalarType::Long),
                   torch::stable::new_empty(x, {b}, ScalarType::Long)};
  if (b > 0) {
    dispatch_floating_tf32(st, allow_tf32, kFwd, [&](auto tag) {
      using T = typename decltype(tag)::type;
      contrastive_forward<T>(x, labels, ref, ref_labels, metric,
                             make_params<acc_of_t<T>>(pos_margin, neg_margin, power, triangle,
                                                      has_exclude, exclude_offset),
                             out, entry.stream);
    });
  }
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

// ---- backward --------------------------------------------------------------------------------

template <typename T>
void contrastive_backward(const Tensor& grad_pos, const Tensor& grad_neg, const Tensor& x,
                          const Tensor& labels, const Tensor& ref, const Tensor& ref_labels,
                          int64_t metric, const ContrastiveParams<acc_of_t<T>>& p, Tensor& gx,
                          Tensor& gr, cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  constexpr ScalarType acc_st = scalar_type_of<acc_t>();
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1);
  Tensor nx2 = torch::stable::new_empty(x, {b}, acc_st);
  Tensor nr2 = torch::stable::new_empty(x, {m}, acc_st);
  launch_row_sqnorm<T, acc_t>(cptr<T>(x), b, dim, mptr<acc_t>(nx2), stream);
  launch_row_sqnorm<T, acc_t>(cptr<T>(ref), m, dim, mptr<acc_t>(nr2), stream);

  const ContrastiveWeights<acc_t> pol{cptr<int64_t>(labels), cptr<int64_t>(ref_labels),
                                      cptr<acc_t>(grad_pos), cptr<acc_t>(grad_neg), p};
  AllPairsGrad<T> grad(x, ref, nx2, nr2, metric, stream);
  const int64_t rows = plan_panel_rows(m);
  for (int64_t r0 = 0; r0 < b; r0 += rows) {
    // Unordered pairs j > i >= r0: the panel's columns start at its first row (a multiple
    // of the tile size, so the tile grid stays aligned with the diagonal).
    const int64_t c0 = p.triangle ? std::min(r0, m) : 0;
    grad.apply_panel(r0, std::min(rows, b - r0), c0, pol, gx, /*row_map=*/nullptr);
  }
  grad.finish(gr);
}

std::tuple<Tensor, Tensor> contrastive_backward_cuda(
    Tensor grad_pos_, Tensor grad_neg_, Tensor x_, Tensor labels_, Tensor ref_, Tensor ref_labels_,
    double pos_margin, double neg_margin, double power, int64_t metric, bool triangle,
    bool has_exclude, int64_t exclude_offset, bool allow_tf32) {
  contract::contrastive_backward<CudaSide>(grad_pos_, grad_neg_, x_, labels_, ref_, ref_labels_,
                                           pos_margin, neg_margin, power, metric, triangle,
                                           has_exclude, exclude_offset);
  const int64_t b = x_.size(0), m = ref_.size(0), dim = x_.size(1);
  const ScalarType st = x_.scalar_type();
  const OpEntry entry(x_);
  const Tensor x = dense(x_), ref = dense(ref_);
  if (b == 0 || m == 0 || dim == 0) return zero_gradients(x, ref);  // no pair
  const Tensor labels = dense(labels_);
  const Tensor ref_labels = dense(ref_labels_);
  const Tensor grad_pos = dense(grad_pos_);
  const Tensor grad_neg = dense(grad_neg_);
  Tensor gx = torch::stable::new_empty(x, {b, dim});
  Tensor gr = torch::stable::new_empty(ref, {m, dim});
  dispatch_floating_tf32(st, allow_tf32, kBwd, [&](auto tag) {
    using T = typename decltype(tag)::type;
    contrastive_backward<T>(grad_pos, grad_neg, x, labels, ref, ref_labels, metric,
                            make_params<acc_of_t<T>>(pos_margin, neg_margin, power, triangle,
                                                     has_exclude, exclude_offset),
                            gx, gr, entry.stream);
  });
  return {gx, gr};
}

}  // namespace
}  // namespace fastmine::cuda

STABLE_TORCH_LIBRARY_IMPL(fastmine, CUDA, m) {
  m.impl("contrastive", TORCH_BOX(&fastmine::cuda::contrastive_cuda));
  m.impl("contrastive_backward", TORCH_BOX(&fastmine::cuda::contrastive_backward_cuda));
}
