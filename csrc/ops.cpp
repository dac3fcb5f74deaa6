// The public C++ surface of fastmine: one schema per op, defined once here (in the CPU
// module, which is always loaded). Kernels register against these from csrc/cpu/ (classic
// ATen API) and csrc/cuda/ (stable ABI). Fake kernels and autograd live in fastmine/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(fastmine, m) {
  // `allow_tf32` (every op whose CUDA kernels run the X.R^T tile mainloop): float32 tiles
  // may use TF32 tensor cores, as torch.backends.cuda.matmul.allow_tf32 lets cuBLAS do;
  // fastmine.functional passes that flag. Default False: full fp32 accuracy. Ignored on the
  // CPU and for other dtypes.
  // (B, D) x (M, D) -> (B, M) distance matrix.
  m.def("pairwise_distance(Tensor x, Tensor y, int metric, bool allow_tf32=False) -> Tensor");
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
      " int metric, bool soft, bool has_exclude, int exclude_offset, bool allow_tf32=False)"
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
      " int metric, bool soft, bool has_exclude, int exclude_offset, bool allow_tf32=False)"
      " -> (Tensor, Tensor, Tensor)");
  // Gradient of sum_i grad[i] * loss_sum[i]: recomputes the distances panel by panel and
  // applies per-pair weights (active-triplet counts); triplets are never enumerated.
  m.def(
      "batch_all_triplet_backward(Tensor grad, Tensor x, Tensor labels, Tensor ref,"
      " Tensor ref_labels, float margin, int metric, bool soft, bool has_exclude,"
      " int exclude_offset, bool allow_tf32=False) -> (Tensor, Tensor)");
  // Contrastive loss. Per anchor i: (pos_sum, pos_nonzero, pos_pairs, neg_sum, neg_nonzero,
  // neg_pairs) over its pairs; `triangle` = the batch against itself, pairs j > i only.
  m.def(
      "contrastive(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels, float pos_margin,"
      " float neg_margin, float power, int metric, bool triangle, bool has_exclude,"
      " int exclude_offset, bool allow_tf32=False)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "contrastive_backward(Tensor grad_pos, Tensor grad_neg, Tensor x, Tensor labels,"
      " Tensor ref, Tensor ref_labels, float pos_margin, float neg_margin, float power,"
      " int metric, bool triangle, bool has_exclude, int exclude_offset,"
      " bool allow_tf32=False) -> (Tensor, Tensor)");
  // Contrastive loss and its gradient in one pass, for reductions whose upstream gradient is
  // one scalar ("mean", "sum"): returns (total, num_pairs, grad_x, grad_ref) with total the
  // sum of every pair's term and grad_* the gradient of total. The backward only scales
  // them: the distance panels are never recomputed.
  m.def(
      "contrastive_with_grad(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels,"
      " float pos_margin, float neg_margin, float power, int metric, bool triangle,"
      " bool has_exclude, int exclude_offset, bool allow_tf32=False)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  // ---- focal-loss family (docs/semantics.md, "Focal losses"; csrc/common/focal.h) --------
  // Elementwise (sigmoid focal, FL*): the forward returns the loss per element, or its 0-d
  // sum when `reduce`, and saves nothing; the backward recomputes the terms and writes
  // grad * d loss / d logits in one pass (grad: 0-d for a reduced loss, else per element).
  // alpha < 0 disables the alpha_t weighting of sigmoid_focal.
  m.def(
      "sigmoid_focal(Tensor logits, Tensor targets, float alpha, float gamma, bool reduce)"
      " -> Tensor");
  m.def(
      "sigmoid_focal_backward(Tensor grad, Tensor logits, Tensor targets, float alpha,"
      " float gamma) -> Tensor");
  // FL*: targets > 0 are y = +1, targets <= 0 are y = -1.
  m.def(
      "focal_star(Tensor logits, Tensor targets, float gamma, float beta, bool reduce)"
      " -> Tensor");
  m.def(
      "focal_star_backward(Tensor grad, Tensor logits, Tensor targets, float gamma, float beta)"
      " -> Tensor");
  // Softmax focal returns (loss, grad): loss per row, grad = d loss_row / d logits from the
  // same pass when `with_grad` (else an empty (0,) tensor); the backward scales its rows.
  // logits (N, C), target (N,) int64 in [0, C), alpha (C,) per-class weights.
  m.def(
      "softmax_focal(Tensor logits, Tensor target, Tensor alpha, float gamma, bool with_grad)"
      " -> (Tensor, Tensor)");
  // ---- centroid triplet bound (docs/semantics.md, `centroid_triplet_loss`; common/centroid.h)
  // x (B, D), labels (B,) int64 in [0, C), centroids (C, D), C >= 2. Returns (loss[B],
  // dist[B, C]); dist is what the backward needs.
  m.def("centroid_triplet(Tensor x, Tensor labels, Tensor centroids) -> (Tensor, Tensor)");
  // (grad_x, grad_centroids); grad_centroids is an empty (0,) tensor unless asked for.
  m.def(
      "centroid_triplet_backward(Tensor grad, Tensor x, Tensor labels, Tensor centroids,"
      " Tensor dist, bool need_centroid_grad) -> (Tensor, Tensor)");
  // ---- miners (no gradient) ----
  // Margin-filtered triplets (pytorch-metric-learning's TripletMarginMiner): every
  // (anchor, positive, negative) whose t = d_an - d_ap passes `type` (0 all: t <= margin,
  // 1 hard: t <= min(margin, 0), 2 semihard: 0 < t <= margin, 3 easy: t > margin), as three
  // int64 index vectors of one data-dependent length, anchors ascending, then positives,
  // then negatives. Counts per anchor first, then fills each anchor's slice.
  m.def(
      "mine_triplets(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels, float margin,"
      " int type, int metric, bool has_exclude, int exclude_offset) -> (Tensor, Tensor, Tensor)");
  // ---- semi-hard triplet loss (FaceNet / TF-Addons): one triplet per positive pair ----
  // Outputs have one entry per positive pair (i, p) whose anchor has a negative, pairs in
  // row-major (i, p) order (P is data-dependent): (loss, anchor_idx, pos_idx, neg_idx,
  // pos_dist, neg_dist), plus `nonfinite`, a 0-dim tensor that is NaN when any row of x or
  // ref is non-finite (also one that forms no pair) and 0 otherwise.
  m.def(
      "semi_hard_triplet(Tensor x, Tensor labels, Tensor ref, Tensor ref_labels, float margin,"
      " int metric, bool has_exclude, int exclude_offset)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // O(P*D) backward from the forward's triplets: no second mining pass.
  m.def(
      "semi_hard_triplet_backward(Tensor grad_loss, Tensor grad_pos_dist, Tensor grad_neg_dist,"
      " Tensor x, Tensor ref, Tensor anchor_idx, Tensor pos_idx, Tensor neg_idx,"
      " Tensor pos_dist, Tensor neg_dist, float margin, int metric) -> (Tensor, Tensor)");
}
