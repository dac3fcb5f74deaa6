// Distances as sort keys: unsigned integers whose `<` orders the numbers ascending (-0 and +0
// equal), then NaN. CUB's segmented sort runs short segments through a merge sort that
// compares keys with `<`, under which a NaN float is unordered and leaves its segment
// unsorted; these keys are totally ordered. Device code only (see device_utils.cuh); in an
// anonymous namespace, as the kernel headers are.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/macros.h"
#include "cuda/engine/device_utils.cuh"

namespace fastmine::cuda {
namespace {

template <typename acc_t>
struct SortKey;
template <>
struct SortKey<float> {
  using type = uint32_t;
};
template <>
struct SortKey<double> {
  using type = uint64_t;
};
template <typename acc_t>
using sort_key_t = typename SortKey<acc_t>::type;

// The key of every NaN; the one above it is free for a caller's own "after everything" key.
template <typename acc_t>
constexpr sort_key_t<acc_t> kNanKey = ~sort_key_t<acc_t>(0) - 1;

// The key of a distance: NaN -> kNanKey; otherwise the IEEE bits made monotonic (negative
// values flipped, positive ones offset by the sign bit). d + 0 turns -0 into +0. Numbers map
// below kNanKey: +inf's key is 0xff80...0.
template <typename acc_t>
__device__ __forceinline__ sort_key_t<acc_t> distance_key(acc_t d) {
  using K = sort_key_t<acc_t>;
  if (fm_isnan(d)) return kNanKey<acc_t>;
  const acc_t v = d + acc_t(0);
  K u;
  static_assert(sizeof(K) == sizeof(acc_t));
  memcpy(&u, &v, sizeof(K));
  const K sign = K(1) << (8 * sizeof(K) - 1);
  return (u & sign) ? K(~u) : K(u | sign);
}

// distance_key's inverse for a number's key; a key >= kNanKey gives a NaN.
template <typename acc_t>
__device__ __forceinline__ acc_t key_distance(sort_key_t<acc_t> k) {
  using K = sort_key_t<acc_t>;
  const K sign = K(1) << (8 * sizeof(K) - 1);
  const K u = (k & sign) ? K(k & ~sign) : K(~k);
  acc_t v;
  memcpy(&v, &u, sizeof(K));
  return v;
}

constexpr int kKeyThreads = 256;

// In place: each distance of data[0, n) replaced by its key (same width), or the reverse.
template <typename acc_t, bool kToKeys>
__global__ void __launch_bounds__(kKeyThreads)
    distance_keys_kernel(acc_t* __restrict__ data, int64_t n) {
  using K = sort_key_t<acc_t>;
  const int64_t stride = int64_t(gridDim.x) * kKeyThreads;
  for (int64_t e = int64_t(blockIdx.x) * kKeyThreads + threadIdx.x; e < n; e += stride) {
    if constexpr (kToKeys) {
      const K k = distance_key(data[e]);
      memcpy(&data[e], &k, sizeof(K));
    } else {
      K k;
      memcpy(&k, &data[e], sizeof(K));
      data[e] = key_distance<acc_t>(k);
    }
  }
}

}  // namespace
}  // namespace fastmine::cuda
