// The focal-loss family on the CPU: sigmoid focal, FL* (elementwise) and softmax focal
// (row-wise), each one fused pass.
//  * Elementwise: the forward computes the loss terms (or their sum) and saves nothing; the
//    backward recomputes the terms and writes upstream * d loss / d logits in one pass.
//    Recomputing (a few vector exp/log1p per element) is cheaper than keeping an N-element
//    gradient from the forward: that costs a second N-element allocation and pass in the
//    backward, and at 10^7 logits fresh allocations (page faults) dominate.
//  * Softmax: one pass per row gives the loss and, when asked, d loss_row / d logits (the
//    row's max and sum of exponentials are needed by both).
//
// The formulas are csrc/common/focal.h's, run on ATen SIMD vectors (cpu/engine/vec_math.h): every
// element, tails included (partial loads), goes through the same vector code, so the result
// of an element never depends on where it sits. Work is split into fixed-size chunks over
// OpenMP (at::parallel_for); a reduced loss is summed per chunk (SIMD lanes, then blocks of
// 32 vectors folded into double) and the chunk sums are added in chunk order: bitwise
// reproducible for any thread count.
#include "cpu/engine/vec_math.h"  // first: selects ATen's SIMD implementation (see there)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "common/focal.h"
#include "cpu/contract_cpu.h"

namespace fastmine::cpu {
namespace {

// Elements per parallel chunk (and per partial sum of a reduced loss). A constant: the
// reduction order must not depend on the machine.
constexpr int64_t kChunk = int64_t(1) << 14;
// Vectors summed lane-wise in T before they are folded into the double chunk sum.
constexpr int64_t kFold = 32;

// Runs term(x_vec, t_vec) -> LossGrad over n elements. Writes the per-element loss (when
// !reduce and loss != nullptr) and upstream * gradient (when grad != nullptr; upstream per
// element, or the scalar up0 when upstream == nullptr); returns the loss sum (when reduce).
template <typename T, typename Term>
double elementwise(const T* x, const T* t, int64_t n, bool reduce, T* loss, T* grad,
                   const T* upstream, T up0, const Term& term) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t kW = V::size();
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(reduce ? n_chunks : 0, 0.0);
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t begin = c * kChunk, end = std::min(n, begin + kChunk);
      double chunk_sum = 0.0;
      V acc(T(0));
      int64_t folded = 0;
      for (int64_t i = begin; i < end; i += kW) {
        const int64_t cnt = std::min<int64_t>(kW, end - i);
        const V xv = V::loadu(x + i, cnt), tv = V::loadu(t + i, cnt);
        const LossGrad<V> r = term(xv, tv);
        if (grad != nullptr) {
          const V up = upstream == nullptr ? V(up0) : V::loadu(upstream + i, cnt);
          (r.grad * up).store(grad + i, cnt);
        }
        if (!reduce) {
          if (loss != nullptr) r.loss.store(loss + i, cnt);
          continue;
        }
        // Padding lanes of a partial vector hold the term of x = t = 0: keep them out.
        acc = acc + (cnt == kW ? r.loss : V::set(V(T(0)), r.loss, cnt));
        if (++folded == kFold || i + kW >= end) {
          T lanes[kW];
          acc.store(lanes);
          for (int64_t l = 0; l < kW; ++l) chunk_sum += static_cast<double>(lanes[l]);
          acc = V(T(0));
          folded = 0;
        }
      }
      if (reduce) partial[c] = chunk_sum;
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

// Shared body of the elementwise ops. launch(zero, x, t, n, loss, grad, upstream, up0)
// runs the op's term with the gradient exactly when grad != nullptr.
template <typename Launch>
at::Tensor run_forward(const at::Tensor& logits_, const at::Tensor& targets_, bool reduce,
                       const Launch& launch) {
  const at::Tensor x = dense(logits_), t = dense(targets_);
  at::Tensor loss = reduce ? at::empty({}, x.options()) : at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastmine_focal_cpu", [&] {
    using T = scalar_t;
    T* lp = reduce ? nullptr : loss.data_ptr<T>();
    const double total = launch(T(0), x.data_ptr<T>(), t.data_ptr<T>(), x.numel(), reduce, lp,
                                static_cast<T*>(nullptr), static_cast<const T*>(nullptr), T(0));
    if (reduce) loss.fill_(total);
  });
  return loss;
}

template <typename Launch>
at::Tensor run_backward(const at::Tensor& grad_, const at::Tensor& logits_,
                        const at::Tensor& targets_, const Launch& launch) {
  const at::Tensor x = dense(logits_), t = dense(targets_), g = dense(grad_);
  at::Tensor gx = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastmine_focal_backward_cpu", [&] {
    using T = scalar_t;
    const bool scalar = g.dim() == 0;
    launch(T(0), x.data_ptr<T>(), t.data_ptr<T>(), x.numel(), false, static_cast<T*>(nullptr),
           gx.data_ptr<T>(), scalar ? nullptr : g.data_ptr<T>(), scalar ? g.item<T>() : T(0));
  });
  return gx;
}

// The sigmoid focal term's launcher (gradient iff grad != nullptr).
struct SigmoidFocalLaunch {
  double alpha, gamma;
  template <typename T>
  double operator()(T, const T* x, const T* t, int64_t n, bool reduce, T* lp, T* gp, const T* up,
                    T up0) const {
    using V = at::vec::Vectorized<T>;
    // alpha < 0 disables the class weighting: a_t = 1 for every target.
    const V a1(T(alpha >= 0 ? alpha : 1.0)), a0(T(alpha >= 0 ? 1.0 - alpha : 1.0));
    const V g(static_cast<T>(gamma));
    double total = 0.0;
    dispatch_gamma(gamma, [&](auto kg) {
      dispatch_bool(gp != nullptr, [&](auto kgrad) {
        total = elementwise<T>(x, t, n, reduce, lp, gp, up, up0, [&](const V& xv, const V& tv) {
          return sigmoid_focal_term<decltype(kg)::value, decltype(kgrad)::value, VecMath<T>>(
              xv, tv, a1, a0, g);
        });
      });
    });
    return total;
  }
};

struct FocalStarLaunch {
  double gamma, beta;
  template <typename T>
  double operator()(T, const T* x, const T* t, int64_t n, bool reduce, T* lp, T* gp, const T* up,
                    T up0) const {
    using V = at::vec::Vectorized<T>;
    const V g(static_cast<T>(gamma)), inv_g(static_cast<T>(1.0 / gamma)), b(static_cast<T>(beta));
    double total = 0.0;
    dispatch_bool(gp != nullptr, [&](auto kgrad) {
      total = elementwise<T>(x, t, n, reduce, lp, gp, up, up0, [&](const V& xv, const V& tv) {
        const V y = focal_star_sign<VecMath<T>>(tv);
        return focal_star_term<decltype(kgrad)::value, VecMath<T>>(xv, y, g, inv_g, b);
      });
    });
    return total;
  }
};

at::Tensor sigmoid_focal_cpu(const at::Tensor& logits, const at::Tensor& targets, double alpha,
                             double gamma, bool reduce) {
  contract::sigmoid_focal<CpuSide>(logits, targets, alpha, gamma);
  return run_forward(logits, targets, reduce, SigmoidFocalLaunch{alpha, gamma});
}

at::Tensor sigmoid_focal_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                      const at::Tensor& targets, double alpha, double gamma) {
  contract::sigmoid_focal_backward<CpuSide>(grad, logits, targets, alpha, gamma);
  return run_backward(grad, logits, targets, SigmoidFocalLaunch{alpha, gamma});
}

at::Tensor focal_star_cpu(const at::Tensor& logits, const at::Tensor& targets, double gamma,
                          double beta, bool reduce) {
  contract::focal_star<CpuSide>(logits, targets, gamma, beta);
  return run_forward(logits, targets, reduce, FocalStarLaunch{gamma, beta});
}

at::Tensor focal_star_backward_cpu(const at::Tensor& grad, const at::Tensor& logits,
                                   const at::Tensor& targets, double gamma, double beta) {
  contract::focal_star_backward<CpuSide>(grad, logits, targets, gamma, beta);
  return run_backward(grad, logits, targets, FocalStarLaunch{gamma, beta});
}

// ---- softmax focal: one row of C logits per sample ---------------------------------------------

template <int kG, bool kGrad, typename T>
void softmax_focal_rows(const T* x, const int64_t* target, const T* alpha, int64_t n, int64_t c,
                        T gamma, T* loss, T* grad) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t kW = V::size();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(c, 1));
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const T* row = x + i * c;
      // maximum() propagates NaN, so a NaN logit makes the whole row NaN.
      const T m = at::vec::reduce_all<T>(
          [](const V& a, const V& b) { return at::vec::maximum(a, b); }, row, c);
      const V mv(m);
      const T s = at::vec::map_reduce_all<T>([&](const V& v) { return (v - mv).exp(); },
                                             [](const V& a, const V& b) { return a + b; }, row, c);
      const T lse = m + std::log(s);
      const int64_t y = target[i];
      const LossGrad<T> r = softmax_focal_term<kG, ScalarMath<T>>(row[y] - lse, alpha[y], gamma);
      loss[i] = r.loss;
      if constexpr (kGrad) {
        // dloss/dx_j = dloss/du (delta_jy - p_j), p_j = exp(x_j - lse).
        T* grow = grad + i * c;
        const V lv(lse), dv(r.grad);
        for (int64_t j = 0; j < c; j += kW) {
          const int64_t cnt = std::min<int64_t>(kW, c - j);
          const V p = (V::loadu(row + j, cnt) - lv).exp();
          (V(T(0)) - dv * p).store(grow + j, cnt);
        }
        grow[y] += r.grad;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> softmax_focal_cpu(const at::Tensor& logits_,
                                                     const at::Tensor& target_,
                                                     const at::Tensor& alpha_, double gamma,
                                                     bool with_grad) {
  contract::softmax_focal<CpuSide>(logits_, target_, alpha_, gamma);
  const int64_t n = logits_.size(0), c = logits_.size(1);
  const at::Tensor x = dense(logits_), target = dense(target_), alpha = dense(alpha_);
  const int64_t* tp = target.data_ptr<int64_t>();
  at::Tensor loss = at::empty({n}, x.options());
  at::Tensor grad = with_grad ? at::empty({n, c}, x.options()) : at::empty({0}, x.options());
  if (n == 0) return {loss, grad};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "softmax_focal_cpu", [&] {
    using T = scalar_t;
    dispatch_gamma(gamma, [&](auto kg) {
      dispatch_bool(with_grad, [&](auto kgrad) {
        softmax_focal_rows<decltype(kg)::value, decltype(kgrad)::value, T>(
            x.data_ptr<T>(), tp, alpha.data_ptr<T>(), n, c, static_cast<T>(gamma),
            loss.data_ptr<T>(), with_grad ? grad.data_ptr<T>() : nullptr);
      });
    });
  });
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("sigmoid_focal", &sigmoid_focal_cpu);
  m.impl("sigmoid_focal_backward", &sigmoid_focal_backward_cpu);
  m.impl("focal_star", &focal_star_cpu);
  m.impl("focal_star_backward", &focal_star_backward_cpu);
  m.impl("softmax_focal", &softmax_focal_cpu);
}

}  // namespace fastmine::cpu
