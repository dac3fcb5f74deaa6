// Pairwise distance matrix on the CPU: one BLAS GEMM, then an in-place epilogue that turns
// dot products into distances (entries prone to cancellation are recomputed exactly).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/distance.h"
#include "cpu/checks.h"
#include "cpu/exact_distance.h"

namespace fastmine::cpu {
namespace {

template <typename T>
std::vector<T> row_norms2(const T* p, int64_t n, int64_t dim) {
  std::vector<T> out(n);
  at::parallel_for(0, n, 256, [&](int64_t a, int64_t e) {
    for (int64_t i = a; i < e; ++i) out[i] = T(squared_norm(p + i * dim, dim));
  });
  return out;
}

at::Tensor pairwise_distance_cpu(const at::Tensor& x_, const at::Tensor& y_, int64_t metric) {
  check_pair(x_, y_);
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const int64_t b = x.size(0), m = y.size(0), dim = x.size(1);
  at::Tensor out = at::mm(x, y.t());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_distance_cpu", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const T* yp = y.data_ptr<T>();
    const std::vector<T> nx2 = row_norms2(xp, b, dim), ny2 = row_norms2(yp, m, dim);
    T* o = out.data_ptr<T>();
    at::parallel_for(0, b, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = 0; j < m; ++j) {
          T& g = o[i * m + j];
          const T d2 = nx2[i] + ny2[j] - T(2) * g;
          if (metric != kCosine && needs_exact(d2, nx2[i], ny2[j])) {
            g = T(accumulate_pair(xp + i * dim, yp + j * dim, dim).finalize(metric));
          } else {
            g = distance_from_dot(metric, g, nx2[i], ny2[j]);
          }
        }
      }
    });
  });
  return out;
}

// dX = diag(a) X + W Y,  dY = diag(c) Y + W^T X, with per-entry coefficients from
// distance_grad: W = G * cross, a = rowsum(G * au), c = colsum(G * bv).
std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_cpu(const at::Tensor& grad_,
                                                                  const at::Tensor& x_,
                                                                  const at::Tensor& y_,
                                                                  const at::Tensor& dist_,
                                                                  int64_t metric) {
  check_pair(x_, y_);
  const at::Tensor x = x_.contiguous(), y = y_.contiguous();
  const at::Tensor grad = grad_.contiguous(), dist = dist_.contiguous();
  const int64_t b = x.size(0), m = y.size(0), dim = x.size(1);
  at::Tensor w = at::empty_like(grad), au = at::empty_like(grad), bv = at::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pairwise_distance_backward_cpu", [&] {
    using T = scalar_t;
    const std::vector<T> nx2 = row_norms2(x.data_ptr<T>(), b, dim);
    const std::vector<T> ny2 = row_norms2(y.data_ptr<T>(), m, dim);
    const T* g = grad.data_ptr<T>();
    const T* d = dist.data_ptr<T>();
    T *wp = w.data_ptr<T>(), *ap = au.data_ptr<T>(), *bp = bv.data_ptr<T>();
    at::parallel_for(0, b, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = 0; j < m; ++j) {
          const int64_t k = i * m + j;
          const DistGrad<T> q = distance_grad<T>(metric, d[k], nx2[i], ny2[j]);
          wp[k] = g[k] * q.cross;
          ap[k] = g[k] * q.au;
          bp[k] = g[k] * q.bv;
        }
      }
    });
  });
  at::Tensor gx = au.sum(1, /*keepdim=*/true) * x + at::mm(w, y);
  at::Tensor gy = bv.sum(0).unsqueeze(1) * y + at::mm(w.t(), x);
  return {gx, gy};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("pairwise_distance_backward", &pairwise_distance_backward_cpu);
}

}  // namespace fastmine::cpu
