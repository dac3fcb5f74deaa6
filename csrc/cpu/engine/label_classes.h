// The reference labels as dense class ids, with each class's columns listed in column order.
//
// A row scan that needs an anchor's positives reads them from its class's list, O(K), instead
// of comparing all M labels; and a SIMD scan compares the ids in integer lanes as wide as the
// distance type (int32 next to float, int64 next to double), which int64 labels are not.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastmine::cpu {

template <typename I>
struct LabelClasses {
  std::vector<int64_t> labels;  // the distinct labels, ascending; class c has labels[c]
  std::vector<I> id;            // id[j]: the class of column j (exact while the classes fit I)
  std::vector<int64_t> start;   // class c's columns are cols[start[c] .. start[c + 1])
  std::vector<int64_t> cols;    // ascending within a class

  LabelClasses(const int64_t* rlab, int64_t m) : labels(rlab, rlab + m), id(m), cols(m) {
    std::sort(labels.begin(), labels.end());
    labels.erase(std::unique(labels.begin(), labels.end()), labels.end());
    std::vector<int64_t> cls(m);
    start.assign(labels.size() + 1, 0);
    for (int64_t j = 0; j < m; ++j) {
      cls[j] = std::lower_bound(labels.begin(), labels.end(), rlab[j]) - labels.begin();
      id[j] = I(cls[j]);
      ++start[cls[j] + 1];
    }
    for (size_t c = 0; c < labels.size(); ++c) start[c + 1] += start[c];
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t j = 0; j < m; ++j) cols[next[cls[j]]++] = j;
  }

  // The class of `label`, or -1 when no column has it.
  int64_t class_of(int64_t label) const {
    const auto it = std::lower_bound(labels.begin(), labels.end(), label);
    return it != labels.end() && *it == label ? int64_t(it - labels.begin()) : -1;
  }
  int64_t size_of(int64_t c) const { return c < 0 ? 0 : start[c + 1] - start[c]; }
};

}  // namespace fastmine::cpu
