// Bitwise-identical rows of an embedding matrix. A GEMM need not round identical columns
// alike (blocking), so two copies of one vector can get distances one ulp apart and a
// threshold test (d_in > d_ip) or an exact tie would be decided by rounding. Copying the
// first copy's distance onto the later ones makes them tie exactly, as they truly do.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace fastmine::cpu {

// (j, first) for every row j that is a bitwise copy of an earlier row `first` (the lowest
// such index). Empty for data without copies; O(n * dim) plus a sort of n hashes.
template <typename T>
std::vector<std::pair<int64_t, int64_t>> duplicate_rows(const T* p, int64_t n, int64_t dim) {
  std::vector<std::pair<uint64_t, int64_t>> keyed(n);
  for (int64_t j = 0; j < n; ++j) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the row's bytes
    const unsigned char* bytes = reinterpret_cast<const unsigned char*>(p + j * dim);
    for (int64_t k = 0; k < int64_t(dim * sizeof(T)); ++k) h = (h ^ bytes[k]) * 1099511628211ull;
    keyed[j] = {h, j};
  }
  std::sort(keyed.begin(), keyed.end());
  std::vector<std::pair<int64_t, int64_t>> out;
  for (size_t s = 0; s < keyed.size();) {
    size_t e = s + 1;
    while (e < keyed.size() && keyed[e].first == keyed[s].first) ++e;
    // Within a hash group (ascending index), match each row to the first identical one.
    for (size_t a = s + 1; a < e; ++a) {
      for (size_t c = s; c < a; ++c) {
        const int64_t j = keyed[a].second, f = keyed[c].second;
        // D = 0: every row is the empty row (and p may be null, which memcmp must not see).
        if (dim == 0 || std::memcmp(p + j * dim, p + f * dim, dim * sizeof(T)) == 0) {
          out.emplace_back(j, f);  // f < j: keyed is sorted by (hash, index)
          break;
        }
      }
    }
    s = e;
  }
  return out;
}

}  // namespace fastmine::cpu
