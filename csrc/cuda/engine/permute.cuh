// Permutations of rows on the GPU: a stable argsort of int64 keys (equal keys keep their
// order), its inverse, and rows gathered through one. Batch-all puts its anchors and
// reference rows in label order with these, so that each anchor's positives are one
// contiguous run. Host code; include from a .cu only.
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>

#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/launchers.cuh"

namespace fastmine::cuda {
namespace {

constexpr int kPermuteThreads = 256;

__global__ void __launch_bounds__(kPermuteThreads) iota_kernel(int64_t* __restrict__ p, int64_t n) {
  const int64_t e = int64_t(blockIdx.x) * kPermuteThreads + threadIdx.x;
  if (e < n) p[e] = e;
}

// inv[perm[s]] = s.
__global__ void __launch_bounds__(kPermuteThreads)
    inverse_perm_kernel(const int64_t* __restrict__ perm, int64_t n, int64_t* __restrict__ inv) {
  const int64_t s = int64_t(blockIdx.x) * kPermuteThreads + threadIdx.x;
  if (s < n) inv[perm[s]] = s;
}

// dst[r, :] = src[perm[r], :] for r < n (a row gather; dim = 1 gathers a vector).
template <typename T>
__global__ void __launch_bounds__(kPermuteThreads)
    gather_rows_kernel(const T* __restrict__ src, const int64_t* __restrict__ perm, int64_t n,
                       int64_t dim, T* __restrict__ dst) {
  const int64_t total = n * dim;
  const int64_t stride = int64_t(gridDim.x) * kPermuteThreads;
  for (int64_t e = int64_t(blockIdx.x) * kPermuteThreads + threadIdx.x; e < total; e += stride) {
    const int64_t r = e / dim;
    dst[e] = src[perm[r] * dim + (e - r * dim)];
  }
}

// keys_out = keys (int64, n <= INT_MAX: CUB's item count) sorted ascending, stably; perm = the
// original positions in that order. `op` names the op in the size error.
inline void stable_argsort(const Tensor& like, const Tensor& keys, Tensor& keys_out, Tensor& perm,
                           const char* op, cudaStream_t stream) {
  const int64_t n = keys.size(0);
  if (n == 0) return;
  STD_TORCH_CHECK(n <= INT_MAX, "fastmine.", op, ": too many rows (", n, ")");
  Tensor ids = torch::stable::new_empty(like, {n}, ScalarType::Long);
  iota_kernel<<<grid_1d(ceil_div(n, kPermuteThreads), "iota"), kPermuteThreads, 0, stream>>>(
      mptr<int64_t>(ids), n);
  check_launch("iota_kernel");
  size_t bytes = 0;
  FM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
                    nullptr, bytes, cptr<int64_t>(keys), mptr<int64_t>(keys_out),
                    cptr<int64_t>(ids), mptr<int64_t>(perm), static_cast<int>(n), 0, 64, stream),
                "cub::DeviceRadixSort::SortPairs (size query)");
  Tensor temp = byte_buffer(like, bytes);
  FM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
                    temp.data_ptr(), bytes, cptr<int64_t>(keys), mptr<int64_t>(keys_out),
                    cptr<int64_t>(ids), mptr<int64_t>(perm), static_cast<int>(n), 0, 64, stream),
                "cub::DeviceRadixSort::SortPairs");
}

// inv[perm[s]] = s for s < n.
inline void inverse_permutation(const int64_t* perm, int64_t n, int64_t* inv, cudaStream_t stream) {
  if (n == 0) return;
  inverse_perm_kernel<<<grid_1d(ceil_div(n, kPermuteThreads), "inverse_perm"), kPermuteThreads, 0,
                        stream>>>(perm, n, inv);
  check_launch("inverse_perm_kernel");
}

// dst[r, :] = src[perm[r], :] for the n rows of dim elements.
template <typename T>
void gather_rows(const T* src, const int64_t* perm, int64_t n, int64_t dim, T* dst,
                 cudaStream_t stream) {
  if (n * dim == 0) return;
  const int64_t blocks = std::min<int64_t>(ceil_div(n * dim, kPermuteThreads), kMaxStrideBlocks);
  gather_rows_kernel<T>
      <<<grid_1d(blocks, "gather_rows"), kPermuteThreads, 0, stream>>>(src, perm, n, dim, dst);
  check_launch("gather_rows_kernel");
}

}  // namespace
}  // namespace fastmine::cuda
