// Batch-all triplet loss on the CPU, exact, without enumerating triplets.
//
// Per anchor, its K positive distances are sorted once; for a negative at distance d_n the
// active positives (d_p - d_n + margin > 0) are a suffix of that order, so the hinge sum
// over them is  suffix_sum + count * (margin - d_n)  by one binary search: O(M log K) per
// anchor, O(K + M) memory. Backward turns the same counts into per-pair weights dL/dd and
// applies them with the shared panel GEMMs. (softplus has no such prefix form: soft=True
// sums over the K x N pairs of each anchor, still without storing them.)
//
// With a few positives (K <= 64: P x K batches) the binary search, a chain of unpredictable
// branches per negative, costs more than comparing the negative with every positive: that
// count is branch-free and runs in SIMD lanes, one negative per lane (row_lanes below).
#include "cpu/engine/vec_math.h"  // first: selects ATen's SIMD implementation (see there)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/batch_all.h"
#include "common/triplet.h"
#include "cpu/contract_cpu.h"
#include "cpu/engine/label_classes.h"
#include "cpu/engine/panel.h"

namespace fastmine::cpu {
namespace {

struct BatchAllArgs {
  double margin;
  bool soft, has_exclude;
  int64_t exclude_offset;
};

// Whether any of d[0 .. n) is NaN: one branch-free pass.
template <typename T>
bool any_nan(const T* d, int64_t n) {
  int nan = 0;
#pragma omp simd reduction(| : nan)
  for (int64_t j = 0; j < n; ++j) nan |= d[j] != d[j];
  return nan != 0;
}

// One anchor's candidates: positives sorted by (distance, column) and their suffix sums.
struct AnchorRow {
  std::vector<std::pair<double, int64_t>> pos;
  std::vector<double> sorted;  // pos[q].first, contiguous for batch_all_first_active
  std::vector<double> suffix;  // suffix[k] = sum of pos[k..K).first
  int64_t num_neg = 0;
  bool nan = false;

  // cols: the columns of the anchor's class (ascending, excl possibly among them); every
  // other column is a negative. NaN: the anchor's row is non-finite or any distance of the
  // row but the excluded one's is NaN.
  template <typename T>
  void build(const T* d, int64_t m, const int64_t* cols, int64_t ncols, int64_t excl,
             bool bad_anchor) {
    pos.clear();
    num_neg = m - ncols;
    int64_t skip = m;  // the excluded column, when it is one of the anchor's class
    for (int64_t c = 0; c < ncols; ++c) {
      if (cols[c] == excl)
        skip = excl;
      else
        pos.emplace_back(double(d[cols[c]]), cols[c]);
    }
    nan = bad_anchor || any_nan(d, skip) || (skip < m && any_nan(d + skip + 1, m - skip - 1));
    if (nan) return;  // sorting NaNs is undefined; the anchor's loss is NaN anyway
    std::sort(pos.begin(), pos.end());
    sorted.resize(pos.size());
    for (size_t q = 0; q < pos.size(); ++q) sorted[q] = pos[q].first;
    suffix.assign(pos.size() + 1, 0.0);
    for (int64_t k = int64_t(pos.size()) - 1; k >= 0; --k) suffix[k] = suffix[k + 1] + pos[k].first;
  }
  // Rank of the first positive active against a negative at d_n (common/batch_all.h).
  int64_t first_active(double d_n, double margin) const {
    return batch_all_first_active(sorted.data(), int64_t(sorted.size()),
                                  batch_all_threshold(d_n, margin));
  }
};

// ---- few positives: SIMD lanes, one column per lane ----
//
// For a negative at d_n, the active positives are those with sorted[q] > d_n - margin. As
// the positives are sorted, #{q : sorted[q] > threshold} is K - first_active, the bisection's
// answer, for every threshold (a NaN one: none either way); counting needs no branch.
// Everything is in double lanes, as the scalar rule is.

constexpr int64_t kFewPositives = 64;  // at most this many: lanes; more: bisection

using VD = at::vec::Vectorized<double>;
using VL = at::vec::Vectorized<int64_t>;
constexpr int kLanes = VD::size();
static_assert(VL::size() == kLanes, "label lanes must line up with distance lanes");

template <typename T>
VD load_as_double(const T* p) {
  if constexpr (std::is_same_v<T, double>) {
    return VD::loadu(p);
  } else {
    double v[kLanes];
    for (int l = 0; l < kLanes; ++l) v[l] = double(p[l]);
    return VD::loadu(v);
  }
}

// Calls f(j, n, dn, neg) for the columns [j, j + n) of row d, kLanes at a time: dn their
// distances in double, neg all-ones in the lanes of negatives (label != li). The tail is
// padded with columns of the anchor's own label, which every rule below ignores.
template <typename T, typename F>
void row_lanes(const T* d, const int64_t* rl, int64_t li, int64_t m, const F& f) {
  const VL anchor(li);
  int64_t j = 0;
  for (; j + kLanes <= m; j += kLanes)
    f(j, kLanes, load_as_double(d + j), at::vec::cast<double>(VL::loadu(rl + j) != anchor));
  if (j < m) {
    T dt[kLanes] = {};
    int64_t lt[kLanes];
    std::fill(lt, lt + kLanes, li);
    std::copy(d + j, d + m, dt);
    std::copy(rl + j, rl + m, lt);
    f(j, int(m - j), load_as_double(dt), at::vec::cast<double>(VL::loadu(lt) != anchor));
  }
}

// The forward of one anchor (row.nan false, row.pos.size() <= kFewPositives): the hinge sum
// and the number of active triplets, bitwise what the bisection loop gives. Per negative:
// the active count and suffix[first], the latter summed in the lane in suffix's own order
// (from the largest rank down, the active ranks being a suffix of the order); then the term
// batch_all_hinge_sum, a + b * c, which GCC contracts to one FMA in the scalar loop where the
// target has FMA (its default -ffp-contract=fast), hence fmadd here (without FMA, ATen's
// generic fmadd is a * b + c, rounded twice like the scalar); then the term is added to the
// running sum in column order, the scalar loop's serial chain. A non-negative adds +0.0,
// which changes no sum: the sum starts at +0.0 and so is never -0.0.
template <typename T>
void forward_lanes(const AnchorRow& row, const T* d, const int64_t* rl, int64_t li, int64_t m,
                   double margin, double& sum, int64_t& active) {
  const int64_t k = int64_t(row.sorted.size());
  const VD zero(0.0), one(1.0), vmargin(margin);
  VD act_total(0.0);
  double term[kLanes];
  row_lanes(d, rl, li, m, [&](int64_t, int n, const VD& dn, const VD& neg) {
    const VD threshold = dn - vmargin;  // batch_all_threshold
    VD act(0.0), suf(0.0);
    for (int64_t q = k - 1; q >= 0; --q) {
      const VD p(row.sorted[q]);
      const VD on = (p > threshold) & neg;
      act = act + (on & one);
      suf = VD::blendv(suf, suf + p, on);
    }
    act_total = act_total + act;
    VD::blendv(zero, at::vec::fmadd(act, vmargin - dn, suf), neg).store(term);
    for (int l = 0; l < n; ++l) sum += term[l];
  });
  double lanes[kLanes];
  act_total.store(lanes);
  active = 0;
  for (int l = 0; l < kLanes; ++l) active += int64_t(lanes[l]);
}

// The backward weights of one anchor (as forward_lanes): wi[j] = -gi * (active count) for a
// negative j, 0 elsewhere, and running[q] = the number of negatives positive q is active
// against. Counts are integers in double, exact in any order.
template <typename T>
void backward_lanes(const AnchorRow& row, const T* d, const int64_t* rl, int64_t li, int64_t m,
                    double margin, double gi, T* wi, double* running) {
  const int64_t k = int64_t(row.sorted.size());
  const VD zero(0.0), one(1.0), vmargin(margin), vgi(-gi);
  VD count[kFewPositives];
  for (int64_t q = 0; q < k; ++q) count[q] = zero;
  double w[kLanes];
  row_lanes(d, rl, li, m, [&](int64_t j, int n, const VD& dn, const VD& neg) {
    const VD threshold = dn - vmargin;
    VD act(0.0);
    for (int64_t q = 0; q < k; ++q) {
      const VD on = (VD(row.sorted[q]) > threshold) & neg & one;
      act = act + on;
      count[q] = count[q] + on;
    }
    VD::blendv(zero, vgi * act, neg).store(w);
    for (int l = 0; l < n; ++l) wi[j + l] = T(w[l]);
  });
  for (int64_t q = 0; q < k; ++q) {
    double lanes[kLanes];
    count[q].store(lanes);
    running[q] = 0;
    for (int l = 0; l < kLanes; ++l) running[q] += lanes[l];
  }
}

template <typename T>
void batch_all_forward_impl(const Panels<T>& p, const int64_t* lab, const int64_t* rlab,
                            const BatchAllArgs& a, T* loss, int64_t* valid, int64_t* active) {
  const LabelClasses<int32_t> classes(rlab, p.m);
  at::Tensor buf = p.panel_buffer();
  for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
    at::Tensor panel = panel_view(buf, std::min(p.rows, p.b - r0), p.m);
    p.distances(r0, 0, panel);
    const T* d = panel.data_ptr<T>();
    at::parallel_for(0, panel.size(0), 1, [&](int64_t r_begin, int64_t r_end) {
      AnchorRow row;
      for (int64_t r = r_begin; r < r_end; ++r) {
        const int64_t i = r0 + r;
        const T* di = d + r * p.m;
        const int64_t c = classes.class_of(lab[i]);
        row.build(di, p.m, classes.cols.data() + (c < 0 ? 0 : classes.start[c]), classes.size_of(c),
                  a.has_exclude ? i + a.exclude_offset : -1, !std::isfinite(double(p.nx2[i])));
        const int64_t k = row.pos.size();
        valid[i] = k * row.num_neg;
        if (row.nan) {
          loss[i] = std::numeric_limits<T>::quiet_NaN();
          active[i] = 0;
          continue;
        }
        double sum = 0;
        int64_t act = 0;
        if (!a.soft && k > 0 && k <= kFewPositives) {
          forward_lanes(row, di, rlab, lab[i], p.m, a.margin, sum, act);
          loss[i] = T(sum);
          active[i] = act;
          continue;
        }
        for (int64_t j = 0; j < p.m && k > 0; ++j) {
          if (rlab[j] == lab[i]) continue;
          const double dn = di[j];
          if (a.soft) {
            for (const auto& q : row.pos) {
              const double t = triplet_term(q.first - dn + a.margin, true);
              sum += t;
              act += t > 0;
            }
          } else {
            const int64_t first = row.first_active(dn, a.margin);
            sum += batch_all_hinge_sum(row.suffix[first], k - first, a.margin, dn);
            act += k - first;
          }
        }
        loss[i] = T(sum);
        active[i] = act;
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_all_triplet_cpu(
    const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
    const at::Tensor& ref_labels, double margin, int64_t metric, bool soft, bool has_exclude,
    int64_t exclude_offset, bool /*allow_tf32: CUDA tiles only*/) {
  contract::batch_all_triplet<CpuSide>(x, labels, ref, ref_labels, margin, metric, has_exclude,
                                       exclude_offset);
  const int64_t b = x.size(0);
  at::Tensor loss = at::empty({b}, x.options());
  at::Tensor valid = at::empty({b}, labels.options());
  at::Tensor active = at::empty({b}, labels.options());
  const at::Tensor lab = dense(labels), rlab = dense(ref_labels);
  const BatchAllArgs a{margin, soft, has_exclude, exclude_offset};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_all_triplet_cpu", [&] {
    batch_all_forward_impl(Panels<scalar_t>(x, ref, metric), lab.data_ptr<int64_t>(),
                           rlab.data_ptr<int64_t>(), a, loss.data_ptr<scalar_t>(),
                           valid.data_ptr<int64_t>(), active.data_ptr<int64_t>());
  });
  return {loss, valid, active};
}

std::tuple<at::Tensor, at::Tensor> batch_all_triplet_backward_cpu(
    const at::Tensor& grad_, const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
    const at::Tensor& ref_labels, double margin, int64_t metric, bool soft, bool has_exclude,
    int64_t exclude_offset, bool /*allow_tf32: CUDA tiles only*/) {
  contract::batch_all_triplet_backward<CpuSide>(grad_, x, labels, ref, ref_labels, margin, metric,
                                                has_exclude, exclude_offset);
  const at::Tensor grad = dense(grad_);
  const at::Tensor lab = dense(labels), rlab = dense(ref_labels);
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor gr = at::zeros_like(ref, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "batch_all_triplet_backward_cpu", [&] {
    using T = scalar_t;
    const Panels<T> p(x, ref, metric);
    const int64_t* li = lab.data_ptr<int64_t>();
    const int64_t* lr = rlab.data_ptr<int64_t>();
    const LabelClasses<int32_t> classes(lr, p.m);
    const T* g = grad.data_ptr<T>();
    at::Tensor buf = p.panel_buffer(), pbuf = p.panel_buffer();
    for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
      const int64_t nr = std::min(p.rows, p.b - r0);
      at::Tensor panel = panel_view(buf, nr, p.m), w = panel_view(pbuf, nr, p.m);
      p.distances(r0, 0, panel);
      w.zero_();
      const T* d = panel.data_ptr<T>();
      T* wp = w.data_ptr<T>();
      at::parallel_for(0, nr, 1, [&](int64_t r_begin, int64_t r_end) {
        AnchorRow row;
        std::vector<double> count;
        for (int64_t r = r_begin; r < r_end; ++r) {
          const int64_t i = r0 + r;
          const T* di = d + r * p.m;
          T* wi = wp + r * p.m;
          const int64_t c = classes.class_of(li[i]);
          row.build(di, p.m, classes.cols.data() + (c < 0 ? 0 : classes.start[c]),
                    classes.size_of(c), has_exclude ? i + exclude_offset : -1,
                    !std::isfinite(double(p.nx2[i])));
          const int64_t k = row.pos.size();
          if (k == 0 || row.num_neg == 0) continue;
          if (row.nan) {
            for (const auto& q : row.pos) wi[q.second] = std::numeric_limits<T>::quiet_NaN();
            for (int64_t j = 0; j < p.m; ++j)
              if (lr[j] != li[i]) wi[j] = std::numeric_limits<T>::quiet_NaN();
            continue;
          }
          const double gi = g[i];
          if (!soft && k <= kFewPositives) {
            double running[kFewPositives];
            backward_lanes(row, di, lr, li[i], p.m, margin, gi, wi, running);
            for (int64_t q = 0; q < k; ++q) wi[row.pos[q].second] = T(gi * running[q]);
            continue;
          }
          // count[r]: dL/dd of the positive at sorted rank r (before the factor gi).
          count.assign(k + 1, 0.0);
          for (int64_t j = 0; j < p.m; ++j) {
            if (lr[j] == li[i]) continue;
            const double dn = di[j];
            if (soft) {
              double wn = 0;
              for (int64_t q = 0; q < k; ++q) {
                const double s = triplet_term_grad(row.pos[q].first - dn + margin, true);
                count[q] += s;
                wn += s;
              }
              wi[j] = T(-gi * wn);
            } else {
              const int64_t first = row.first_active(dn, margin);
              wi[j] = T(-gi * double(k - first));
              count[first] += 1;  // difference array: ranks >= first gain one negative
            }
          }
          double running = 0;
          for (int64_t q = 0; q < k; ++q) {
            running = soft ? count[q] : running + count[q];
            wi[row.pos[q].second] = T(gi * running);
          }
        }
      });
      // The weights need a whole row (sorted positives), so they are computed above, per
      // row, and read back here. The GEMM weights overwrite the distances, which are done.
      const auto weight = [&](int64_t i, int64_t j, T) { return wp[(i - r0) * p.m + j]; };
      p.apply_weights(r0, 0, panel, panel, weight, gx, gr);
    }
  });
  return {gx, gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("batch_all_triplet", &batch_all_triplet_cpu);
  m.impl("batch_all_triplet_backward", &batch_all_triplet_backward_cpu);
}

}  // namespace fastmine::cpu
