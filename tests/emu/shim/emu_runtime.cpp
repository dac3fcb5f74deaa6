// The CUDA runtime calls that fastmine's host code makes, for the host emulator: device
// memory is host memory (the emulated ops take CPU tensors), copies are memcpy, the stream is
// always idle. Definitions of cuda_runtime_api.h's declarations.
#include "cuda_runtime.h"

#include <cstring>

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = fm_emu::pending;
  fm_emu::pending = cudaSuccess;
  return e;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "cudaError (emulated)";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulator)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument (emulator)";
    case cudaErrorLaunchFailure: return "the emulator reported misuse in the kernel";
    default: return "emulated error";
  }
}

cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = fm_emu::sm_count;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int) { return cudaSuccess; }

cudaError_t cudaStreamSynchronize(cudaStream_t) { return fm_emu::pending; }

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind, cudaStream_t) {
  if (count > 0 && (dst == nullptr || src == nullptr)) return cudaErrorInvalidValue;
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t count, cudaStream_t) {
  if (count > 0 && p == nullptr) return cudaErrorInvalidValue;
  if (count > 0) std::memset(p, value, count);
  return cudaSuccess;
}

}  // extern "C"

// Controls for the tests (ctypes).
extern "C" long fm_emu_error_count() { return emu_errors.load(); }
extern "C" void fm_emu_reset_errors() { emu_errors = 0; }
extern "C" void fm_emu_set_sm_count(int n) { fm_emu::sm_count = n; }
