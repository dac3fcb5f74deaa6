// Host-side launchers of the small kernels that several ops share (row norms, the gradient
// finishing kernels of grad_kernels.cuh). Each .cu that includes this owns its copies.
#pragma once

#include <algorithm>

#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/grad_kernels.cuh"
#include "cuda/engine/row_ops.cuh"

namespace fastmine::cuda {
namespace {

// Grid-stride kernels never need more blocks than this.
constexpr int64_t kMaxStrideBlocks = int64_t(1) << 20;

template <typename T, typename acc_t>
void launch_row_sqnorm(const T* p, int64_t n, int64_t dim, acc_t* out, cudaStream_t stream) {
  if (n == 0) return;
  row_sqnorm_kernel<T, acc_t>
      <<<grid_1d(ceil_div(n, kRowsPerBlock), "row_sqnorm"), kRowThreads, 0, stream>>>(p, n, dim,
                                                                                      out);
  check_launch("row_sqnorm_kernel");
}

// out[row_map[i]] = coef[i] * v[i] + prod[i] over the n rows of v (row_map nullptr: identity).
template <typename T, typename acc_t>
void launch_combine(const acc_t* coef, const T* v, const acc_t* prod, int64_t n, int64_t dim,
                    T* out, cudaStream_t stream, const int64_t* row_map = nullptr) {
  if (n * dim == 0) return;
  const int64_t blocks = std::min<int64_t>(ceil_div(n * dim, kBwdThreads), kMaxStrideBlocks);
  combine_kernel<T, acc_t>
      <<<grid_1d(blocks, "combine"), kBwdThreads, 0, stream>>>(coef, v, prod, n, dim, out, row_map);
  check_launch("combine_kernel");
}

// c[j] (+)= sum over the n_chunks rows of partial (n_chunks, n), in row order.
template <typename acc_t>
void launch_sum_chunks(const acc_t* partial, int64_t n_chunks, int64_t n, acc_t* c, bool accumulate,
                       cudaStream_t stream) {
  if (n == 0) return;
  sum_chunks_kernel<acc_t>
      <<<grid_1d(ceil_div(n, kBwdThreads), "sum_chunks"), kBwdThreads, 0, stream>>>(
          partial, n_chunks, n, c, accumulate);
  check_launch("sum_chunks_kernel");
}

template <typename acc_t>
void launch_add_into(acc_t* dst, const acc_t* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>(ceil_div(n, kBwdThreads), kMaxStrideBlocks);
  add_into_kernel<acc_t><<<grid_1d(blocks, "add_into"), kBwdThreads, 0, stream>>>(dst, src, n);
  check_launch("add_into_kernel");
}

// a @ b in acc_st. Inside torch.autocast (which the autograd engine carries into a
// backward) the dispatcher's matmul returns float16/bfloat16 for float32 operands: the
// product is cast back, so that the kernels reading it see acc_t.
inline Tensor matmul_in(const Tensor& a, const Tensor& b, ScalarType acc_st) {
  Tensor p = torch::stable::matmul(a, b);
  if (p.scalar_type() != acc_st) p = torch::stable::to(p, acc_st);
  return torch::stable::contiguous(p);
}

}  // namespace
}  // namespace fastmine::cuda
