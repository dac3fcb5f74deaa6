// Stable counting sort of items by the row they touch: the deterministic alternative to a
// scatter with atomics. Each row then sums its items in ascending item order, always.
#pragma once
#include <cstdint>
#include <vector>

namespace fastmine::cpu {

struct RowGroups {
  std::vector<int64_t> start;  // items of row r: order[start[r] .. start[r + 1])
  std::vector<int64_t> order;  // item ids, ascending within a row

  // row_of(e) in [0, rows) or < 0 (item touches no row) for e in [0, n).
  template <typename RowOf>
  RowGroups(int64_t rows, int64_t n, const RowOf& row_of) : start(rows + 1, 0) {
    for (int64_t e = 0; e < n; ++e) {
      const int64_t r = row_of(e);
      if (r >= 0) ++start[r + 1];
    }
    for (int64_t r = 0; r < rows; ++r) start[r + 1] += start[r];
    order.resize(start[rows]);
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t e = 0; e < n; ++e) {
      const int64_t r = row_of(e);
      if (r >= 0) order[fill[r]++] = e;
    }
  }
};

}  // namespace fastmine::cpu
