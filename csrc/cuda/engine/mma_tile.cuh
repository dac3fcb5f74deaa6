// The tensor-core variant of dot_tile's mainloop (included by dot_tile.cuh only, after
// TileCfg and DotTileSmem): the same 64 x 64 tile of dot products <x_i, r_j>, computed with
// mma.sync (mma.cuh) and handed to the caller in exactly the SIMT layout (acc[i][j] at tile
// row TileCfg::row_of(ty, i), column TileCfg::col_of(tx, j)), so every existing epilogue
// (row reductions over half-warps included) runs unchanged. Two modes:
//   MmaMode::kHalf  f16/bf16 operands, m16n8k16, 16 coordinates per stage;
//   MmaMode::kTf32  fp32 operands rounded to TF32, m16n8k8, 8 coordinates per stage
//                   (opt-in only: TF32 keeps 10 mantissa bits).
// Both accumulate in fp32.
//
// Warp layout: 8 warps as 2 (rows) x 4 (columns); warp (wm, wn) owns rows 32 wm + [0, 32)
// and columns 16 wn + [0, 16) of the tile: 2 x 2 fragments of m16 x n8, 16 fp32
// accumulators per lane (= 64 * 64 / 256). Per k step a warp loads 2 A and 2 B fragments
// and issues 4 mma.
//
// Staging: operands are copied as raw bits (no conversion for f16/bf16) into [row][k]
// shared arrays padded by 16 bytes per row, so the 32-bit fragment reads of a warp
// (8 rows g x 4 lanes t, see mma.cuh) hit 32 distinct banks. Two stages, one barrier per
// step, as the SIMT loop. After the mainloop the fragments go through shared memory
// (a 64 x 68 fp32 tile, the size of DotTileSmem<float> exactly) to the SIMT layout.
//
// Determinism: each accumulator sums its k steps in ascending order; the grid shape never
// changes which products meet in which instruction.
#pragma once

#ifndef FASTMINE_DOT_TILE_INTERNAL
#error "mma_tile.cuh is included by dot_tile.cuh only"
#endif

#include <cstdint>
#include <type_traits>

#include "cuda/engine/mma.cuh"

namespace fastmine::cuda {

enum class MmaMode { kHalf, kTf32 };

template <MmaMode mode>
struct MmaCfg {
  // Raw element type in shared memory: 16-bit f16/bf16 bits, or 32-bit tf32 bits.
  using raw_t = std::conditional_t<mode == MmaMode::kHalf, uint16_t, uint32_t>;
  static constexpr int BK = mode == MmaMode::kHalf ? 16 : 8;  // coordinates per stage
  static constexpr int PAD = 16 / sizeof(raw_t);              // 16 bytes per row
  static constexpr int LD = BK + PAD;                         // row stride, elements
  static constexpr int V = 8 / sizeof(raw_t);                 // elements per 8-byte load
  static constexpr int CHUNKS = BK / V;                       // loads per staged row: 4
  static_assert(CHUNKS * TileCfg::BM == TileCfg::THREADS, "one 8-byte load per thread");
  static constexpr int WARPS_N = 4;               // warps along columns
  static constexpr int WM = 32, WN = 16;          // warp tile
  static constexpr int OUT_LD = TileCfg::BN + 4;  // fp32 output staging row stride
};

template <MmaMode mode>
struct alignas(16) MmaStageSmem {
  using C = MmaCfg<mode>;
  typename C::raw_t a[2][TileCfg::BM][C::LD];
  typename C::raw_t b[2][TileCfg::BN][C::LD];
};

// The staging must fit in the caller's DotTileSmem<float> (the kernels declare that one).
static_assert(sizeof(MmaStageSmem<MmaMode::kHalf>) <= sizeof(DotTileSmem<float>), "fits");
static_assert(sizeof(MmaStageSmem<MmaMode::kTf32>) <= sizeof(DotTileSmem<float>), "fits");
static_assert(sizeof(float[TileCfg::BM][MmaCfg<MmaMode::kHalf>::OUT_LD]) <=
                  sizeof(DotTileSmem<float>),
              "the fp32 output tile fits");

// One thread's share of a stage: V consecutive elements of one row (8 bytes).
template <MmaMode mode>
struct MmaLoad {
  typename MmaCfg<mode>::raw_t v[MmaCfg<mode>::V];
};

// Loads elements [k0 + V c, k0 + V c + V) of row `row` (c = tid % CHUNKS, row = row0 +
// tid / CHUNKS). Out-of-range rows and coordinates are zero bits (+0.0 in every format), so
// padded products are exact zeros. `vec`: 8-byte aligned rows (dim % V == 0, aligned base).
template <MmaMode mode, typename T>
__device__ __forceinline__ void mma_load(const T* __restrict__ p, int64_t n, int64_t row0,
                                         int64_t dim, int64_t k0, bool vec, MmaLoad<mode>& r) {
  using C = MmaCfg<mode>;
  using raw_t = typename C::raw_t;
  static_assert(sizeof(T) == sizeof(raw_t) || mode == MmaMode::kTf32, "raw copy");
  const int tid = threadIdx.x;
  const int64_t row = row0 + tid / C::CHUNKS;
  const int64_t k = k0 + (tid % C::CHUNKS) * C::V;
  if (row < n && vec && k + C::V <= dim) {
    const uint2 w = *reinterpret_cast<const uint2*>(p + row * dim + k);
    if constexpr (mode == MmaMode::kHalf) {
      r.v[0] = static_cast<uint16_t>(w.x & 0xffffu);
      r.v[1] = static_cast<uint16_t>(w.x >> 16);
      r.v[2] = static_cast<uint16_t>(w.y & 0xffffu);
      r.v[3] = static_cast<uint16_t>(w.y >> 16);
    } else {
      r.v[0] = to_tf32(__uint_as_float(w.x));
      r.v[1] = to_tf32(__uint_as_float(w.y));
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < C::V; ++e) {
    const bool in = row < n && k + e < dim;
    if constexpr (mode == MmaMode::kHalf) {
      r.v[e] = in ? reinterpret_cast<const uint16_t*>(p)[row * dim + k + e] : uint16_t(0);
    } else {
      r.v[e] = in ? to_tf32(p[row * dim + k + e]) : 0u;
    }
  }
}

template <MmaMode mode>
__device__ __forceinline__ void mma_store(
    typename MmaCfg<mode>::raw_t (&dst)[TileCfg::BM][MmaCfg<mode>::LD], const MmaLoad<mode>& r) {
  using C = MmaCfg<mode>;
  const int tid = threadIdx.x;
  typename C::raw_t* q = &dst[tid / C::CHUNKS][(tid % C::CHUNKS) * C::V];
#pragma unroll
  for (int e = 0; e < C::V; ++e) q[e] = r.v[e];
}

// 32-bit word holding elements [k, k + 32 / bits) of a staged row (k even for 16-bit).
template <typename raw_t>
__device__ __forceinline__ uint32_t word_at(const raw_t* row, int k) {
  return *reinterpret_cast<const uint32_t*>(row + k);
}

// A and B fragments of one k step from the current stage (layouts: mma.cuh).
template <MmaMode mode, bool kBf16>
__device__ __forceinline__ void mma_step(const MmaStageSmem<mode>& sm, int cur, int wm, int wn,
                                         int lane, float (&c)[2][2][4]) {
  using C = MmaCfg<mode>;
  const int g = lane >> 2, t = lane & 3;
  uint32_t a[2][4], b[2][2];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
    const auto* r_lo = sm.a[cur][wm * C::WM + mi * 16 + g];
    const auto* r_hi = sm.a[cur][wm * C::WM + mi * 16 + g + 8];
    if constexpr (mode == MmaMode::kHalf) {
      a[mi][0] = word_at(r_lo, 2 * t);
      a[mi][1] = word_at(r_hi, 2 * t);
      a[mi][2] = word_at(r_lo, 2 * t + 8);
      a[mi][3] = word_at(r_hi, 2 * t + 8);
    } else {
      a[mi][0] = r_lo[t];
      a[mi][1] = r_hi[t];
      a[mi][2] = r_lo[t + 4];
      a[mi][3] = r_hi[t + 4];
    }
  }
#pragma unroll
  for (int ni = 0; ni < 2; ++ni) {
    const auto* r_n = sm.b[cur][wn * C::WN + ni * 8 + g];
    if constexpr (mode == MmaMode::kHalf) {
      b[ni][0] = word_at(r_n, 2 * t);
      b[ni][1] = word_at(r_n, 2 * t + 8);
    } else {
      b[ni][0] = r_n[t];
      b[ni][1] = r_n[t + 4];
    }
  }
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int ni = 0; ni < 2; ++ni) {
      if constexpr (mode == MmaMode::kHalf) {
        mma_m16n8k16<kBf16>(c[mi][ni], a[mi], b[ni]);
      } else {
        mma_m16n8k8_tf32(c[mi][ni], a[mi], b[ni]);
      }
    }
  }
}

// acc[i][j] = <x[row0 + row_of(ty, i)], y[col0 + col_of(tx, j)]> (0 out of range), as
// dot_tile (same contract: all THREADS threads call it; it ends with a barrier). T is
// __half / __nv_bfloat16 (kHalf) or float (kTf32); sm is the caller's DotTileSmem<float>.
template <MmaMode mode, typename T>
__device__ __forceinline__ void dot_tile_mma(const T* __restrict__ x, int64_t nx, int64_t row0,
                                             const T* __restrict__ y, int64_t ny, int64_t col0,
                                             int64_t dim, DotTileSmem<float>& smem,
                                             float (&acc)[TileCfg::TM][TileCfg::TN]) {
  using C = MmaCfg<mode>;
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  static_assert(
      mode == MmaMode::kTf32 ? std::is_same_v<T, float> : (std::is_same_v<T, __half> || kBf16),
      "f16/bf16 on the half path, float on the tf32 path");
  auto& sm = *reinterpret_cast<MmaStageSmem<mode>*>(&smem);
  auto& out = *reinterpret_cast<float (*)[TileCfg::BM][C::OUT_LD]>(&smem);
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int wm = warp / C::WARPS_N, wn = warp % C::WARPS_N;

  float c[2][2][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int ni = 0; ni < 2; ++ni) {
#pragma unroll
      for (int e = 0; e < 4; ++e) c[mi][ni][e] = 0.0f;
    }
  }
  const int64_t steps = (dim + C::BK - 1) / C::BK;
  if (steps == 0) {  // D == 0: uniform across the block, no barrier skipped unevenly
#pragma unroll
    for (int i = 0; i < TileCfg::TM; ++i) {
#pragma unroll
      for (int j = 0; j < TileCfg::TN; ++j) acc[i][j] = 0.0f;
    }
    return;
  }
  const bool vec =
      dim % C::V == 0 && (reinterpret_cast<uintptr_t>(x) | reinterpret_cast<uintptr_t>(y)) % 8 == 0;

  MmaLoad<mode> ra, rb;
  mma_load<mode>(x, nx, row0, dim, 0, vec, ra);
  mma_load<mode>(y, ny, col0, dim, 0, vec, rb);
  mma_store<mode>(sm.a[0], ra);
  mma_store<mode>(sm.b[0], rb);
  __syncthreads();
  for (int64_t s = 0; s < steps; ++s) {
    const int cur = static_cast<int>(s & 1);
    const bool has_next = s + 1 < steps;
    if (has_next) {  // the next stage's global loads are in flight during the mma
      mma_load<mode>(x, nx, row0, dim, (s + 1) * C::BK, vec, ra);
      mma_load<mode>(y, ny, col0, dim, (s + 1) * C::BK, vec, rb);
    }
    mma_step<mode, kBf16>(sm, cur, wm, wn, lane, c);
    if (has_next) {  // safe: the other stage's last readers passed the previous barrier
      mma_store<mode>(sm.a[cur ^ 1], ra);
      mma_store<mode>(sm.b[cur ^ 1], rb);
    }
    __syncthreads();
  }

  // Fragments -> fp32 tile (C/D layout of mma.cuh) -> the SIMT micro-tiles. The last
  // barrier of the loop retired every read of the staging this overwrites.
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int ni = 0; ni < 2; ++ni) {
      const int r = wm * C::WM + mi * 16 + g, col = wn * C::WN + ni * 8 + 2 * t;
      out[r][col] = c[mi][ni][0];
      out[r][col + 1] = c[mi][ni][1];
      out[r + 8][col] = c[mi][ni][2];
      out[r + 8][col + 1] = c[mi][ni][3];
    }
  }
  __syncthreads();
  const int tx = tid % TileCfg::TX, ty = tid / TileCfg::TX;
#pragma unroll
  for (int i = 0; i < TileCfg::TM; ++i) {
    load4_shared(&out[TileCfg::row_of(ty, i)][TileCfg::col_of(tx, 0)], acc[i]);
  }
  __syncthreads();  // the caller may call again at once (it overwrites the staging)
}

}  // namespace fastmine::cuda
