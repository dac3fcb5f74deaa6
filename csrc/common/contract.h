// The vocabulary of argument rules at the C++ boundary: one checker, templated over the side
// (the CPU module's ATen tensors, the CUDA module's stable-ABI tensors), so that every op's
// rules (common/op_contracts.h) are written once and a raw torch.ops.fastmine.* call is
// refused in the same words on both devices, before any kernel reads its arguments.
//
// A Side provides:
//   using Tensor;                                   the tensor type of that module
//   static bool on_device(const Tensor&);           on this module's device type
//   static bool same_device(const Tensor&, const Tensor&);
//   static bool computes(ScalarType);               a float dtype its kernels run in
//   static const char* float_dtypes();              those dtypes, for messages
//   static IndexRange index_range(const Tensor&);   min and max of a non-empty int64 vector
//   [[noreturn]] static void fail(Fault, const std::string&);
//
// Shapes, sizes and values fail as Fault::Value (a ValueError where the ABI can carry one),
// dtypes and devices as Fault::Runtime. Any strides are accepted: the kernels read dense
// copies (fresh_strides below) of what is not already laid out as a fresh tensor.
#pragma once

#include <torch/headeronly/core/ScalarType.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "common/macros.h"
#include "common/miners.h"

namespace fastmine::contract {

using ScalarType = c10::ScalarType;  // one enum in ATen and in the stable ABI

enum class Fault { Value, Runtime };

struct IndexRange {
  int64_t min, max;
};

// The dtype of losses, mined distances and their gradients: float32 for half inputs.
inline ScalarType loss_dtype(ScalarType st) {
  return st == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// torch's Python names of the dtypes a user meets here; c10's own names otherwise.
inline const char* dtype_name(ScalarType st) {
  switch (st) {
    case ScalarType::Float:
      return "float32";
    case ScalarType::Double:
      return "float64";
    case ScalarType::Half:
      return "float16";
    case ScalarType::BFloat16:
      return "bfloat16";
    case ScalarType::Long:
      return "int64";
    case ScalarType::Int:
      return "int32";
    case ScalarType::Short:
      return "int16";
    case ScalarType::Char:
      return "int8";
    case ScalarType::Byte:
      return "uint8";
    case ScalarType::Bool:
      return "bool";
    default:
      return c10::toString(st);
  }
}

template <class Side>
class Args {
 public:
  using Tensor = typename Side::Tensor;

  explicit Args(const char* op) : op_(op) {}

  template <class... Parts>
  [[noreturn]] void fail(Fault fault, const Parts&... parts) const {
    std::ostringstream s;
    s << "fastmine." << op_ << ": ";
    (s << ... << parts);
    Side::fail(fault, s.str());
  }

  template <class... Parts>
  void require(bool ok, Fault fault, const Parts&... parts) const {
    if (!ok) fail(fault, parts...);
  }

  // The tensor whose device every other tensor argument must share (the first one checked).
  void device(const Tensor& t, const char* name) {
    require(Side::on_device(t), Fault::Runtime, name, " is not on the device of this kernel");
    anchor_ = &t;
    anchor_name_ = name;
  }

  void same_device(const Tensor& t, const char* name) const {
    require(Side::on_device(t) && (anchor_ == nullptr || Side::same_device(t, *anchor_)),
            Fault::Runtime, name, " must be on the same device as ", anchor_name_);
  }

  void dims(const Tensor& t, const char* name, int64_t want, const char* layout) const {
    require(t.dim() == want, Fault::Value, name, " must be ", want, "-D ", layout, ", got ",
            t.dim(), " dims");
  }

  // A floating-point tensor of any shape in a dtype the kernels compute in.
  void floating(const Tensor& t, const char* name) const {
    same_device(t, name);
    require(Side::computes(t.scalar_type()), Fault::Runtime, name, " must be ",
            Side::float_dtypes(), ", got ", dtype_name(t.scalar_type()));
  }

  // (N, D) rows of features.
  void embeddings(const Tensor& t, const char* name) const {
    floating(t, name);
    dims(t, name, 2, "(N, D)");
  }

  void dtype(const Tensor& t, const char* name, ScalarType st) const {
    require(t.scalar_type() == st, Fault::Runtime, name, " must be ", dtype_name(st), ", got ",
            dtype_name(t.scalar_type()));
  }

  void same_dtype(const Tensor& t, const char* name, const Tensor& like,
                  const char* like_name) const {
    require(t.scalar_type() == like.scalar_type(), Fault::Runtime, name, " must have the dtype of ",
            like_name, " (", dtype_name(like.scalar_type()), "), got ",
            dtype_name(t.scalar_type()));
  }

  // A 1-D tensor of n elements of dtype st; `like` names the argument n comes from when
  // that is another vector (for the message).
  void vector(const Tensor& t, const char* name, int64_t n, ScalarType st,
              const char* like = nullptr) const {
    same_device(t, name);
    require(t.dim() == 1 && t.size(0) == n, Fault::Value, name, " must have shape (", n, ",)",
            like ? " like " : "", like ? like : "", ", got ", shape(t));
    dtype(t, name, st);
  }

  void matrix(const Tensor& t, const char* name, int64_t rows, int64_t cols, ScalarType st) const {
    same_device(t, name);
    require(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, Fault::Value, name,
            " must have shape (", rows, ", ", cols, "), got ", shape(t));
    dtype(t, name, st);
  }

  // Same dims and sizes as `like`.
  void same_shape(const Tensor& t, const char* name, const Tensor& like,
                  const char* like_name) const {
    bool same = t.dim() == like.dim();
    for (int64_t d = 0; same && d < t.dim(); ++d) same = t.size(d) == like.size(d);
    require(same, Fault::Value, name, " must have the shape of ", like_name, " ", shape(like),
            ", got ", shape(t));
  }

  // Every entry of an int64 vector (already checked by vector()) in [lo, hi).
  void indices(const Tensor& t, const char* name, int64_t lo, int64_t hi, const char* what) const {
    if (t.numel() == 0) return;
    const IndexRange r = Side::index_range(t);
    require(r.min >= lo && r.max < hi, Fault::Value, name, " must hold ", what, " in [", lo, ", ",
            hi, "), got ", r.min < lo ? r.min : r.max);
  }

  // Column i + offset of the reference set is anchor i itself: offset in [0, M - B]. Without
  // the exclusion the offset means nothing and must be 0 (never silently ignored).
  void exclude_offset(bool has_exclude, int64_t offset, int64_t b, int64_t m) const {
    if (has_exclude) {
      require(offset >= 0 && offset + b <= m, Fault::Value,
              "exclude_offset must satisfy 0 <= exclude_offset <= M - B (B = ", b, ", M = ", m,
              ") when has_exclude, got ", offset);
    } else {
      require(offset == 0, Fault::Value, "exclude_offset must be 0 without has_exclude, got ",
              offset);
    }
  }

  void metric(int64_t id) const {
    require(id == kEuclidean || id == kSqEuclidean || id == kCosine, Fault::Value,
            "metric must be 0 (euclidean), 1 (sqeuclidean) or 2 (cosine), got ", id);
  }

  void triplet_type(int64_t id) const {
    require(id >= kTripletAll && id <= kTripletEasy, Fault::Value,
            "type must be 0 (all), 1 (hard), 2 (semihard) or 3 (easy), got ", id);
  }

  void finite(double v, const char* name) const {
    require(std::isfinite(v), Fault::Value, name, " must be finite, got ", v);
  }

  void positive(double v, const char* name) const {
    require(std::isfinite(v) && v > 0, Fault::Value, name, " must be finite and > 0, got ", v);
  }

  void non_negative(double v, const char* name) const {
    require(std::isfinite(v) && v >= 0, Fault::Value, name, " must be finite and >= 0, got ", v);
  }

  static std::string shape(const Tensor& t) {
    std::ostringstream s;
    s << "(";
    for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.size(d);
    s << (t.dim() == 1 ? ",)" : ")");
    return s.str();
  }

 private:
  const char* op_;
  const Tensor* anchor_ = nullptr;
  const char* anchor_name_ = "";
};

// Whether t has the strides of a fresh (at::empty) tensor of its sizes, which is what each
// module's dense() hands the kernels. contiguous() is not enough: it keeps any stride on a
// dimension of size 1, and BLAS/cuBLAS choose their kernels (and so their rounding) by the
// leading dimension, so a (1, D) row of a wider matrix would give different bits than its
// copy. Empty tensors have no elements to lay out.
template <typename Tensor>
bool fresh_strides(const Tensor& t) {
  if (t.numel() == 0) return true;
  int64_t expected = 1;
  for (int64_t k = t.dim() - 1; k >= 0; --k) {
    if (t.strides()[k] != expected) return false;
    expected *= t.sizes()[k];
  }
  return true;
}

}  // namespace fastmine::contract
