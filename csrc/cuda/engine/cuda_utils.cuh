// Host and device plumbing shared by every CUDA kernel of fastmine: error checks, the
// current stream, the dtype dispatch, element conversions for half/bfloat16. (Argument
// checks: common/op_contracts.h, through cuda/contract_cuda.cuh.)
//
// Everything here uses torch's *stable* ABI only (torch/csrc/stable, torch/headeronly and the
// AOTI C shim), so that this module compiles and links against the CPU-only torch wheel too.
#pragma once

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>
#include <type_traits>

#include "common/macros.h"
#include "cuda/engine/device_utils.cuh"

namespace fastmine::cuda {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// ---- errors --------------------------------------------------------------------------------

// Wraps a CUDA runtime call. STD_TORCH_CHECK throws std::runtime_error, which the stable
// boxed-kernel wrapper turns into a Python RuntimeError.
#define FM_CUDA_CHECK(expr, what)                                                              \
  do {                                                                                         \
    const cudaError_t fm_err_ = (expr);                                                        \
    STD_TORCH_CHECK(fm_err_ == cudaSuccess, "fastmine: ", what,                                \
                    " failed: ", cudaGetErrorName(fm_err_), " (", cudaGetErrorString(fm_err_), \
                    ")");                                                                      \
  } while (0)

// Call right after every <<<...>>>: catches bad launch configurations (grid of 0, too many
// threads, too much shared memory) and sticky errors from earlier kernels.
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  STD_TORCH_CHECK(err == cudaSuccess, "fastmine: launch of CUDA kernel ", kernel,
                  " failed: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

// ---- current stream ------------------------------------------------------------------------

// aoti_torch_get_current_cuda_stream lives in libtorch_cuda.so, which a CPU-only torch does
// not have. Linking against it directly would make this module fail to load there (ctypes
// dlopens with RTLD_NOW), so the symbol is looked up at the first call instead: in the
// already-loaded libtorch_cuda.so (torch loads its libraries RTLD_LOCAL, so RTLD_DEFAULT
// alone would not see it), then in the global scope. torch >= 2.13 also offers the
// device-generic aoti_torch_get_current_stream + torch_stream_native_handle: the fallback.
#if defined(FASTMINE_CUDA_EMULATOR)
// The host emulator (tests/emu/) has one in-order stream, the default one.
inline cudaStream_t current_stream(int32_t) { return nullptr; }
#else
using GetCudaStreamFn = AOTITorchError (*)(int32_t, void**);
using NativeHandleFn = AOTITorchError (*)(StreamHandle, void**);

inline void* lookup_torch_symbol(const char* lib, const char* name) {
  void* sym = nullptr;
  if (void* handle = dlopen(lib, RTLD_NOLOAD | RTLD_LAZY)) {
    sym = dlsym(handle, name);
    // Keep the reference: the library stays loaded for the life of the process anyway.
  }
  if (sym == nullptr) sym = dlsym(RTLD_DEFAULT, name);
  return sym;
}

inline cudaStream_t current_stream(int32_t device_index) {
  static const GetCudaStreamFn get_cuda_stream = reinterpret_cast<GetCudaStreamFn>(
      lookup_torch_symbol("libtorch_cuda.so", "aoti_torch_get_current_cuda_stream"));
  void* stream = nullptr;
  if (get_cuda_stream != nullptr) {
    STD_TORCH_CHECK(get_cuda_stream(device_index, &stream) == TORCH_SUCCESS,
                    "fastmine: aoti_torch_get_current_cuda_stream failed");
    return static_cast<cudaStream_t>(stream);
  }
  static const NativeHandleFn native_handle = reinterpret_cast<NativeHandleFn>(
      lookup_torch_symbol("libtorch_cpu.so", "torch_stream_native_handle"));
  STD_TORCH_CHECK(native_handle != nullptr,
                  "fastmine: cannot find the current CUDA stream (neither "
                  "aoti_torch_get_current_cuda_stream nor torch_stream_native_handle is "
                  "available): is this torch built with CUDA?");
  StreamHandle handle = nullptr;
  STD_TORCH_CHECK(aoti_torch_get_current_stream(device_index, &handle) == TORCH_SUCCESS,
                  "fastmine: aoti_torch_get_current_stream failed");
  const AOTITorchError rc = native_handle(handle, &stream);
  aoti_torch_delete_stream(handle);
  STD_TORCH_CHECK(rc == TORCH_SUCCESS, "fastmine: torch_stream_native_handle failed");
  return static_cast<cudaStream_t>(stream);
}
#endif  // FASTMINE_CUDA_EMULATOR

inline int sm_count(int32_t device_index) {
  int n = 0;
  FM_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device_index),
                "cudaDeviceGetAttribute(MultiProcessorCount)");
  return n > 0 ? n : 1;
}

// ---- sizes ---------------------------------------------------------------------------------

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Grid x of at most 2^31 - 1 blocks: every 1-D launch here stays far below that (B rows of
// 8 warps), but say so loudly instead of launching a truncated grid.
inline unsigned grid_1d(int64_t blocks, const char* what) {
  STD_TORCH_CHECK(blocks >= 1 && blocks <= int64_t(0x7fffffff), "fastmine: ", what, ": grid of ",
                  blocks, " blocks is out of range");
  return static_cast<unsigned>(blocks);
}

// A scratch buffer of `bytes` bytes (at least one) on like's device: CUB's temp storage.
inline Tensor byte_buffer(const Tensor& like, size_t bytes) {
  return torch::stable::new_empty(like, {static_cast<int64_t>(bytes > 0 ? bytes : 1)},
                                  ScalarType::Byte);
}

// ---- dtypes --------------------------------------------------------------------------------

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with T the CUDA element type of `st`.
template <typename Fn>
void dispatch_floating(ScalarType st, const char* op, Fn&& fn) {
  switch (st) {
    case ScalarType::Float:
      fn(TypeTag<float>{});
      break;
    case ScalarType::Double:
      fn(TypeTag<double>{});
      break;
    case ScalarType::Half:
      fn(TypeTag<__half>{});
      break;
    case ScalarType::BFloat16:
      fn(TypeTag<__nv_bfloat16>{});
      break;
    default:
      STD_TORCH_CHECK(false, "fastmine.", op,
                      ": CUDA inputs must be float32, float64, float16 or bfloat16, got ",
                      torch::headeronly::toString(st));
  }
}

// dispatch_floating, except that float32 goes to T = tf32_t where allow_tf32 (the tile
// mainloop then runs on TF32 tensor cores; everything else reads the same floats).
template <typename Fn>
void dispatch_floating_tf32(ScalarType st, bool allow_tf32, const char* op, Fn&& fn) {
  if (st == ScalarType::Float && allow_tf32) {
    fn(TypeTag<tf32_t>{});
  } else {
    dispatch_floating(st, op, std::forward<Fn>(fn));
  }
}

// The torch dtype of an accumulation type (losses, mined distances, GEMM operands).
template <typename acc_t>
constexpr ScalarType scalar_type_of() {
  return std::is_same_v<acc_t, double> ? ScalarType::Double : ScalarType::Float;
}

// The same, from the inputs' dtype on the host: scalar_type_of<acc_of_t<T>>() for the element
// type T of `st` (float64 for float64 inputs, float32 for float32, float16 and bfloat16).
inline ScalarType acc_dtype(ScalarType st) {
  return st == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

template <typename T>
inline const T* cptr(const Tensor& t) {
  return static_cast<const T*>(t.data_ptr());
}
template <typename T>
inline T* mptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

}  // namespace fastmine::cuda
