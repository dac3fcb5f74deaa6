// Contrastive loss on the CPU, fused over row panels (cpu/engine/panel.h): each panel is one
// GEMM of dot products, then ONE pass per row turns each dot product into the pair's
// distance, term and (with the gradient) weight dL/dd, while it is in cache; two more GEMMs
// per panel apply the weights.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/pair_losses.h"
#include "cpu/contract_cpu.h"
#include "cpu/engine/dispatch.h"
#include "cpu/engine/exact_distance.h"
#include "cpu/engine/label_ids.h"
#include "cpu/engine/panel.h"

namespace fastmine::cpu {
namespace {

struct ContrastiveArgs {
  double pos_margin, neg_margin, power;
  bool triangle, has_exclude;
  int64_t exclude_offset;
};

// Per-anchor sums: out[0..6) = pos_sum, pos_nonzero, pos_pairs, neg_sum, neg_nonzero,
// neg_pairs.
template <typename T>
struct RowSums {
  T* pos_sum;
  int64_t *pos_nz, *pos_n;
  T* neg_sum;
  int64_t *neg_nz, *neg_n;
};

// One anchor row of a panel: distances, terms and their sums, and with kGrad the weights
// w = g * d(term)/dd, where g is the upstream gradient of the anchor's positive or negative
// sum (gp, gn; 1 for contrastive_with_grad's unit weights).
//
// Blocks of kBlock columns: a first SIMD pass turns dot products into distances and flags
// the block if a pair needs its distance recomputed exactly (near-duplicates, e.g. the
// anchor against itself, Panels::distances' rule) or must leave the GEMM form of the
// gradient (Panels::near_duplicate). An unflagged block (almost all) is done by a
// branch-free SIMD pass; a flagged one by the same per-pair step, one pair at a time.
template <typename T, int64_t kMet, bool kGrad, typename Power>
struct ContrastiveRows {
  static constexpr int64_t kBlock = Panels<T>::kBlock;
  using NearList = typename Panels<T>::NearList;

  const Panels<T>& p;
  const int32_t* lid;  // anchors' label ids
  const int32_t* rid;  // reference rows' label ids
  ContrastiveArgs a;
  T pm, nm;
  Power power;
  const T *gp, *gn;  // per anchor; nullptr: unit weights
  RowSums<T> out;

  // The pair pieces, each a plain value: a struct returned inside an `omp simd` loop keeps
  // it scalar.
  T term(T d, bool same) const {
    return contrastive_term<T>(d, same, pm, nm, power_value<T>(power));
  }
  // dL/dd: the upstream gradient of the anchor's positive or negative sum times d(term)/dd.
  T weight(bool ok, T d, bool same, T gpi, T gni) const {
    const T tg = contrastive_term_grad<T>(d, same, pm, nm, power_value<T>(power));
    return ok ? (same ? gpi : gni) * tg : T(0);
  }

  // A row's sums (the terms, the sum of w * au, the counts): per block in T and int, per row
  // in double and int64.
  template <typename S, typename C>
  struct Sums {
    S pos = 0, neg = 0, au = 0;
    C pos_nz = 0, neg_nz = 0, pos_n = 0, neg_n = 0;
    template <typename O>
    Sums& operator+=(const O& o) {
      pos += o.pos;
      neg += o.neg;
      au += o.au;
      pos_nz += o.pos_nz;
      neg_nz += o.neg_nz;
      pos_n += o.pos_n;
      neg_n += o.neg_n;
      return *this;
    }
  };
  using Acc = Sums<T, int>;

  // Anchor i = r0 + r. g (nc): its dot products with columns [c0, c0 + nc); with kGrad they
  // become the GEMM weights w * cross, colp receives w * bv, and the sum of w * au is
  // returned.
  T row(int64_t i, int64_t c0, int64_t nc, T* g, T* colp, NearList& near) const {
    const T xi2 = p.nx2[i];
    const T* n2 = p.nr2.data() + c0;
    const int32_t li = lid[i];
    const T gpi = gp ? gp[i] : T(1), gni = gn ? gn[i] : T(1);
    Sums<double, int64_t> row_sums;
    // The columns [lo, hi) whose pairs are not taken: the triangle's edge (j <= i) or the
    // excluded column.
    const int64_t lo = a.triangle ? 0 : (a.has_exclude ? i + a.exclude_offset - c0 : 0);
    const int64_t hi = a.triangle ? i - c0 + 1 : (a.has_exclude ? lo + 1 : 0);
    for (int64_t b0 = 0; b0 < nc; b0 += kBlock) {
      const int64_t b1 = std::min(nc, b0 + kBlock);
      int flagged = 0;
#pragma omp simd reduction(+ : flagged)
      for (int64_t jj = b0; jj < b1; ++jj) {
        const T dot = g[jj];
        const T d = distance_from_dot(kMet, dot, xi2, n2[jj]);
        flagged += kMet != kCosine && (int(needs_exact(xi2 + n2[jj] - T(2) * dot, xi2, n2[jj])) |
                                       int(Panels<T>::near_duplicate(kMet, d, xi2, n2[jj])));
        g[jj] = d;
      }
      Acc s;
      if (flagged > 0) {
        s = exact_block(i, c0, b0, b1, g, colp, near, li, xi2, n2, gpi, gni);
      } else {
        // The SIMD pass takes runs of paired columns; the unpaired ones (the triangle's
        // edge, the excluded column) have no term and weight 0.
        const int64_t u0 = std::clamp(lo, b0, b1), u1 = std::clamp(hi, u0, b1);
        s = simd_block(i, c0, b0, u0, g, colp, li, xi2, n2, gpi, gni);
        s += simd_block(i, c0, u1, b1, g, colp, li, xi2, n2, gpi, gni);
        if constexpr (kGrad) s.au += unpaired(u0, u1, g, colp, xi2, n2);
      }
      row_sums += s;
    }
    if (contrastive_anchor_poisoned(xi2)) {
      row_sums.pos = row_sums.neg = std::numeric_limits<double>::quiet_NaN();
    }
    out.pos_sum[i] = T(row_sums.pos);
    out.pos_nz[i] = row_sums.pos_nz;
    out.pos_n[i] = row_sums.pos_n;
    out.neg_sum[i] = T(row_sums.neg);
    out.neg_nz[i] = row_sums.neg_nz;
    out.neg_n[i] = row_sums.neg_n;
    return T(row_sums.au);
  }

  // Columns [b0, b1) of distances, all paired, with no near-duplicate: branch-free (no
  // `&&` either), so that it vectorises.
  Acc simd_block(int64_t i, int64_t c0, int64_t b0, int64_t b1, T* g, T* colp, int32_t li, T xi2,
                 const T* n2, T gpi, T gni) const {
    T pos = 0, neg = 0, au = 0;
    int pos_nz = 0, neg_nz = 0, pos_n = 0, neg_n = 0;
#pragma omp simd reduction(+ : pos, neg, au, pos_nz, neg_nz, pos_n, neg_n)
    for (int64_t jj = b0; jj < b1; ++jj) {
      const T d = g[jj];
      const bool same = rid[c0 + jj] == li;
      const T t = term(d, same);
      const int nz = t > T(0);
      pos += same ? t : T(0);
      neg += same ? T(0) : t;
      pos_nz += int(same) & nz;
      neg_nz += int(!same) & nz;
      pos_n += same;
      neg_n += !same;
      if constexpr (kGrad) {
        const T w = weight(true, d, same, gpi, gni);
        au += w * distance_grad_self<T>(kMet, d, xi2);
        colp[jj] += w * distance_grad_self<T>(kMet, d, n2[jj]);
        g[jj] = w * distance_grad_cross<T>(kMet, d, xi2, n2[jj]);
      }
    }
    return {pos, neg, au, pos_nz, neg_nz, pos_n, neg_n};
  }

  // Unpaired columns [u0, u1): weight 0, times the distance's gradient coefficients as for
  // every other pair, so that a NaN row still poisons the gradient rows its GEMMs touch
  // (0 * NaN), as in the CUDA kernels. Returns the sum of 0 * au.
  T unpaired(int64_t u0, int64_t u1, T* g, T* colp, T xi2, const T* n2) const {
    T au = 0;  // zeros and NaNs only: the same bits in any order of addition
#pragma omp simd reduction(+ : au)
    for (int64_t jj = u0; jj < u1; ++jj) {
      const T d = g[jj];
      au += T(0) * distance_grad_self<T>(kMet, d, xi2);
      colp[jj] += T(0) * distance_grad_self<T>(kMet, d, n2[jj]);
      g[jj] = T(0) * distance_grad_cross<T>(kMet, d, xi2, n2[jj]);
    }
    return au;
  }

  // A block holding a near-duplicate: its distance recomputed from the two rows, and with
  // kGrad its weight listed for the exact difference form, out of the GEMM.
  Acc exact_block(int64_t i, int64_t c0, int64_t b0, int64_t b1, T* g, T* colp, NearList& near,
                  int32_t li, T xi2, const T* n2, T gpi, T gni) const {
    const T* xi = p.x.template data_ptr<T>() + i * p.dim;
    const T* rp = p.ref.template data_ptr<T>();
    Acc acc;
    for (int64_t jj = b0; jj < b1; ++jj) {
      const int64_t j = c0 + jj;
      T d = g[jj];
      if (Panels<T>::near_duplicate(kMet, d, xi2, n2[jj])) {
        d = T(exact_distance(xi, rp + j * p.dim, p.dim, kMet));
      }
      const bool ok = pair_allowed(i, j, a.triangle, a.has_exclude, a.exclude_offset);
      const bool same = rid[j] == li;
      const T t = term(d, same);
      const bool p_ok = ok && same, n_ok = ok && !same;
      acc.pos += p_ok ? t : T(0);
      acc.neg += n_ok ? t : T(0);
      acc.pos_nz += p_ok && t > T(0);
      acc.neg_nz += n_ok && t > T(0);
      acc.pos_n += p_ok;
      acc.neg_n += n_ok;
      if constexpr (kGrad) {
        T w = weight(ok, d, same, gpi, gni);
        const DistGrad<T> q = distance_grad<T>(kMet, d, xi2, n2[jj]);
        if (Panels<T>::near_duplicate(kMet, d, xi2, n2[jj])) {
          if (w != T(0)) near.emplace_back(j, double(w) * double(q.au));
          w = T(0);
        }
        acc.au += w * q.au;
        colp[jj] += w * q.bv;
        g[jj] = w * q.cross;
      }
    }
    return acc;
  }
};

// The panels of a contrastive call. Without gx the per-anchor sums only; with gx, gr also
// the gradient of sum_i (gp_i pos_sum_i + gn_i neg_sum_i) (gp, gn nullptr: all ones, the
// gradient of the total sum).
template <typename T>
void contrastive_panels(const Panels<T>& p, const int64_t* lab, const int64_t* rlab,
                        const ContrastiveArgs& a, const RowSums<T>& out, const T* gp, const T* gn,
                        at::Tensor* gx, at::Tensor* gr) {
  const std::vector<int32_t> ids = label_ids(lab, p.b, rlab, p.m);
  at::Tensor buf = p.panel_buffer();
  const auto run = [&](auto metric_const, auto power_const, auto grad_const) {
    constexpr int64_t kMet = decltype(metric_const)::value;
    constexpr bool kGrad = decltype(grad_const)::value;
    using Rows = ContrastiveRows<T, kMet, kGrad, decltype(power_const)>;
    const Rows rows{
        p,  ids.data(), ids.data() + p.b, a, T(a.pos_margin), T(a.neg_margin), power_const, gp,
        gn, out};
    for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
      const int64_t nr = std::min(p.rows, p.b - r0);
      const int64_t c0 = a.triangle ? r0 : 0;  // pairs j > i >= r0 only: skip the lower blocks
      at::Tensor panel = panel_view(buf, nr, p.m - c0);
      p.dots(r0, c0, panel);
      const int64_t nc = panel.size(1);
      T* g = panel.data_ptr<T>();
      if constexpr (kGrad) {
        auto wt = p.weigh_rows(nr, nc, [&](int64_t r, T* colp, typename Rows::NearList& near) {
          return rows.row(r0 + r, c0, nc, g + r * nc, colp, near);
        });
        p.apply_gradient(r0, c0, panel, wt, *gx, *gr);  // the weights overwrote the dots
      } else {
        at::parallel_for(0, nr, 4, [&](int64_t r_begin, int64_t r_end) {
          typename Rows::NearList unused;
          for (int64_t r = r_begin; r < r_end; ++r) {
            rows.row(r0 + r, c0, nc, g + r * nc, nullptr, unused);
          }
        });
      }
    }
  };
  with_metric(p.metric, [&](auto metric_const) {
    with_power(a.power, [&](auto power_const) {
      if (gx != nullptr) {
        run(metric_const, power_const, std::true_type{});
      } else {
        run(metric_const, power_const, std::false_type{});
      }
    });
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
    using T = scalar_t;
    const RowSums<T> sums{o.t[0].data_ptr<T>(),       o.t[1].data_ptr<int64_t>(),
                          o.t[2].data_ptr<int64_t>(), o.t[3].data_ptr<T>(),
                          o.t[4].data_ptr<int64_t>(), o.t[5].data_ptr<int64_t>()};
    contrastive_panels(Panels<T>(x, ref, metric), lab.data_ptr<int64_t>(), rlab.data_ptr<int64_t>(),
                       a, sums, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr), gx,
                       gr);
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
  const ContrastiveArgs a{pos_margin, neg_margin, power, triangle, has_exclude, exclude_offset};
  const int64_t b = x.size(0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "contrastive_backward_cpu", [&] {
    using T = scalar_t;
    // The per-anchor sums come with the pass; the backward has no use for them.
    std::vector<T> sum_scratch(2 * b);
    std::vector<int64_t> count_scratch(4 * b);
    int64_t* c = count_scratch.data();
    const RowSums<T> sums{sum_scratch.data(),     c,         c + b,
                          sum_scratch.data() + b, c + 2 * b, c + 3 * b};
    contrastive_panels(Panels<T>(x, ref, metric), lab.data_ptr<int64_t>(), rlab.data_ptr<int64_t>(),
                       a, sums, grad_pos.data_ptr<T>(), grad_neg.data_ptr<T>(), &gx, &gr);
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
