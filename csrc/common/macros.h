// Portability macros so every formula in csrc/common/ compiles for host and device alike.
#pragma once

#if defined(__CUDACC__)
#define FM_HD __host__ __device__ __forceinline__
#else
#define FM_HD inline
#endif

#include <cmath>
#include <cstdint>

namespace fastmine {

// Metric ids, shared with fastmine/_ops.py (METRICS) and the op schemas.
enum Metric : int64_t { kEuclidean = 0, kSqEuclidean = 1, kCosine = 2 };

// The cosine metric clamps each norm at this value (docs/semantics.md, "Distances").
constexpr double kCosineEps = 1e-8;

// Scalar math that resolves to the right overload on host and device.
FM_HD float fm_sqrt(float v) { return sqrtf(v); }
FM_HD double fm_sqrt(double v) { return sqrt(v); }
FM_HD float fm_exp(float v) { return expf(v); }
FM_HD double fm_exp(double v) { return exp(v); }
FM_HD float fm_log(float v) { return logf(v); }
FM_HD double fm_log(double v) { return log(v); }
FM_HD float fm_fma(float a, float b, float c) { return fmaf(a, b, c); }
FM_HD double fm_fma(double a, double b, double c) { return fma(a, b, c); }
FM_HD float fm_log1p(float v) { return log1pf(v); }
FM_HD double fm_log1p(double v) { return log1p(v); }

template <typename T>
FM_HD bool fm_isnan(T v) {
  return v != v;
}

}  // namespace fastmine
