// Argument checks at the C++ boundary. fastmine/functional.py validates first and gives the
// user-facing messages; these keep a direct torch.ops.fastmine.* call from reading out of
// bounds.
#pragma once
#include <ATen/ATen.h>

namespace fastmine::cpu {

inline void check_embeddings(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D (N, D), got ", t.dim(), " dims");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64 on the CPU, got ", t.scalar_type());
}

inline void check_pair(const at::Tensor& x, const at::Tensor& y) {
  check_embeddings(x, "x");
  check_embeddings(y, "ref");
  TORCH_CHECK(x.size(1) == y.size(1), "x and ref must have the same D, got ", x.size(1),
              " and ", y.size(1));
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "x and ref must have the same dtype");
}

inline void check_labels(const at::Tensor& l, int64_t n, const char* name) {
  TORCH_CHECK(l.dim() == 1 && l.size(0) == n, name, " must have shape (", n, ",)");
  TORCH_CHECK(l.scalar_type() == at::kLong, name, " must be int64");
}

// Rows per panel: keep the (panel x M) block around 4 MiB so it stays in cache-friendly
// territory, never fewer than 8 rows, never more than 256.
inline int64_t panel_rows(int64_t m, int64_t elem_size) {
  int64_t rows = (int64_t(4) << 20) / std::max<int64_t>(1, m * elem_size);
  return std::min<int64_t>(256, std::max<int64_t>(8, rows));
}

}  // namespace fastmine::cpu
