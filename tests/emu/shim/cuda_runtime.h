// Stands in for <cuda_runtime.h> when tests/emu/build.py compiles csrc/cuda/*.cu for the host
// emulator: the runtime's types and declarations come from the real cuda_runtime_api.h, their
// definitions from emu_runtime.cpp, and every `kernel<<<grid, block, smem, stream>>>(args)`
// (rewritten by build.py to `::fm_emu::launch(<lambda calling kernel>, grid, block, smem,
// stream)(args)`) runs
// under emu.h on the spot. One in-order stream: a launch or copy is complete when it returns.
#pragma once

#include <cuda_runtime_api.h>

#include "emu.h"

namespace fm_emu {

// The error the next cudaGetLastError returns (and clears): an invalid launch configuration,
// or a launch in which the emulator reported misuse.
inline cudaError_t pending = cudaSuccess;
// What cudaDeviceGetAttribute(MultiProcessorCount) answers: tests vary it, since the split
// plans of some kernels follow it and their results must not.
inline int sm_count = 3;

template <class F>
struct Launch {
  F fn;
  dim3 grid, block;
  template <class... A>
  void operator()(A&&... a) const {
    const long before = emu_errors.load();
    // Each emulated thread receives its own copies of the parameters, as on the GPU.
    const bool ran = emu_launch(grid, block, [&] { fn(a...); });
    if (pending != cudaSuccess) return;
    if (!ran) pending = emu_valid_config(grid, block) ? cudaErrorLaunchFailure : cudaErrorInvalidConfiguration;
    else if (emu_errors.load() != before) pending = cudaErrorLaunchFailure;
  }
};

template <class F>
Launch<F> launch(F fn, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) {
  if (smem != 0) {  // no kernel of fastmine uses dynamic shared memory
    fprintf(stderr, "EMU: dynamic shared memory is not emulated\n");
    emu_errors++;
  }
  return Launch<F>{fn, grid, block};
}

}  // namespace fm_emu
