// The centroid triplet bound (Do et al., "A Theoretically Sound Upper Bound on the Triplet
// Loss"; seeds 000, 003), defined once for csrc/cpu/centroid.cpp and the CUDA kernels:
//   loss_i = d(x_i, c_{y_i}) - k * sum_{m != y_i} d(x_i, c_m),  k = 1 / (3 (C - 1)),
// with d euclidean, computed from direct differences (C is small; the dot-product form
// would lose everything to cancellation when x_i sits on its centroid, which is where
// training drives it).
#pragma once

#include "common/macros.h"

namespace fastmine {

// k = 1 / (3 (C - 1)), the weight of every other class's distance (C >= 2).
template <typename T>
FM_HD T centroid_other_weight(int64_t num_classes) {
  return T(1) / (T(3) * static_cast<T>(num_classes - 1));
}

// d loss_i / d d_im: 1 for the sample's own class, -k for the others.
template <typename T>
FM_HD T centroid_coef(bool own, T k) {
  return own ? T(1) : -k;
}

// loss_i from its row of C distances; the other classes summed in index order.
template <typename T>
FM_HD T centroid_row_loss(const T* dist, int64_t label, int64_t num_classes, T k) {
  T others = T(0);
  for (int64_t m = 0; m < num_classes; ++m) others += m == label ? T(0) : dist[m];
  return dist[label] - k * others;
}

// The weight w of (x_i - c_m) in d loss / d x_i (and of -(x_i - c_m) in d loss / d c_m):
// g_i * coef / d_im. At d_im = 0 the distance has no gradient; its subgradient is taken as 0
// (docs/semantics.md, "Distances"). A NaN distance stays NaN (non-finite input, non-finite
// gradient).
template <typename T>
FM_HD T centroid_grad_weight(T upstream, T coef, T dist) {
  return dist == T(0) ? T(0) : upstream * coef / dist;
}

}  // namespace fastmine
