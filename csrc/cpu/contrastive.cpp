// Contrastive loss on the CPU, fused over row panels (cpu/panel.h): per-anchor sums and
// counts forward; per-pair weights dL/dd and two GEMMs per panel backward.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/pair_losses.h"
#include "cpu/checks.h"
#include "cpu/panel.h"

namespace fastmine::cpu {
namespace {

struct ContrastiveArgs {
  double pos_margin, neg_margin, power;
  bool triangle, has_exclude;
  int64_t exclude_offset;
};

template <typename T>
void contrastive_forward_impl(const Panels<T>& p, const int64_t* lab, const int64_t* rlab,
                              const ContrastiveArgs& a, at::Tensor* out) {
  T* pos_sum = out[0].data_ptr<T>();
  int64_t* pos_nz = out[1].data_ptr<int64_t>();
  int64_t* pos_n = out[2].data_ptr<int64_t>();
  T* neg_sum = out[3].data_ptr<T>();
  int64_t* neg_nz = out[4].data_ptr<int64_t>();
  int64_t* neg_n = out[5].data_ptr<int64_t>();
  at::Tensor buf = at::empty({p.rows, p.m}, p.x.options());
  for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
    at::Tensor panel = buf.narrow(0, 0, std::min(p.rows, p.b - r0));
    p.distances(r0, panel);
    const T* d = panel.data_ptr<T>();
    at::parallel_for(0, panel.size(0), 4, [&](int64_t r_begin, int64_t r_end) {
      for (int64_t r = r_begin; r < r_end; ++r) {
        const int64_t i = r0 + r;
        double sums[2] = {0, 0};
        int64_t nonzero[2] = {0, 0}, pairs[2] = {0, 0};
        for (int64_t j = 0; j < p.m; ++j) {
          if (!pair_allowed(i, j, a.triangle, a.has_exclude, a.exclude_offset)) continue;
          const bool same = rlab[j] == lab[i];
          const double t = contrastive_term(double(d[r * p.m + j]), same, a.pos_margin,
                                            a.neg_margin, a.power);
          sums[same] += t;
          nonzero[same] += t > 0;
          pairs[same] += 1;
        }
        pos_sum[i] = T(sums[1]); pos_nz[i] = nonzero[1]; pos_n[i] = pairs[1];
        neg_sum[i] = T(sums[0]); neg_nz[i] = nonzero[0]; neg_n[i] = pairs[0];
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_cpu(
    const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
    const at::Tensor& ref_labels, double pos_margin, double neg_margin, double power,
    int64_t metric, bool triangle, bool has_exclude, int64_t exclude_offset) {
  check_pair(x, ref);
  check_labels(labels, x.size(0), "labels");
  check_labels(ref_labels, ref.size(0), "ref_labels");
  const int64_t b = x.size(0);
  at::Tensor out[6] = {at::empty({b}, x.options()), at::empty({b}, labels.options()),
                       at::empty({b}, labels.options()), at::empty({b}, x.options()),
                       at::empty({b}, labels.options()), at::empty({b}, labels.options())};
  const at::Tensor lab = labels.contiguous(), rlab = ref_labels.contiguous();
  const ContrastiveArgs a{pos_margin, neg_margin, power, triangle, has_exclude, exclude_offset};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contrastive_cpu", [&] {
    contrastive_forward_impl(Panels<scalar_t>(x, ref, metric), lab.data_ptr<int64_t>(),
                             rlab.data_ptr<int64_t>(), a, out);
  });
  return {out[0], out[1], out[2], out[3], out[4], out[5]};
}

std::tuple<at::Tensor, at::Tensor> contrastive_backward_cpu(
    const at::Tensor& grad_pos_, const at::Tensor& grad_neg_, const at::Tensor& x,
    const at::Tensor& labels, const at::Tensor& ref, const at::Tensor& ref_labels,
    double pos_margin, double neg_margin, double power, int64_t metric, bool triangle,
    bool has_exclude, int64_t exclude_offset) {
  check_pair(x, ref);
  const at::Tensor grad_pos = grad_pos_.contiguous(), grad_neg = grad_neg_.contiguous();
  const at::Tensor lab = labels.contiguous(), rlab = ref_labels.contiguous();
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor gr = at::zeros_like(ref, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contrastive_backward_cpu", [&] {
    using T = scalar_t;
    const Panels<T> p(x, ref, metric);
    const int64_t* li = lab.data_ptr<int64_t>();
    const int64_t* lr = rlab.data_ptr<int64_t>();
    const T* gp = grad_pos.data_ptr<T>();
    const T* gn = grad_neg.data_ptr<T>();
    at::Tensor buf = at::empty({p.rows, p.m}, p.x.options());
    at::Tensor wbuf = at::empty({p.rows, p.m}, p.x.options());
    for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
      const int64_t nr = std::min(p.rows, p.b - r0);
      at::Tensor panel = buf.narrow(0, 0, nr), w = wbuf.narrow(0, 0, nr);
      p.distances(r0, panel);
      const T* d = panel.data_ptr<T>();
      T* wp = w.data_ptr<T>();
      at::parallel_for(0, nr, 4, [&](int64_t r_begin, int64_t r_end) {
        for (int64_t r = r_begin; r < r_end; ++r) {
          const int64_t i = r0 + r;
          for (int64_t j = 0; j < p.m; ++j) {
            const int64_t k = r * p.m + j;
            if (!pair_allowed(i, j, triangle, has_exclude, exclude_offset)) { wp[k] = 0; continue; }
            const bool same = lr[j] == li[i];
            wp[k] = T((same ? double(gp[i]) : double(gn[i])) *
                      contrastive_term_grad(double(d[k]), same, pos_margin, neg_margin, power));
          }
        }
      });
      p.apply_weights(r0, w, d, gx, gr);
    }
  });
  return {gx, gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("contrastive", &contrastive_cpu);
  m.impl("contrastive_backward", &contrastive_backward_cpu);
}

}  // namespace fastmine::cpu
