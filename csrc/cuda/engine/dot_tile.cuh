// The tiled dot-product mainloop shared by every "X . R^T then reduce" kernel: one thread
// block computes a BM x BN tile of dot products <x_i, r_j>, staged through shared memory in
// BK-wide slices of the D axis, and leaves them in registers for the caller's epilogue
// (a distance matrix, a row arg-max, ...). Two mainloops, chosen at compile time:
//   * SIMT FMA in the accumulation type (float32: float, float64: double), below; fp32
//     keeps full fp32 accuracy by default;
//   * tensor cores (mma_tile.cuh) for float16/bfloat16 (mma.sync m16n8k16, fp32
//     accumulation), and for float32 only where the user opted in to TF32: the launchers
//     then dispatch float32 tensors as tf32_t (device_utils.cuh), the same bits.
// Both hand over the same per-thread layout, so the epilogues are shared.
//
// Thread layout (256 threads): tx = tid % 16 indexes columns, ty = tid / 16 rows. Each
// thread owns a 4 x 4 micro-tile: rows 4*ty + i, columns 4*tx + j (i, j < 4), so that each
// step reads its 4 + 4 operands with two 128-bit shared loads (conflict-free: per quarter
// warp, 8 lanes read 128 consecutive bytes of b and at most 2 distinct addresses of a).
// The 16 threads sharing a row are the 16 lanes of one half-warp: epilogue row reductions
// are plain __shfl_xor_sync with offsets 8, 4, 2, 1.
//
// Every accumulator adds its D products in ascending k, whatever block computes it: the
// value of a dot product does not depend on the grid shape (determinism across column
// splits and devices with different SM counts).
#pragma once

#include <vector_types.h>

#include <type_traits>

#include "cuda/engine/device_utils.cuh"

namespace fastmine::cuda {

struct TileCfg {
  static constexpr int BM = 64;            // rows (of x) per block tile
  static constexpr int BN = 64;            // columns (rows of r) per block tile
  static constexpr int BK = 16;            // D-slice staged in shared memory per step
  static constexpr int TM = 4;             // rows per thread
  static constexpr int TN = 4;             // columns per thread
  static constexpr int TX = BN / TN;       // 16 threads along columns
  static constexpr int TY = BM / TM;       // 16 threads along rows
  static constexpr int THREADS = TX * TY;  // 256
  // Elements of one operand slice (BM x BK) each thread loads per step.
  static constexpr int LOADS = BM * BK / THREADS;  // 4
  // Shared-memory row padding: keeps rows 16-byte aligned for the vector reads while
  // shifting banks between k rows (the transposing stores are at most 2-way conflicted).
  static constexpr int PAD = 4;
  // Tile-local row / column of a thread's micro-tile entry (i, j): the one mapping that
  // every epilogue must use.
  static __device__ __forceinline__ int row_of(int ty, int i) { return ty * TM + i; }
  static __device__ __forceinline__ int col_of(int tx, int j) { return tx * TN + j; }
};
static_assert(TileCfg::BM == TileCfg::BN, "the loader uses one mapping for both operands");
static_assert(TileCfg::BM * TileCfg::BK % TileCfg::THREADS == 0, "even load split");
static_assert(TileCfg::THREADS % TileCfg::BK == 0, "a thread keeps one k lane");
static_assert(TileCfg::TX == 16, "row reductions assume 16 lanes (a half-warp) per row");
static_assert(TileCfg::TM == 4 && TileCfg::TN == 4, "the vector shared loads read 4 values");

// Sum over the TX = 16 threads that share a tile row (the 16 lanes of one half-warp): a
// butterfly with offsets 8, 4, 2, 1, so every one of them ends with the same bits and the
// order is fixed by the layout (deterministic). All 32 lanes of the warp must call it.
template <typename V>
__device__ __forceinline__ V tile_row_sum(V v) {
#pragma unroll
  for (int off = TileCfg::TX / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Two stages (double buffering: the next slice is written while the current one is read,
// one __syncthreads per step). Slices are stored k-major ([k][row]) so the compute loop
// reads a row of each. 16-byte aligned: every row starts on a 16-byte boundary.
template <typename acc_t>
struct alignas(16) DotTileSmem {
  acc_t a[2][TileCfg::BK][TileCfg::BM + TileCfg::PAD];
  acc_t b[2][TileCfg::BK][TileCfg::BN + TileCfg::PAD];
};
static_assert((TileCfg::BM + TileCfg::PAD) * sizeof(float) % 16 == 0, "aligned rows");

// v[0..3] = p[0..3], p 16-byte aligned: one LDS.128 (float) or two (double).
template <typename acc_t>
__device__ __forceinline__ void load4_shared(const acc_t* p, acc_t (&v)[4]) {
  if constexpr (std::is_same_v<acc_t, float>) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x;
    v[1] = t.y;
    v[2] = t.z;
    v[3] = t.w;
  } else {
    static_assert(std::is_same_v<acc_t, double>, "float or double accumulation");
    const double2 t0 = reinterpret_cast<const double2*>(p)[0];
    const double2 t1 = reinterpret_cast<const double2*>(p)[1];
    v[0] = t0.x;
    v[1] = t0.y;
    v[2] = t1.x;
    v[3] = t1.y;
  }
}

// Loads one BM x BK slice of a row-major (n, D) operand into registers, converted to acc_t.
// Thread tid loads k = k0 + tid % BK of rows (tid / BK) + (THREADS / BK) * l: 16 consecutive
// threads read 16 consecutive elements of one row. Out-of-range rows and k read as 0, so
// the padded products are exact zeros (never 0 * inf: both factors are padding).
template <typename T, typename acc_t>
__device__ __forceinline__ void load_slice(const T* __restrict__ p, int64_t n, int64_t row0,
                                           int64_t dim, int64_t k0, acc_t (&reg)[TileCfg::LOADS]) {
  const int tid = threadIdx.x;
  const int64_t k = k0 + (tid % TileCfg::BK);
#pragma unroll
  for (int l = 0; l < TileCfg::LOADS; ++l) {
    const int64_t row = row0 + tid / TileCfg::BK + (TileCfg::THREADS / TileCfg::BK) * l;
    reg[l] = (row < n && k < dim) ? to_acc<acc_t>(p[row * dim + k]) : acc_t(0);
  }
}

template <typename acc_t>
__device__ __forceinline__ void store_slice(acc_t (&dst)[TileCfg::BK][TileCfg::BM + TileCfg::PAD],
                                            const acc_t (&reg)[TileCfg::LOADS]) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int l = 0; l < TileCfg::LOADS; ++l) {
    dst[tid % TileCfg::BK][tid / TileCfg::BK + (TileCfg::THREADS / TileCfg::BK) * l] = reg[l];
  }
}

// The SIMT mainloop (float32/float64; float16/bfloat16 too where FASTMINE_SIMT_HALF forces
// it, for comparisons). Same contract as dot_tile below.
template <typename T, typename acc_t>
__device__ __forceinline__ void dot_tile_simt(const T* __restrict__ x, int64_t nx, int64_t row0,
                                              const T* __restrict__ y, int64_t ny, int64_t col0,
                                              int64_t dim, DotTileSmem<acc_t>& sm,
                                              acc_t (&acc)[TileCfg::TM][TileCfg::TN]) {
  constexpr int BK = TileCfg::BK, TM = TileCfg::TM, TN = TileCfg::TN;
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
#pragma unroll
  for (int i = 0; i < TM; ++i) {
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = acc_t(0);
  }
  const int64_t steps = (dim + BK - 1) / BK;
  if (steps == 0) return;  // D == 0: uniform across the block, no barrier skipped unevenly

  acc_t ra[TileCfg::LOADS], rb[TileCfg::LOADS];
  load_slice(x, nx, row0, dim, 0, ra);
  load_slice(y, ny, col0, dim, 0, rb);
  store_slice(sm.a[0], ra);
  store_slice(sm.b[0], rb);
  __syncthreads();

  for (int64_t s = 0; s < steps; ++s) {
    const int cur = static_cast<int>(s & 1);
    const bool has_next = s + 1 < steps;
    if (has_next) {  // issue the next slice's global loads before computing this one
      load_slice(x, nx, row0, dim, (s + 1) * BK, ra);
      load_slice(y, ny, col0, dim, (s + 1) * BK, rb);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t a[TM], b[TN];
      load4_shared(&sm.a[cur][kk][TileCfg::row_of(ty, 0)], a);
      load4_shared(&sm.b[cur][kk][TileCfg::col_of(tx, 0)], b);
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fm_fma(a[i], b[j], acc[i][j]);
      }
    }
    // Writing the other stage is safe: its last readers (step s - 1) all passed the
    // barrier that ended step s - 1. The barrier below publishes it for step s + 1 and
    // keeps stage `cur` intact until everyone has finished reading it.
    if (has_next) {
      store_slice(sm.a[cur ^ 1], ra);
      store_slice(sm.b[cur ^ 1], rb);
    }
    __syncthreads();
  }
}

}  // namespace fastmine::cuda

#define FASTMINE_DOT_TILE_INTERNAL
#include "cuda/engine/mma_tile.cuh"
#undef FASTMINE_DOT_TILE_INTERNAL

namespace fastmine::cuda {

// True where T's tiles go through tensor cores by default (float16 and bfloat16).
template <typename T>
inline constexpr bool kTensorCoreType =
#if defined(FASTMINE_SIMT_HALF)
    false;
#else
    std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;
#endif

// acc[i][j] = <x[row0 + row_of(ty, i)], y[col0 + col_of(tx, j)]> (0 out of range).
// Must be called by all THREADS threads of the block (it synchronises). Ends with a
// __syncthreads, so the caller may call it again at once (e.g. for the next column tile).
// T = tf32_t: float32 data on TF32 tensor cores (m16n8k8) instead of fp32 FMA.
template <typename T, typename acc_t>
__device__ __forceinline__ void dot_tile(const T* __restrict__ x, int64_t nx, int64_t row0,
                                         const T* __restrict__ y, int64_t ny, int64_t col0,
                                         int64_t dim, DotTileSmem<acc_t>& sm,
                                         acc_t (&acc)[TileCfg::TM][TileCfg::TN]) {
  if constexpr (kTensorCoreType<T>) {
    dot_tile_mma<MmaMode::kHalf, T>(x, nx, row0, y, ny, col0, dim, sm, acc);
  } else if constexpr (std::is_same_v<T, tf32_t>) {
    dot_tile_mma<MmaMode::kTf32, float>(reinterpret_cast<const float*>(x), nx, row0,
                                        reinterpret_cast<const float*>(y), ny, col0, dim, sm, acc);
  } else {
    dot_tile_simt<T, acc_t>(x, nx, row0, y, ny, col0, dim, sm, acc);
  }
}

}  // namespace fastmine::cuda
