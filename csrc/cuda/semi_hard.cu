// Semi-hard triplet loss on the GPU, forward and backward. Same outputs, tie rules and NaN
// rules as csrc/cpu/semi_hard.cpp (docs/semantics.md, `semi_hard_triplet_loss`); the kernels
// are in semi_hard_kernels.cuh.
//
// Forward:
//  1. sh_count_kernel (one block per anchor): pairs and negatives per anchor from the labels;
//     the pair offsets are summed on the host (P is data-dependent: the outputs' size).
//  2. Row panels of the distance matrix (pairwise_distance_kernel, in acc_t: half inputs are
//     upcast first), then per panel:
//     sh_keys_kernel (negatives' distances as order-preserving integer keys, others pushed
//     last) and
//     cub::DeviceSegmentedSort::StableSortPairs of every row (ties stay in column order:
//     the lowest index first), and sh_pick_kernel (one block per anchor): each positive,
//     in column order, binary-searches the sorted negatives for the first one farther than
//     itself. O(M log M) per anchor, never B x M x M.
//  3. sh_finalize_kernel (one warp per pair): the chosen distances by direct differences, and
//     the term. sh_nonfinite_kernel: the 0-dim NaN/0 output (integer atomicOr: exact).
// Backward (batch-hard's scheme, with P pairs instead of B anchors): per pair two edges; the
// edge ids sorted by anchor and by target (engine/edge_scatter.cuh); each output row sums its
// edges in ascending edge order (sh_backward_rows_kernel). No float atomics: deterministic.
#include <cub/device/device_segmented_sort.cuh>

#include <climits>
#include <vector>

#include "common/distance.h"
#include "common/semi_hard.h"
#include "cuda/contract_cuda.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/distance_matrix.cuh"
#include "cuda/engine/distance_sort.cuh"
#include "cuda/engine/edge_scatter.cuh"
#include "cuda/engine/launchers.cuh"
#include "cuda/op_entry.cuh"
#include "cuda/semi_hard_kernels.cuh"

namespace fastmine::cuda {
namespace {

constexpr const char* kFwd = "semi_hard_triplet";
constexpr const char* kBwd = "semi_hard_triplet_backward";

// Panel rows: ~256 MiB of scratch (distances, sort keys and columns, in and out), a panel's
// element count within cub's int item count, and its row tiles within grid.y (65535): a tall
// batch against a small reference set would otherwise ask for a taller panel.
inline int64_t sh_panel_rows(int64_t b, int64_t m, int64_t acc_bytes) {
  const int64_t per_row = m * (3 * acc_bytes + 2 * int64_t(sizeof(int32_t)));
  int64_t rows = (int64_t(256) << 20) / std::max<int64_t>(per_row, 1);
  rows = std::min<int64_t>(rows, INT_MAX / std::max<int64_t>(m, 1));
  rows = std::min<int64_t>(rows, int64_t(65535) * TileCfg::BM);
  return std::max<int64_t>(1, std::min(rows, b));
}

template <typename T>
void semi_hard_forward(const Tensor& x, const Tensor& labels, const Tensor& ref,
                       const Tensor& ref_labels, const Tensor& offsets,
                       const std::vector<int64_t>& h_off, const Tensor& negs, double margin,
                       int64_t metric, bool has_exclude, int64_t exclude_offset, Tensor& loss,
                       Tensor& anchor_idx, Tensor& pos_idx, Tensor& neg_idx, Tensor& pos_dist,
                       Tensor& neg_dist, cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  constexpr ScalarType acc_st = scalar_type_of<acc_t>();
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1), p = h_off[b];
  // Selection distances in acc_t (half inputs upcast: a half distance would round ties).
  const Tensor xs = std::is_same_v<T, acc_t> ? x : torch::stable::to(x, acc_st);
  const Tensor rs = std::is_same_v<T, acc_t> ? ref : torch::stable::to(ref, acc_st);
  Tensor nx2 = torch::stable::new_empty(x, {b}, acc_st);
  Tensor nr2 = torch::stable::new_empty(x, {m}, acc_st);
  launch_row_sqnorm<acc_t, acc_t>(cptr<acc_t>(xs), b, dim, mptr<acc_t>(nx2), stream);
  launch_row_sqnorm<acc_t, acc_t>(cptr<acc_t>(rs), m, dim, mptr<acc_t>(nr2), stream);

  const int64_t rows = sh_panel_rows(b, m, sizeof(acc_t));
  Tensor dist = torch::stable::new_empty(x, {rows * m}, acc_st);
  using key_t = sort_key_t<acc_t>;  // stored in a tensor of the signed type of its width
  constexpr ScalarType key_st = sizeof(key_t) == 4 ? ScalarType::Int : ScalarType::Long;
  Tensor keys_in = torch::stable::new_empty(x, {rows * m}, key_st);
  Tensor keys_out = torch::stable::new_empty(x, {rows * m}, key_st);
  Tensor cols_in = torch::stable::new_empty(x, {rows * m}, ScalarType::Int);
  Tensor cols_out = torch::stable::new_empty(x, {rows * m}, ScalarType::Int);
  Tensor seg = torch::stable::new_empty(x, {rows + 1}, ScalarType::Long);
  launch_row_offsets(rows, m, mptr<int64_t>(seg), kFwd, stream);
  Tensor temp = byte_buffer(x, 1);
  size_t temp_cap = 1;

  for (int64_t r0 = 0; r0 < b; r0 += rows) {
    const int64_t nr = std::min(rows, b - r0);
    if (h_off[r0 + nr] == h_off[r0]) continue;  // no pair in this panel
    const int64_t row_tiles = ceil_div(nr, TileCfg::BM), col_tiles = ceil_div(m, TileCfg::BN);
    STD_TORCH_CHECK(row_tiles <= 65535, "fastmine.", kFwd, ": panel too tall");
    pairwise_distance_kernel<acc_t, acc_t>
        <<<dim3(grid_1d(col_tiles, kFwd), unsigned(row_tiles)), TileCfg::THREADS, 0, stream>>>(
            cptr<acc_t>(xs) + r0 * dim, cptr<acc_t>(rs), cptr<acc_t>(nx2) + r0, cptr<acc_t>(nr2),
            nr, m, dim, metric, mptr<acc_t>(dist));
    check_launch("pairwise_distance_kernel");
    const int64_t n = nr * m;
    sh_keys_kernel<acc_t><<<grid_1d(std::min<int64_t>(ceil_div(n, kRowThreads), 65535), kFwd),
                            kRowThreads, 0, stream>>>(cptr<acc_t>(dist), cptr<int64_t>(labels),
                                                      cptr<int64_t>(ref_labels), r0, nr, m,
                                                      mptr<key_t>(keys_in), mptr<int32_t>(cols_in));
    check_launch("sh_keys_kernel");
    const int64_t* seg_begin = cptr<int64_t>(seg);
    size_t bytes = 0;
    FM_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(
                      nullptr, bytes, cptr<key_t>(keys_in), mptr<key_t>(keys_out),
                      cptr<int32_t>(cols_in), mptr<int32_t>(cols_out), static_cast<int>(n),
                      static_cast<int>(nr), seg_begin, seg_begin + 1, stream),
                  "cub::DeviceSegmentedSort::StableSortPairs (size query)");
    if (bytes > temp_cap) {
      temp = byte_buffer(x, bytes);
      temp_cap = bytes;
    }
    FM_CUDA_CHECK(cub::DeviceSegmentedSort::StableSortPairs(
                      temp.data_ptr(), bytes, cptr<key_t>(keys_in), mptr<key_t>(keys_out),
                      cptr<int32_t>(cols_in), mptr<int32_t>(cols_out), static_cast<int>(n),
                      static_cast<int>(nr), seg_begin, seg_begin + 1, stream),
                  "cub::DeviceSegmentedSort::StableSortPairs");
    check_launch("cub::DeviceSegmentedSort::StableSortPairs");
    sh_pick_kernel<acc_t><<<grid_1d(nr, kFwd), kShThreads, 0, stream>>>(
        cptr<acc_t>(dist), cptr<key_t>(keys_out), cptr<int32_t>(cols_out), cptr<int64_t>(labels),
        cptr<int64_t>(ref_labels), cptr<int64_t>(offsets), cptr<int64_t>(negs), r0, m, has_exclude,
        exclude_offset, mptr<int64_t>(anchor_idx), mptr<int64_t>(pos_idx), mptr<int64_t>(neg_idx));
    check_launch("sh_pick_kernel");
  }
  sh_finalize_kernel<T, acc_t>
      <<<grid_1d(ceil_div(p, kRowsPerBlock), kFwd), kRowThreads, 0, stream>>>(
          cptr<T>(x), cptr<T>(ref), cptr<int64_t>(anchor_idx), cptr<int64_t>(pos_idx),
          cptr<int64_t>(neg_idx), p, dim, static_cast<acc_t>(margin), metric, mptr<acc_t>(loss),
          mptr<acc_t>(pos_dist), mptr<acc_t>(neg_dist));
  check_launch("sh_finalize_kernel");
}

template <typename T>
void nonfinite_flag(const Tensor& t, int* flag, cudaStream_t stream) {
  const int64_t n = t.numel();
  if (n == 0) return;
  sh_nonfinite_kernel<T><<<grid_1d(std::min<int64_t>(ceil_div(n, kRowThreads), 4096), kFwd),
                           kRowThreads, 0, stream>>>(cptr<T>(t), n, flag);
  check_launch("sh_nonfinite_kernel");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> semi_hard_triplet_cuda(
    Tensor x_, Tensor labels_, Tensor ref_, Tensor ref_labels_, double margin, int64_t metric,
    bool has_exclude, int64_t exclude_offset) {
  contract::semi_hard_triplet<CudaSide>(x_, labels_, ref_, ref_labels_, margin, metric, has_exclude,
                                        exclude_offset);
  const int64_t b = x_.size(0), m = ref_.size(0);
  STD_TORCH_CHECK(m <= INT_MAX, "fastmine.", kFwd, ": too many reference rows (", m, ")");
  const OpEntry entry(x_);
  const Tensor x = dense(x_), ref = dense(ref_);
  const Tensor labels = dense(labels_);
  const Tensor ref_labels = dense(ref_labels_);

  // 1. pairs per anchor, and their offsets (the output size) on the host.
  Tensor pairs = torch::stable::new_empty(x, {std::max<int64_t>(b, 1)}, ScalarType::Long);
  Tensor negs = torch::stable::new_empty(x, {std::max<int64_t>(b, 1)}, ScalarType::Long);
  std::vector<int64_t> h_off(b + 1, 0);
  if (b > 0) {
    sh_count_kernel<<<grid_1d(b, kFwd), kShThreads, 0, entry.stream>>>(
        cptr<int64_t>(labels), cptr<int64_t>(ref_labels), m, has_exclude, exclude_offset,
        mptr<int64_t>(pairs), mptr<int64_t>(negs));
    check_launch("sh_count_kernel");
    FM_CUDA_CHECK(cudaMemcpyAsync(h_off.data() + 1, pairs.data_ptr(), b * sizeof(int64_t),
                                  cudaMemcpyDeviceToHost, entry.stream),
                  "cudaMemcpyAsync");
    FM_CUDA_CHECK(cudaStreamSynchronize(entry.stream), "cudaStreamSynchronize");
    for (int64_t i = 0; i < b; ++i) h_off[i + 1] += h_off[i];
  }
  const int64_t p = h_off[b];
  Tensor offsets = torch::stable::new_empty(x, {b + 1}, ScalarType::Long);
  FM_CUDA_CHECK(cudaMemcpyAsync(offsets.data_ptr(), h_off.data(), (b + 1) * sizeof(int64_t),
                                cudaMemcpyHostToDevice, entry.stream),
                "cudaMemcpyAsync");

  Tensor loss = torch::stable::new_empty(x, {p}, entry.acc_st);
  Tensor pos_dist = torch::stable::new_empty(x, {p}, entry.acc_st);
  Tensor neg_dist = torch::stable::new_empty(x, {p}, entry.acc_st);
  Tensor anchor_idx = torch::stable::new_empty(x, {p}, ScalarType::Long);
  Tensor pos_idx = torch::stable::new_empty(x, {p}, ScalarType::Long);
  Tensor neg_idx = torch::stable::new_empty(x, {p}, ScalarType::Long);
  Tensor nonfinite = torch::stable::new_empty(x, {}, entry.acc_st);
  Tensor flag = torch::stable::new_zeros(x, {1}, ScalarType::Int);

  dispatch_floating(x.scalar_type(), kFwd, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using acc_t = acc_of_t<T>;
    nonfinite_flag<T>(x, mptr<int>(flag), entry.stream);
    nonfinite_flag<T>(ref, mptr<int>(flag), entry.stream);
    sh_nonfinite_value_kernel<acc_t>
        <<<1, 1, 0, entry.stream>>>(cptr<int>(flag), mptr<acc_t>(nonfinite));
    check_launch("sh_nonfinite_value_kernel");
    if (p > 0) {
      semi_hard_forward<T>(x, labels, ref, ref_labels, offsets, h_off, negs, margin, metric,
                           has_exclude, exclude_offset, loss, anchor_idx, pos_idx, neg_idx,
                           pos_dist, neg_dist, entry.stream);
    }
  });
  // h_off must outlive its host-to-device copy.
  FM_CUDA_CHECK(cudaStreamSynchronize(entry.stream), "cudaStreamSynchronize");
  return {loss, anchor_idx, pos_idx, neg_idx, pos_dist, neg_dist, nonfinite};
}

// ---- backward -----------------------------------------------------------------------------------

template <typename T>
void semi_hard_backward(const Tensor& gl, const Tensor& gpd, const Tensor& gnd, const Tensor& x,
                        const Tensor& ref, const Tensor& ai, const Tensor& pi, const Tensor& ni,
                        const Tensor& pd, const Tensor& nd, double margin, int64_t metric,
                        Tensor& gx, Tensor& gr, cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  constexpr ScalarType acc_st = scalar_type_of<acc_t>();
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1), p = ai.size(0);
  const int64_t n_edges = 2 * p;
  STD_TORCH_CHECK(n_edges <= INT_MAX, "fastmine.", kBwd, ": too many pairs (", p, ")");
  Tensor key_src = torch::stable::new_empty(x, {n_edges}, ScalarType::Long);
  Tensor key_dst = torch::stable::new_empty(x, {n_edges}, ScalarType::Long);
  Tensor ids = torch::stable::new_empty(x, {n_edges}, ScalarType::Long);
  Tensor edge_c = torch::stable::new_empty(x, {n_edges}, acc_st);
  Tensor edge_au = torch::stable::new_empty(x, {n_edges}, acc_st);
  Tensor edge_cross = torch::stable::new_empty(x, {n_edges}, acc_st);
  Tensor edge_bv = torch::stable::new_empty(x, {n_edges}, acc_st);
  sh_backward_edges_kernel<T, acc_t>
      <<<grid_1d(ceil_div(p, kRowsPerBlock), kBwd), kRowThreads, 0, stream>>>(
          cptr<acc_t>(gl), cptr<acc_t>(gpd), cptr<acc_t>(gnd), cptr<T>(x), cptr<T>(ref),
          cptr<int64_t>(ai), cptr<int64_t>(pi), cptr<int64_t>(ni), cptr<acc_t>(pd), cptr<acc_t>(nd),
          p, dim, static_cast<acc_t>(margin), metric, mptr<edge_key_t>(key_src),
          mptr<edge_key_t>(key_dst), mptr<int64_t>(ids), mptr<acc_t>(edge_c), mptr<acc_t>(edge_au),
          mptr<acc_t>(edge_cross), mptr<acc_t>(edge_bv));
  check_launch("sh_backward_edges_kernel");
  const int64_t k_chunks = ceil_div(dim, kWarp);
  for (const bool anchor_side : {true, false}) {
    const int64_t rows = anchor_side ? b : m;
    const EdgeRuns runs =
        sort_edges(x, anchor_side ? key_src : key_dst, ids, n_edges, /*n_keys=*/rows, kBwd, stream);
    sh_backward_rows_kernel<T, acc_t><<<run_grid(rows, dim, kBwd), kRowThreads, 0, stream>>>(
        anchor_side ? cptr<T>(x) : cptr<T>(ref), anchor_side ? cptr<T>(ref) : cptr<T>(x),
        cptr<int64_t>(runs.start), cptr<int64_t>(runs.end), cptr<int64_t>(runs.ids),
        cptr<acc_t>(edge_c), anchor_side ? cptr<acc_t>(edge_au) : cptr<acc_t>(edge_bv),
        cptr<acc_t>(edge_cross), cptr<int64_t>(ai), cptr<int64_t>(pi), cptr<int64_t>(ni),
        anchor_side, rows, dim, k_chunks, anchor_side ? mptr<T>(gx) : mptr<T>(gr));
    check_launch("sh_backward_rows_kernel");
  }
}

std::tuple<Tensor, Tensor> semi_hard_triplet_backward_cuda(Tensor grad_loss_, Tensor grad_pos_dist_,
                                                           Tensor grad_neg_dist_, Tensor x_,
                                                           Tensor ref_, Tensor anchor_idx_,
                                                           Tensor pos_idx_, Tensor neg_idx_,
                                                           Tensor pos_dist_, Tensor neg_dist_,
                                                           double margin, int64_t metric) {
  contract::semi_hard_triplet_backward<CudaSide>(grad_loss_, grad_pos_dist_, grad_neg_dist_, x_,
                                                 ref_, anchor_idx_, pos_idx_, neg_idx_, pos_dist_,
                                                 neg_dist_, margin, metric);
  const int64_t b = x_.size(0), m = ref_.size(0), dim = x_.size(1);
  const int64_t p = anchor_idx_.size(0);
  const OpEntry entry(x_);
  const Tensor x = dense(x_), ref = dense(ref_);
  Tensor gx = torch::stable::new_zeros(x, {b, dim});
  Tensor gr = torch::stable::new_zeros(ref, {m, dim});
  if (p == 0 || dim == 0) return {gx, gr};
  const Tensor ai = dense(anchor_idx_), pi = dense(pos_idx_), ni = dense(neg_idx_);
  dispatch_floating(x.scalar_type(), kBwd, [&](auto tag) {
    using T = typename decltype(tag)::type;
    semi_hard_backward<T>(dense(grad_loss_), dense(grad_pos_dist_), dense(grad_neg_dist_), x, ref,
                          ai, pi, ni, dense(pos_dist_), dense(neg_dist_), margin, metric, gx, gr,
                          entry.stream);
  });
  return {gx, gr};
}

}  // namespace
}  // namespace fastmine::cuda

STABLE_TORCH_LIBRARY_IMPL(fastmine, CUDA, m) {
  m.impl("semi_hard_triplet", TORCH_BOX(&fastmine::cuda::semi_hard_triplet_cuda));
  m.impl("semi_hard_triplet_backward", TORCH_BOX(&fastmine::cuda::semi_hard_triplet_backward_cuda));
}
