// CUB's segmented sort of distances, ascending with NaN last, on their order-preserving
// integer keys (sort_keys.cuh): sorted as floats, a segment holding a NaN would come back
// unsorted from CUB's merge sort of short segments. And the segment offsets of a row-major
// matrix sorted row by row. Host code; include from a .cu only.
#pragma once

#include <cub/device/device_segmented_sort.cuh>

#include <algorithm>

#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/sort_keys.cuh"

namespace fastmine::cuda {
namespace {

constexpr int kOffsetThreads = 256;

__global__ void __launch_bounds__(kOffsetThreads)
    row_offsets_kernel(int64_t rows, int64_t m, int64_t* __restrict__ off) {
  const int64_t r = int64_t(blockIdx.x) * kOffsetThreads + threadIdx.x;
  if (r <= rows) off[r] = r * m;
}

// off[r] = r * m for r in [0, rows]: the segments of a (rows, m) row-major matrix, one per row
// (CUB's begin offsets are off, its end offsets off + 1).
inline void launch_row_offsets(int64_t rows, int64_t m, int64_t* off, const char* what,
                               cudaStream_t stream) {
  row_offsets_kernel<<<grid_1d(ceil_div(rows + 1, kOffsetThreads), what), kOffsetThreads, 0,
                       stream>>>(rows, m, off);
  check_launch("row_offsets_kernel");
}

// Sorts the segments [begin[s], end[s]) of in[0, n) into out, with int32 values carried along
// when vals_in is given (not stable: equal distances may exchange their values). in is left
// holding keys, not distances. CUB's temp-storage protocol: with temp == nullptr only bytes
// is set.
template <typename acc_t>
void sort_distance_segments(void* temp, size_t& bytes, acc_t* in, acc_t* out,
                            const int32_t* vals_in, int32_t* vals_out, int64_t n, int64_t segments,
                            const int64_t* begin, const int64_t* end, cudaStream_t stream) {
  using K = sort_key_t<acc_t>;
  K* kin = reinterpret_cast<K*>(in);
  K* kout = reinterpret_cast<K*>(out);
  const unsigned blocks =
      grid_1d(std::clamp<int64_t>(ceil_div(n, kKeyThreads), 1, 4096), "distance keys");
  if (temp != nullptr && n > 0) {
    distance_keys_kernel<acc_t, true><<<blocks, kKeyThreads, 0, stream>>>(in, n);
    check_launch("distance_keys_kernel");
  }
  if (vals_in != nullptr) {
    FM_CUDA_CHECK(cub::DeviceSegmentedSort::SortPairs(temp, bytes, kin, kout, vals_in, vals_out, n,
                                                      segments, begin, end, stream),
                  "cub::DeviceSegmentedSort::SortPairs");
  } else {
    FM_CUDA_CHECK(
        cub::DeviceSegmentedSort::SortKeys(temp, bytes, kin, kout, n, segments, begin, end, stream),
        "cub::DeviceSegmentedSort::SortKeys");
  }
  if (temp != nullptr && n > 0) {
    distance_keys_kernel<acc_t, false><<<blocks, kKeyThreads, 0, stream>>>(out, n);
    check_launch("distance_keys_kernel");
  }
}

}  // namespace
}  // namespace fastmine::cuda
