// Minimal CUDA execution emulator for host testing of fastmine's kernels: every CUDA thread
// is a std::thread; blocks run one after another; __syncthreads is a block barrier;
// __shfl_xor_sync exchanges through a per-warp slot array between two warp barriers and
// checks that the full mask really has 32 live lanes. tests/test_emu_tensor_cores.py builds
// the real kernel headers against it (with emu_mma.h for the tensor-core instructions).
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>
#include <type_traits>
#include <vector_types.h>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
// empty: harmless inside libstdc++'s __attribute__((__noinline__)) if a header comes later
#define __noinline__

using std::isfinite;

struct EmuDim { unsigned x = 1, y = 1, z = 1; };
inline thread_local EmuDim threadIdx, blockIdx, blockDim, gridDim;

struct EmuWarp {
  std::barrier<> bar{32};
  unsigned char slot[32][8];
  std::atomic<bool> exited[32];
};
struct EmuBlock {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<std::unique_ptr<EmuWarp>> warps;
};
inline thread_local EmuBlock* emu_block = nullptr;
inline std::atomic<long> emu_errors{0};

inline void __syncthreads() { emu_block->bar->arrive_and_wait(); }

// Every lane publishes v, then reads the slot of lane src(lane) (its own when src is out of
// range, as CUDA's shfl_up/down do at the edges).
template <typename V, typename Src>
V emu_shfl(unsigned mask, V v, Src src_of) {
  static_assert(sizeof(V) <= 8);
  if (mask != 0xffffffffu) { fprintf(stderr, "EMU: partial mask\n"); emu_errors++; }
  const unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32;
  EmuWarp& warp = *emu_block->warps[w];
  memcpy(warp.slot[lane], &v, sizeof(V));
  warp.bar.arrive_and_wait();
  int src = src_of(int(lane));
  if (src < 0 || src >= 32) src = int(lane);
  for (int l = 0; l < 32; ++l) {
    if (warp.exited[l].load()) {
      fprintf(stderr, "EMU: full-mask shuffle with exited lane %d (block %u,%u thread %u)\n", l, blockIdx.x, blockIdx.y, threadIdx.x);
      emu_errors++;
      break;
    }
  }
  V r;
  memcpy(&r, warp.slot[src], sizeof(V));
  warp.bar.arrive_and_wait();
  return r;
}
template <typename V> V __shfl_xor_sync(unsigned mask, V v, int off) { return emu_shfl(mask, v, [&](int l) { return l ^ off; }); }
template <typename V> V __shfl_down_sync(unsigned mask, V v, unsigned d) { return emu_shfl(mask, v, [&](int l) { return l + int(d); }); }
template <typename V> V __shfl_up_sync(unsigned mask, V v, unsigned d) { return emu_shfl(mask, v, [&](int l) { return l - int(d); }); }
template <typename V> V __shfl_sync(unsigned mask, V v, int src) { return emu_shfl(mask, v, [&](int) { return src & 31; }); }

// Integer atomics (order-independent results, as on the GPU).
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline int atomicOr(int* p, int v) { return std::atomic_ref<int>(*p).fetch_or(v); }

inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }

// Runs body() as every thread of every block (1-D blocks, multiple of 32 threads).
template <class F>
void emu_launch(EmuDim grid, EmuDim block, F body) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) { fprintf(stderr, "EMU: empty grid\n"); emu_errors++; return; }
  const unsigned nt = block.x;
  if (nt % 32 != 0 || block.y != 1 || block.z != 1) { fprintf(stderr, "EMU: bad block\n"); std::abort(); }
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        EmuBlock blk;
        blk.bar = std::make_unique<std::barrier<>>(nt);
        for (unsigned w = 0; w < nt / 32; ++w) {
          blk.warps.push_back(std::make_unique<EmuWarp>());
          for (int l = 0; l < 32; ++l) blk.warps.back()->exited[l] = false;
        }
        std::vector<std::thread> ths;
        ths.reserve(nt);
        for (unsigned t = 0; t < nt; ++t) {
          ths.emplace_back([&, t, bx, by, bz] {
            threadIdx = {t, 0, 0};
            blockIdx = {bx, by, bz};
            blockDim = block;
            gridDim = grid;
            emu_block = &blk;
            body();
            EmuWarp& warp = *blk.warps[t / 32];
            warp.exited[t % 32] = true;
            warp.bar.arrive_and_drop();
            blk.bar->arrive_and_drop();
          });
        }
        for (auto& th : ths) th.join();
      }
}
