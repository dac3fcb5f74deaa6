// The math policy of csrc/common/focal.h for ATen's SIMD vectors, so that the CPU kernels run
// the shared formulas 8 (float) or 4 (double) lanes at a time.
//
// ATen's Vectorized<T> is only SIMD when a CPU_CAPABILITY_* macro is defined (torch builds
// its own kernels once per capability); without one it is a plain array with scalar libm
// calls. Where the compiler targets AVX2 + FMA (setup.py passes -march=native) this header
// selects the AVX2 implementation, whose exp/log1p/expm1/pow are SLEEF's vector functions,
// exported by libtorch_cpu. Include it before any other ATen vector header in the file, and
// only from files that need it: it changes which inline namespace at::vec resolves to.
#pragma once

#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

namespace fastmine::cpu {

template <typename T>
struct VecMath {
  using V = at::vec::Vectorized<T>;
  static V exp(const V& v) { return v.exp(); }
  static V log1p(const V& v) { return v.log1p(); }
  static V expm1(const V& v) { return v.expm1(); }
  static V pow(const V& b, const V& e) { return b.pow(e); }
  static V abs(const V& v) { return v.abs(); }
  static V relu(const V& v) { return at::vec::clamp_min(v, V(T(0))); }
  // blendv(a, b, mask) takes b where the mask is set; comparisons give all-ones lanes.
  static V where_nonneg(const V& c, const V& a, const V& b) {
    return V::blendv(b, a, c >= V(T(0)));
  }
  static V where_pos(const V& c, const V& a, const V& b) { return V::blendv(b, a, c > V(T(0))); }
};

}  // namespace fastmine::cpu
