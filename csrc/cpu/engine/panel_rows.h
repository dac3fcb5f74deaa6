// How many rows of the distance matrix a CPU kernel computes at once.
#pragma once
#include <algorithm>
#include <cstdint>

namespace fastmine::cpu {

// Rows per panel: keep the (panel x M) block around 4 MiB so it stays in cache-friendly
// territory, never fewer than 8 rows, never more than 256.
inline int64_t panel_rows(int64_t m, int64_t elem_size) {
  int64_t rows = (int64_t(4) << 20) / std::max<int64_t>(1, m * elem_size);
  return std::min<int64_t>(256, std::max<int64_t>(8, rows));
}

}  // namespace fastmine::cpu
