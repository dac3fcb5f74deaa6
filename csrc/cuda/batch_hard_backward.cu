// Batch-hard triplet loss, backward, on the GPU: O(B*D) from the forward's mined indices,
// no GEMM, no second mining pass, bitwise reproducible (no float atomics). Same algebra as
// csrc/cpu/batch_hard.cpp:
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
#include <climits>

#include "common/distance.h"
#include "common/triplet.h"
#include "cuda/batch_hard_backward_kernels.cuh"
#include "cuda/contract_cuda.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/edge_scatter.cuh"

namespace fastmine::cuda {
namespace {

constexpr const char* kOp = "batch_hard_triplet_backward";

// ---- host
// -----------------------------------------------------------------------------------------

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
  STD_TORCH_CHECK(n_edges <= INT_MAX, "fastmine.", kOp, ": too many anchors (", b, ")");

  Tensor keys_in = torch::stable::new_empty(x, {n_edges}, ScalarType::Long);
  Tensor ids_in = torch::stable::new_empty(x, {n_edges}, ScalarType::Long);
  Tensor edge_c = torch::stable::new_empty(x, {n_edges}, acc_st);
  Tensor edge_cross = torch::stable::new_empty(x, {n_edges}, acc_st);
  Tensor edge_bv = torch::stable::new_empty(x, {n_edges}, acc_st);

  bh_backward_anchor_kernel<T, acc_t>
      <<<grid_1d(ceil_div(b, kRowsPerBlock), kOp), kRowThreads, 0, stream>>>(
          cptr<acc_t>(grad_loss), cptr<acc_t>(grad_pd), cptr<acc_t>(grad_nd), cptr<T>(x),
          cptr<T>(ref), cptr<int64_t>(pos_idx), cptr<int64_t>(neg_idx), cptr<acc_t>(pos_dist),
          cptr<acc_t>(neg_dist), b, m, dim, static_cast<acc_t>(margin), metric, soft, mptr<T>(gx),
          mptr<edge_key_t>(keys_in), mptr<int64_t>(ids_in), mptr<acc_t>(edge_c),
          mptr<acc_t>(edge_cross), mptr<acc_t>(edge_bv));
  check_launch("bh_backward_anchor_kernel");
  const EdgeRuns runs = sort_edges(x, keys_in, ids_in, n_edges, /*n_keys=*/m, kOp, stream);

  const int64_t k_chunks = ceil_div(dim, kWarp);
  bh_backward_ref_kernel<T, acc_t>
      <<<grid_1d(ceil_div(m * k_chunks, kRowsPerBlock), kOp), kRowThreads, 0, stream>>>(
          cptr<T>(x), cptr<T>(ref), cptr<int64_t>(runs.start), cptr<int64_t>(runs.end),
          cptr<int64_t>(runs.ids), cptr<acc_t>(edge_c), cptr<acc_t>(edge_cross),
          cptr<acc_t>(edge_bv), m, dim, k_chunks, mptr<T>(gr));
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

  const int32_t dev = x_.get_device_index();
  torch::stable::accelerator::DeviceGuard guard(dev);
  FM_CUDA_CHECK(cudaSetDevice(dev), "cudaSetDevice");
  const Tensor x = dense(x_), ref = dense(ref_);
  if (b == 0 || m == 0 || dim == 0) {
    // No anchor, no reference row (every anchor invalid) or no coordinate: zero gradients.
    return {torch::stable::new_zeros(x, {b, dim}), torch::stable::new_zeros(ref, {m, dim})};
  }
  Tensor gx = torch::stable::new_empty(x, {b, dim});
  Tensor gr = torch::stable::new_empty(ref, {m, dim});
  const Tensor grad_loss = dense(grad_loss_);
  const Tensor grad_pd = dense(grad_pos_dist_);
  const Tensor grad_nd = dense(grad_neg_dist_);
  const Tensor pos_idx = dense(pos_idx_);
  const Tensor neg_idx = dense(neg_idx_);
  const Tensor pos_dist = dense(pos_dist_);
  const Tensor neg_dist = dense(neg_dist_);
  const cudaStream_t stream = current_stream(dev);
  dispatch_floating(st, kOp, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_hard_backward<T>(grad_loss, grad_pd, grad_nd, x, ref, pos_idx, neg_idx, pos_dist,
                           neg_dist, margin, metric, soft, gx, gr, stream);
  });
  return {gx, gr};
}

}  // namespace
}  // namespace fastmine::cuda

STABLE_TORCH_LIBRARY_IMPL(fastmine, CUDA, m) {
  m.impl("batch_hard_triplet_backward",
         TORCH_BOX(&fastmine::cuda::batch_hard_triplet_backward_cuda));
}
