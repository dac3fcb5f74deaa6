// Host versions of the device-wide CUB sorts that fastmine calls, for the host emulator, with
// CUB's documented contracts checked instead of assumed:
//  * DeviceRadixSort: stable; keys ordered by their bits [begin_bit, end_bit) in CUB's radix
//    order (two's complement for signed integers; floats with -0.0 == +0.0 and NaNs by bits).
//  * DeviceSegmentedSort: CUB sorts short segments with a merge sort that compares with `<`
//    and long ones by radix, so only keys totally ordered under `<` give one well-defined
//    result: a floating-point NaN key is rejected (reported, and cudaErrorInvalidValue).
//    SortKeys / SortPairs are not stable: equal keys come out in reversed input order, so
//    that code relying on an order CUB does not promise gives visibly different results.
// The temp-storage protocol is CUB's: a call with d_temp_storage == nullptr sets the bytes it
// needs; a call with less storage than that fails.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cuda_runtime.h"

namespace cub {
namespace emu_detail {

// The unsigned image of a key whose `<` is CUB's radix order.
template <typename K>
auto radix_bits(K k) {
  if constexpr (std::is_floating_point_v<K>) {
    using U = std::conditional_t<sizeof(K) == 4, uint32_t, uint64_t>;
    if (k == K(0)) k = K(0);  // -0.0 == +0.0
    U u;
    std::memcpy(&u, &k, sizeof(U));
    const U sign = U(1) << (8 * sizeof(U) - 1);
    return (u & sign) ? U(~u) : U(u | sign);
  } else {
    static_assert(std::is_integral_v<K>, "emulated CUB sorts: arithmetic keys only");
    using U = std::make_unsigned_t<K>;
    U u = U(k);
    if constexpr (std::is_signed_v<K>) u ^= U(1) << (8 * sizeof(U) - 1);
    return u;
  }
}

inline size_t required_bytes(int64_t items, size_t per_item) { return 256 + size_t(items) * per_item; }

// The storage protocol: true where the caller only asked for the size (or gave too little).
inline bool size_query(void* temp, size_t& bytes, size_t need, cudaError_t& rc) {
  rc = cudaSuccess;
  if (temp == nullptr) {
    bytes = need;
    return true;
  }
  if (bytes < need) {
    fprintf(stderr, "EMU: CUB sort given %zu bytes of temp storage, needs %zu\n", bytes, need);
    emu_errors++;
    rc = cudaErrorInvalidValue;
    return true;
  }
  return false;
}

// Sorts positions [0, n) of keys (and values) into the outputs by less(a, b); stable, or
// with equal runs reversed.
template <typename K, typename V, typename Less>
void sort_range(const K* keys_in, K* keys_out, const V* vals_in, V* vals_out, int64_t n, bool stable,
                Less less) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), int64_t(0));
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return less(keys_in[a], keys_in[b]); });
  if (!stable) {
    for (int64_t s = 0; s < n;) {
      int64_t e = s + 1;
      while (e < n && !less(keys_in[idx[s]], keys_in[idx[e]])) ++e;
      std::reverse(idx.begin() + s, idx.begin() + e);
      s = e;
    }
  }
  std::vector<K> ks(static_cast<size_t>(n));
  std::vector<V> vs(vals_in ? static_cast<size_t>(n) : 0);
  for (int64_t i = 0; i < n; ++i) {
    ks[i] = keys_in[idx[i]];
    if (vals_in) vs[i] = vals_in[idx[i]];
  }
  std::copy(ks.begin(), ks.end(), keys_out);
  if (vals_in) std::copy(vs.begin(), vs.end(), vals_out);
}

struct NoValue {};

template <typename K, typename V, typename B, typename E>
cudaError_t segmented(void* temp, size_t& bytes, const K* keys_in, K* keys_out, const V* vals_in, V* vals_out,
                      int64_t items, int64_t segments, B begin, E end, bool stable, const char* name) {
  cudaError_t rc;
  if (size_query(temp, bytes, required_bytes(items, sizeof(K) + sizeof(V)), rc)) return rc;
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t b = int64_t(begin[s]), e = int64_t(end[s]);
    if (e <= b) continue;
    if (b < 0 || e > items) {
      fprintf(stderr, "EMU: %s segment %ld [%ld, %ld) outside the %ld items\n", name, long(s), long(b), long(e),
              long(items));
      emu_errors++;
      return cudaErrorInvalidValue;
    }
    if constexpr (std::is_floating_point_v<K>) {
      for (int64_t i = b; i < e; ++i) {
        if (keys_in[i] != keys_in[i]) {
          fprintf(stderr,
                  "EMU: %s key %ld of segment %ld is NaN: not totally ordered under <, CUB's merge sort of "
                  "short segments leaves such a segment unsorted\n",
                  name, long(i - b), long(s));
          emu_errors++;
          return cudaErrorInvalidValue;
        }
      }
    }
    sort_range(keys_in + b, keys_out + b, vals_in ? vals_in + b : nullptr, vals_out ? vals_out + b : nullptr, e - b,
               stable, [](K x, K y) { return x < y; });
  }
  return cudaSuccess;
}

}  // namespace emu_detail

struct DeviceRadixSort {
  template <typename K, typename V, typename N>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* keys_in, K* keys_out, const V* vals_in,
                               V* vals_out, N num_items, int begin_bit = 0, int end_bit = sizeof(K) * 8,
                               cudaStream_t = nullptr) {
    cudaError_t rc;
    if (emu_detail::size_query(temp, bytes, emu_detail::required_bytes(int64_t(num_items), sizeof(K) + sizeof(V)),
                               rc))
      return rc;
    if (begin_bit < 0 || end_bit > int(sizeof(K) * 8) || begin_bit >= end_bit) return cudaErrorInvalidValue;
    const int width = end_bit - begin_bit;
    const auto digits = [&](K k) {
      using U = decltype(emu_detail::radix_bits(k));
      const U u = emu_detail::radix_bits(k) >> begin_bit;
      return width >= int(sizeof(U) * 8) ? u : U(u & ((U(1) << width) - 1));
    };
    emu_detail::sort_range(keys_in, keys_out, vals_in, vals_out, int64_t(num_items), true,
                           [&](K a, K b) { return digits(a) < digits(b); });
    return cudaSuccess;
  }
};

struct DeviceSegmentedSort {
  template <typename K, typename N, typename S, typename B, typename E>
  static cudaError_t SortKeys(void* temp, size_t& bytes, const K* keys_in, K* keys_out, N num_items, S num_segments,
                              B begin, E end, cudaStream_t = nullptr) {
    return emu_detail::segmented(temp, bytes, keys_in, keys_out, (const emu_detail::NoValue*)nullptr,
                                 (emu_detail::NoValue*)nullptr, int64_t(num_items), int64_t(num_segments), begin,
                                 end, false, "DeviceSegmentedSort::SortKeys");
  }
  template <typename K, typename V, typename N, typename S, typename B, typename E>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* keys_in, K* keys_out, const V* vals_in,
                               V* vals_out, N num_items, S num_segments, B begin, E end, cudaStream_t = nullptr) {
    return emu_detail::segmented(temp, bytes, keys_in, keys_out, vals_in, vals_out, int64_t(num_items),
                                 int64_t(num_segments), begin, end, false, "DeviceSegmentedSort::SortPairs");
  }
  template <typename K, typename V, typename N, typename S, typename B, typename E>
  static cudaError_t StableSortPairs(void* temp, size_t& bytes, const K* keys_in, K* keys_out, const V* vals_in,
                                     V* vals_out, N num_items, S num_segments, B begin, E end,
                                     cudaStream_t = nullptr) {
    return emu_detail::segmented(temp, bytes, keys_in, keys_out, vals_in, vals_out, int64_t(num_items),
                                 int64_t(num_segments), begin, end, true, "DeviceSegmentedSort::StableSortPairs");
  }
};

}  // namespace cub
