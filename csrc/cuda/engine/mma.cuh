// The tensor-core instructions fastmine uses, each wrapped in one small device function, and
// the one statement of their per-lane fragment layouts. Nothing else in csrc/cuda writes
// inline PTX: the host emulator (tests/emu/) defines FASTMINE_EMULATED_MMA and supplies its
// own, independent implementation of these functions (the PTX ISA's layout tables written
// out literally), so the kernels' fragment bookkeeping is checked on a CPU.
//
// Fragment layouts (PTX ISA, section 9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with
// floating point type" and 9.7.14.5.7 "Matrix Fragments for mma.m16n8k8", .tf32 rows). With
//   g = lane / 4  ("groupID")   and   t = lane % 4  ("threadID_in_group"):
//
//   m16n8k16, f16/bf16 (A row-major 16 x 16, B column-major 16 x 8, C/D f32 16 x 8):
//     a[0] = {A[g    ][2t], A[g    ][2t+1]}    a[1] = {A[g + 8][2t    ], A[g + 8][2t + 1]}
//     a[2] = {A[g    ][2t + 8], ...[2t + 9]}   a[3] = {A[g + 8][2t + 8], A[g + 8][2t + 9]}
//     b[0] = {B[2t][g], B[2t + 1][g]}          b[1] = {B[2t + 8][g], B[2t + 9][g]}
//     (each a[]/b[] register holds two 16-bit values, the lower column / row in the low half)
//   m16n8k8, tf32 (A row-major 16 x 8, B column-major 8 x 8, one 32-bit value per register):
//     a[0] = A[g][t]   a[1] = A[g + 8][t]   a[2] = A[g][t + 4]   a[3] = A[g + 8][t + 4]
//     b[0] = B[t][g]   b[1] = B[t + 4][g]
//   C/D (both shapes, f32): c[0] = C[g][2t], c[1] = C[g][2t + 1], c[2] = C[g + 8][2t],
//     c[3] = C[g + 8][2t + 1].
//
// For fastmine, A is a tile of x rows (row i, coordinate k) and B^T a tile of reference rows
// (row j, coordinate k): "B column-major" means B[k][j] = r_j[k], so both operands are read
// from row-major [row][k] staging with the same 32-bit pattern.
#pragma once

#include <cstdint>

namespace fastmine::cuda {

#if !defined(FASTMINE_EMULATED_MMA)

// d += A * B, A/B bfloat16 or float16 pairs packed in 32-bit registers, f32 accumulators.
// mma.sync is warp-collective: all 32 lanes must call it with the same `bf16`.
template <bool kBf16>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kBf16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  __trap();  // the build targets sm_80 and sm_90 only (setup.py); never reached there
#endif
}

// d += A * B in TF32 (inputs: fp32 bit patterns rounded with to_tf32), f32 accumulators.
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4],
                                                 const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}

// fp32 -> tf32 (round to nearest, ties away; the low 13 mantissa bits cleared), as cuBLAS's
// TF32 mode rounds its operands.
__device__ __forceinline__ uint32_t to_tf32(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
#else
  __trap();
  return 0;
#endif
}

#else  // FASTMINE_EMULATED_MMA: provided by the emulator (tests/emu/emu_mma.h)

template <bool kBf16>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
uint32_t to_tf32(float v);

#endif

}  // namespace fastmine::cuda
