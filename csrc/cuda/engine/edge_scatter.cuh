// The deterministic scatter of the triplet backwards (batch-hard, semi-hard): a gradient
// row that many edges add into (a positive or negative picked by many anchors) is summed
// without float atomics. Each edge carries the row it adds into as its key; a stable radix
// sort of the edge ids by key puts every row's edges next to each other in ascending edge
// order; one pass finds each row's run; the op's row kernel then sums each run in that
// order. The result is the same bits on every run, whatever the scheduling. Host code;
// include from a .cu only.
#pragma once

#include <cub/device/device_radix_sort.cuh>

#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/edge_scatter_kernels.cuh"

namespace fastmine::cuda {
namespace {

// The edges of each row, in edge order: ids = the edge ids sorted by key, and the run
// [start[r], end[r]) of row r in ids (empty for a row no edge adds into).
struct EdgeRuns {
  Tensor ids, start, end;
};

// keys_in, ids_in: (n_edges,) int64 tensors holding edge_key_t keys in [0, n_keys] (n_keys:
// an edge that adds nowhere; it sorts last) and the edge ids. `like`: the device tensor whose
// device the buffers go to. n_edges fits CUB's int item count (checked by the caller).
// The grid of a kernel that sums the runs of `rows` rows of dim columns (see run_lane).
inline unsigned run_grid(int64_t rows, int64_t dim, const char* what) {
  return grid_1d(ceil_div(rows * ceil_div(dim, kWarp), kRowsPerBlock), what);
}

EdgeRuns sort_edges(const Tensor& like, const Tensor& keys_in, const Tensor& ids_in,
                    int64_t n_edges, int64_t n_keys, const char* what, cudaStream_t stream) {
  EdgeRuns runs{torch::stable::new_empty(like, {n_edges}, ScalarType::Long),
                torch::stable::new_zeros(like, {n_keys}, ScalarType::Long),
                torch::stable::new_zeros(like, {n_keys}, ScalarType::Long)};
  Tensor keys_out = torch::stable::new_empty(like, {n_edges}, ScalarType::Long);
  // Stable (LSD) radix sort over the bits that keys 0..n_keys can use.
  int end_bit = 1;
  while (end_bit < 64 && (edge_key_t(1) << end_bit) <= edge_key_t(n_keys)) ++end_bit;
  const int n_items = static_cast<int>(n_edges);
  size_t bytes = 0;
  FM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
                    nullptr, bytes, cptr<edge_key_t>(keys_in), mptr<edge_key_t>(keys_out),
                    cptr<int64_t>(ids_in), mptr<int64_t>(runs.ids), n_items, 0, end_bit, stream),
                "cub::DeviceRadixSort::SortPairs (size query)");
  Tensor temp = byte_buffer(like, bytes);
  FM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
                    temp.data_ptr(), bytes, cptr<edge_key_t>(keys_in), mptr<edge_key_t>(keys_out),
                    cptr<int64_t>(ids_in), mptr<int64_t>(runs.ids), n_items, 0, end_bit, stream),
                "cub::DeviceRadixSort::SortPairs");
  check_launch("cub::DeviceRadixSort::SortPairs");
  // start and end were zero-filled on the current stream, i.e. `stream`: ordered before this.
  segment_bounds_kernel<<<grid_1d(ceil_div(n_edges, kScatterThreads), what), kScatterThreads, 0,
                          stream>>>(cptr<edge_key_t>(keys_out), n_edges, n_keys,
                                    mptr<int64_t>(runs.start), mptr<int64_t>(runs.end));
  check_launch("segment_bounds_kernel");
  return runs;
}

}  // namespace
}  // namespace fastmine::cuda
