// Device-side helpers shared by every kernel: accumulation types, element conversions for
// half/bfloat16, fma, fixed-order warp reductions. No torch here: the kernel headers
// (*_kernels.cuh, dot_tile.cuh, row_ops.cuh) depend only on this and csrc/common/, so they
// can also be compiled by a host compiler against a CUDA emulation shim for testing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common/macros.h"

namespace fastmine::cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// float32 data whose X.R^T tiles may use TF32 tensor cores (the caller opted in, as
// torch.backends.cuda.matmul.allow_tf32 does for cuBLAS): the same 4 bytes as a float, a
// distinct type so that the launchers' dtype dispatch selects the TF32 mainloop at compile
// time (dot_tile.cuh) while every other use reads it as the float it is.
struct alignas(4) tf32_t {
  float v;
};

// Accumulation type: float for float32/float16/bfloat16, double for float64.
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_of_t = typename AccOf<T>::type;

// True where a T tensor already holds acc_t values bit for bit (no conversion copy needed
// for a GEMM operand in acc_t).
template <typename T, typename acc_t>
inline constexpr bool kStoredAsAcc =
    std::is_same_v<T, acc_t> || (std::is_same_v<T, tf32_t> && std::is_same_v<acc_t, float>);

// Element <-> accumulator conversions. Explicit intrinsics: torch's build flags define
// __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(tf32_t v) { return v.v; }

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t to_acc(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return static_cast<acc_t>(v);
  } else {
    return static_cast<acc_t>(to_float(v));
  }
}

template <typename T, typename acc_t>
__device__ __forceinline__ T from_acc(acc_t v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, tf32_t>) {
    return tf32_t{static_cast<float>(v)};
  } else {
    return static_cast<T>(v);
  }
}

// The float or double with the given IEEE bits: the special values below, spelled once.
template <typename acc_t>
__device__ __forceinline__ acc_t from_ieee_bits(int float_bits, long long double_bits) {
  if constexpr (std::is_same_v<acc_t, double>) {
    return __longlong_as_double(double_bits);
  } else {
    static_assert(std::is_same_v<acc_t, float>, "float or double");
    return __int_as_float(float_bits);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t quiet_nan() {
  return from_ieee_bits<acc_t>(0x7fc00000, 0x7ff8000000000000LL);
}

template <typename acc_t>
__device__ __forceinline__ acc_t positive_infinity() {
  return from_ieee_bits<acc_t>(0x7f800000, 0x7ff0000000000000LL);
}

// False for NaN and +-inf (inf - inf and NaN - NaN are NaN).
template <typename acc_t>
__device__ __forceinline__ bool is_finite_value(acc_t v) {
  return v - v == acc_t(0);
}

// Butterfly (xor) sum over a full warp: at every level the two partners compute a + b and
// b + a, which are bitwise equal, so every lane ends with the same bits and the order is
// fixed by the lane assignment: deterministic. All 32 lanes must call it.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

}  // namespace fastmine::cuda
