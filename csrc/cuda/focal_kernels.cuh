// Device kernels of the focal-loss family (formulas: csrc/common/focal.h, evaluated in acc_t).
// Device code only (see device_utils.cuh): compiled by nvcc for csrc/cuda/focal.cu and by a
// host compiler against the CUDA emulator for testing.
//
// Elementwise ops (sigmoid focal, FL*; the forward writes the loss, the backward recomputes
// the terms and writes upstream * gradient): grid-stride over groups of kVec contiguous elements,
// loaded with one 8- or 16-byte load where the group is whole and aligned. A reduced loss is
// summed per thread in element order, per block by a fixed tree (warp butterflies, then the
// warps in order), and the per-block partials by a single block in a fixed order. The grid
// size is a function of n alone (never of the GPU), so the sum's bits are too.
//
// Softmax focal: one warp per row; the row max and sum of exponentials are warp reductions in
// a fixed lane order.
#pragma once

#include "common/focal.h"
#include "cuda/engine/device_utils.cuh"

namespace fastmine::cuda {
namespace {

constexpr int kFocalThreads = 256;
constexpr int kFocalWarps = kFocalThreads / kWarp;
constexpr int kVec = 4;                    // elements per thread per step
constexpr int64_t kFocalMaxBlocks = 1024;  // also the size of the partials buffer

// Blocks of an elementwise launch: enough to cover n once, at most kFocalMaxBlocks (then the
// threads stride). Depends on n only: the reduction order is fixed by the input size.
inline int64_t focal_blocks(int64_t n) {
  const int64_t per_block = int64_t(kFocalThreads) * kVec;
  const int64_t b = (n + per_block - 1) / per_block;
  return b < 1 ? 1 : (b > kFocalMaxBlocks ? kFocalMaxBlocks : b);
}

// Loads kVec elements starting at i (i + kVec <= n) in one vector load when aligned.
template <typename T>
__device__ __forceinline__ void load_group(const T* __restrict__ p, int64_t i, T (&v)[kVec]) {
  constexpr size_t kBytes = sizeof(T) * kVec;  // 8 (half/bf16), 16 (float), 32 (double)
  const T* src = p + i;
  if constexpr (kBytes == 16) {
    if ((reinterpret_cast<uintptr_t>(src) & 15) == 0) {
      const float4 w = *reinterpret_cast<const float4*>(src);
      memcpy(v, &w, kBytes);
      return;
    }
  } else if constexpr (kBytes == 8) {
    if ((reinterpret_cast<uintptr_t>(src) & 7) == 0) {
      const float2 w = *reinterpret_cast<const float2*>(src);
      memcpy(v, &w, kBytes);
      return;
    }
  } else if constexpr (kBytes == 32) {
    if ((reinterpret_cast<uintptr_t>(src) & 15) == 0) {
      const double2 a = reinterpret_cast<const double2*>(src)[0];
      const double2 b = reinterpret_cast<const double2*>(src)[1];
      memcpy(v, &a, 16);
      memcpy(reinterpret_cast<char*>(v) + 16, &b, 16);
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) v[k] = src[k];
}

// The block's sum of v, the same bits on thread 0 for every launch: butterflies within each
// warp, then warp 0 adds the warps' sums in warp order. Every thread of the block must call.
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kFocalWarps];
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  acc_t s = acc_t(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < kFocalWarps; ++w) s += warp_sums[w];
  }
  __syncthreads();  // warp_sums may be reused by a later call
  return s;
}

// Term(x, t) -> LossGrad<acc_t>. loss: per element (acc_t; nullptr: none) when !kReduce;
// partial[blockIdx.x] gets the block's sum when kReduce. grad (nullptr: none) in T gets
// upstream * d loss / d x, upstream per element, or upstream[0] for all when up_scalar.
template <typename T, typename acc_t, bool kReduce, typename Term>
__global__ void __launch_bounds__(kFocalThreads)
    focal_elementwise_kernel(const T* __restrict__ x, const T* __restrict__ t, int64_t n, Term term,
                             acc_t* __restrict__ loss, T* __restrict__ grad,
                             const acc_t* __restrict__ upstream, bool up_scalar,
                             acc_t* __restrict__ partial) {
  const acc_t up0 = (grad != nullptr && up_scalar) ? upstream[0] : acc_t(0);
  acc_t sum = acc_t(0);
  const int64_t stride = int64_t(gridDim.x) * kFocalThreads * kVec;
  for (int64_t i = (int64_t(blockIdx.x) * kFocalThreads + threadIdx.x) * kVec; i < n; i += stride) {
    T xv[kVec], tv[kVec];
    const int cnt = n - i >= kVec ? kVec : static_cast<int>(n - i);
    if (cnt == kVec) {
      load_group(x, i, xv);
      load_group(t, i, tv);
    } else {
      for (int k = 0; k < cnt; ++k) {
        xv[k] = x[i + k];
        tv[k] = t[i + k];
      }
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      if (k < cnt) {
        const LossGrad<acc_t> r = term(to_acc<acc_t>(xv[k]), to_acc<acc_t>(tv[k]));
        if (grad != nullptr) {
          grad[i + k] = from_acc<T>(r.grad * (up_scalar ? up0 : upstream[i + k]));
        }
        if constexpr (kReduce) {
          sum += r.loss;
        } else {
          if (loss != nullptr) loss[i + k] = r.loss;
        }
      }
    }
  }
  if constexpr (kReduce) {
    const acc_t s = block_sum(sum);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
  }
}

// out[0] = sum of partial[0..n) in a fixed order (thread j adds j, j + 256, ...; then the
// block tree). One block.
template <typename acc_t>
__global__ void __launch_bounds__(kFocalThreads)
    focal_sum_partials_kernel(const acc_t* __restrict__ partial, int64_t n,
                              acc_t* __restrict__ out) {
  acc_t s = acc_t(0);
  for (int64_t j = threadIdx.x; j < n; j += kFocalThreads) s += partial[j];
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = s;
}

template <int kG, bool kGrad, typename acc_t>
struct SigmoidFocalTerm {
  acc_t a1, a0, gamma;
  __device__ __forceinline__ LossGrad<acc_t> operator()(acc_t x, acc_t t) const {
    return sigmoid_focal_term<kG, kGrad, ScalarMath<acc_t>>(x, t, a1, a0, gamma);
  }
};

template <bool kGrad, typename acc_t>
struct FocalStarTerm {
  acc_t gamma, inv_gamma, beta;
  __device__ __forceinline__ LossGrad<acc_t> operator()(acc_t x, acc_t t) const {
    const acc_t y = focal_star_sign<ScalarMath<acc_t>>(t);
    return focal_star_term<kGrad, ScalarMath<acc_t>>(x, y, gamma, inv_gamma, beta);
  }
};

// NaN-propagating max (fmax would drop a NaN and let the row look finite).
template <typename acc_t>
__device__ __forceinline__ acc_t nan_max(acc_t a, acc_t b) {
  return (b > a || b != b) ? b : a;
}

// One warp per row of C logits. loss[i] in acc_t; grad (nullptr: none) in T. A target out of
// [0, C) (the host checks it where it can) gives a NaN row instead of an out-of-bounds read.
template <int kG, bool kGrad, typename T, typename acc_t>
__global__ void __launch_bounds__(kFocalThreads)
    softmax_focal_kernel(const T* __restrict__ x, const int64_t* __restrict__ target,
                         const T* __restrict__ alpha, int64_t n, int64_t c, acc_t gamma,
                         acc_t* __restrict__ loss, T* __restrict__ grad) {
  const int lane = threadIdx.x % kWarp;
  const int64_t row_stride = int64_t(gridDim.x) * kFocalWarps;
  for (int64_t i = int64_t(blockIdx.x) * kFocalWarps + threadIdx.x / kWarp; i < n;
       i += row_stride) {
    const T* row = x + i * c;
    acc_t m = -INFINITY;
    for (int64_t j = lane; j < c; j += kWarp) m = nan_max(m, to_acc<acc_t>(row[j]));
#pragma unroll
    for (int off = kWarp / 2; off > 0; off >>= 1)
      m = nan_max(m, __shfl_xor_sync(kFullMask, m, off));
    acc_t s = acc_t(0);
    for (int64_t j = lane; j < c; j += kWarp) s += fm_exp(to_acc<acc_t>(row[j]) - m);
    s = warp_sum(s);
    const acc_t lse = m + log(s);
    const int64_t y = target[i];
    const bool ok = y >= 0 && y < c;
    const acc_t u = ok ? to_acc<acc_t>(row[ok ? y : 0]) - lse : quiet_nan<acc_t>();
    const acc_t a = to_acc<acc_t>(alpha[ok ? y : 0]);
    const LossGrad<acc_t> r = softmax_focal_term<kG, ScalarMath<acc_t>>(u, a, gamma);
    if (lane == 0) loss[i] = r.loss;
    if constexpr (kGrad) {
      for (int64_t j = lane; j < c; j += kWarp) {
        const acc_t p = fm_exp(to_acc<acc_t>(row[j]) - lse);
        grad[i * c + j] = from_acc<T>(r.grad * ((j == y ? acc_t(1) : acc_t(0)) - p));
      }
    }
  }
}

}  // namespace
}  // namespace fastmine::cuda
