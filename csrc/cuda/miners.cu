// Margin-filtered triplet mining on the GPU (pytorch-metric-learning's TripletMarginMiner),
// the same outputs as csrc/cpu/miners.cpp; the rule is common/miners.h's.
//
// Anchors are processed in chunks of rows whose distance block (rows x M) fits a fixed
// budget, so memory stays bounded at any B (the output itself aside).
//  1. count, per chunk: the distances (pairwise_distance_kernel, its exact near-duplicate
//     rule); mine_keys_kernel puts each row's negative distances first (others +inf) and
//     flags non-finite candidates; a cub segmented sort per row; mine_count_kernel: per
//     positive, two bisections (triplet_interval_count), summed per anchor.
//  2. one device-to-host copy of the counts and flags (the output length is data-dependent:
//     this synchronisation is unavoidable); non-finite candidates are refused here; the
//     prefix sum gives each anchor its output slice, and the output is allocated once.
//  3. fill, per chunk with something to write: the same distance kernel on the same rows
//     (the same bits), then mine_fill_kernel writes each anchor's slice in PML's order.
// No float atomics; each anchor owns its slice: bitwise-reproducible output.

#include <algorithm>
#include <vector>

#include "common/miners.h"
#include "cuda/contract_cuda.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/distance_matrix.cuh"
#include "cuda/engine/distance_sort.cuh"
#include "cuda/engine/launchers.cuh"
#include "cuda/miners_kernels.cuh"
#include "cuda/op_entry.cuh"

namespace fastmine::cuda {
namespace {

constexpr const char* kOp = "mine_triplets";

// Distance entries per chunk (three rows x M buffers of this size: distances, keys, sorted).
constexpr int64_t kChunkEntries = int64_t(1) << 24;

template <typename T>
struct MineChunks {
  int64_t b, m, dim, rows;
  Tensor nx2, nr2, dist, keys, sorted, seg, n_neg, temp;
  size_t temp_bytes = 0;

  MineChunks(const Tensor& x, const Tensor& ref, cudaStream_t stream)
      : b(x.size(0)), m(ref.size(0)), dim(x.size(1)) {
    constexpr ScalarType st = scalar_type_of<T>();
    rows = std::max<int64_t>(1, std::min<int64_t>(b, kChunkEntries / std::max<int64_t>(m, 1)));
    rows = std::min<int64_t>(rows, int64_t(65535) * TileCfg::BM);  // grid.y of the distances
    nx2 = torch::stable::new_empty(x, {b}, st);
    nr2 = torch::stable::new_empty(x, {m}, st);
    launch_row_sqnorm<T, T>(cptr<T>(x), b, dim, mptr<T>(nx2), stream);
    launch_row_sqnorm<T, T>(cptr<T>(ref), m, dim, mptr<T>(nr2), stream);
    dist = torch::stable::new_empty(x, {rows * m}, st);
    keys = torch::stable::new_empty(x, {rows * m}, st);
    sorted = torch::stable::new_empty(x, {rows * m}, st);
    seg = torch::stable::new_empty(x, {rows + 1}, ScalarType::Long);
    n_neg = torch::stable::new_empty(x, {rows}, ScalarType::Long);
    // The sort's scratch, sized once for a full chunk.
    const int64_t* sp = cptr<int64_t>(seg);
    sort_distance_segments<T>(nullptr, temp_bytes, mptr<T>(keys), mptr<T>(sorted), nullptr, nullptr,
                              rows * m, rows, sp, sp + 1, stream);
    temp = byte_buffer(x, temp_bytes);
  }

  // Distances of anchor rows [a0, a0 + nr) to every reference row, into dist (nr x M).
  void distances(const Tensor& x, const Tensor& ref, int64_t metric, int64_t a0, int64_t nr,
                 cudaStream_t stream) const {
    const dim3 grid(grid_1d(ceil_div(m, TileCfg::BN), kOp),
                    static_cast<unsigned>(ceil_div(nr, TileCfg::BM)));
    pairwise_distance_kernel<T, T><<<grid, TileCfg::THREADS, 0, stream>>>(
        cptr<T>(x) + a0 * dim, cptr<T>(ref), cptr<T>(nx2) + a0, cptr<T>(nr2), nr, m, dim, metric,
        mptr<T>(dist));
    check_launch("pairwise_distance_kernel");
  }

  // Sorts each of the first nr rows of keys into sorted.
  void sort_rows(int64_t nr, cudaStream_t stream) {
    launch_row_offsets(nr, m, mptr<int64_t>(seg), kOp, stream);
    const int64_t* sp = cptr<int64_t>(seg);
    size_t bytes = temp_bytes;
    sort_distance_segments<T>(temp.data_ptr(), bytes, mptr<T>(keys), mptr<T>(sorted), nullptr,
                              nullptr, nr * m, nr, sp, sp + 1, stream);
  }
};

template <typename T>
void mine_triplets_impl(const Tensor& x, const Tensor& labels, const Tensor& ref,
                        const Tensor& ref_labels, double margin_, int64_t type, int64_t metric,
                        bool has_exclude, int64_t exclude_offset, Tensor& out_a, Tensor& out_p,
                        Tensor& out_n, cudaStream_t stream) {
  MineChunks<T> c(x, ref, stream);
  const int64_t b = c.b, m = c.m;
  const T margin = static_cast<T>(margin_);
  const int64_t* lab = cptr<int64_t>(labels);
  const int64_t* rlab = cptr<int64_t>(ref_labels);
  Tensor counts = torch::stable::new_empty(x, {b}, ScalarType::Long);
  Tensor status = torch::stable::new_empty(x, {b}, ScalarType::Int);

  // 1. count
  for (int64_t a0 = 0; a0 < b; a0 += c.rows) {
    const int64_t nr = std::min(c.rows, b - a0);
    c.distances(x, ref, metric, a0, nr, stream);
    mine_keys_kernel<T><<<grid_1d(nr, kOp), kMineThreads, 0, stream>>>(
        cptr<T>(c.dist), m, a0, lab, rlab, has_exclude, exclude_offset, mptr<T>(c.keys),
        mptr<int64_t>(c.n_neg), mptr<int32_t>(status));
    check_launch("mine_keys_kernel");
    c.sort_rows(nr, stream);
    mine_count_kernel<T><<<grid_1d(nr, kOp), kMineThreads, 0, stream>>>(
        cptr<T>(c.dist), cptr<T>(c.sorted), m, a0, lab, rlab, has_exclude, exclude_offset, type,
        margin, cptr<int64_t>(c.n_neg), cptr<int32_t>(status), mptr<int64_t>(counts));
    check_launch("mine_count_kernel");
  }

  // 2. the host's view: refuse non-finite candidates, prefix sums, one allocation.
  std::vector<int64_t> h_counts(b);
  std::vector<int32_t> h_status(b);
  FM_CUDA_CHECK(cudaMemcpyAsync(h_counts.data(), counts.data_ptr(), b * sizeof(int64_t),
                                cudaMemcpyDeviceToHost, stream),
                "cudaMemcpyAsync (counts)");
  FM_CUDA_CHECK(cudaMemcpyAsync(h_status.data(), status.data_ptr(), b * sizeof(int32_t),
                                cudaMemcpyDeviceToHost, stream),
                "cudaMemcpyAsync (status)");
  FM_CUDA_CHECK(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  for (int64_t i = 0; i < b; ++i) {
    STD_TORCH_CHECK(h_status[i] != kMineNonFinite, "fastmine.", kOp, ": anchor ", i,
                    " has a non-finite distance to one of its candidates (NaN or inf in "
                    "embeddings or ref_embeddings, or an overflow); refusing to mine");
  }
  std::vector<int64_t> h_off(b + 1, 0);
  for (int64_t i = 0; i < b; ++i) h_off[i + 1] = h_off[i] + h_counts[i];
  const int64_t total = h_off[b];
  out_a = torch::stable::new_empty(x, {total}, ScalarType::Long);
  out_p = torch::stable::new_empty(x, {total}, ScalarType::Long);
  out_n = torch::stable::new_empty(x, {total}, ScalarType::Long);
  if (total == 0) return;
  Tensor offsets = torch::stable::new_empty(x, {b + 1}, ScalarType::Long);
  FM_CUDA_CHECK(cudaMemcpyAsync(offsets.data_ptr(), h_off.data(), (b + 1) * sizeof(int64_t),
                                cudaMemcpyHostToDevice, stream),
                "cudaMemcpyAsync (offsets)");
  Tensor mismatch = torch::stable::new_zeros(x, {1}, ScalarType::Int);

  // 3. fill
  for (int64_t a0 = 0; a0 < b; a0 += c.rows) {
    const int64_t nr = std::min(c.rows, b - a0);
    if (h_off[a0 + nr] == h_off[a0]) continue;  // nothing to write in this chunk
    c.distances(x, ref, metric, a0, nr, stream);
    mine_fill_kernel<T><<<grid_1d(nr, kOp), kMineThreads, 0, stream>>>(
        cptr<T>(c.dist), m, a0, lab, rlab, has_exclude, exclude_offset, type, margin,
        cptr<int64_t>(counts), cptr<int64_t>(offsets), mptr<int64_t>(out_a), mptr<int64_t>(out_p),
        mptr<int64_t>(out_n), mptr<int32_t>(mismatch));
    check_launch("mine_fill_kernel");
  }
  int32_t h_mismatch = 0;
  FM_CUDA_CHECK(cudaMemcpyAsync(&h_mismatch, mismatch.data_ptr(), sizeof(int32_t),
                                cudaMemcpyDeviceToHost, stream),
                "cudaMemcpyAsync (mismatch)");
  FM_CUDA_CHECK(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  STD_TORCH_CHECK(h_mismatch == 0, "fastmine.", kOp,
                  ": internal error, the fill pass "
                  "disagrees with the count pass (distances not reproducible)");
}

std::tuple<Tensor, Tensor, Tensor> mine_triplets_cuda(Tensor x_, Tensor labels_, Tensor ref_,
                                                      Tensor ref_labels_, double margin,
                                                      int64_t type, int64_t metric,
                                                      bool has_exclude, int64_t exclude_offset) {
  contract::mine_triplets<CudaSide>(x_, labels_, ref_, ref_labels_, margin, type, metric,
                                    has_exclude, exclude_offset);
  const ScalarType st = x_.scalar_type();
  const OpEntry entry(x_);
  const Tensor x = dense(x_), ref = dense(ref_);
  const Tensor labels = dense(labels_);
  const Tensor ref_labels = dense(ref_labels_);
  Tensor out_a, out_p, out_n;
  if (x.size(0) == 0 || ref.size(0) == 0) {
    out_a = torch::stable::new_empty(x, {0}, ScalarType::Long);
    out_p = torch::stable::new_empty(x, {0}, ScalarType::Long);
    out_n = torch::stable::new_empty(x, {0}, ScalarType::Long);
    return {out_a, out_p, out_n};
  }
  if (st == ScalarType::Double) {
    mine_triplets_impl<double>(x, labels, ref, ref_labels, margin, type, metric, has_exclude,
                               exclude_offset, out_a, out_p, out_n, entry.stream);
  } else {
    mine_triplets_impl<float>(x, labels, ref, ref_labels, margin, type, metric, has_exclude,
                              exclude_offset, out_a, out_p, out_n, entry.stream);
  }
  return {out_a, out_p, out_n};
}

}  // namespace
}  // namespace fastmine::cuda

STABLE_TORCH_LIBRARY_IMPL(fastmine, CUDA, m) {
  m.impl("mine_triplets", TORCH_BOX(&fastmine::cuda::mine_triplets_cuda));
}
