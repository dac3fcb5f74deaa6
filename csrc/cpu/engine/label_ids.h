// Labels as dense int32 ids, equal exactly when the labels are: the SIMD loops compare them
// at the width of a float (an int64 compare would split each float vector in two).
#pragma once
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace fastmine::cpu {

// Ids of a[0, na) followed by those of b[0, nb), from one numbering of both.
inline std::vector<int32_t> label_ids(const int64_t* a, int64_t na, const int64_t* b = nullptr,
                                      int64_t nb = 0) {
  TORCH_CHECK(na + nb < std::numeric_limits<int32_t>::max(),
              "fastmine: more than 2^31 - 2 labels in one call are not supported on the CPU");
  std::vector<int64_t> uniq(a, a + na);
  uniq.insert(uniq.end(), b, b + nb);
  std::sort(uniq.begin(), uniq.end());
  uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
  std::vector<int32_t> ids(na + nb);
  const auto id = [&](int64_t v) {
    return int32_t(std::lower_bound(uniq.begin(), uniq.end(), v) - uniq.begin());
  };
  for (int64_t i = 0; i < na; ++i) ids[i] = id(a[i]);
  for (int64_t j = 0; j < nb; ++j) ids[na + j] = id(b[j]);
  return ids;
}

}  // namespace fastmine::cpu
