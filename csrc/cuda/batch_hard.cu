// Batch-hard triplet loss on the GPU, forward and backward. Same outputs, tie rules and NaN
// rules as csrc/cpu/batch_hard.cpp; the kernels are in batch_hard_kernels.cuh.
//
// Forward: mining fused into the X.R^T mainloop (flash-attention style: the B x M matrix is
// never written), then the selected pairs' distances recomputed exactly and the triplet term.
//
//  1. selection_coefs_kernel: per reference row j, |r_j|^2 -> (col_a[j], col_b[j]); the
//     selection score of (i, j) is col_a[j] + col_b[j] <x_i, r_j> (common/distance.h).
//  2. batch_hard_mine_kernel, grid (row tiles, column splits): each block runs dot_tile over
//     its split's column tiles; the epilogue feeds every score to per-thread ArgBest
//     (largest over positives, smallest over negatives), the 16 lanes sharing a row merge by
//     shuffles, and lane tx == 0 writes the block's (value, index) per row into partial
//     buffers of shape [n_splits, B].
//  3. batch_hard_finalize_kernel, one warp per anchor: merges the n_splits partials with
//     ArgBest, recomputes d+ and d- by direct differences (PairAcc), writes the outputs.
//
// Backward: O(B*D) from the forward's mined indices, no GEMM, no second mining pass, bitwise
// reproducible (no float atomics). Same algebra as csrc/cpu/batch_hard.cpp:
//
//   per valid anchor i:  z = d+ - d- + margin,  t = grad_loss_i * triplet_term_grad(z),
//   edges e = 2i (to the positive, c = t + grad_pos_dist_i) and 2i + 1 (to the negative,
//   c = -t + grad_neg_dist_i), q = distance_grad(metric, d, |x_i|^2, |r_j|^2):
//     gx_i = sum over its two edges of c (q.au x_i + q.cross r_j)   (the anchor owns its row)
//     gr_j = sum over edges into j  of c (q.cross x_i + q.bv r_j)
//
//  1. bh_backward_anchor_kernel (one warp per anchor): gx rows, and per edge its target key
//     (M for an invalid anchor: sorts last, never summed) and coefficients (c, q.cross, q.bv).
//  2. sort_edges (engine/edge_scatter.cuh): the edge ids stably sorted by target row, so
//     that each row's edges are contiguous and in ascending edge order, and each row's run.
//  3. bh_backward_ref_kernel (one warp per (row j, 32-column chunk)): each lane sums its
//     column over the run in order: deterministic, and a row picked by many anchors (a hub)
//     is still spread over D / 32 warps.
//
// The split partials are merged with ArgBest (exact, in any order) rather than through
// packed-key atomics, and every tile (I, J) is computed even when the batch is its own
// reference set: docs/design.md ("Batch-hard") gives the reasons.
#include <climits>

#include "common/distance.h"
#include "common/triplet.h"
#include "cuda/batch_hard_kernels.cuh"
#include "cuda/contract_cuda.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/edge_scatter.cuh"
#include "cuda/engine/sweep_plan.h"
#include "cuda/op_entry.cuh"

namespace fastmine::cuda {
namespace {

constexpr const char* kFwd = "batch_hard_triplet";
constexpr const char* kBwd = "batch_hard_triplet_backward";

// ---- forward ---------------------------------------------------------------------------------

template <typename T>
void batch_hard_forward(const Tensor& x, const Tensor& labels, const Tensor& ref,
                        const Tensor& ref_labels, double margin, int64_t metric, bool soft,
                        bool has_exclude, int64_t exclude_offset, Tensor& loss, Tensor& pos_idx,
                        Tensor& neg_idx, Tensor& pos_dist, Tensor& neg_dist, int32_t dev,
                        cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  constexpr ScalarType acc_st = scalar_type_of<acc_t>();
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1);
  const int64_t row_tiles = ceil_div(b, TileCfg::BM);
  const int64_t col_tiles = ceil_div(m, TileCfg::BN);

  // The result does not depend on the cut (see dot_tile.cuh and ArgBest), only the speed does.
  const SweepSplits sp = plan_splits_for_sms(col_tiles, row_tiles, sm_count(dev));
  const int64_t n_splits = sp.n_splits, tiles_per_split = sp.tiles_per_split;
  STD_TORCH_CHECK(n_splits <= 65535, "fastmine.", kFwd, ": too many column splits");
  const int64_t n_part = std::max<int64_t>(n_splits, 1) * b;
  Tensor part_pos_val = torch::stable::new_empty(x, {n_part}, acc_st);
  Tensor part_neg_val = torch::stable::new_empty(x, {n_part}, acc_st);
  Tensor part_pos_idx = torch::stable::new_empty(x, {n_part}, ScalarType::Long);
  Tensor part_neg_idx = torch::stable::new_empty(x, {n_part}, ScalarType::Long);

  if (n_splits > 0) {
    Tensor col_a = torch::stable::new_empty(x, {m}, acc_st);
    Tensor col_b = torch::stable::new_empty(x, {m}, acc_st);
    selection_coefs_kernel<T, acc_t>
        <<<grid_1d(ceil_div(m, kRowsPerBlock), kFwd), kRowThreads, 0, stream>>>(
            cptr<T>(ref), m, dim, metric, mptr<acc_t>(col_a), mptr<acc_t>(col_b));
    check_launch("selection_coefs_kernel");

    const dim3 grid(grid_1d(row_tiles, kFwd), static_cast<unsigned>(n_splits));
    batch_hard_mine_kernel<T, acc_t><<<grid, TileCfg::THREADS, 0, stream>>>(
        cptr<T>(x), cptr<int64_t>(labels), cptr<T>(ref), cptr<int64_t>(ref_labels),
        cptr<acc_t>(col_a), cptr<acc_t>(col_b), b, m, dim, has_exclude, exclude_offset,
        tiles_per_split, mptr<acc_t>(part_pos_val), mptr<int64_t>(part_pos_idx),
        mptr<acc_t>(part_neg_val), mptr<int64_t>(part_neg_idx));
    check_launch("batch_hard_mine_kernel");
  }

  batch_hard_finalize_kernel<T, acc_t>
      <<<grid_1d(ceil_div(b, kRowsPerBlock), kFwd), kRowThreads, 0, stream>>>(
          cptr<T>(x), cptr<T>(ref), b, dim, n_splits, cptr<acc_t>(part_pos_val),
          cptr<int64_t>(part_pos_idx), cptr<acc_t>(part_neg_val), cptr<int64_t>(part_neg_idx),
          static_cast<acc_t>(margin), metric, soft, mptr<acc_t>(loss), mptr<int64_t>(pos_idx),
          mptr<int64_t>(neg_idx), mptr<acc_t>(pos_dist), mptr<acc_t>(neg_dist));
  check_launch("batch_hard_finalize_kernel");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> batch_hard_triplet_cuda(
    Tensor x_, Tensor labels_, Tensor ref_, Tensor ref_labels_, double margin, int64_t metric,
    bool soft, bool has_exclude, int64_t exclude_offset, bool allow_tf32) {
  contract::batch_hard_triplet<CudaSide>(x_, labels_, ref_, ref_labels_, margin, metric,
                                         has_exclude, exclude_offset);
  const OpEntry entry(x_);
  const Tensor x = dense(x_), ref = dense(ref_);
  const Tensor labels = dense(labels_);
  const Tensor ref_labels = dense(ref_labels_);
  const int64_t b = x.size(0);
  const ScalarType st = x.scalar_type();
  Tensor loss = torch::stable::new_empty(x, {b}, entry.acc_st);
  Tensor pos_dist = torch::stable::new_empty(x, {b}, entry.acc_st);
  Tensor neg_dist = torch::stable::new_empty(x, {b}, entry.acc_st);
  Tensor pos_idx = torch::stable::new_empty(x, {b}, ScalarType::Long);
  Tensor neg_idx = torch::stable::new_empty(x, {b}, ScalarType::Long);
  if (b == 0) return {loss, pos_idx, neg_idx, pos_dist, neg_dist};
  dispatch_floating_tf32(st, allow_tf32, kFwd, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_hard_forward<T>(x, labels, ref, ref_labels, margin, metric, soft, has_exclude,
                          exclude_offset, loss, pos_idx, neg_idx, pos_dist, neg_dist, entry.device,
                          entry.stream);
  });
  return {loss, pos_idx, neg_idx, pos_dist, neg_dist};
}

// ---- backward --------------------------------------------------------------------------------

template <typename T>
void batch_hard_backward(const Tensor& grad_loss, const Tensor& grad_pd, const Tensor& grad_nd,
                         const Tensor& x, const Tensor& ref, const Tensor& pos_idx,
                         const Tensor& neg_idx, const Tensor& pos_dist, const Tensor& neg_dist,
                         double margin, int64_t metric, bool soft, Tensor& gx, Tensor& gr,
                         cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  constexpr ScalarType acc_st = scalar_type_of<acc_t>();
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1);
  const int64_t n_edges = 2 * b;
  STD_TORCH_CHECK(n_edges <= INT_MAX, "fastmine.", kBwd, ": too many anchors (", b, ")");

  Tensor keys_in = torch::stable::new_empty(x, {n_edges}, ScalarType::Long);
  Tensor ids_in = torch::stable::new_empty(x, {n_edges}, ScalarType::Long);
  Tensor edge_c = torch::stable::new_empty(x, {n_edges}, acc_st);
  Tensor edge_cross = torch::stable::new_empty(x, {n_edges}, acc_st);
  Tensor edge_bv = torch::stable::new_empty(x, {n_edges}, acc_st);

  bh_backward_anchor_kernel<T, acc_t>
      <<<grid_1d(ceil_div(b, kRowsPerBlock), kBwd), kRowThreads, 0, stream>>>(
          cptr<acc_t>(grad_loss), cptr<acc_t>(grad_pd), cptr<acc_t>(grad_nd), cptr<T>(x),
          cptr<T>(ref), cptr<int64_t>(pos_idx), cptr<int64_t>(neg_idx), cptr<acc_t>(pos_dist),
          cptr<acc_t>(neg_dist), b, m, dim, static_cast<acc_t>(margin), metric, soft, mptr<T>(gx),
          mptr<edge_key_t>(keys_in), mptr<int64_t>(ids_in), mptr<acc_t>(edge_c),
          mptr<acc_t>(edge_cross), mptr<acc_t>(edge_bv));
  check_launch("bh_backward_anchor_kernel");
  const EdgeRuns runs = sort_edges(x, keys_in, ids_in, n_edges, /*n_keys=*/m, kBwd, stream);

  const int64_t k_chunks = ceil_div(dim, kWarp);
  bh_backward_ref_kernel<T, acc_t><<<run_grid(m, dim, kBwd), kRowThreads, 0, stream>>>(
      cptr<T>(x), cptr<T>(ref), cptr<int64_t>(runs.start), cptr<int64_t>(runs.end),
      cptr<int64_t>(runs.ids), cptr<acc_t>(edge_c), cptr<acc_t>(edge_cross), cptr<acc_t>(edge_bv),
      m, dim, k_chunks, mptr<T>(gr));
  check_launch("bh_backward_ref_kernel");
}

std::tuple<Tensor, Tensor> batch_hard_triplet_backward_cuda(
    Tensor grad_loss_, Tensor grad_pos_dist_, Tensor grad_neg_dist_, Tensor x_, Tensor ref_,
    Tensor pos_idx_, Tensor neg_idx_, Tensor pos_dist_, Tensor neg_dist_, double margin,
    int64_t metric, bool soft) {
  contract::batch_hard_triplet_backward<CudaSide>(grad_loss_, grad_pos_dist_, grad_neg_dist_, x_,
                                                  ref_, pos_idx_, neg_idx_, pos_dist_, neg_dist_,
                                                  margin, metric);
  const int64_t b = x_.size(0), m = ref_.size(0), dim = x_.size(1);
  const ScalarType st = x_.scalar_type();

  const OpEntry entry(x_);
  const Tensor x = dense(x_), ref = dense(ref_);
  // No anchor, or no reference row (every anchor invalid), or no coordinate.
  if (b == 0 || m == 0 || dim == 0) return zero_gradients(x, ref);
  Tensor gx = torch::stable::new_empty(x, {b, dim});
  Tensor gr = torch::stable::new_empty(ref, {m, dim});
  const Tensor grad_loss = dense(grad_loss_);
  const Tensor grad_pd = dense(grad_pos_dist_);
  const Tensor grad_nd = dense(grad_neg_dist_);
  const Tensor pos_idx = dense(pos_idx_);
  const Tensor neg_idx = dense(neg_idx_);
  const Tensor pos_dist = dense(pos_dist_);
  const Tensor neg_dist = dense(neg_dist_);
  dispatch_floating(st, kBwd, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_hard_backward<T>(grad_loss, grad_pd, grad_nd, x, ref, pos_idx, neg_idx, pos_dist,
                           neg_dist, margin, metric, soft, gx, gr, entry.stream);
  });
  return {gx, gr};
}

}  // namespace
}  // namespace fastmine::cuda

STABLE_TORCH_LIBRARY_IMPL(fastmine, CUDA, m) {
  m.impl("batch_hard_triplet", TORCH_BOX(&fastmine::cuda::batch_hard_triplet_cuda));
  m.impl("batch_hard_triplet_backward",
         TORCH_BOX(&fastmine::cuda::batch_hard_triplet_backward_cuda));
}
