// Each op's argument rules, written once for its CPU and CUDA kernels (the schemas are in
// csrc/ops.cpp). Every kernel entry point calls its op's function here first, before it
// reads any argument, so that a raw torch.ops.fastmine.* call with malformed arguments gets
// an error naming the op and the argument instead of reading out of bounds. Messages use the
// schema's argument names.
#pragma once

#include <initializer_list>

#include "common/contract.h"

namespace fastmine::contract {

// ---- shared groups of arguments -------------------------------------------------------------

// x (B, D) against ref (M, D): same device, dtype and D.
template <class S, class T>
void embedding_pair(Args<S>& a, const T& x, const char* x_name, const T& ref,
                    const char* ref_name) {
  a.device(x, x_name);
  a.embeddings(x, x_name);
  a.embeddings(ref, ref_name);
  a.require(ref.size(1) == x.size(1), Fault::Value, ref_name, " must have the D = ", x.size(1),
            " features of ", x_name, ", got D = ", ref.size(1));
  a.same_dtype(ref, ref_name, x, x_name);
}

// The labelled batch against a labelled reference set, as every mining op takes it.
template <class S, class T>
void labelled_pairs(Args<S>& a, const T& x, const T& labels, const T& ref, const T& ref_labels,
                    int64_t metric, bool has_exclude, int64_t exclude_offset) {
  embedding_pair(a, x, "x", ref, "ref");
  a.vector(labels, "labels", x.size(0), ScalarType::Long);
  a.vector(ref_labels, "ref_labels", ref.size(0), ScalarType::Long);
  a.metric(metric);
  a.exclude_offset(has_exclude, exclude_offset, x.size(0), ref.size(0));
}

// The forward of a triplet loss: the labelled pairs and a finite margin.
template <class S, class T>
void mined_with_margin(const char* op, const T& x, const T& labels, const T& ref,
                       const T& ref_labels, double margin, int64_t metric, bool has_exclude,
                       int64_t exclude_offset) {
  Args<S> a(op);
  labelled_pairs(a, x, labels, ref, ref_labels, metric, has_exclude, exclude_offset);
  a.finite(margin, "margin");
}

// (B,) vectors in the loss dtype of x: upstream gradients and saved distances.
template <class S, class T>
void loss_vectors(Args<S>& a, const T& x, int64_t n, std::initializer_list<const T*> ts,
                  std::initializer_list<const char*> names, const char* like = nullptr) {
  auto name = names.begin();
  for (const T* t : ts) a.vector(*t, *name++, n, loss_dtype(x.scalar_type()), like);
}

template <class S, class T>
void contrastive_options(Args<S>& a, const T& x, const T& ref, double pos_margin, double neg_margin,
                         double power, bool triangle, bool has_exclude) {
  a.finite(pos_margin, "pos_margin");
  a.finite(neg_margin, "neg_margin");
  a.positive(power, "power");
  if (triangle) {
    a.require(ref.size(0) == x.size(0), Fault::Value,
              "triangle pairs the batch with itself: ref must have the B = ", x.size(0),
              " rows of x, got M = ", ref.size(0));
    a.require(!has_exclude, Fault::Value,
              "has_exclude must be false with triangle (the diagonal is never a pair)");
  }
}

// ---- pairwise distance ----------------------------------------------------------------------

template <class S, class T>
void pairwise_distance(const T& x, const T& y, int64_t metric) {
  Args<S> a("pairwise_distance");
  embedding_pair(a, x, "x", y, "y");
  a.metric(metric);
}

template <class S, class T>
void pairwise_distance_backward(const T& grad, const T& x, const T& y, const T& dist,
                                int64_t metric) {
  Args<S> a("pairwise_distance_backward");
  embedding_pair(a, x, "x", y, "y");
  a.matrix(grad, "grad", x.size(0), y.size(0), x.scalar_type());
  a.matrix(dist, "dist", x.size(0), y.size(0), x.scalar_type());
  a.metric(metric);
}

// ---- batch-hard -----------------------------------------------------------------------------

template <class S, class T>
void batch_hard_triplet(const T& x, const T& labels, const T& ref, const T& ref_labels,
                        double margin, int64_t metric, bool has_exclude, int64_t exclude_offset) {
  mined_with_margin<S>("batch_hard_triplet", x, labels, ref, ref_labels, margin, metric,
                       has_exclude, exclude_offset);
}

// pos_idx / neg_idx are the forward's: a reference row, or -1 for an invalid anchor.
template <class S, class T>
void batch_hard_triplet_backward(const T& grad_loss, const T& grad_pos_dist, const T& grad_neg_dist,
                                 const T& x, const T& ref, const T& pos_idx, const T& neg_idx,
                                 const T& pos_dist, const T& neg_dist, double margin,
                                 int64_t metric) {
  Args<S> a("batch_hard_triplet_backward");
  embedding_pair(a, x, "x", ref, "ref");
  const int64_t b = x.size(0), m = ref.size(0);
  loss_vectors(a, x, b, {&grad_loss, &grad_pos_dist, &grad_neg_dist, &pos_dist, &neg_dist},
               {"grad_loss", "grad_pos_dist", "grad_neg_dist", "pos_dist", "neg_dist"});
  a.vector(pos_idx, "pos_idx", b, ScalarType::Long);
  a.vector(neg_idx, "neg_idx", b, ScalarType::Long);
  a.indices(pos_idx, "pos_idx", -1, m, "reference rows (or -1)");
  a.indices(neg_idx, "neg_idx", -1, m, "reference rows (or -1)");
  a.finite(margin, "margin");
  a.metric(metric);
}

// ---- all-pairs losses -----------------------------------------------------------------------

template <class S, class T>
void batch_all_triplet(const T& x, const T& labels, const T& ref, const T& ref_labels,
                       double margin, int64_t metric, bool has_exclude, int64_t exclude_offset) {
  mined_with_margin<S>("batch_all_triplet", x, labels, ref, ref_labels, margin, metric, has_exclude,
                       exclude_offset);
}

template <class S, class T>
void batch_all_triplet_backward(const T& grad, const T& x, const T& labels, const T& ref,
                                const T& ref_labels, double margin, int64_t metric,
                                bool has_exclude, int64_t exclude_offset) {
  Args<S> a("batch_all_triplet_backward");
  labelled_pairs(a, x, labels, ref, ref_labels, metric, has_exclude, exclude_offset);
  loss_vectors(a, x, x.size(0), {&grad}, {"grad"});
  a.finite(margin, "margin");
}

// contrastive and contrastive_with_grad take the same arguments.
template <class S, class T>
void contrastive(const char* op, const T& x, const T& labels, const T& ref, const T& ref_labels,
                 double pos_margin, double neg_margin, double power, int64_t metric, bool triangle,
                 bool has_exclude, int64_t exclude_offset) {
  Args<S> a(op);
  labelled_pairs(a, x, labels, ref, ref_labels, metric, has_exclude, exclude_offset);
  contrastive_options(a, x, ref, pos_margin, neg_margin, power, triangle, has_exclude);
}

template <class S, class T>
void contrastive_backward(const T& grad_pos, const T& grad_neg, const T& x, const T& labels,
                          const T& ref, const T& ref_labels, double pos_margin, double neg_margin,
                          double power, int64_t metric, bool triangle, bool has_exclude,
                          int64_t exclude_offset) {
  Args<S> a("contrastive_backward");
  labelled_pairs(a, x, labels, ref, ref_labels, metric, has_exclude, exclude_offset);
  loss_vectors(a, x, x.size(0), {&grad_pos, &grad_neg}, {"grad_pos", "grad_neg"});
  contrastive_options(a, x, ref, pos_margin, neg_margin, power, triangle, has_exclude);
}

// ---- focal losses ---------------------------------------------------------------------------

template <class S, class T>
void elementwise_focal(Args<S>& a, const T& logits, const T& targets) {
  a.device(logits, "logits");
  a.floating(logits, "logits");
  a.same_device(targets, "targets");
  a.same_shape(targets, "targets", logits, "logits");
  a.same_dtype(targets, "targets", logits, "logits");
}

// The upstream gradient of an elementwise loss: 0-d (a reduced loss) or one per element.
template <class S, class T>
void elementwise_grad(Args<S>& a, const T& grad, const T& logits) {
  a.same_device(grad, "grad");
  if (grad.dim() != 0) a.same_shape(grad, "grad", logits, "logits");
  a.dtype(grad, "grad", loss_dtype(logits.scalar_type()));
}

template <class S>
void sigmoid_alpha_gamma(Args<S>& a, double alpha, double gamma) {
  a.require(!std::isnan(alpha) && alpha <= 1, Fault::Value,
            "alpha must be in [0, 1] (or negative to disable it), got ", alpha);
  a.non_negative(gamma, "gamma");
}

template <class S>
void star_gamma_beta(Args<S>& a, double gamma, double beta) {
  a.positive(gamma, "gamma");
  a.finite(beta, "beta");
}

template <class S, class T>
void sigmoid_focal(const T& logits, const T& targets, double alpha, double gamma) {
  Args<S> a("sigmoid_focal");
  elementwise_focal(a, logits, targets);
  sigmoid_alpha_gamma(a, alpha, gamma);
}

template <class S, class T>
void sigmoid_focal_backward(const T& grad, const T& logits, const T& targets, double alpha,
                            double gamma) {
  Args<S> a("sigmoid_focal_backward");
  elementwise_focal(a, logits, targets);
  elementwise_grad(a, grad, logits);
  sigmoid_alpha_gamma(a, alpha, gamma);
}

template <class S, class T>
void focal_star(const T& logits, const T& targets, double gamma, double beta) {
  Args<S> a("focal_star");
  elementwise_focal(a, logits, targets);
  star_gamma_beta(a, gamma, beta);
}

template <class S, class T>
void focal_star_backward(const T& grad, const T& logits, const T& targets, double gamma,
                         double beta) {
  Args<S> a("focal_star_backward");
  elementwise_focal(a, logits, targets);
  elementwise_grad(a, grad, logits);
  star_gamma_beta(a, gamma, beta);
}

template <class S, class T>
void softmax_focal(const T& logits, const T& target, const T& alpha, double gamma) {
  Args<S> a("softmax_focal");
  a.device(logits, "logits");
  a.floating(logits, "logits");
  a.dims(logits, "logits", 2, "(N, C)");
  const int64_t n = logits.size(0), c = logits.size(1);
  a.require(n == 0 || c > 0, Fault::Value, "logits has C = 0 classes");
  a.vector(target, "target", n, ScalarType::Long);
  a.vector(alpha, "alpha", c, logits.scalar_type());
  a.non_negative(gamma, "gamma");
  a.indices(target, "target", 0, c, "class indices");
}

// ---- centroid bound -------------------------------------------------------------------------

template <class S, class T>
void centroid_inputs(Args<S>& a, const T& x, const T& labels, const T& centroids) {
  embedding_pair(a, x, "x", centroids, "centroids");
  a.require(centroids.size(0) >= 2, Fault::Value,
            "centroids must hold C >= 2 classes (the bound divides by C - 1), got C = ",
            centroids.size(0));
  a.vector(labels, "labels", x.size(0), ScalarType::Long);
  a.indices(labels, "labels", 0, centroids.size(0), "class ids (rows of centroids)");
}

template <class S, class T>
void centroid_triplet(const T& x, const T& labels, const T& centroids) {
  Args<S> a("centroid_triplet");
  centroid_inputs(a, x, labels, centroids);
}

template <class S, class T>
void centroid_triplet_backward(const T& grad, const T& x, const T& labels, const T& centroids,
                               const T& dist) {
  Args<S> a("centroid_triplet_backward");
  centroid_inputs(a, x, labels, centroids);
  loss_vectors(a, x, x.size(0), {&grad}, {"grad"});
  a.matrix(dist, "dist", x.size(0), centroids.size(0), loss_dtype(x.scalar_type()));
}

// ---- miners and semi-hard -------------------------------------------------------------------

template <class S, class T>
void mine_triplets(const T& x, const T& labels, const T& ref, const T& ref_labels, double margin,
                   int64_t type, int64_t metric, bool has_exclude, int64_t exclude_offset) {
  Args<S> a("mine_triplets");
  labelled_pairs(a, x, labels, ref, ref_labels, metric, has_exclude, exclude_offset);
  // Its kernels rank distances exactly; fastmine.mine_triplets upcasts half inputs.
  const ScalarType st = x.scalar_type();
  a.require(st == ScalarType::Float || st == ScalarType::Double, Fault::Runtime,
            "x must be float32 or float64 (fastmine.mine_triplets upcasts half inputs), got ",
            dtype_name(st));
  a.finite(margin, "margin");
  a.triplet_type(type);
}

template <class S, class T>
void semi_hard_triplet(const T& x, const T& labels, const T& ref, const T& ref_labels,
                       double margin, int64_t metric, bool has_exclude, int64_t exclude_offset) {
  mined_with_margin<S>("semi_hard_triplet", x, labels, ref, ref_labels, margin, metric, has_exclude,
                       exclude_offset);
}

// One entry per triplet (P of them): anchor rows of x, positive and negative rows of ref.
template <class S, class T>
void semi_hard_triplet_backward(const T& grad_loss, const T& grad_pos_dist, const T& grad_neg_dist,
                                const T& x, const T& ref, const T& anchor_idx, const T& pos_idx,
                                const T& neg_idx, const T& pos_dist, const T& neg_dist,
                                double margin, int64_t metric) {
  Args<S> a("semi_hard_triplet_backward");
  embedding_pair(a, x, "x", ref, "ref");
  a.same_device(anchor_idx, "anchor_idx");
  a.dims(anchor_idx, "anchor_idx", 1, "(P,)");
  const int64_t p = anchor_idx.size(0), b = x.size(0), m = ref.size(0);
  a.vector(anchor_idx, "anchor_idx", p, ScalarType::Long);
  a.vector(pos_idx, "pos_idx", p, ScalarType::Long, "anchor_idx");
  a.vector(neg_idx, "neg_idx", p, ScalarType::Long, "anchor_idx");
  loss_vectors(a, x, p, {&grad_loss, &grad_pos_dist, &grad_neg_dist, &pos_dist, &neg_dist},
               {"grad_loss", "grad_pos_dist", "grad_neg_dist", "pos_dist", "neg_dist"},
               "anchor_idx");
  a.indices(anchor_idx, "anchor_idx", 0, b, "rows of x");
  a.indices(pos_idx, "pos_idx", 0, m, "reference rows");
  a.indices(neg_idx, "neg_idx", 0, m, "reference rows");
  a.finite(margin, "margin");
  a.metric(metric);
}

}  // namespace fastmine::contract
