// The focal-loss family on the GPU (stable ABI): sigmoid focal, FL*, softmax focal.
// Elementwise ops: the forward is one kernel writing the loss terms (or per-block partial
// sums, then one one-block launch adds them); the backward one kernel recomputing the terms
// and writing upstream * d loss / d logits. Softmax: one kernel, loss and (when asked) the
// row gradient.
// Kernels: cuda/focal_kernels.cuh; formulas: common/focal.h.
#include <cmath>
#include <type_traits>

#include "cuda/contract_cuda.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/focal_kernels.cuh"
#include "cuda/op_entry.cuh"

namespace fastmine::cuda {
namespace {

std::vector<int64_t> sizes_of(const Tensor& t) {
  std::vector<int64_t> s(t.dim());
  for (int64_t d = 0; d < t.dim(); ++d) s[d] = t.size(d);
  return s;
}

// Shared host body of the elementwise ops, forward (grad_out == nullptr: loss only) and
// backward (grad_out: upstream * gradient, no loss). launch(tag, with_grad, go) calls
// go(term) with the op's term functor for acc_of_t<T>.
template <typename Launch>
Tensor run_elementwise(const Tensor& x_, const Tensor& t_, bool reduce, const Tensor* upstream_,
                       const char* op, const Launch& launch) {
  const OpEntry entry(x_);
  const Tensor x = dense(x_), t = dense(t_);
  const bool backward = upstream_ != nullptr;
  const std::vector<int64_t> shape = sizes_of(x);
  Tensor out = backward ? torch::stable::new_empty(x, shape)
                        : (reduce ? torch::stable::new_empty(x, {}, entry.acc_st)
                                  : torch::stable::new_empty(x, shape, entry.acc_st));
  Tensor upstream = backward ? dense(*upstream_) : out;
  const int64_t n = x.numel();
  if (n == 0) {
    if (reduce && !backward) torch::stable::zero_(out);
    return out;
  }
  const bool up_scalar = backward && upstream.dim() == 0;
  const int64_t blocks = focal_blocks(n);
  Tensor partial = torch::stable::new_empty(x, {reduce && !backward ? blocks : 1}, entry.acc_st);
  dispatch_floating(x.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using acc_t = acc_of_t<T>;
    launch(tag, backward, [&](auto term) {
      const acc_t* up = backward ? cptr<acc_t>(upstream) : nullptr;
      if (reduce && !backward) {
        focal_elementwise_kernel<T, acc_t, true>
            <<<grid_1d(blocks, op), kFocalThreads, 0, entry.stream>>>(
                cptr<T>(x), cptr<T>(t), n, term, nullptr, nullptr, nullptr, false,
                mptr<acc_t>(partial));
        check_launch("focal_elementwise_kernel");
        focal_sum_partials_kernel<acc_t>
            <<<1, kFocalThreads, 0, entry.stream>>>(cptr<acc_t>(partial), blocks, mptr<acc_t>(out));
        check_launch("focal_sum_partials_kernel");
      } else {
        focal_elementwise_kernel<T, acc_t, false>
            <<<grid_1d(blocks, op), kFocalThreads, 0, entry.stream>>>(
                cptr<T>(x), cptr<T>(t), n, term, backward ? nullptr : mptr<acc_t>(out),
                backward ? mptr<T>(out) : nullptr, up, up_scalar, mptr<acc_t>(partial));
        check_launch("focal_elementwise_kernel");
      }
    });
  });
  return out;
}

// The launchers: the term functor of each op, with or without its gradient.
struct SigmoidFocalLaunch {
  double alpha, gamma;
  template <typename Tag, typename Go>
  void operator()(Tag, bool with_grad, Go&& go) const {
    using acc_t = acc_of_t<typename Tag::type>;
    const acc_t a1 = static_cast<acc_t>(alpha >= 0 ? alpha : 1.0);
    const acc_t a0 = static_cast<acc_t>(alpha >= 0 ? 1.0 - alpha : 1.0);
    dispatch_gamma(gamma, [&](auto kg) {
      dispatch_bool(with_grad, [&](auto kgrad) {
        go(SigmoidFocalTerm<decltype(kg)::value, decltype(kgrad)::value, acc_t>{
            a1, a0, static_cast<acc_t>(gamma)});
      });
    });
  }
};

struct FocalStarLaunch {
  double gamma, beta;
  template <typename Tag, typename Go>
  void operator()(Tag, bool with_grad, Go&& go) const {
    using acc_t = acc_of_t<typename Tag::type>;
    dispatch_bool(with_grad, [&](auto kgrad) {
      go(FocalStarTerm<decltype(kgrad)::value, acc_t>{
          static_cast<acc_t>(gamma), static_cast<acc_t>(1.0 / gamma), static_cast<acc_t>(beta)});
    });
  }
};

constexpr const char* kSigmoid = "sigmoid_focal_loss";
constexpr const char* kStar = "focal_star_loss";

Tensor sigmoid_focal_cuda(Tensor logits, Tensor targets, double alpha, double gamma, bool reduce) {
  contract::sigmoid_focal<CudaSide>(logits, targets, alpha, gamma);
  return run_elementwise(logits, targets, reduce, nullptr, kSigmoid,
                         SigmoidFocalLaunch{alpha, gamma});
}

Tensor sigmoid_focal_backward_cuda(Tensor grad, Tensor logits, Tensor targets, double alpha,
                                   double gamma) {
  contract::sigmoid_focal_backward<CudaSide>(grad, logits, targets, alpha, gamma);
  return run_elementwise(logits, targets, false, &grad, kSigmoid, SigmoidFocalLaunch{alpha, gamma});
}

Tensor focal_star_cuda(Tensor logits, Tensor targets, double gamma, double beta, bool reduce) {
  contract::focal_star<CudaSide>(logits, targets, gamma, beta);
  return run_elementwise(logits, targets, reduce, nullptr, kStar, FocalStarLaunch{gamma, beta});
}

Tensor focal_star_backward_cuda(Tensor grad, Tensor logits, Tensor targets, double gamma,
                                double beta) {
  contract::focal_star_backward<CudaSide>(grad, logits, targets, gamma, beta);
  return run_elementwise(logits, targets, false, &grad, kStar, FocalStarLaunch{gamma, beta});
}

std::tuple<Tensor, Tensor> softmax_focal_cuda(Tensor logits_, Tensor target_, Tensor alpha_,
                                              double gamma, bool with_grad) {
  constexpr const char* kOp = "softmax_focal_loss";
  contract::softmax_focal<CudaSide>(logits_, target_, alpha_, gamma);
  const int64_t n = logits_.size(0), c = logits_.size(1);
  const OpEntry entry(logits_);
  const Tensor x = dense(logits_);
  const Tensor target = dense(target_), alpha = dense(alpha_);
  Tensor loss = torch::stable::new_empty(x, {n}, entry.acc_st);
  Tensor grad = with_grad ? torch::stable::new_empty(x, {n, c}) : torch::stable::new_empty(x, {0});
  if (n == 0) return {loss, grad};
  const int64_t blocks = std::min<int64_t>(ceil_div(n, kFocalWarps), int64_t(1) << 16);
  dispatch_floating(x.scalar_type(), kOp, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using acc_t = acc_of_t<T>;
    dispatch_gamma(gamma, [&](auto kg) {
      dispatch_bool(with_grad, [&](auto kgrad) {
        softmax_focal_kernel<decltype(kg)::value, decltype(kgrad)::value, T, acc_t>
            <<<grid_1d(blocks, kOp), kFocalThreads, 0, entry.stream>>>(
                cptr<T>(x), cptr<int64_t>(target), cptr<T>(alpha), n, c, static_cast<acc_t>(gamma),
                mptr<acc_t>(loss), with_grad ? mptr<T>(grad) : nullptr);
        check_launch("softmax_focal_kernel");
      });
    });
  });
  return {loss, grad};
}

}  // namespace
}  // namespace fastmine::cuda

STABLE_TORCH_LIBRARY_IMPL(fastmine, CUDA, m) {
  m.impl("sigmoid_focal", TORCH_BOX(&fastmine::cuda::sigmoid_focal_cuda));
  m.impl("sigmoid_focal_backward", TORCH_BOX(&fastmine::cuda::sigmoid_focal_backward_cuda));
  m.impl("focal_star", TORCH_BOX(&fastmine::cuda::focal_star_cuda));
  m.impl("focal_star_backward", TORCH_BOX(&fastmine::cuda::focal_star_backward_cuda));
  m.impl("softmax_focal", TORCH_BOX(&fastmine::cuda::softmax_focal_cuda));
}
