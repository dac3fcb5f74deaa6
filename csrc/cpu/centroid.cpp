// The centroid triplet bound on the CPU (formula: csrc/common/centroid.h).
//
// Forward: the (B, C) distances from direct differences (one sample per task, accumulated in
// double for float32), then each row's loss. The distances are returned for the backward.
// Backward: with w_im = centroid_grad_weight(g_i, coef_im, d_im),
//   grad x_i = sum_m w_im (x_i - c_m)      (parallel over samples, m in order)
//   grad c_m = -sum_i w_im (x_i - c_m)     (parallel over centroids, i in order)
// again from direct differences. Every sum has a fixed order: bitwise reproducible, no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "common/centroid.h"

namespace fastmine::cpu {
namespace {

void check_inputs(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& c) {
  TORCH_CHECK(x.dim() == 2 && c.dim() == 2, "fastmine.centroid_triplet_loss: embeddings and "
              "centroids must be 2-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "fastmine.centroid_triplet_loss: embeddings must be float32 or float64 on the CPU");
  TORCH_CHECK(c.scalar_type() == x.scalar_type(), "fastmine.centroid_triplet_loss: centroids "
              "must have the dtype of embeddings");
  TORCH_CHECK_VALUE(c.size(1) == x.size(1), "fastmine.centroid_triplet_loss: centroids must have "
                    "D = ", x.size(1), " features, got ", c.size(1));
  TORCH_CHECK_VALUE(c.size(0) >= 2, "fastmine.centroid_triplet_loss: centroids must hold C >= 2 "
                    "classes, got ", c.size(0));
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == x.size(0) &&
                  labels.scalar_type() == at::kLong,
              "fastmine.centroid_triplet_loss: labels must be int64 of shape (", x.size(0), ",)");
}

template <typename T>
double sq_dist(const T* u, const T* v, int64_t d) {
  double s = 0.0;
  for (int64_t k = 0; k < d; ++k) {
    const double diff = static_cast<double>(u[k]) - static_cast<double>(v[k]);
    s += diff * diff;
  }
  return s;
}

std::tuple<at::Tensor, at::Tensor> centroid_triplet_cpu(const at::Tensor& x_,
                                                        const at::Tensor& labels_,
                                                        const at::Tensor& c_) {
  check_inputs(x_, labels_, c_);
  const at::Tensor x = x_.contiguous(), labels = labels_.contiguous(), c = c_.contiguous();
  const int64_t b = x.size(0), d = x.size(1), nc = c.size(0);
  const int64_t* lp = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < b; ++i) {
    TORCH_CHECK_VALUE(lp[i] >= 0 && lp[i] < nc, "fastmine.centroid_triplet_loss: labels must be "
                      "in [0, C) = [0, ", nc, ") (one row of centroids per class), got ", lp[i],
                      " at position ", i);
  }
  at::Tensor loss = at::empty({b}, x.options());
  at::Tensor dist = at::empty({b, nc}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "centroid_triplet_cpu", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const T* cp = c.data_ptr<T>();
    T* dp = dist.data_ptr<T>();
    T* out = loss.data_ptr<T>();
    const T k = centroid_other_weight<T>(nc);
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, nc * d));
    at::parallel_for(0, b, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* row = dp + i * nc;
        for (int64_t m = 0; m < nc; ++m) {
          row[m] = static_cast<T>(std::sqrt(sq_dist(xp + i * d, cp + m * d, d)));
        }
        out[i] = centroid_row_loss(row, lp[i], nc, k);
      }
    });
  });
  return {loss, dist};
}

std::tuple<at::Tensor, at::Tensor> centroid_triplet_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& labels_,
    const at::Tensor& c_, const at::Tensor& dist_, bool need_centroid_grad) {
  check_inputs(x_, labels_, c_);
  const at::Tensor x = x_.contiguous(), labels = labels_.contiguous(), c = c_.contiguous();
  const at::Tensor grad = grad_.contiguous(), dist = dist_.contiguous();
  const int64_t b = x.size(0), d = x.size(1), nc = c.size(0);
  TORCH_CHECK(grad.numel() == b && dist.numel() == b * nc, "fastmine.centroid_triplet_backward: "
              "grad must be (B,) and dist (B, C)");
  at::Tensor gx = at::empty({b, d}, x.options());
  at::Tensor gc = need_centroid_grad ? at::empty({nc, d}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "centroid_triplet_backward_cpu", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const T* cp = c.data_ptr<T>();
    const T* dp = dist.data_ptr<T>();
    const T* gp = grad.data_ptr<T>();
    const int64_t* lp = labels.data_ptr<int64_t>();
    const T k = centroid_other_weight<T>(nc);
    const auto weight = [&](int64_t i, int64_t m) {
      return centroid_grad_weight(gp[i], centroid_coef(m == lp[i], k), dp[i * nc + m]);
    };
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, nc * d));
    T* gxp = gx.data_ptr<T>();
    at::parallel_for(0, b, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* out = gxp + i * d;
        for (int64_t j = 0; j < d; ++j) out[j] = T(0);
        for (int64_t m = 0; m < nc; ++m) {
          const T w = weight(i, m);
          for (int64_t j = 0; j < d; ++j) out[j] += w * (xp[i * d + j] - cp[m * d + j]);
        }
      }
    });
    if (!need_centroid_grad) return;
    T* gcp = gc.data_ptr<T>();
    const int64_t cgrain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, b * d));
    at::parallel_for(0, nc, cgrain, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        T* out = gcp + m * d;
        for (int64_t j = 0; j < d; ++j) out[j] = T(0);
        for (int64_t i = 0; i < b; ++i) {
          const T w = weight(i, m);
          for (int64_t j = 0; j < d; ++j) out[j] -= w * (xp[i * d + j] - cp[m * d + j]);
        }
      }
    });
  });
  return {gx, gc};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("centroid_triplet", &centroid_triplet_cpu);
  m.impl("centroid_triplet_backward", &centroid_triplet_backward_cpu);
}

}  // namespace fastmine::cpu
