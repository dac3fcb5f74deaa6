// The centroid triplet bound on the GPU (stable ABI). Kernels: cuda/centroid_kernels.cuh.
// Forward: distances (B, C) in acc_t, then the per-sample loss; the distances are returned
// for the backward. Backward: grad x directly; grad centroids as fixed chunks of samples
// whose partials are added in chunk order (launch_sum_chunks), then cast to the input dtype.
#include <algorithm>

#include "cuda/centroid_kernels.cuh"
#include "cuda/contract_cuda.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/launchers.cuh"
#include "cuda/op_entry.cuh"

namespace fastmine::cuda {
namespace {

constexpr const char* kOp = "centroid_triplet_loss";

// Samples per chunk of the centroid gradient: at least 64 per thread's loop, at most 64
// chunks; a function of B only.
inline int64_t rows_per_chunk(int64_t b) { return std::max<int64_t>(64, ceil_div(b, 64)); }

std::tuple<Tensor, Tensor> centroid_triplet_cuda(Tensor x_, Tensor labels_, Tensor c_) {
  contract::centroid_triplet<CudaSide>(x_, labels_, c_);
  const OpEntry entry(x_);
  const Tensor x = dense(x_), c = dense(c_);
  const Tensor labels = dense(labels_);
  const int64_t b = x.size(0), nc = c.size(0), dim = x.size(1);
  Tensor loss = torch::stable::new_empty(x, {b}, entry.acc_st);
  Tensor dist = torch::stable::new_empty(x, {b, nc}, entry.acc_st);
  if (b == 0) return {loss, dist};
  dispatch_floating(x.scalar_type(), kOp, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using acc_t = acc_of_t<T>;
    const int64_t blocks = std::min<int64_t>(ceil_div(b * nc, kCentroidWarps), kMaxStrideBlocks);
    centroid_dist_kernel<T, acc_t><<<grid_1d(blocks, kOp), kCentroidThreads, 0, entry.stream>>>(
        cptr<T>(x), cptr<T>(c), b, nc, dim, mptr<acc_t>(dist));
    check_launch("centroid_dist_kernel");
    centroid_loss_kernel<acc_t>
        <<<grid_1d(ceil_div(b, kCentroidThreads), kOp), kCentroidThreads, 0, entry.stream>>>(
            cptr<acc_t>(dist), cptr<int64_t>(labels), b, nc, mptr<acc_t>(loss));
    check_launch("centroid_loss_kernel");
  });
  return {loss, dist};
}

std::tuple<Tensor, Tensor> centroid_triplet_backward_cuda(Tensor grad_, Tensor x_, Tensor labels_,
                                                          Tensor c_, Tensor dist_, bool need_c) {
  contract::centroid_triplet_backward<CudaSide>(grad_, x_, labels_, c_, dist_);
  const int64_t b = x_.size(0), nc = c_.size(0), dim = x_.size(1);
  const OpEntry entry(x_);
  const Tensor x = dense(x_), c = dense(c_);
  const Tensor labels = dense(labels_);
  const Tensor grad = dense(grad_), dist = dense(dist_);
  Tensor gx = torch::stable::new_empty(x, {b, dim});
  Tensor gc = need_c ? torch::stable::new_empty(c, {nc, dim}) : torch::stable::new_empty(c, {0});
  if (b == 0 || dim == 0) {  // nothing to launch over (a grid of 0 blocks is an error)
    if (need_c) torch::stable::zero_(gc);
    return {gx, gc};
  }
  dispatch_floating(x.scalar_type(), kOp, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using acc_t = acc_of_t<T>;
    const int64_t xblocks =
        std::min<int64_t>(ceil_div(b * dim, kCentroidThreads), kMaxStrideBlocks);
    centroid_grad_x_kernel<T, acc_t><<<grid_1d(xblocks, kOp), kCentroidThreads, 0, entry.stream>>>(
        cptr<acc_t>(grad), cptr<T>(x), cptr<int64_t>(labels), cptr<T>(c), cptr<acc_t>(dist), b, nc,
        dim, mptr<T>(gx));
    check_launch("centroid_grad_x_kernel");
    if (!need_c) return;
    const int64_t rpc = rows_per_chunk(b), n_chunks = ceil_div(b, rpc);
    Tensor partial = torch::stable::new_empty(x, {n_chunks, nc * dim}, entry.acc_st);
    Tensor gc_acc = torch::stable::new_empty(x, {nc * dim}, entry.acc_st);
    const dim3 grid(grid_1d(std::min<int64_t>(ceil_div(nc * dim, kCentroidThreads), 65535), kOp),
                    static_cast<unsigned>(n_chunks));
    centroid_grad_c_kernel<T, acc_t><<<grid, kCentroidThreads, 0, entry.stream>>>(
        cptr<acc_t>(grad), cptr<T>(x), cptr<int64_t>(labels), cptr<T>(c), cptr<acc_t>(dist), b, nc,
        dim, rpc, mptr<acc_t>(partial));
    check_launch("centroid_grad_c_kernel");
    launch_sum_chunks<acc_t>(cptr<acc_t>(partial), n_chunks, nc * dim, mptr<acc_t>(gc_acc),
                             /*accumulate=*/false, entry.stream);
    if constexpr (std::is_same_v<T, acc_t>) {
      gc = torch::stable::reshape(gc_acc, {nc, dim});
    } else {
      gc = torch::stable::to(torch::stable::reshape(gc_acc, {nc, dim}), c.scalar_type());
    }
  });
  return {gx, gc};
}

}  // namespace
}  // namespace fastmine::cuda

STABLE_TORCH_LIBRARY_IMPL(fastmine, CUDA, m) {
  m.impl("centroid_triplet", TORCH_BOX(&fastmine::cuda::centroid_triplet_cuda));
  m.impl("centroid_triplet_backward", TORCH_BOX(&fastmine::cuda::centroid_triplet_backward_cuda));
}
