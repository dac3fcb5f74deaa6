// The CUDA module's side of the argument contracts (common/op_contracts.h): stable-ABI
// tensors, the four float dtypes the CUDA kernels compute in, and errors as
// std::runtime_error (the stable ABI carries no other exception type: every refusal arrives
// in Python as RuntimeError, with the same message as on the CPU).
#pragma once

#include <stdexcept>
#include <string>

#include "common/op_contracts.h"
#include "cuda/engine/cuda_utils.cuh"

namespace fastmine::cuda {

struct CudaSide {
  using Tensor = torch::stable::Tensor;

  static bool on_device(const Tensor& t) { return t.is_cuda(); }
  static bool same_device(const Tensor& a, const Tensor& b) {
    return a.get_device_index() == b.get_device_index();
  }
  static bool computes(ScalarType st) {
    return st == ScalarType::Float || st == ScalarType::Double || st == ScalarType::Half ||
           st == ScalarType::BFloat16;
  }
  static const char* float_dtypes() { return "float32, float64, float16 or bfloat16"; }

  // One reduction kernel and a copy of its per-block partials: a device synchronisation,
  // an O(n) pass beside the op's O(B * M * D) work.
  static contract::IndexRange index_range(const Tensor& t);

  [[noreturn]] static void fail(contract::Fault, const std::string& message) {
    throw std::runtime_error(message);
  }
};

// What every CUDA entry point reads its tensor arguments through: t itself when it is laid
// out as a fresh tensor, else a fresh copy (contract::fresh_strides says why not contiguous()).
inline Tensor dense(const Tensor& t) {
  if (contract::fresh_strides(t)) return t;
  Tensor copy = torch::stable::new_empty(t, t.sizes());
  torch::stable::copy_(copy, t);
  return copy;
}

}  // namespace fastmine::cuda
