// The focal-loss family's formulas, defined once for the CPU kernels (csrc/cpu/focal.cpp,
// scalar and SIMD) and the CUDA kernels (csrc/cuda/focal_kernels.cuh).
//
// Every formula is a template over a math policy M (exp, log1p, expm1, pow, abs, relu and two
// selects) and a value type T. T is a scalar on the GPU and in scalar tails, and a SIMD
// vector (at::vec::Vectorized) in the CPU's main loops: the same source line computes both,
// so the CPU tests exercise the GPU's arithmetic. For that the formulas are branch-free:
// every `?:` is a policy select, which both sides of evaluate (a lane that is discarded may
// hold inf/NaN; it never reaches a result).
//
// Stability (docs/semantics.md, "Focal losses"): everything is computed from the logit x through
// e = exp(-|x|) in (0, 1], so nothing overflows at |x| = 1000 and nothing is 1 - (1 - tiny):
//   softplus(x)  = max(x, 0) + log1p(e)
//   sigmoid(x)   = 1/(1+e) for x >= 0, e/(1+e) otherwise; 1 - sigmoid(x) the other one.
#pragma once

#include <type_traits>

#include "common/macros.h"

namespace fastmine {

// Scalar math for the formulas below (CPU scalar code and CUDA device code).
FM_HD float focal_pow(float b, float e) { return powf(b, e); }
FM_HD double focal_pow(double b, double e) { return pow(b, e); }
FM_HD float focal_expm1(float v) { return expm1f(v); }
FM_HD double focal_expm1(double v) { return expm1(v); }

template <typename T>
struct ScalarMath {
  static FM_HD T exp(T v) { return fm_exp(v); }
  static FM_HD T log1p(T v) { return fm_log1p(v); }
  static FM_HD T expm1(T v) { return focal_expm1(v); }
  static FM_HD T pow(T b, T e) { return focal_pow(b, e); }
  static FM_HD T abs(T v) { return v < T(0) ? -v : v; }  // NaN stays NaN
  static FM_HD T relu(T v) { return v > T(0) ? v : T(0); }
  // c >= 0 ? a : b, and c > 0 ? a : b (a NaN c selects b).
  static FM_HD T where_nonneg(T c, T a, T b) { return c >= T(0) ? a : b; }
  static FM_HD T where_pos(T c, T a, T b) { return c > T(0) ? a : b; }
};

// The focusing exponent: gamma = 0, 1, 2 (the default) get exact fast paths, chosen once per
// launch (a template argument), others go through pow. pow(0, 0) = 1 as in torch.
enum FocalGamma : int { kGammaPow = -1, kGamma0 = 0, kGamma1 = 1, kGamma2 = 2 };

inline int focal_gamma_kind(double gamma) {
  if (gamma == 0.0) return kGamma0;
  if (gamma == 1.0) return kGamma1;
  if (gamma == 2.0) return kGamma2;
  return kGammaPow;
}

// Host side of the launch: f(integral_constant<int, kind>) with gamma's kind, so that the
// kernels get it as a template argument.
template <typename F>
void dispatch_gamma(double gamma, F&& f) {
  switch (focal_gamma_kind(gamma)) {
    case kGamma0:
      return f(std::integral_constant<int, kGamma0>{});
    case kGamma1:
      return f(std::integral_constant<int, kGamma1>{});
    case kGamma2:
      return f(std::integral_constant<int, kGamma2>{});
    default:
      return f(std::integral_constant<int, kGammaPow>{});
  }
}

// f(std::true_type) or f(std::false_type): a flag (with or without the gradient) made a
// template argument.
template <typename F>
void dispatch_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// q^gamma for q in [0, 1].
template <int kG, typename M, typename T>
FM_HD T focal_modulator(T q, T gamma) {
  if constexpr (kG == kGamma0) {
    return T(1);
  } else if constexpr (kG == kGamma1) {
    return q;
  } else if constexpr (kG == kGamma2) {
    return q * q;
  } else {
    return M::pow(q, gamma);
  }
}

template <typename T>
struct LossGrad {
  T loss;  // the element's (or row's) loss term
  T grad;  // its derivative with respect to the logit x (or to log p_y, for softmax)
};

// ---- sigmoid focal loss (RetinaNet; torchvision.ops.sigmoid_focal_loss) --------------------
//
// x: logit, t: target in [0, 1] (soft targets allowed). With p = sigmoid(x):
//   ce  = BCE-with-logits = (1 - t) softplus(x) + t softplus(-x)   (no cancellation at t ~ 1)
//   q   = 1 - p_t = p (1 - t) + (1 - p) t
//   a_t = a1 t + a0 (1 - t)      (a1 = alpha, a0 = 1 - alpha; both 1 when alpha < 0)
//   loss = a_t ce q^gamma
// Derivative: dce/dx = p - t = p (1 - t) - (1 - p) t (the exact form, no 1 - (1 - tiny)),
// dq/dx = (1 - 2t) p (1 - p), so d(q^gamma)/dx = gamma q^gamma (1 - 2t) r with
// r = p (1 - p) / q in [0, 1] (p(1-p) <= min(p, 1-p) <= q). Writing it through r instead of
// q^(gamma-1) keeps it finite for gamma < 1 where q underflows to 0; there the term's limit
// is 0 and r is taken as 0.
//   dloss/dx = a_t q^gamma [ (p - t) + gamma ce (1 - 2t) r ]
template <int kG, bool kGrad, typename M, typename T>
FM_HD LossGrad<T> sigmoid_focal_term(T x, T t, T a1, T a0, T gamma) {
  const T zero(0), one(1);
  const T e = M::exp(zero - M::abs(x));
  const T tc = one - t;
  const T ce = tc * M::relu(x) + t * M::relu(zero - x) + M::log1p(e);
  const T s = one / (one + e);
  const T es = e * s;
  const T p = M::where_nonneg(x, s, es);   // sigmoid(x)
  const T pc = M::where_nonneg(x, es, s);  // 1 - sigmoid(x)
  const T q = p * tc + pc * t;
  const T w = focal_modulator<kG, M>(q, gamma);
  const T at = a1 * t + a0 * tc;
  LossGrad<T> out{at * ce * w, zero};
  if constexpr (kGrad) {
    const T r = M::where_pos(q, (p * pc) / q, zero);
    out.grad = at * w * ((p * tc - pc * t) + gamma * ce * (tc - t) * r);
  }
  return out;
}

// ---- FL* (Lin et al., appendix A; docs/semantics.md, `focal_star_loss`) -------------------
//
// y in {-1, +1} from the target: t > 0 gives +1, t <= 0 gives -1 (so {0, 1} and {-1, +1}
// targets both work), a NaN target stays NaN.
template <typename M, typename T>
FM_HD T focal_star_sign(T t) {
  return M::where_pos(t, T(1), M::where_nonneg(T(0) - t, T(-1), t));
}

// z = gamma y x + beta, p*_t = sigmoid(z), loss = -log(p*_t) / gamma = softplus(-z) / gamma;
// dloss/dx = -y sigmoid(-z)  (the 1/gamma cancels the chain rule's gamma).
template <bool kGrad, typename M, typename T>
FM_HD LossGrad<T> focal_star_term(T x, T y, T gamma, T inv_gamma, T beta) {
  const T zero(0), one(1);
  const T z = gamma * y * x + beta;
  const T e = M::exp(zero - M::abs(z));
  LossGrad<T> out{(M::relu(zero - z) + M::log1p(e)) * inv_gamma, zero};
  if constexpr (kGrad) {
    const T s = one / (one + e);
    const T sig_neg = M::where_nonneg(z, e * s, s);  // sigmoid(-z)
    out.grad = (zero - y) * sig_neg;
  }
  return out;
}

// ---- softmax focal loss ----------------------------------------------------------------------
//
// Row-wise, from u = log p_y = x_y - logsumexp(x) <= 0 (computed by the caller):
//   q = 1 - p_y = -expm1(u)  (exact near p_y = 1), loss = -alpha_y q^gamma u,
//   dloss/du = alpha_y q^gamma (gamma p_y u/q - 1), with u/q -> -1 as q -> 0 (u = log(1-q)).
// The caller turns dloss/du into the row's gradient: dloss/dx_j = dloss/du (delta_jy - p_j).
template <int kG, typename M, typename T>
FM_HD LossGrad<T> softmax_focal_term(T u, T alpha_y, T gamma) {
  const T q = T(0) - M::expm1(u);
  const T w = focal_modulator<kG, M>(q, gamma);
  const T ratio = M::where_pos(q, u / q, T(-1));
  const T p_y = T(1) - q;
  return LossGrad<T>{(T(0) - alpha_y) * w * u, alpha_y * w * (gamma * p_y * ratio - T(1))};
}

}  // namespace fastmine
