// Force-included (g++ -include) first into every csrc/cuda/*.cu that tests/emu/build.py
// compiles for the host emulator. The host code itself is compiled unchanged; this adapts
// what differs on a machine without a GPU:
//  * the kernel qualifiers and intrinsics come from emu.h, the runtime from the shim's
//    cuda_runtime.h, CUB from the shim's cub/ (both found first on the include path);
//  * the emulated "device" tensors are CPU tensors: is_cuda() means is_cpu(), and the device
//    guard (there is no accelerator) does nothing;
//  * the ops register as fastmine_emu::<op> for the CPU dispatch key (the Python side defines
//    that namespace with the same schemas as fastmine's), next to the CPU ops they are
//    compared with.
#pragma once

#include "emu.h"
#include "emu_mma.h"
#include "cuda_runtime.h"

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

namespace torch::stable::accelerator {
struct EmuDeviceGuard {
  explicit EmuDeviceGuard(DeviceIndex) {}
  void set_index(DeviceIndex) {}
};
}  // namespace torch::stable::accelerator

#define DeviceGuard EmuDeviceGuard
#define is_cuda is_cpu
#undef STABLE_TORCH_LIBRARY_IMPL
#define STABLE_TORCH_LIBRARY_IMPL(ns, k, m) _STABLE_TORCH_LIBRARY_IMPL(fastmine_emu, CPU, m, C10_UID)
