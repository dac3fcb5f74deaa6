// Emulated tensor-core instructions for emu.h: the functions that csrc/cuda/engine/mma.cuh
// declares under FASTMINE_EMULATED_MMA. Written independently of the kernels, straight from the PTX
// ISA's fragment tables (section 9.7.14.5.8, "Matrix Fragments for mma.m16n8k16 with
// floating point type", and 9.7.14.5.7, "Matrix Fragments for mma.m16n8k8", .tf32), in the
// ISA's own terms: element a_i of a lane's fragment sits at (row, col) given by the
// groupID / threadID_in_group formulas, registers hold elements i = 2r, 2r + 1 (16-bit
// types, low half first) or i = r (tf32).
//
// Warp-collective, as on the GPU: every lane publishes its registers, one barrier, every lane
// rebuilds the full A, B, C from all 32 lanes and computes its own D elements, one barrier.
// Products are exact in double and summed in double, then rounded once to fp32 (the GPU
// rounds at least as finely: the tolerance of a test absorbs the difference).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>

#include "emu.h"

inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }

namespace fastmine::cuda {

namespace emu_detail {

// Decoders of the operand formats (no CUDA header involved).
inline double f16_value(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  double v;
  if (e == 0) v = std::ldexp(double(f), -24);
  else if (e == 31) v = f ? NAN : INFINITY;
  else v = std::ldexp(double(f + 1024), e - 25);
  return s ? -v : v;
}
inline double bf16_value(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline double tf32_value(uint32_t u) {
  if ((u & 0x1fffu) != 0) {  // the ISA: operands must already be tf32 (low 13 bits zero)
    fprintf(stderr, "EMU: mma tf32 operand with nonzero low mantissa bits\n");
    emu_errors++;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct MmaSlot {
  uint32_t a[4], b[2];
  float c[4];
};

template <int M, int N, int K, typename Decode, typename APos, typename BPos>
void mma_collective(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                    int elems_per_reg, Decode decode, APos a_pos, BPos b_pos) {
  const unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32;
  EmuWarp& warp = emu_block->warps[w];
  static_assert(sizeof(MmaSlot) == 40);
  // The warp's shuffle slots hold 8 bytes per lane: a side table of 32 slots per warp
  // instead (a block's warps may reuse a finished block's addresses: every lane writes its
  // slot before the barrier, so no stale slot is ever read).
  static std::mutex mu;
  static std::map<EmuWarp*, std::array<MmaSlot, 32>> table;
  std::array<MmaSlot, 32>* slots;
  {
    std::lock_guard<std::mutex> lock(mu);
    slots = &table[&warp];
  }
  MmaSlot& mine = (*slots)[lane];
  std::memcpy(mine.a, a, sizeof(mine.a));
  std::memcpy(mine.b, b, sizeof(mine.b));
  std::memcpy(mine.c, d, sizeof(mine.c));
  warp.bar.arrive_and_wait();
  emu_full_warp("mma.sync with an exited or missing lane");
  double A[M][K], B[K][N], C[M][N];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l % 4;  // groupID, threadID_in_group
    const MmaSlot& s = (*slots)[l];
    for (int i = 0; i < 4 * elems_per_reg; ++i) {
      const int r = i / elems_per_reg, h = i % elems_per_reg;
      const uint32_t bits = elems_per_reg == 2 ? (s.a[r] >> (16 * h)) & 0xffffu : s.a[r];
      int row, col;
      a_pos(i, g, t, row, col);
      A[row][col] = decode(bits);
    }
    for (int i = 0; i < 2 * elems_per_reg; ++i) {
      const int r = i / elems_per_reg, h = i % elems_per_reg;
      const uint32_t bits = elems_per_reg == 2 ? (s.b[r] >> (16 * h)) & 0xffffu : s.b[r];
      int row, col;
      b_pos(i, g, t, row, col);
      B[row][col] = decode(bits);
    }
    for (int i = 0; i < 4; ++i) {  // C/D: row g (i < 2) or g + 8, col 2t + (i & 1)
      C[i < 2 ? g : g + 8][t * 2 + (i & 1)] = s.c[i];
    }
  }
  const int g = lane >> 2, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
    double acc = C[row][col];
    for (int k = 0; k < K; ++k) acc += A[row][k] * B[k][col];
    d[i] = static_cast<float>(acc);
  }
  warp.bar.arrive_and_wait();  // nobody republishes before every lane has read
}

}  // namespace emu_detail

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
template <bool kBf16>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto decode = [](uint32_t bits) {
    return kBf16 ? emu_detail::bf16_value(uint16_t(bits)) : emu_detail::f16_value(uint16_t(bits));
  };
  // A (16 x 16), a0..a7: row = groupID for a0, a1, a4, a5, else groupID + 8;
  // col = threadID_in_group * 2 + (i & 0x1) for a_i, i < 4, and + 8 for i >= 4.
  auto a_pos = [](int i, int g, int t, int& row, int& col) {
    row = (i == 0 || i == 1 || i == 4 || i == 5) ? g : g + 8;
    col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
  };
  // B (16 x 8), b0..b3: row = threadID_in_group * 2 + (i & 0x1) for i < 2, + 8 for i >= 2;
  // col = groupID.
  auto b_pos = [](int i, int g, int t, int& row, int& col) {
    row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0);
    col = g;
  };
  emu_detail::mma_collective<16, 8, 16>(d, a, b, 2, decode, a_pos, b_pos);
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  // A (16 x 8), a0..a3: row = groupID for a0, a2, groupID + 8 for a1, a3;
  // col = threadID_in_group for a0, a1, threadID_in_group + 4 for a2, a3.
  auto a_pos = [](int i, int g, int t, int& row, int& col) {
    row = (i == 0 || i == 2) ? g : g + 8;
    col = (i < 2) ? t : t + 4;
  };
  // B (8 x 8), b0, b1: row = threadID_in_group (b0), threadID_in_group + 4 (b1); col = groupID.
  auto b_pos = [](int i, int g, int t, int& row, int& col) {
    row = i == 0 ? t : t + 4;
    col = g;
  };
  emu_detail::mma_collective<16, 8, 8>(d, a, b, 1, emu_detail::tf32_value, a_pos, b_pos);
}

// cvt.rna.tf32.f32: round the fp32 mantissa to 10 bits, nearest, ties away from zero.
inline uint32_t to_tf32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) {  // inf stays; NaN stays NaN (quiet)
    return (u & 0x007fffffu) ? ((u | 0x00400000u) & 0xffffe000u) : u;
  }
  return (u + 0x1000u) & 0xffffe000u;  // magnitude + half an ulp, truncated: ties away
}

}  // namespace fastmine::cuda
