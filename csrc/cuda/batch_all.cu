// Batch-all triplet loss on the GPU, forward and backward: exact, without enumerating
// triplets, never B x M x K (nor B x M) memory, any class sizes (two classes in a batch of
// 4096: K = 2048 positives per anchor). Same outputs and rules as csrc/cpu/batch_all.cpp;
// the hinge algebra is common/batch_all.h's.
//
// Set-up (LabelGroups): squared norms; the anchor labels and the reference labels sorted
// stably, and anchors and reference rows gathered into label order (engine/permute.cuh);
// per sorted anchor a, its positives = the run [lo, hi) of sorted reference rows minus the
// excluded one (anchor_groups_kernel), K[a] of them. One device-to-host copy of (lo, hi, K):
// the host plans chunks of anchors whose positive lists fit a fixed scratch budget
// (sweep_plan.h, 2^23 entries), so memory stays bounded at any B and any K.
//
// Forward, per chunk of sorted anchors:
//  1. positive_distances_kernel: the block-sparse sweep of the chunk's rows against their
//     own label runs (cost ~ sum of K * D, not B * M * D) writes each positive distance;
//  2. cub segmented sort of each anchor's list; positive_scan_kernel: suffix sums (double)
//     and the NaN flag;
//  3. batch_all_forward_kernel: the full X.R^T sweep; per (anchor, negative) one bisection
//     in the anchor's sorted positives gives the hinge sum and the active count
//     (soft margin: the K softplus terms); per-row [n_splits, rows] partials;
//  4. batch_all_finalize_kernel: partials summed in split order, NaN rule, outputs.
// Backward, per chunk (also bounded to one backward panel of rows): steps 1-2 (the sort also
// carries each positive's column-order slot); batch_all_count_kernel: the same sweep, each
// negative adds 1 at rank `first` of an integer difference array (atomicAdd on integers:
// order-independent, deterministic) — or, soft margin, batch_all_soft_count_kernel: float
// sums in a fixed order by row-owner blocks; positive_weights_kernel: prefix sums ->
// dL/dd of every positive; then the engine's all_pairs.cuh applies dL/dd for every pair of the
// chunk (negatives' weights recomputed by the same bisection, positives' looked up by slot).
//
// Distances are the same bits in every pass (tile_distance on the same rows and norms), so
// the bisections of the forward, the count pass and the weight pass agree exactly.
// Nothing depends on the device or on timing: bitwise-reproducible results.
#include <vector>

#include "common/batch_all.h"
#include "common/distance.h"
#include "common/triplet.h"
#include "cuda/batch_all_kernels.cuh"
#include "cuda/contract_cuda.cuh"
#include "cuda/engine/all_pairs.cuh"
#include "cuda/engine/cuda_utils.cuh"
#include "cuda/engine/distance_sort.cuh"
#include "cuda/engine/launchers.cuh"
#include "cuda/engine/permute.cuh"
#include "cuda/engine/sweep_plan.h"
#include "cuda/op_entry.cuh"

namespace fastmine::cuda {
namespace {

constexpr const char* kFwd = "batch_all_triplet";
constexpr const char* kBwd = "batch_all_triplet_backward";

// One thread per item (kernels that are not grid-stride loops).
unsigned flat_grid(int64_t n, const char* what) { return grid_1d(ceil_div(n, kFlatThreads), what); }

// Everything both passes need: label order, sorted copies, per-anchor positive runs, the
// (host and device) offsets of the positive lists.
template <typename T>
struct LabelGroups {
  using acc_t = acc_of_t<T>;
  int64_t b, m, dim;
  Tensor sorted_lab, perm_x, sorted_rlab, perm_r, rank_r;
  Tensor xs, rs, nx2, nr2, nxs2, nrs2;
  Tensor info, off;  // [kInfoPlanes, B] int64; (B + 1) int64
  std::vector<int64_t> h_info, h_off;

  const int64_t* h_lo() const { return h_info.data() + kLo * b; }
  const int64_t* h_hi() const { return h_info.data() + kHi * b; }
  const int64_t* h_k() const { return h_info.data() + kPosCount * b; }
  ChunkView<acc_t> chunk(int64_t a0, int64_t a1, const Tensor& pos) const {
    return ChunkView<acc_t>{a0, a1, cptr<int64_t>(info) + kPosCount * b, cptr<int64_t>(off),
                            cptr<acc_t>(pos)};
  }
  NegativeSweep<T, acc_t> sweep(const Tensor& ref, const Tensor& ref_labels, int64_t metric) const {
    return NegativeSweep<T, acc_t>{cptr<T>(xs),
                                   cptr<int64_t>(sorted_lab),
                                   cptr<T>(ref),
                                   cptr<int64_t>(ref_labels),
                                   cptr<acc_t>(nxs2),
                                   cptr<acc_t>(nr2),
                                   m,
                                   dim,
                                   metric};
  }

  LabelGroups(const Tensor& x, const Tensor& labels, const Tensor& ref, const Tensor& ref_labels,
              bool has_exclude, int64_t exclude_offset, cudaStream_t stream)
      : b(x.size(0)), m(ref.size(0)), dim(x.size(1)) {
    constexpr ScalarType acc_st = scalar_type_of<acc_t>();
    const auto vec = [&](int64_t n, ScalarType st) { return torch::stable::new_empty(x, {n}, st); };
    sorted_lab = vec(b, ScalarType::Long);
    perm_x = vec(b, ScalarType::Long);
    sorted_rlab = vec(m, ScalarType::Long);
    perm_r = vec(m, ScalarType::Long);
    rank_r = vec(m, ScalarType::Long);
    stable_argsort(x, labels, sorted_lab, perm_x, kFwd, stream);
    stable_argsort(x, ref_labels, sorted_rlab, perm_r, kFwd, stream);
    inverse_permutation(cptr<int64_t>(perm_r), m, mptr<int64_t>(rank_r), stream);

    nx2 = vec(b, acc_st);
    nr2 = vec(m, acc_st);
    nxs2 = vec(b, acc_st);
    nrs2 = vec(m, acc_st);
    launch_row_sqnorm<T, acc_t>(cptr<T>(x), b, dim, mptr<acc_t>(nx2), stream);
    launch_row_sqnorm<T, acc_t>(cptr<T>(ref), m, dim, mptr<acc_t>(nr2), stream);
    xs = torch::stable::new_empty(x, {b, dim});
    rs = torch::stable::new_empty(ref, {m, dim});
    gather_rows<T>(cptr<T>(x), cptr<int64_t>(perm_x), b, dim, mptr<T>(xs), stream);
    gather_rows<T>(cptr<T>(ref), cptr<int64_t>(perm_r), m, dim, mptr<T>(rs), stream);
    gather_rows<acc_t>(cptr<acc_t>(nx2), cptr<int64_t>(perm_x), b, 1, mptr<acc_t>(nxs2), stream);
    gather_rows<acc_t>(cptr<acc_t>(nr2), cptr<int64_t>(perm_r), m, 1, mptr<acc_t>(nrs2), stream);

    info = vec(kInfoPlanes * b, ScalarType::Long);
    anchor_groups_kernel<<<flat_grid(b, "anchor_groups"), kFlatThreads, 0, stream>>>(
        cptr<int64_t>(sorted_lab), cptr<int64_t>(perm_x), cptr<int64_t>(sorted_rlab),
        cptr<int64_t>(rank_r), cptr<int64_t>(ref_labels), b, m, has_exclude, exclude_offset,
        mptr<int64_t>(info));
    check_launch("anchor_groups_kernel");

    // The one host round trip: the chunk plan needs K (and lo, hi for the positive pass's
    // grid). (Not CUDA-graph capturable; the all-pairs losses synchronise here once.)
    h_info.resize(kInfoPlanes * b);
    FM_CUDA_CHECK(cudaMemcpyAsync(h_info.data(), info.data_ptr(), h_info.size() * sizeof(int64_t),
                                  cudaMemcpyDeviceToHost, stream),
                  "cudaMemcpyAsync (anchor groups)");
    FM_CUDA_CHECK(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    h_off.assign(b + 1, 0);
    for (int64_t a = 0; a < b; ++a) h_off[a + 1] = h_off[a] + h_k()[a];
    off = vec(b + 1, ScalarType::Long);
    FM_CUDA_CHECK(cudaMemcpyAsync(off.data_ptr(), h_off.data(), h_off.size() * sizeof(int64_t),
                                  cudaMemcpyHostToDevice, stream),
                  "cudaMemcpyAsync (offsets)");
  }

  int64_t entries(int64_t a0, int64_t a1) const { return h_off[a1] - h_off[a0]; }
};

// The scratch of the positive lists, sized for the largest chunk.
template <typename acc_t>
struct PositiveLists {
  Tensor pos_d, pos_sorted, slot, slot_sorted, seg_off;
  PositiveLists(const Tensor& like, int64_t max_entries, int64_t max_rows, bool with_slots) {
    constexpr ScalarType acc_st = scalar_type_of<acc_t>();
    const int64_t e = std::max<int64_t>(max_entries, 1);
    pos_d = torch::stable::new_empty(like, {e}, acc_st);
    pos_sorted = torch::stable::new_empty(like, {e}, acc_st);
    if (with_slots) {
      slot = torch::stable::new_empty(like, {e}, ScalarType::Int);
      slot_sorted = torch::stable::new_empty(like, {e}, ScalarType::Int);
    }
    seg_off = torch::stable::new_empty(like, {max_rows + 1}, ScalarType::Long);
  }
};

// Steps 1-2 of a chunk: positive distances, sorted per anchor (+ slots), NaN flags, and
// (suffix != nullptr) the suffix sums.
template <typename T>
void build_positive_lists(const LabelGroups<T>& g, int64_t metric, int64_t a0, int64_t a1,
                          PositiveLists<acc_of_t<T>>& pl, bool with_slots, double* suffix,
                          int32_t* pos_nan, const Tensor& like, cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  const int64_t rows = a1 - a0, e = g.entries(a0, a1);
  if (e > 0) {
    const int64_t col_tiles = positive_pass_col_tiles(g.h_lo(), g.h_hi(), a0, a1);
    const dim3 grid(grid_1d(col_tiles, kFwd), static_cast<unsigned>(ceil_div(rows, TileCfg::BM)));
    positive_distances_kernel<T, acc_t><<<grid, TileCfg::THREADS, 0, stream>>>(
        cptr<T>(g.xs), cptr<T>(g.rs), cptr<acc_t>(g.nxs2), cptr<acc_t>(g.nrs2), g.dim, metric, a0,
        a1, cptr<int64_t>(g.info), g.b, cptr<int64_t>(g.off), mptr<acc_t>(pl.pos_d),
        with_slots ? mptr<int32_t>(pl.slot) : nullptr);
    check_launch("positive_distances_kernel");
    local_offsets_kernel<<<flat_grid(rows + 1, "local_offsets"), kFlatThreads, 0, stream>>>(
        cptr<int64_t>(g.off), a0, rows, mptr<int64_t>(pl.seg_off));
    check_launch("local_offsets_kernel");
    const int64_t* seg = cptr<int64_t>(pl.seg_off);
    size_t bytes = 0;
    const int32_t* slot_in = with_slots ? cptr<int32_t>(pl.slot) : nullptr;
    int32_t* slot_out = with_slots ? mptr<int32_t>(pl.slot_sorted) : nullptr;
    sort_distance_segments(nullptr, bytes, mptr<acc_t>(pl.pos_d), mptr<acc_t>(pl.pos_sorted),
                           slot_in, slot_out, e, rows, seg, seg + 1, stream);
    Tensor temp = byte_buffer(like, bytes);
    sort_distance_segments(temp.data_ptr(), bytes, mptr<acc_t>(pl.pos_d),
                           mptr<acc_t>(pl.pos_sorted), slot_in, slot_out, e, rows, seg, seg + 1,
                           stream);
  }
  positive_scan_kernel<acc_t>
      <<<grid_1d(ceil_div(rows, kRowsPerBlock), kFwd), kRowThreads, 0, stream>>>(
          g.chunk(a0, a1, pl.pos_sorted), suffix, pos_nan);
  check_launch("positive_scan_kernel");
}

int64_t max_chunk_rows(const std::vector<int64_t>& bounds) {
  int64_t r = 1;
  for (size_t c = 0; c + 1 < bounds.size(); ++c) r = std::max(r, bounds[c + 1] - bounds[c]);
  return r;
}

template <typename T>
int64_t max_chunk_entries(const LabelGroups<T>& g, const std::vector<int64_t>& bounds) {
  int64_t e = 0;
  for (size_t c = 0; c + 1 < bounds.size(); ++c)
    e = std::max(e, g.entries(bounds[c], bounds[c + 1]));
  return e;
}

// ---- forward ---------------------------------------------------------------------------------

template <typename T>
void batch_all_forward(const Tensor& x, const Tensor& labels, const Tensor& ref,
                       const Tensor& ref_labels, double margin, int64_t metric, bool soft,
                       bool has_exclude, int64_t exclude_offset, Tensor& loss, Tensor& valid,
                       Tensor& active, cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  const LabelGroups<T> g(x, labels, ref, ref_labels, has_exclude, exclude_offset, stream);
  const int64_t b = g.b, m = g.m;
  const std::vector<int64_t> bounds =
      plan_chunks(g.h_k(), b, positive_budget(m), /*max_rows=*/int64_t(1) << 20);
  const int64_t max_rows = max_chunk_rows(bounds);
  const int64_t max_e = max_chunk_entries(g, bounds);
  PositiveLists<acc_t> pl(x, max_e, max_rows, /*with_slots=*/false);
  Tensor suffix = torch::stable::new_empty(x, {std::max<int64_t>(max_e, 1)}, ScalarType::Double);
  Tensor pos_nan = torch::stable::new_empty(x, {b}, ScalarType::Int);
  const SweepSplits sp = plan_splits(ceil_div(m, TileCfg::BN));
  const int64_t n_part = std::max<int64_t>(sp.n_splits, 1) * max_rows;
  Tensor part_sum = torch::stable::new_empty(x, {n_part}, ScalarType::Double);
  Tensor part_act = torch::stable::new_empty(x, {n_part}, ScalarType::Long);
  Tensor part_nan = torch::stable::new_empty(x, {n_part}, ScalarType::Int);
  const NegativeSweep<T, acc_t> s = g.sweep(ref, ref_labels, metric);

  for (size_t ch = 0; ch + 1 < bounds.size(); ++ch) {
    const int64_t a0 = bounds[ch], a1 = bounds[ch + 1], rows = a1 - a0;
    build_positive_lists<T>(g, metric, a0, a1, pl, /*with_slots=*/false, mptr<double>(suffix),
                            mptr<int32_t>(pos_nan), x, stream);
    const ChunkView<acc_t> cv = g.chunk(a0, a1, pl.pos_sorted);
    if (sp.n_splits > 0) {
      const dim3 grid(grid_1d(ceil_div(rows, TileCfg::BM), kFwd),
                      static_cast<unsigned>(sp.n_splits));
      batch_all_forward_kernel<T, acc_t><<<grid, TileCfg::THREADS, 0, stream>>>(
          s, cv, cptr<double>(suffix), margin, soft, sp.tiles_per_split, mptr<double>(part_sum),
          mptr<int64_t>(part_act), mptr<int32_t>(part_nan));
      check_launch("batch_all_forward_kernel");
    }
    batch_all_finalize_kernel<acc_t><<<flat_grid(rows, kFwd), kFlatThreads, 0, stream>>>(
        cv, b, m, cptr<int64_t>(g.perm_x), cptr<int64_t>(g.info), cptr<acc_t>(g.nxs2),
        cptr<int32_t>(pos_nan), sp.n_splits, cptr<double>(part_sum), cptr<int64_t>(part_act),
        cptr<int32_t>(part_nan), mptr<acc_t>(loss), mptr<int64_t>(valid), mptr<int64_t>(active));
    check_launch("batch_all_finalize_kernel");
  }
}

std::tuple<Tensor, Tensor, Tensor> batch_all_triplet_cuda(Tensor x_, Tensor labels_, Tensor ref_,
                                                          Tensor ref_labels_, double margin,
                                                          int64_t metric, bool soft,
                                                          bool has_exclude, int64_t exclude_offset,
                                                          bool allow_tf32) {
  contract::batch_all_triplet<CudaSide>(x_, labels_, ref_, ref_labels_, margin, metric, has_exclude,
                                        exclude_offset);
  const OpEntry entry(x_);
  const Tensor x = dense(x_), ref = dense(ref_);
  const Tensor labels = dense(labels_);
  const Tensor ref_labels = dense(ref_labels_);
  const int64_t b = x.size(0);
  const ScalarType st = x.scalar_type();
  Tensor loss = torch::stable::new_empty(x, {b}, entry.acc_st);
  Tensor valid = torch::stable::new_empty(x, {b}, ScalarType::Long);
  Tensor active = torch::stable::new_empty(x, {b}, ScalarType::Long);
  if (b == 0) return {loss, valid, active};
  dispatch_floating_tf32(st, allow_tf32, kFwd, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_all_forward<T>(x, labels, ref, ref_labels, margin, metric, soft, has_exclude,
                         exclude_offset, loss, valid, active, entry.stream);
  });
  return {loss, valid, active};
}

// ---- backward --------------------------------------------------------------------------------

template <typename T>
void batch_all_backward(const Tensor& grad, const Tensor& x, const Tensor& labels,
                        const Tensor& ref, const Tensor& ref_labels, double margin, int64_t metric,
                        bool soft, bool has_exclude, int64_t exclude_offset, Tensor& gx, Tensor& gr,
                        cudaStream_t stream) {
  using acc_t = acc_of_t<T>;
  constexpr ScalarType acc_st = scalar_type_of<acc_t>();
  const LabelGroups<T> g(x, labels, ref, ref_labels, has_exclude, exclude_offset, stream);
  const int64_t b = g.b, m = g.m;
  const std::vector<int64_t> bounds =
      plan_chunks(g.h_k(), b, positive_budget(m), plan_panel_rows(m));
  const int64_t max_rows = max_chunk_rows(bounds);
  const int64_t max_e = std::max<int64_t>(max_chunk_entries(g, bounds), 1);
  PositiveLists<acc_t> pl(x, max_e, max_rows, /*with_slots=*/true);
  Tensor diff = torch::stable::new_empty(x, {max_e}, soft ? acc_st : ScalarType::Int);
  Tensor w_slot = torch::stable::new_empty(x, {max_e}, acc_st);
  Tensor pos_nan = torch::stable::new_empty(x, {b}, ScalarType::Int);
  Tensor neg_nan = torch::stable::new_zeros(x, {b}, ScalarType::Int);
  Tensor state = torch::stable::new_empty(x, {b}, ScalarType::Int);
  const SweepSplits sp = plan_splits(ceil_div(m, TileCfg::BN));
  const NegativeSweep<T, acc_t> s = g.sweep(ref, ref_labels, metric);
  AllPairsGrad<T> ag(g.xs, ref, g.nxs2, g.nr2, metric, stream);

  for (size_t ch = 0; ch + 1 < bounds.size(); ++ch) {
    const int64_t a0 = bounds[ch], a1 = bounds[ch + 1], rows = a1 - a0;
    const int64_t e = g.entries(a0, a1);
    build_positive_lists<T>(g, metric, a0, a1, pl, /*with_slots=*/true, /*suffix=*/nullptr,
                            mptr<int32_t>(pos_nan), x, stream);
    const ChunkView<acc_t> cv = g.chunk(a0, a1, pl.pos_sorted);
    if (e > 0) {
      FM_CUDA_CHECK(
          cudaMemsetAsync(diff.data_ptr(), 0, e * (soft ? sizeof(acc_t) : sizeof(int32_t)), stream),
          "cudaMemsetAsync");
    }
    const int64_t row_tiles = ceil_div(rows, TileCfg::BM);
    if (sp.n_splits > 0 && soft) {
      batch_all_soft_count_kernel<T, acc_t>
          <<<grid_1d(row_tiles, kBwd), TileCfg::THREADS, 0, stream>>>(
              s, cv, margin, mptr<acc_t>(diff), mptr<int32_t>(neg_nan));
      check_launch("batch_all_soft_count_kernel");
    } else if (sp.n_splits > 0) {
      const dim3 grid(grid_1d(row_tiles, kBwd), static_cast<unsigned>(sp.n_splits));
      batch_all_count_kernel<T, acc_t><<<grid, TileCfg::THREADS, 0, stream>>>(
          s, cv, margin, sp.tiles_per_split, mptr<int32_t>(diff), mptr<int32_t>(neg_nan));
      check_launch("batch_all_count_kernel");
    }
    positive_weights_kernel<acc_t>
        <<<grid_1d(ceil_div(rows, kRowsPerBlock), kBwd), kRowThreads, 0, stream>>>(
            cv, b, m, cptr<int64_t>(g.info), cptr<acc_t>(g.nxs2), cptr<int32_t>(pos_nan),
            cptr<int32_t>(neg_nan), cptr<acc_t>(grad), cptr<int64_t>(g.perm_x),
            cptr<int32_t>(pl.slot_sorted), soft ? nullptr : cptr<int32_t>(diff),
            soft ? cptr<acc_t>(diff) : nullptr, soft, mptr<acc_t>(w_slot), mptr<int32_t>(state));
    check_launch("positive_weights_kernel");
    const BatchAllWeights<acc_t> pol{cv,
                                     cptr<int64_t>(g.sorted_lab),
                                     cptr<int64_t>(ref_labels),
                                     cptr<int64_t>(g.rank_r),
                                     cptr<int64_t>(g.info),
                                     b,
                                     cptr<int32_t>(state),
                                     cptr<int64_t>(g.perm_x),
                                     cptr<acc_t>(grad),
                                     cptr<acc_t>(w_slot),
                                     margin,
                                     soft};
    ag.apply_panel(a0, rows, /*c0=*/0, pol, gx, cptr<int64_t>(g.perm_x));
  }
  ag.finish(gr);
}

std::tuple<Tensor, Tensor> batch_all_triplet_backward_cuda(Tensor grad_, Tensor x_, Tensor labels_,
                                                           Tensor ref_, Tensor ref_labels_,
                                                           double margin, int64_t metric, bool soft,
                                                           bool has_exclude, int64_t exclude_offset,
                                                           bool allow_tf32) {
  contract::batch_all_triplet_backward<CudaSide>(grad_, x_, labels_, ref_, ref_labels_, margin,
                                                 metric, has_exclude, exclude_offset);
  const int64_t b = x_.size(0), m = ref_.size(0), dim = x_.size(1);
  const ScalarType st = x_.scalar_type();
  const OpEntry entry(x_);
  const Tensor x = dense(x_), ref = dense(ref_);
  if (b == 0 || m == 0 || dim == 0) return zero_gradients(x, ref);  // no triplet
  const Tensor labels = dense(labels_);
  const Tensor ref_labels = dense(ref_labels_);
  const Tensor grad = dense(grad_);
  Tensor gx = torch::stable::new_empty(x, {b, dim});
  Tensor gr = torch::stable::new_empty(ref, {m, dim});
  dispatch_floating_tf32(st, allow_tf32, kBwd, [&](auto tag) {
    using T = typename decltype(tag)::type;
    batch_all_backward<T>(grad, x, labels, ref, ref_labels, margin, metric, soft, has_exclude,
                          exclude_offset, gx, gr, entry.stream);
  });
  return {gx, gr};
}

}  // namespace
}  // namespace fastmine::cuda

STABLE_TORCH_LIBRARY_IMPL(fastmine, CUDA, m) {
  m.impl("batch_all_triplet", TORCH_BOX(&fastmine::cuda::batch_all_triplet_cuda));
  m.impl("batch_all_triplet_backward", TORCH_BOX(&fastmine::cuda::batch_all_triplet_backward_cuda));
}
