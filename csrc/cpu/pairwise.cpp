// Pairwise distance matrix on the CPU, through the shared row-panel code (cpu/engine/panel.h):
// BLAS GEMM + distance epilogue forward; per-entry gradient weights + two GEMMs backward.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/contract_cpu.h"
#include "cpu/engine/panel.h"

namespace fastmine::cpu {
namespace {

at::Tensor pairwise_distance_cpu(const at::Tensor& x, const at::Tensor& y, int64_t metric,
                                 bool /*allow_tf32: CUDA tiles only*/) {
  contract::pairwise_distance<CpuSide>(x, y, metric);
  at::Tensor out = at::empty({x.size(0), y.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_distance_cpu",
                             [&] { Panels<scalar_t>(x, y, metric).distances(0, 0, out); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_cpu(const at::Tensor& grad,
                                                                  const at::Tensor& x,
                                                                  const at::Tensor& y,
                                                                  const at::Tensor& dist_,
                                                                  int64_t metric) {
  contract::pairwise_distance_backward<CpuSide>(grad, x, y, dist_, metric);
  const at::Tensor dist = dense(dist_);
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor gy = at::zeros_like(y, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_distance_backward_cpu", [&] {
    using T = scalar_t;
    const Panels<T> p(x, y, metric);
    const at::Tensor g = dense(grad);
    const T* gp = g.data_ptr<T>();
    at::Tensor wbuf = p.panel_buffer();
    for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
      const int64_t nr = std::min(p.rows, p.b - r0);
      at::Tensor w = panel_view(wbuf, nr, p.m);
      const auto weight = [&](int64_t i, int64_t j, T) { return gp[i * p.m + j]; };
      p.apply_weights(r0, 0, dist.narrow(0, r0, nr), w, weight, gx, gy);
    }
  });
  return {gx, gy};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_cpu);
}

}  // namespace fastmine::cpu
