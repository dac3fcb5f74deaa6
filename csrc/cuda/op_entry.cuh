// What every CUDA op does after its argument contract (common/op_contracts.h) and before it
// allocates or launches anything, written once:
//
//  * a device guard on the op's device (its first tensor's; the contract has checked that
//    every tensor argument is on it): torch's allocations (new_empty, the dense() copies),
//    its matmul and its current stream all follow torch's current device;
//  * cudaSetDevice on the same device: this module links the CUDA runtime statically
//    (setup.py), so it carries its own runtime next to the one torch uses, and the guard
//    sets the device through torch's. The kernel launches, copies and CUB calls here go
//    through this module's runtime, whose current device must be the tensors' (a launch
//    into another device's stream fails). Setting it here makes that hold whatever the two
//    runtimes share; setting the device that is already current costs next to nothing;
//  * the current stream of that device: every launch, copy and CUB call goes on it, so the
//    op's work is ordered with torch's (whose allocations are stream-ordered too);
//  * the accumulation dtype (acc_dtype): that of losses, selected distances and GEMM
//    operands; float64 for float64 inputs, float32 otherwise.
#pragma once

#include <cstdint>
#include <tuple>

#include "cuda/engine/cuda_utils.cuh"

namespace fastmine::cuda {

struct OpEntry {
  explicit OpEntry(const Tensor& x)
      : device(x.get_device_index()),
        guard(device),
        stream(enter(device)),
        acc_st(acc_dtype(x.scalar_type())) {}

  const int32_t device;
  const torch::stable::accelerator::DeviceGuard guard;
  const cudaStream_t stream;
  const ScalarType acc_st;

 private:
  static cudaStream_t enter(int32_t device) {
    FM_CUDA_CHECK(cudaSetDevice(device), "cudaSetDevice");
    return current_stream(device);
  }
};

// What a backward returns when nothing adds into its gradients (no anchor or pair, no
// reference row, or no coordinate): zeros shaped as x and ref, launching nothing (a grid of 0
// blocks is an error).
inline std::tuple<Tensor, Tensor> zero_gradients(const Tensor& x, const Tensor& ref) {
  return {torch::stable::new_zeros(x, {x.size(0), x.size(1)}),
          torch::stable::new_zeros(ref, {ref.size(0), ref.size(1)})};
}

}  // namespace fastmine::cuda
