// CudaSide::index_range: the minimum and maximum of an int64 vector on the GPU, for the
// range checks of index arguments (common/op_contracts.h).
#include <climits>
#include <vector>

#include "cuda/contract_cuda.cuh"
#include "cuda/op_entry.cuh"

namespace fastmine::cuda {
namespace {

constexpr int kRangeThreads = 256;
constexpr int64_t kRangeMaxBlocks = 256;

// Block k writes the (min, max) of its grid-stride share to partial[2k], partial[2k + 1].
__global__ void index_range_kernel(const int64_t* __restrict__ p, int64_t n,
                                   int64_t* __restrict__ partial) {
  int64_t lo = LLONG_MAX, hi = LLONG_MIN;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    lo = p[i] < lo ? p[i] : lo;
    hi = p[i] > hi ? p[i] : hi;
  }
  for (int off = kWarp / 2; off > 0; off >>= 1) {
    const int64_t olo = __shfl_xor_sync(kFullMask, lo, off);
    const int64_t ohi = __shfl_xor_sync(kFullMask, hi, off);
    lo = olo < lo ? olo : lo;
    hi = ohi > hi ? ohi : hi;
  }
  __shared__ int64_t s_lo[kRangeThreads / kWarp], s_hi[kRangeThreads / kWarp];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    s_lo[warp] = lo;
    s_hi[warp] = hi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kRangeThreads / kWarp; ++w) {
      lo = s_lo[w] < lo ? s_lo[w] : lo;
      hi = s_hi[w] > hi ? s_hi[w] : hi;
    }
    partial[2 * blockIdx.x] = lo;
    partial[2 * blockIdx.x + 1] = hi;
  }
}

}  // namespace

contract::IndexRange CudaSide::index_range(const Tensor& t) {
  const OpEntry entry(t);
  const Tensor c = dense(t);
  const int64_t n = c.numel();
  const int64_t blocks = std::min<int64_t>(ceil_div(n, kRangeThreads), kRangeMaxBlocks);
  Tensor partial = torch::stable::new_empty(c, {2 * blocks}, ScalarType::Long);
  index_range_kernel<<<grid_1d(blocks, "index range check"), kRangeThreads, 0, entry.stream>>>(
      cptr<int64_t>(c), n, mptr<int64_t>(partial));
  check_launch("index_range_kernel");
  std::vector<int64_t> host(2 * blocks);
  FM_CUDA_CHECK(cudaMemcpyAsync(host.data(), partial.data_ptr(), host.size() * sizeof(int64_t),
                                cudaMemcpyDeviceToHost, entry.stream),
                "cudaMemcpyAsync (index range)");
  FM_CUDA_CHECK(cudaStreamSynchronize(entry.stream), "cudaStreamSynchronize (index range)");
  contract::IndexRange r{host[0], host[1]};
  for (int64_t k = 1; k < blocks; ++k) {
    r.min = std::min(r.min, host[2 * k]);
    r.max = std::max(r.max, host[2 * k + 1]);
  }
  return r;
}

}  // namespace fastmine::cuda
