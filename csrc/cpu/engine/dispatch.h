// Run-time options made compile-time constants for the per-pair loops. With the metric and
// the hinge power known at compile time, the formulas of csrc/common fold to branch-free
// code that the compiler vectorises; with them read at run time inside the loop (three
// metric formulas, an exp/log power) the same loops stay scalar, several times slower.
#pragma once
#include <cstdint>
#include <type_traits>

#include "common/macros.h"

namespace fastmine::cpu {

template <int64_t M>
using MetricConst = std::integral_constant<int64_t, M>;

// f(MetricConst<metric>{}).
template <typename F>
decltype(auto) with_metric(int64_t metric, F&& f) {
  switch (metric) {
    case kEuclidean:
      return f(MetricConst<kEuclidean>{});
    case kSqEuclidean:
      return f(MetricConst<kSqEuclidean>{});
    default:
      return f(MetricConst<kCosine>{});
  }
}

// A hinge power known only at run time (anything but 1 and 2).
struct AnyPower {
  double value;
};

// f(integral_constant<int, 1 or 2>) for the common powers, f(AnyPower) otherwise.
template <typename F>
decltype(auto) with_power(double power, F&& f) {
  if (power == 1.0) return f(std::integral_constant<int, 1>{});
  if (power == 2.0) return f(std::integral_constant<int, 2>{});
  return f(AnyPower{power});
}

template <typename T, typename P>
T power_value(P p) {
  if constexpr (std::is_same_v<P, AnyPower>) {
    return T(p.value);
  } else {
    return T(P::value);
  }
}

}  // namespace fastmine::cpu
