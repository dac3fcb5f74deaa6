// Contrastive loss on the CPU, fused over row panels (cpu/engine/panel.h): per-anchor sums and
// counts forward; per-pair weights dL/dd and two GEMMs per panel backward.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "common/pair_losses.h"
#include "cpu/contract_cpu.h"
#include "cpu/engine/dispatch.h"
#include "cpu/engine/panel.h"

namespace fastmine::cpu {
namespace {

struct ContrastiveArgs {
  double pos_margin, neg_margin, power;
  bool triangle, has_exclude;
  int64_t exclude_offset;
};

// Per-anchor sums and counts into out[0..6). With gx/gr given (contrastive_with_grad), each
// panel also applies the unit weights d(term)/dd while its distances are at hand: the sums
// are taken row by row inside the weight pass (its row hook), so a panel is swept once, and
// the weights overwrite the distances in the same buffer.
template <typename T>
void contrastive_forward_impl(const Panels<T>& p, const int64_t* lab, const int64_t* rlab,
                              const ContrastiveArgs& a, at::Tensor* out, at::Tensor* gx = nullptr,
                              at::Tensor* gr = nullptr) {
  T* pos_sum = out[0].data_ptr<T>();
  int64_t* pos_nz = out[1].data_ptr<int64_t>();
  int64_t* pos_n = out[2].data_ptr<int64_t>();
  T* neg_sum = out[3].data_ptr<T>();
  int64_t* neg_nz = out[4].data_ptr<int64_t>();
  int64_t* neg_n = out[5].data_ptr<int64_t>();
  const T pm = T(a.pos_margin), nm = T(a.neg_margin);
  at::Tensor buf = p.panel_buffer();
  with_power(a.power, [&](auto power_const) {
    // The power is read from power_const's *type* inside each lambda: a constant for 1 and 2
    // even where the lambda is called from a function that is not inlined (apply_weights).
    const auto unit_weight = [&, power_const](int64_t i, int64_t j, T dist) -> T {
      const T pw = power_value<T>(power_const);
      const bool ok = pair_allowed(i, j, a.triangle, a.has_exclude, a.exclude_offset);
      return ok ? contrastive_term_grad<T>(dist, rlab[j] == lab[i], pm, nm, pw) : T(0);
    };
    for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
      const int64_t nr = std::min(p.rows, p.b - r0);
      const int64_t c0 = a.triangle ? r0 : 0;  // pairs j > i >= r0 only: skip the lower blocks
      at::Tensor panel = panel_view(buf, nr, p.m - c0);
      p.distances(r0, c0, panel);
      const int64_t nc = panel.size(1);
      // The sums of anchor i = r0 + r over its row of distances dr.
      const auto row_sums = [&, power_const](int64_t r, int64_t i, const T* dr) {
        const T pw = power_value<T>(power_const);
        const int64_t li = lab[i];
        double ps = 0, ns = 0;
        int64_t pnz = 0, nnz = 0, pn = 0, nn = 0;
        // Branch-free so that it vectorises: terms in T, sums in double.
#pragma omp simd reduction(+ : ps, ns, pnz, nnz, pn, nn)
        for (int64_t jj = 0; jj < nc; ++jj) {
          const int64_t j = c0 + jj;
          const bool ok = pair_allowed(i, j, a.triangle, a.has_exclude, a.exclude_offset);
          const bool same = rlab[j] == li;
          const T t = contrastive_term<T>(dr[jj], same, pm, nm, pw);
          const bool p_ok = ok && same, n_ok = ok && !same;
          ps += p_ok ? double(t) : 0.0;
          ns += n_ok ? double(t) : 0.0;
          pnz += p_ok && t > T(0);
          nnz += n_ok && t > T(0);
          pn += p_ok;
          nn += n_ok;
        }
        if (contrastive_anchor_poisoned(p.nx2[i])) {
          ps = ns = std::numeric_limits<double>::quiet_NaN();
        }
        pos_sum[i] = T(ps);
        pos_nz[i] = pnz;
        pos_n[i] = pn;
        neg_sum[i] = T(ns);
        neg_nz[i] = nnz;
        neg_n[i] = nn;
      };
      if (gx != nullptr) {
        p.apply_weights(r0, c0, panel, panel, unit_weight, *gx, *gr, row_sums);
      } else {
        const T* d = panel.data_ptr<T>();
        at::parallel_for(0, nr, 4, [&](int64_t r_begin, int64_t r_end) {
          for (int64_t r = r_begin; r < r_end; ++r) row_sums(r, r0 + r, d + r * nc);
        });
      }
    }
  });
}

struct ContrastiveOutputs {
  at::Tensor t[6];  // pos_sum, pos_nonzero, pos_pairs, neg_sum, neg_nonzero, neg_pairs
};

ContrastiveOutputs contrastive_run(const char* op, const at::Tensor& x, const at::Tensor& labels,
                                   const at::Tensor& ref, const at::Tensor& ref_labels,
                                   double pos_margin, double neg_margin, double power,
                                   int64_t metric, bool triangle, bool has_exclude,
                                   int64_t exclude_offset, at::Tensor* gx, at::Tensor* gr) {
  contract::contrastive<CpuSide>(op, x, labels, ref, ref_labels, pos_margin, neg_margin, power,
                                 metric, triangle, has_exclude, exclude_offset);
  const int64_t b = x.size(0);
  ContrastiveOutputs o{{at::empty({b}, x.options()), at::empty({b}, labels.options()),
                        at::empty({b}, labels.options()), at::empty({b}, x.options()),
                        at::empty({b}, labels.options()), at::empty({b}, labels.options())}};
  const at::Tensor lab = dense(labels), rlab = dense(ref_labels);
  const ContrastiveArgs a{pos_margin, neg_margin, power, triangle, has_exclude, exclude_offset};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contrastive_cpu", [&] {
    contrastive_forward_impl(Panels<scalar_t>(x, ref, metric), lab.data_ptr<int64_t>(),
                             rlab.data_ptr<int64_t>(), a, o.t, gx, gr);
  });
  return o;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_cpu(
    const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
    const at::Tensor& ref_labels, double pos_margin, double neg_margin, double power,
    int64_t metric, bool triangle, bool has_exclude, int64_t exclude_offset,
    bool /*allow_tf32: CUDA tiles only*/) {
  const ContrastiveOutputs o =
      contrastive_run("contrastive", x, labels, ref, ref_labels, pos_margin, neg_margin, power,
                      metric, triangle, has_exclude, exclude_offset, nullptr, nullptr);
  return {o.t[0], o.t[1], o.t[2], o.t[3], o.t[4], o.t[5]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_with_grad_cpu(
    const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
    const at::Tensor& ref_labels, double pos_margin, double neg_margin, double power,
    int64_t metric, bool triangle, bool has_exclude, int64_t exclude_offset,
    bool /*allow_tf32: CUDA tiles only*/) {
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor gr = at::zeros_like(ref, at::MemoryFormat::Contiguous);
  const ContrastiveOutputs o =
      contrastive_run("contrastive_with_grad", x, labels, ref, ref_labels, pos_margin, neg_margin,
                      power, metric, triangle, has_exclude, exclude_offset, &gx, &gr);
  // Per-anchor sums reduced in a fixed order (at::sum is deterministic on the CPU).
  return {o.t[0].sum() + o.t[3].sum(), o.t[2].sum() + o.t[5].sum(), gx, gr};
}

std::tuple<at::Tensor, at::Tensor> contrastive_backward_cpu(
    const at::Tensor& grad_pos_, const at::Tensor& grad_neg_, const at::Tensor& x,
    const at::Tensor& labels, const at::Tensor& ref, const at::Tensor& ref_labels,
    double pos_margin, double neg_margin, double power, int64_t metric, bool triangle,
    bool has_exclude, int64_t exclude_offset, bool /*allow_tf32: CUDA tiles only*/) {
  contract::contrastive_backward<CpuSide>(grad_pos_, grad_neg_, x, labels, ref, ref_labels,
                                          pos_margin, neg_margin, power, metric, triangle,
                                          has_exclude, exclude_offset);
  const at::Tensor grad_pos = dense(grad_pos_), grad_neg = dense(grad_neg_);
  const at::Tensor lab = dense(labels), rlab = dense(ref_labels);
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor gr = at::zeros_like(ref, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contrastive_backward_cpu", [&] {
    using T = scalar_t;
    const Panels<T> p(x, ref, metric);
    const int64_t* li = lab.data_ptr<int64_t>();
    const int64_t* lr = rlab.data_ptr<int64_t>();
    const T* gp = grad_pos.data_ptr<T>();
    const T* gn = grad_neg.data_ptr<T>();
    at::Tensor buf = p.panel_buffer();
    const T pm = T(pos_margin), nm = T(neg_margin);
    with_power(power, [&](auto power_const) {
      const auto weight = [&, power_const](int64_t i, int64_t j, T dist) -> T {
        const T pw = power_value<T>(power_const);  // constant from the type (see the forward)
        const bool ok = pair_allowed(i, j, triangle, has_exclude, exclude_offset);
        const bool same = lr[j] == li[i];
        const T g = same ? gp[i] : gn[i];
        return ok ? g * contrastive_term_grad<T>(dist, same, pm, nm, pw) : T(0);
      };
      for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
        const int64_t nr = std::min(p.rows, p.b - r0);
        const int64_t c0 = triangle ? r0 : 0;
        at::Tensor panel = panel_view(buf, nr, p.m - c0);
        p.distances(r0, c0, panel);
        p.apply_weights(r0, c0, panel, panel, weight, gx, gr);  // weights overwrite distances
      }
    });
  });
  return {gx, gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("contrastive", &contrastive_cpu);
  m.impl("contrastive_backward", &contrastive_backward_cpu);
  m.impl("contrastive_with_grad", &contrastive_with_grad_cpu);
}

}  // namespace fastmine::cpu
