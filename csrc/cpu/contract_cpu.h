// The CPU module's side of the argument contracts (common/op_contracts.h): ATen tensors, the
// dtypes the CPU kernels compute in (fastmine's Python layer upcasts half inputs), and
// errors as c10 exceptions, so that a shape or value error arrives in Python as ValueError.
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "common/op_contracts.h"

namespace fastmine::cpu {

// What every CPU kernel reads its tensor arguments through: t itself when it is laid out as
// a fresh tensor, else a fresh copy (contract::fresh_strides says why not contiguous()).
inline at::Tensor dense(const at::Tensor& t) {
  if (contract::fresh_strides(t)) return t;
  at::Tensor copy = at::empty(t.sizes(), t.options());
  copy.copy_(t);
  return copy;
}

struct CpuSide {
  using Tensor = at::Tensor;

  static bool on_device(const Tensor& t) { return t.is_cpu(); }
  static bool same_device(const Tensor& a, const Tensor& b) { return a.device() == b.device(); }
  static bool computes(at::ScalarType st) { return st == at::kFloat || st == at::kDouble; }
  static const char* float_dtypes() { return "float32 or float64 on the CPU"; }

  static contract::IndexRange index_range(const Tensor& t) {
    const at::Tensor c = dense(t);
    const int64_t* p = c.data_ptr<int64_t>();
    contract::IndexRange r{p[0], p[0]};
    for (int64_t i = 1, n = c.numel(); i < n; ++i) {
      r.min = std::min(r.min, p[i]);
      r.max = std::max(r.max, p[i]);
    }
    return r;
  }

  [[noreturn]] static void fail(contract::Fault fault, const std::string& message) {
    if (fault == contract::Fault::Value) C10_THROW_ERROR(ValueError, message);
    C10_THROW_ERROR(Error, message);
  }
};

}  // namespace fastmine::cpu
