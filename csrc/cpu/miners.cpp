// Margin-filtered triplet mining on the CPU (pytorch-metric-learning's TripletMarginMiner),
// without ever forming the B x M x M triplet cube.
//
// Two passes over the same BLAS row panels of distances (cpu/engine/panel.h):
//  1. count: per anchor, sort its negative distances once; for each positive, the selected
//     negatives are one interval of that order (common/miners.h), found by two bisections:
//     O(M log M) per anchor. The counts' prefix sum gives each anchor its output slice,
//     and the output is allocated once.
//  2. fill: recompute the panel (the same code on the same inputs: the same numbers), and
//     write each anchor's triplets into its own slice, in PML's order: positives
//     ascending, and for each the selected negatives ascending by index. A short interval
//     is sorted by index; a long one (more than 1/16 of the negatives) is found by a scan
//     in index order with the same predicate, which is cheaper than sorting it.
// Anchors are independent, so rows run in parallel and the output is deterministic.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <utility>
#include <vector>

#include "common/miners.h"
#include "cpu/contract_cpu.h"
#include "cpu/engine/panel.h"

namespace fastmine::cpu {
namespace {

struct MineArgs {
  double margin;
  int64_t type;
  bool has_exclude;
  int64_t exclude_offset;
};

// One anchor's candidates in a panel row: positive columns (ascending) and the negative
// distances sorted ascending; with_columns also keeps each sorted negative's column (the
// fill pass needs them; the count pass sorts bare values, which is cheaper).
template <typename T>
struct AnchorCandidates {
  std::vector<int64_t> pos;
  std::vector<std::pair<T, int64_t>> neg;  // (distance, column), with_columns only
  std::vector<T> sorted;
  bool finite = true;

  // Returns false when the anchor has no triplet at all (no positive or no negative).
  bool build(const T* d, int64_t m, const int64_t* rl, int64_t li, int64_t excl,
             bool with_columns) {
    pos.clear();
    neg.clear();
    sorted.clear();
    finite = true;
    for (int64_t j = 0; j < m; ++j) {
      if (rl[j] == li) {
        if (j == excl) continue;
        pos.push_back(j);
      } else if (with_columns) {
        neg.emplace_back(d[j], j);
      } else {
        sorted.push_back(d[j]);
      }
      finite &= bool(std::isfinite(double(d[j])));
    }
    if (pos.empty() || (with_columns ? neg.empty() : sorted.empty())) return false;
    if (!finite) return true;  // the caller refuses it; sorting NaNs is undefined
    if (with_columns) {
      std::sort(neg.begin(), neg.end());
      sorted.resize(neg.size());
      for (size_t q = 0; q < neg.size(); ++q) sorted[q] = neg[q].first;
    } else {
      std::sort(sorted.begin(), sorted.end());
    }
    return true;
  }

  int64_t count(const T* d, const MineArgs& a) const {
    int64_t total = 0;
    for (const int64_t p : pos) {
      total += triplet_interval_count<T>(a.type, sorted.data(), int64_t(sorted.size()), d[p],
                                         T(a.margin));
    }
    return total;
  }
};

// Refuses non-finite distances: a NaN compares false and would silently drop triplets
// (PML's behaviour), an infinity makes t = inf - inf = NaN. Mining must not look valid then.
inline void refuse_nonfinite(const std::vector<int64_t>& bad_anchor) {
  for (size_t i = 0; i < bad_anchor.size(); ++i) {
    TORCH_CHECK_VALUE(!bad_anchor[i], "mine_triplets: anchor ", i,
                      " has a non-finite distance to one of its candidates (NaN or inf in "
                      "embeddings or ref_embeddings, or an overflow); refusing to mine");
  }
}

template <typename T>
std::vector<int64_t> count_pass(const Panels<T>& p, const int64_t* lab, const int64_t* rlab,
                                const MineArgs& a) {
  std::vector<int64_t> counts(p.b, 0), bad(p.b, 0);
  at::Tensor buf = p.panel_buffer();
  for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
    at::Tensor panel = panel_view(buf, std::min(p.rows, p.b - r0), p.m);
    p.distances(r0, 0, panel);
    const T* d = panel.data_ptr<T>();
    at::parallel_for(0, panel.size(0), 1, [&](int64_t r_begin, int64_t r_end) {
      AnchorCandidates<T> row;
      for (int64_t r = r_begin; r < r_end; ++r) {
        const int64_t i = r0 + r;
        const T* di = d + r * p.m;
        if (!row.build(di, p.m, rlab, lab[i], a.has_exclude ? i + a.exclude_offset : -1, false)) {
          continue;
        }
        if (!row.finite) {
          bad[i] = 1;
          continue;
        }
        counts[i] = row.count(di, a);
      }
    });
  }
  refuse_nonfinite(bad);
  return counts;
}

template <typename T>
void fill_pass(const Panels<T>& p, const int64_t* lab, const int64_t* rlab, const MineArgs& a,
               const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets,
               int64_t* out_a, int64_t* out_p, int64_t* out_n) {
  at::Tensor buf = p.panel_buffer();
  std::atomic<bool> mismatch{false};
  const T margin = T(a.margin);
  for (int64_t r0 = 0; r0 < p.b; r0 += p.rows) {
    const int64_t nr = std::min(p.rows, p.b - r0);
    bool any = false;
    for (int64_t r = 0; r < nr; ++r) any |= counts[r0 + r] > 0;
    if (!any) continue;  // nothing to write: skip the panel's GEMM
    at::Tensor panel = panel_view(buf, nr, p.m);
    p.distances(r0, 0, panel);
    const T* d = panel.data_ptr<T>();
    at::parallel_for(0, nr, 1, [&](int64_t r_begin, int64_t r_end) {
      AnchorCandidates<T> row;
      std::vector<int64_t> picked;
      for (int64_t r = r_begin; r < r_end; ++r) {
        const int64_t i = r0 + r;
        if (counts[i] == 0) continue;
        const T* di = d + r * p.m;
        row.build(di, p.m, rlab, lab[i], a.has_exclude ? i + a.exclude_offset : -1, true);
        const int64_t n_neg = int64_t(row.sorted.size());
        int64_t at = offsets[i];
        const int64_t end = offsets[i] + counts[i];
        for (const int64_t pj : row.pos) {
          int64_t lo, hi;
          triplet_interval<T>(a.type, row.sorted.data(), n_neg, di[pj], margin, &lo, &hi);
          if (hi <= lo) continue;
          if (at + (hi - lo) > end) {
            mismatch = true;
            break;
          }
          if ((hi - lo) * 16 < n_neg) {
            picked.clear();
            for (int64_t q = lo; q < hi; ++q) picked.push_back(row.neg[q].second);
            std::sort(picked.begin(), picked.end());
          } else {
            picked.clear();
            for (int64_t j = 0; j < p.m; ++j) {
              if (rlab[j] != lab[i] && triplet_selected<T>(a.type, di[pj], di[j], margin)) {
                picked.push_back(j);
              }
            }
            if (int64_t(picked.size()) != hi - lo) {
              mismatch = true;
              break;
            }
          }
          for (const int64_t j : picked) {
            out_a[at] = i;
            out_p[at] = pj;
            out_n[at] = j;
            ++at;
          }
        }
        if (at != end) mismatch = true;
      }
    });
  }
  // Cannot happen while both passes see the same distances (same code, same inputs); a
  // loud error rather than a silently short or overlapping output if it ever does.
  TORCH_CHECK(!mismatch.load(),
              "mine_triplets: internal error, the fill pass disagrees with the "
              "count pass (the distance panels were not reproducible)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_triplets_cpu(
    const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
    const at::Tensor& ref_labels, double margin, int64_t type, int64_t metric, bool has_exclude,
    int64_t exclude_offset) {
  contract::mine_triplets<CpuSide>(x, labels, ref, ref_labels, margin, type, metric, has_exclude,
                                   exclude_offset);
  const at::Tensor lab = dense(labels), rlab = dense(ref_labels);
  const MineArgs a{margin, type, has_exclude, exclude_offset};
  const auto idx = labels.options().dtype(at::kLong);
  at::Tensor out_a, out_p, out_n;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mine_triplets_cpu", [&] {
    const Panels<scalar_t> p(x, ref, metric);
    const int64_t* li = lab.data_ptr<int64_t>();
    const int64_t* lr = rlab.data_ptr<int64_t>();
    const std::vector<int64_t> counts = count_pass(p, li, lr, a);
    std::vector<int64_t> offsets(p.b + 1, 0);
    for (int64_t i = 0; i < p.b; ++i) offsets[i + 1] = offsets[i] + counts[i];
    out_a = at::empty({offsets[p.b]}, idx);
    out_p = at::empty({offsets[p.b]}, idx);
    out_n = at::empty({offsets[p.b]}, idx);
    if (offsets[p.b] > 0) {
      fill_pass(p, li, lr, a, counts, offsets, out_a.data_ptr<int64_t>(), out_p.data_ptr<int64_t>(),
                out_n.data_ptr<int64_t>());
    }
  });
  return {out_a, out_p, out_n};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) { m.impl("mine_triplets", &mine_triplets_cpu); }

}  // namespace fastmine::cpu
