// Host harness: runs fastmine's real CUDA kernels (csrc/cuda/*_kernels.cuh, dot_tile.cuh)
// on the CPU under emu.h, with the tensor-core instructions emulated by emu_mma.h. Built as
// a shared library by tests/test_emu_tensor_cores.py and driven through ctypes; the host
// side mirrors the launchers of csrc/cuda/pairwise.cu and batch_hard.cu.
#include "emu.h"
#include "emu_mma.h"
#include "cuda/pairwise_kernels.cuh"
#include "cuda/batch_hard_kernels.cuh"

using namespace fastmine;
using namespace fastmine::cuda;

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static unsigned U(int64_t v) {
  if (v <= 0 || v > 0x7fffffff) { fprintf(stderr, "HARNESS: bad grid %ld\n", (long)v); std::abort(); }
  return (unsigned)v;
}

// The bare mainloop: out[i, j] = <x_i, y_j> (acc_t), each block computing two consecutive
// column tiles with back-to-back dot_tile calls (the kernels' sweep pattern). T = tf32_t:
// float32 data on the TF32 path.
template <typename T>
void tile_kernel(const T* x, int64_t nx, const T* y, int64_t ny, int64_t dim, acc_of_t<T>* out) {
  using acc_t = acc_of_t<T>;
  __shared__ DotTileSmem<acc_t> sm;
  acc_t acc[TileCfg::TM][TileCfg::TN];
  const int tx = threadIdx.x % TileCfg::TX, ty = threadIdx.x / TileCfg::TX;
  const int64_t row0 = int64_t(blockIdx.y) * TileCfg::BM;
  for (int rep = 0; rep < 2; ++rep) {
    const int64_t col0 = (2 * int64_t(blockIdx.x) + rep) * TileCfg::BN;
    dot_tile<T, acc_t>(x, nx, row0, y, ny, col0, dim, sm, acc);
    for (int i = 0; i < TileCfg::TM; ++i)
      for (int j = 0; j < TileCfg::TN; ++j) {
        const int64_t r = row0 + TileCfg::row_of(ty, i), c = col0 + TileCfg::col_of(tx, j);
        if (r < nx && c < ny) out[r * ny + c] = acc[i][j];
      }
  }
}

template <typename T>
void dot_tiles(const T* x, int64_t nx, const T* y, int64_t ny, int64_t dim, acc_of_t<T>* out) {
  emu_launch({U(cdiv(cdiv(ny, TileCfg::BN), 2)), U(cdiv(nx, TileCfg::BM)), 1}, {TileCfg::THREADS},
             [&] { tile_kernel<T>(x, nx, y, ny, dim, out); });
}

template <typename T>
void pw_fwd(const T* x, const T* y, int64_t b, int64_t m, int64_t dim, int64_t metric, T* out) {
  using acc_t = acc_of_t<T>;
  std::vector<acc_t> nx2(b), ny2(m);
  emu_launch({U(cdiv(b, kRowsPerBlock))}, {kRowThreads}, [&] { row_sqnorm_kernel<T, acc_t>(x, b, dim, nx2.data()); });
  emu_launch({U(cdiv(m, kRowsPerBlock))}, {kRowThreads}, [&] { row_sqnorm_kernel<T, acc_t>(y, m, dim, ny2.data()); });
  emu_launch({U(cdiv(m, TileCfg::BN)), U(cdiv(b, TileCfg::BM)), 1}, {TileCfg::THREADS}, [&] {
    pairwise_distance_kernel<T, acc_t>(x, y, nx2.data(), ny2.data(), b, m, dim, metric, out);
  });
}

// Mirrors batch_hard.cu's forward; `splits` column splits (the launcher derives them from
// the SM count; the result must not depend on them).
template <typename T>
void bh_fwd(const T* x, const int64_t* labels, const T* ref, const int64_t* ref_labels, int64_t b, int64_t m,
            int64_t dim, double margin, int64_t metric, bool soft, bool has_exclude, int64_t exclude_offset,
            int64_t splits, acc_of_t<T>* loss, int64_t* pos_idx, int64_t* neg_idx, acc_of_t<T>* pos_dist,
            acc_of_t<T>* neg_dist) {
  using acc_t = acc_of_t<T>;
  const int64_t row_tiles = cdiv(b, TileCfg::BM), col_tiles = cdiv(m, TileCfg::BN);
  int64_t n_splits = 0, tiles_per_split = 0;
  if (col_tiles > 0) {
    n_splits = std::min<int64_t>(std::max<int64_t>(splits, 1), col_tiles);
    tiles_per_split = cdiv(col_tiles, n_splits);
    n_splits = cdiv(col_tiles, tiles_per_split);
  }
  const int64_t n_part = std::max<int64_t>(n_splits, 1) * b;
  std::vector<acc_t> ppv(n_part, acc_t(-777)), pnv(n_part, acc_t(-777));
  std::vector<int64_t> ppi(n_part, -777), pni(n_part, -777);
  if (n_splits > 0) {
    std::vector<acc_t> ca(m), cb(m);
    emu_launch({U(cdiv(m, kRowsPerBlock))}, {kRowThreads}, [&] { selection_coefs_kernel<T, acc_t>(ref, m, dim, metric, ca.data(), cb.data()); });
    emu_launch({U(row_tiles), U(n_splits), 1}, {TileCfg::THREADS}, [&] {
      batch_hard_mine_kernel<T, acc_t>(x, labels, ref, ref_labels, ca.data(), cb.data(), b, m, dim, has_exclude,
                                       exclude_offset, tiles_per_split, ppv.data(), ppi.data(), pnv.data(), pni.data());
    });
    for (int64_t e = 0; e < n_splits * b; ++e)
      if (ppi[e] == -777 || pni[e] == -777) { fprintf(stderr, "HARNESS: partial %ld not written\n", (long)e); emu_errors++; break; }
  }
  emu_launch({U(cdiv(b, kRowsPerBlock))}, {kRowThreads}, [&] {
    batch_hard_finalize_kernel<T, acc_t>(x, ref, b, dim, n_splits, ppv.data(), ppi.data(), pnv.data(), pni.data(),
                                         (acc_t)margin, metric, soft, loss, pos_idx, neg_idx, pos_dist, neg_dist);
  });
}

#define TYPES(X) X(f32, float) X(f64, double) X(f16, __half) X(bf16, __nv_bfloat16) X(tf32, tf32_t)
#define ENTRY(name, T)                                                                                    \
  extern "C" void tile_##name(const void* x, int64_t nx, const void* y, int64_t ny, int64_t d, void* out) { \
    dot_tiles<T>((const T*)x, nx, (const T*)y, ny, d, (acc_of_t<T>*)out);                                 \
  }                                                                                                       \
  extern "C" void pw_fwd_##name(const void* x, const void* y, int64_t b, int64_t m, int64_t d, int64_t metric, \
                                void* out) {                                                              \
    pw_fwd<T>((const T*)x, (const T*)y, b, m, d, metric, (T*)out);                                        \
  }                                                                                                       \
  extern "C" void bh_fwd_##name(const void* x, const int64_t* l, const void* r, const int64_t* rl, int64_t b, \
                                int64_t m, int64_t d, double margin, int64_t metric, bool soft, bool he,   \
                                int64_t eo, int64_t splits, void* loss, int64_t* pi, int64_t* ni, void* pd, \
                                void* nd) {                                                               \
    using A = acc_of_t<T>;                                                                                \
    bh_fwd<T>((const T*)x, l, (const T*)r, rl, b, m, d, margin, metric, soft, he, eo, splits, (A*)loss, pi, ni, \
              (A*)pd, (A*)nd);                                                                            \
  }
TYPES(ENTRY)
extern "C" long emu_error_count() { return emu_errors.load(); }
extern "C" void emu_reset_errors() { emu_errors = 0; }
