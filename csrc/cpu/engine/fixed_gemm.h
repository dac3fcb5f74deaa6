// BLAS products whose bits do not depend on the thread count.
//
// A BLAS library may split a product's reduction across its threads, and then
// torch.set_num_threads changes the rounding: MKL does it for a one-row panel (a gemv). Here a
// product is cut into fixed blocks, each computed by one BLAS call on one thread, and the
// blocks run in parallel: the output's bits depend on the operands and the block sizes only.
// Where a block's reduction is cut too, its partial products are added in block order.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace fastmine::cpu {

constexpr int64_t kGemmBlock = 512;  // output rows or columns, or reduction length, per block

inline int64_t gemm_blocks(int64_t n) { return (n + kGemmBlock - 1) / kGemmBlock; }

// Runs block(k) for k in [0, n_blocks), in parallel. A BLAS call inside a parallel region
// runs on one thread, and on one thread anyway when torch has one. So that a lone block does
// not run outside a region (where BLAS would use every thread), there are always at least
// two tasks, the spare one empty. A worker thread's dispatch state is the default one: each
// task excludes autograd itself (the inputs may require grad; the ops run below autograd), or
// at::mm_out would refuse them.
template <typename Block>
void for_blocks(int64_t n_blocks, const Block& block) {
  at::parallel_for(0, std::max<int64_t>(n_blocks, 2), 1, [&](int64_t k0, int64_t k1) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t k = k0; k < std::min(k1, n_blocks); ++k) block(k);
  });
}

// out (n, m) = a (n, k) . b (k, m), cut along the output's columns.
inline void mm_fixed(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const int64_t m = out.size(1);
  for_blocks(gemm_blocks(m), [&](int64_t k) {
    const int64_t c0 = k * kGemmBlock, nc = std::min(kGemmBlock, m - c0);
    at::Tensor o = out.narrow(1, c0, nc);
    at::mm_out(o, a, b.narrow(1, c0, nc));
  });
}

// out (n, m) += a (n, k) . b (k, m) with a short reduction (k): cut along the output's rows.
inline void addmm_rows_fixed(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = out.size(0);
  for_blocks(gemm_blocks(n), [&](int64_t k) {
    const int64_t r0 = k * kGemmBlock, nr = std::min(kGemmBlock, n - r0);
    out.narrow(0, r0, nr).addmm_(a.narrow(0, r0, nr), b);
  });
}

// out (n, m) += a (n, k) . b (k, m) with a long reduction (k) and a small output: the
// reduction is cut into blocks whose partial products are added in block order.
inline void addmm_reduce_fixed(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const int64_t len = a.size(1), n_parts = gemm_blocks(len);
  if (n_parts <= 1) {
    for_blocks(1, [&](int64_t) { out.addmm_(a, b); });
    return;
  }
  at::Tensor parts = at::empty({n_parts, out.size(0), out.size(1)}, out.options());
  for_blocks(n_parts, [&](int64_t k) {
    const int64_t c0 = k * kGemmBlock, nk = std::min(kGemmBlock, len - c0);
    at::Tensor p = parts.select(0, k);
    at::mm_out(p, a.narrow(1, c0, nk), b.narrow(0, c0, nk));
  });
  for (int64_t k = 0; k < n_parts; ++k) out.add_(parts.select(0, k));
}

}  // namespace fastmine::cpu
