// The public C++ surface of fastmine: one schema per op, defined once here (in the CPU
// module, which is always loaded). Kernels register against these from csrc/cpu/ (classic
// ATen API) and csrc/cuda/ (stable ABI). Fake kernels and autograd live in fastmine/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(fastmine, m) {
  // (B, D) x (M, D) -> (B, M) distance matrix.
  m.def("pairwise_distance(Tensor x, Tensor y, int metric) -> Tensor");
  // Gradients of pairwise_distance with respect to x and y, given the forward's output.
  m.def(
      "pairwise_distance_backward(Tensor grad, Tensor x, Tensor y, Tensor dist, int metric)"
      " -> (Tensor, Tensor)");
  // Batch-hard mining fused with the per-anchor triplet term. Returns
  // (loss[B], pos_idx[B], neg_idx[B], pos_dist[B], neg_dist[B]); indices are -1 and
  // distances 0 for invalid anchors. Column j == row i + exclude_offset is not a positive
  // when has_exclude (the anchor itself).
  m.def(
      "batch_hard_triplet(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels, float margin,"
      " int metric, bool soft, bool has_exclude, int exclude_offset)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // O(B*D) backward from the forward's mined indices: no second mining pass.
  m.def(
      "batch_hard_triplet_backward(Tensor grad_loss, Tensor grad_pos_dist, Tensor grad_neg_dist,"
      " Tensor x, Tensor ref, Tensor pos_idx, Tensor neg_idx, Tensor pos_dist, Tensor neg_dist,"
      " float margin, int metric, bool soft) -> (Tensor, Tensor)");
  // ---- all-pairs losses: per-anchor partial sums; the reduction is done in Python ----
  // Batch-all triplet loss. Per anchor i: the sum of the triplet terms over every (positive,
  // negative) pair, the number of such triplets, and how many have a term > 0.
  m.def(
      "batch_all_triplet(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels, float margin,"
      " int metric, bool soft, bool has_exclude, int exclude_offset)"
      " -> (Tensor, Tensor, Tensor)");
  // Gradient of sum_i grad[i] * loss_sum[i]: recomputes the distances panel by panel and
  // applies per-pair weights (active-triplet counts); triplets are never enumerated.
  m.def(
      "batch_all_triplet_backward(Tensor grad, Tensor x, Tensor labels, Tensor ref,"
      " Tensor ref_labels, float margin, int metric, bool soft, bool has_exclude,"
      " int exclude_offset) -> (Tensor, Tensor)");
  // Contrastive loss. Per anchor i: (pos_sum, pos_nonzero, pos_pairs, neg_sum, neg_nonzero,
  // neg_pairs) over its pairs; `triangle` = the batch against itself, pairs j > i only.
  m.def(
      "contrastive(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels, float pos_margin,"
      " float neg_margin, float power, int metric, bool triangle, bool has_exclude,"
      " int exclude_offset) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "contrastive_backward(Tensor grad_pos, Tensor grad_neg, Tensor x, Tensor labels,"
      " Tensor ref, Tensor ref_labels, float pos_margin, float neg_margin, float power,"
      " int metric, bool triangle, bool has_exclude, int exclude_offset) -> (Tensor, Tensor)");
  // Contrastive loss and its gradient in one pass, for reductions whose upstream gradient is
  // one scalar ("mean", "sum"): returns (total, num_pairs, grad_x, grad_ref) with total the
  // sum of every pair's term and grad_* the gradient of total. The backward only scales
  // them: the distance panels are never recomputed.
  m.def(
      "contrastive_with_grad(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels,"
      " float pos_margin, float neg_margin, float power, int metric, bool triangle,"
      " bool has_exclude, int exclude_offset) -> (Tensor, Tensor, Tensor, Tensor)");
  // ---- miners (no gradient) ----
  // Margin-filtered triplets (pytorch-metric-learning's TripletMarginMiner): every
  // (anchor, positive, negative) whose t = d_an - d_ap passes `type` (0 all: t <= margin,
  // 1 hard: t <= min(margin, 0), 2 semihard: 0 < t <= margin, 3 easy: t > margin), as three
  // int64 index vectors of one data-dependent length, anchors ascending, then positives,
  // then negatives. Counts per anchor first, then fills each anchor's slice.
  m.def(
      "mine_triplets(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels, float margin,"
      " int type, int metric, bool has_exclude, int exclude_offset) -> (Tensor, Tensor, Tensor)");
}
