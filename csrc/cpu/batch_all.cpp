// Batch-all triplet loss on the CPU, exact, without enumerating triplets.
//
// Per anchor, its K positive distances are sorted once; for a negative at distance d_n the
// active positives (d_p - d_n + margin > 0) are a suffix of that order, so the hinge sum
// over them is  suffix_sum + count * (margin - d_n)  by one binary search: O(M log K) per
// anchor, O(K + M) memory. Backward turns the same counts into per-pair weights dL/dd and
// applies them with the shared panel GEMMs. (softplus has no such prefix form: soft=True
// sums over the K x N pairs of each anchor, still without storing them.)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/batch_all.h"
#include "common/triplet.h"
#include "cpu/contract_cpu.h"
#include "cpu/engine/panel.h"

namespace fastmine::cpu {
namespace {

struct BatchAllArgs {
  double margin;
  bool soft, has_exclude;
  int64_t exclude_offset;
};

// One anchor's candidates: positives sorted by (distance, column) and their suffix sums.
struct AnchorRow {
  std::vector<std::pair<double, int64_t>> pos;
  std::vector<double> sorted;  // pos[q].first, contiguous for batch_all_first_active
  std::vector<double> suffix;  // suffix[k] = sum of pos[k..K).first
  int64_t num_neg = 0;
  bool nan = false;

  template <typename T>
  void build(const T* d, int64_t m, const int64_t* rl, int64_t li, int64_t excl, bool bad_anchor) {
    pos.clear();
    num_neg = 0;
    nan = bad_anchor;
    for (int64_t j = 0; j < m; ++j) {
      if (rl[j] == li) {
        if (j != excl)
          pos.emplace_back(double(d[j]), j);
        else
          continue;
      } else {
        ++num_neg;
      }
      nan |= std::isnan(double(d[j]));
    }
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

template <typename T>
void batch_all_forward_impl(const Panels<T>& p, const int64_t* lab, const int64_t* rlab,
                            const BatchAllArgs& a, T* loss, int64_t* valid, int64_t* active) {
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
        row.build(di, p.m, rlab, lab[i], a.has_exclude ? i + a.exclude_offset : -1,
                  !std::isfinite(double(p.nx2[i])));
        const int64_t k = row.pos.size();
        valid[i] = k * row.num_neg;
        if (row.nan) {
          loss[i] = std::numeric_limits<T>::quiet_NaN();
          active[i] = 0;
          continue;
        }
        double sum = 0;
        int64_t act = 0;
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
          row.build(di, p.m, lr, li[i], has_exclude ? i + exclude_offset : -1,
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
