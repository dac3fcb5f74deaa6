// Pairwise distance matrix on the GPU and its backward.
//
// Forward: squared row norms (one warp per row), then the engine's distance-matrix kernel
// (engine/distance_matrix.cuh): the tiled X.Y^T mainloop, whose epilogue turns each dot
// product into a distance with distance_from_dot; entries flagged by needs_exact
// (cancellation in |x|^2 + |y|^2 - 2<x,y>) are recomputed by direct differences, as
// csrc/cpu/pairwise.cpp does.
//
// Backward (csrc/cpu/pairwise.cpp's algebra): with q = distance_grad(d_ij, |x_i|^2, |y_j|^2),
//   W = G * q.cross,  a_i = sum_j G_ij q.au,  c_j = sum_i G_ij q.bv,
//   gx = a * x + W y,  gy = c * y + W^T x.
// Row sums: one block per row, fixed-tree reduction. Column sums: one thread per column
// looping its rows in order, over fixed row chunks then summed in chunk order. No float
// atomics anywhere: bitwise reproducible. The two GEMMs go through torch's matmul (cuBLAS)
// in float32 (float32/float16/bfloat16 inputs) or float64.
#include "common/distance.h"
#include "cuda/contract_cuda.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/launchers.cuh"
#include "cuda/op_entry.cuh"
#include "cuda/pairwise_kernels.cuh"

namespace fastmine::cuda {
namespace {

constexpr const char* kFwd = "pairwise_distance";
constexpr const char* kBwd = "pairwise_distance_backward";

// ---- forward ---------------------------------------------------------------------------------

template <typename T>
void pairwise_forward(const Tensor& x, const Tensor& y, int64_t metric, Tensor& out,
                      cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  const int64_t b = x.size(0), m = y.size(0), dim = x.size(1);
  Tensor nx2 = torch::stable::new_empty(x, {b}, scalar_type_of<acc_t>());
  Tensor ny2 = torch::stable::new_empty(x, {m}, scalar_type_of<acc_t>());
  launch_row_sqnorm<T, acc_t>(cptr<T>(x), b, dim, mptr<acc_t>(nx2), stream);
  launch_row_sqnorm<T, acc_t>(cptr<T>(y), m, dim, mptr<acc_t>(ny2), stream);
  const int64_t row_tiles = ceil_div(b, TileCfg::BM), col_tiles = ceil_div(m, TileCfg::BN);
  STD_TORCH_CHECK(row_tiles <= 65535, "fastmine.", kFwd, ": x has too many rows (", b,
                  ") for one launch");
  const dim3 grid(grid_1d(col_tiles, kFwd), static_cast<unsigned>(row_tiles));
  pairwise_distance_kernel<T, acc_t><<<grid, TileCfg::THREADS, 0, stream>>>(
      cptr<T>(x), cptr<T>(y), cptr<acc_t>(nx2), cptr<acc_t>(ny2), b, m, dim, metric, mptr<T>(out));
  check_launch("pairwise_distance_kernel");
}

Tensor pairwise_distance_cuda(Tensor x_, Tensor y_, int64_t metric, bool allow_tf32) {
  contract::pairwise_distance<CudaSide>(x_, y_, metric);
  const OpEntry entry(x_);
  const Tensor x = dense(x_), y = dense(y_);
  const int64_t b = x.size(0), m = y.size(0);
  Tensor out = torch::stable::new_empty(x, {b, m});
  if (b == 0 || m == 0) return out;
  dispatch_floating_tf32(x.scalar_type(), allow_tf32, kFwd, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pairwise_forward<T>(x, y, metric, out, entry.stream);
  });
  return out;
}

// ---- backward --------------------------------------------------------------------------------

// Rows per chunk of the column sums: at least 128 (enough serial work per thread to pay for
// the partial's write), at most 64 chunks (bounded partial buffer); a function of B only.
inline int64_t rows_per_chunk(int64_t b) { return std::max<int64_t>(128, ceil_div(b, 64)); }

template <typename T>
void pairwise_backward(const Tensor& grad, const Tensor& x, const Tensor& y, const Tensor& dist,
                       int64_t metric, Tensor& gx, Tensor& gy, cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  constexpr ScalarType acc_st = scalar_type_of<acc_t>();
  const int64_t b = x.size(0), m = y.size(0), dim = x.size(1);

  Tensor nx2 = torch::stable::new_empty(x, {b}, acc_st);
  Tensor ny2 = torch::stable::new_empty(x, {m}, acc_st);
  launch_row_sqnorm<T, acc_t>(cptr<T>(x), b, dim, mptr<acc_t>(nx2), stream);
  launch_row_sqnorm<T, acc_t>(cptr<T>(y), m, dim, mptr<acc_t>(ny2), stream);

  Tensor w = torch::stable::new_empty(x, {b, m}, acc_st);
  Tensor a = torch::stable::new_empty(x, {b}, acc_st);
  pd_backward_rows_kernel<T, acc_t><<<grid_1d(b, kBwd), kBwdThreads, 0, stream>>>(
      cptr<T>(grad), cptr<T>(dist), cptr<acc_t>(nx2), cptr<acc_t>(ny2), m, metric, mptr<acc_t>(w),
      mptr<acc_t>(a));
  check_launch("pd_backward_rows_kernel");

  const int64_t rpc = rows_per_chunk(b);
  const int64_t n_chunks = ceil_div(b, rpc);
  Tensor partial = torch::stable::new_empty(x, {n_chunks, m}, acc_st);
  Tensor c = torch::stable::new_empty(x, {m}, acc_st);
  const dim3 cgrid(grid_1d(ceil_div(m, kBwdThreads), kBwd), static_cast<unsigned>(n_chunks));
  pd_backward_cols_kernel<T, acc_t><<<cgrid, kBwdThreads, 0, stream>>>(
      cptr<T>(grad), cptr<T>(dist), cptr<acc_t>(nx2), cptr<acc_t>(ny2), b, m, metric, rpc,
      mptr<acc_t>(partial));
  check_launch("pd_backward_cols_kernel");
  launch_sum_chunks<acc_t>(cptr<acc_t>(partial), n_chunks, m, mptr<acc_t>(c),
                           /*accumulate=*/false, stream);

  // The GEMMs: cuBLAS through the dispatcher, on the current stream, in acc_t.
  const Tensor x_acc = std::is_same_v<T, acc_t> ? x : torch::stable::to(x, acc_st);
  const Tensor y_acc = std::is_same_v<T, acc_t> ? y : torch::stable::to(y, acc_st);
  const Tensor wy = matmul_in(w, y_acc, acc_st);
  const Tensor wtx = matmul_in(torch::stable::transpose(w, 0, 1), x_acc, acc_st);
  STD_TORCH_CHECK(wy.scalar_type() == acc_st && wy.size(0) == b && wy.size(1) == dim &&
                      wtx.scalar_type() == acc_st && wtx.size(0) == m && wtx.size(1) == dim,
                  "fastmine.", kBwd, ": unexpected matmul result");

  launch_combine<T, acc_t>(cptr<acc_t>(a), cptr<T>(x), cptr<acc_t>(wy), b, dim, mptr<T>(gx),
                           stream);
  launch_combine<T, acc_t>(cptr<acc_t>(c), cptr<T>(y), cptr<acc_t>(wtx), m, dim, mptr<T>(gy),
                           stream);
}

std::tuple<Tensor, Tensor> pairwise_distance_backward_cuda(Tensor grad_, Tensor x_, Tensor y_,
                                                           Tensor dist_, int64_t metric) {
  contract::pairwise_distance_backward<CudaSide>(grad_, x_, y_, dist_, metric);
  const int64_t b = x_.size(0), m = y_.size(0);
  const OpEntry entry(x_);
  const Tensor x = dense(x_), y = dense(y_);
  const Tensor grad = dense(grad_), dist = dense(dist_);
  if (b == 0 || m == 0 || x.size(1) == 0) return zero_gradients(x, y);  // no pair
  Tensor gx = torch::stable::new_empty(x, {b, x.size(1)});
  Tensor gy = torch::stable::new_empty(y, {m, y.size(1)});
  dispatch_floating(x.scalar_type(), kBwd, [&](auto tag) {
    using T = typename decltype(tag)::type;
    pairwise_backward<T>(grad, x, y, dist, metric, gx, gy, entry.stream);
  });
  return {gx, gy};
}

}  // namespace
}  // namespace fastmine::cuda

STABLE_TORCH_LIBRARY_IMPL(fastmine, CUDA, m) {
  m.impl("pairwise_distance", TORCH_BOX(&fastmine::cuda::pairwise_distance_cuda));
  m.impl("pairwise_distance_backward", TORCH_BOX(&fastmine::cuda::pairwise_distance_backward_cuda));
}
