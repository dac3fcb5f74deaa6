// Minimal CUDA execution emulator for host testing of fastmine's kernels. Every CUDA thread of
// a block is a fiber (ucontext) on the calling OS thread; blocks run one after another;
// __syncthreads is a cooperative block barrier; warp shuffles exchange through a per-warp slot
// array between two warp barriers. Fibers, not OS threads: a block of 256 threads costs a few
// hundred context switches per barrier instead of 256 thread creations, and the emulator
// never takes more than one core.
//
// Misuse that is undefined on a GPU is reported (emu_errors, and a line on stderr) instead of
// being run: a full-mask shuffle or mma with a lane that has exited or does not exist, a
// barrier that not every live thread reaches (deadlock), an invalid launch configuration
// (also returned by cudaGetLastError through emu_runtime.h), __trap.
//
// tests/test_emu_tensor_cores.py builds the kernel headers against it through harness.cpp;
// tests/emu/build.py compiles the real csrc/cuda/*.cu (host code included) against it.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>
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

struct EmuDim {
  unsigned x = 1, y = 1, z = 1;
  constexpr EmuDim(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr EmuDim(dim3 d) : x(d.x), y(d.y), z(d.z) {}
};
// One OS thread runs the fibers; these are set before each fiber is resumed.
inline EmuDim threadIdx, blockIdx, blockDim, gridDim;
inline std::atomic<long> emu_errors{0};

inline void emu_error(const char* what) {
  fprintf(stderr, "EMU: %s (block %u,%u,%u thread %u)\n", what, blockIdx.x, blockIdx.y, blockIdx.z,
          threadIdx.x);
  emu_errors++;
}

namespace emu_detail {

struct Fiber {
  ucontext_t ctx;
  EmuDim tid;
  bool done = false;
};

struct Scheduler {
  ucontext_t main;
  std::vector<Fiber> fibers;
  size_t current = 0;
  long progress = 0;  // barrier releases and exits: a round without any is a deadlock
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
};
inline Scheduler sched;

// One stack per fiber, reused by every launch (lazily committed pages).
constexpr size_t kStack = size_t(256) << 10;
inline std::vector<char*>& stacks() {
  static std::vector<char*> s;
  return s;
}
inline char* stack_of(size_t i) {
  auto& s = stacks();
  while (s.size() <= i) {
    void* p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { perror("EMU: mmap"); std::abort(); }
    s.push_back(static_cast<char*>(p));
  }
  return s[i];
}

inline void yield() { swapcontext(&sched.fibers[sched.current].ctx, &sched.main); }

}  // namespace emu_detail

// A barrier of `expected` fibers; a fiber that exits drops out of it.
struct EmuBarrier {
  int expected = 0, count = 0;
  unsigned gen = 0;
  void arrive_and_wait() {
    const unsigned g = gen;
    if (++count == expected) {
      count = 0;
      ++gen;
      ++emu_detail::sched.progress;
      return;
    }
    while (gen == g) emu_detail::yield();
  }
  void arrive_and_drop() {
    --expected;
    if (count > 0 && count == expected) {
      count = 0;
      ++gen;
      ++emu_detail::sched.progress;
    }
  }
};

struct EmuWarp {
  EmuBarrier bar;
  int lanes = 32;  // live lanes at launch (the last warp of a block may be partial)
  unsigned char slot[32][8];
  bool exited[32];
};
struct EmuBlock {
  EmuBarrier bar;
  std::vector<EmuWarp> warps;
};
inline EmuBlock* emu_block = nullptr;

inline void __syncthreads() { emu_block->bar.arrive_and_wait(); }

// Whether every lane of the calling warp exists and is still running (a full-mask warp
// collective needs all 32).
inline bool emu_full_warp(const char* what) {
  const EmuWarp& warp = emu_block->warps[threadIdx.x / 32];
  bool ok = warp.lanes == 32;
  for (int l = 0; ok && l < 32; ++l) ok = !warp.exited[l];
  if (!ok) emu_error(what);
  return ok;
}

// Every lane publishes v, then reads the slot of lane src(lane) (its own when src is out of
// range, as CUDA's shfl_up/down do at the edges).
template <typename V, typename Src>
V emu_shfl(unsigned mask, V v, Src src_of) {
  static_assert(sizeof(V) <= 8);
  if (mask != 0xffffffffu) emu_error("partial shuffle mask");
  const unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32;
  EmuWarp& warp = emu_block->warps[w];
  memcpy(warp.slot[lane], &v, sizeof(V));
  warp.bar.arrive_and_wait();
  int src = src_of(int(lane));
  if (src < 0 || src >= 32) src = int(lane);
  emu_full_warp("full-mask shuffle with an exited or missing lane");
  V r;
  memcpy(&r, warp.slot[src], sizeof(V));
  warp.bar.arrive_and_wait();
  return r;
}
template <typename V> V __shfl_xor_sync(unsigned mask, V v, int off) { return emu_shfl(mask, v, [&](int l) { return l ^ off; }); }
template <typename V> V __shfl_down_sync(unsigned mask, V v, unsigned d) { return emu_shfl(mask, v, [&](int l) { return l + int(d); }); }
template <typename V> V __shfl_up_sync(unsigned mask, V v, unsigned d) { return emu_shfl(mask, v, [&](int l) { return l - int(d); }); }
template <typename V> V __shfl_sync(unsigned mask, V v, int src) { return emu_shfl(mask, v, [&](int) { return src & 31; }); }

// Integer atomics (one OS thread: plain read-modify-write; order-independent results, as on
// the GPU).
template <typename V> V atomicAdd(V* p, V v) { static_assert(std::is_integral_v<V>); V o = *p; *p = o + v; return o; }
template <typename V> V atomicOr(V* p, V v) { static_assert(std::is_integral_v<V>); V o = *p; *p = o | v; return o; }
template <typename V> V atomicMin(V* p, V v) { static_assert(std::is_integral_v<V>); V o = *p; *p = std::min(o, v); return o; }
template <typename V> V atomicMax(V* p, V v) { static_assert(std::is_integral_v<V>); V o = *p; *p = std::max(o, v); return o; }

inline void __trap() { emu_error("__trap"); }

inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }

namespace emu_detail {

inline void trampoline() {
  sched.body(sched.body_ctx);
  Fiber& f = sched.fibers[sched.current];
  EmuWarp& warp = emu_block->warps[f.tid.x / 32];
  warp.exited[f.tid.x % 32] = true;
  warp.bar.arrive_and_drop();
  emu_block->bar.arrive_and_drop();
  f.done = true;
  ++sched.progress;
  // returning resumes uc_link (the scheduler)
}

// Runs one block to completion; false on a deadlock (a barrier some live thread never
// reaches), whose fibers are abandoned.
inline bool run_block(unsigned nt) {
  EmuBlock blk;
  blk.bar.expected = int(nt);
  blk.warps.resize((nt + 31) / 32);
  for (size_t w = 0; w < blk.warps.size(); ++w) {
    EmuWarp& warp = blk.warps[w];
    warp.lanes = int(std::min<unsigned>(32, nt - unsigned(w) * 32));
    warp.bar.expected = warp.lanes;
    for (int l = 0; l < 32; ++l) warp.exited[l] = l >= warp.lanes;
  }
  emu_block = &blk;
  sched.fibers.assign(nt, Fiber{});
  for (unsigned t = 0; t < nt; ++t) {
    Fiber& f = sched.fibers[t];
    f.tid = EmuDim(t, 0, 0);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack_of(t);
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &sched.main;
    makecontext(&f.ctx, trampoline, 0);
  }
  size_t live = nt;
  while (live > 0) {
    const long before = sched.progress;
    for (size_t t = 0; t < nt; ++t) {
      Fiber& f = sched.fibers[t];
      if (f.done) continue;
      sched.current = t;
      threadIdx = f.tid;
      swapcontext(&sched.main, &f.ctx);
      if (f.done) --live;
    }
    if (live > 0 && sched.progress == before) {
      threadIdx = EmuDim(0, 0, 0);
      emu_error("deadlock: a barrier that some live thread of the block never reaches");
      emu_block = nullptr;
      return false;
    }
  }
  emu_block = nullptr;
  return true;
}

template <class F>
void body_thunk(void* p) { (*static_cast<F*>(p))(); }

}  // namespace emu_detail

// Whether (grid, block) is a configuration the GPU accepts (the limits of every compute
// capability fastmine targets); 1-D blocks only (all of fastmine's kernels).
inline bool emu_valid_config(EmuDim grid, EmuDim block) {
  const uint64_t nt = uint64_t(block.x) * block.y * block.z;
  return grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 &&
         grid.z <= 65535 && nt >= 1 && nt <= 1024 && block.y == 1 && block.z == 1;
}

// Runs body() as every thread of every block; false (nothing run) on an invalid
// configuration or after a deadlock.
template <class F>
bool emu_launch(EmuDim grid, EmuDim block, F body) {
  if (!emu_valid_config(grid, block)) {
    fprintf(stderr, "EMU: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u)\n", grid.x, grid.y,
            grid.z, block.x, block.y, block.z);
    emu_errors++;
    return false;
  }
  using namespace emu_detail;
  sched.body = body_thunk<F>;
  sched.body_ctx = &body;
  blockDim = block;
  gridDim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = EmuDim(bx, by, bz);
        if (!run_block(block.x)) return false;
      }
  return true;
}
