// Batch-hard mining when the batch is its own reference set: the score matrix is
// symmetric, so only its upper triangle is computed. Row panel [r0, r0 + nr) is one GEMM
// against columns [r0, B); each of its entries serves twice:
//   * row side:    anchor i = r0 + r, candidate j (every j >= r0);
//   * column side: anchor j (j >= r0 + nr), candidate i.
// Anchor i's candidates j < r0 were offered by the earlier panels' column sides. Half the
// GEMM work of the full matrix, and the B x B matrix never exists.
//
// Determinism: each anchor receives its candidates in ascending index order (earlier panels'
// rows, then its own row left to right), from a fixed schedule, whatever the thread count;
// near-ties are decided on exact distances (engine/hardest.h).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/distance.h"
#include "cpu/engine/exact_distance.h"
#include "cpu/engine/hardest.h"
#include "cpu/engine/label_ids.h"
#include "cpu/engine/panel_rows.h"

namespace fastmine::cpu {

// Whether the symmetric sweep can mine this call: the reference set is the batch itself
// (same memory, same labels), an anchor excludes only itself, and every score is finite
// (norms far from overflow), so that the SIMD loops never meet a NaN or an infinity.
template <typename T>
bool symmetric_mining_applies(const at::Tensor& x, const at::Tensor& ref, const at::Tensor& labels,
                              const at::Tensor& ref_labels, bool has_exclude,
                              int64_t exclude_offset, const std::vector<T>& norms2) {
  if (!x.is_same(ref) && !(x.data_ptr() == ref.data_ptr() && x.sizes() == ref.sizes() &&
                           x.strides() == ref.strides())) {
    return false;
  }
  if (has_exclude && exclude_offset != 0) return false;
  if (x.size(0) >= std::numeric_limits<int32_t>::max()) return false;
  if (!labels.is_same(ref_labels) && !at::equal(labels, ref_labels)) return false;
  const T limit = std::numeric_limits<T>::max() / T(64);
  return std::all_of(norms2.begin(), norms2.end(), [&](T v) { return v < limit; });  // NaN: false
}

template <typename T>
class SymmetricMiner {
 public:
  static constexpr int64_t kChunk = 256;        // columns per SIMD chunk of a row scan
  static constexpr int64_t kColumnBlock = 256;  // anchors per column-side task
  static constexpr int64_t kRowGroup = 8;       // anchors per row-side task
  // Rows per panel, measured best at B = 4096 and 16384 (D = 128, float32, 2-core AVX-512):
  // a 128-row GEMM runs near full speed, and a taller panel falls out of L2 between the GEMM
  // and the two scans that read it.
  static constexpr int64_t kPanelRows = 128;

  SymmetricMiner(const at::Tensor& x, const int64_t* labels, int64_t metric, bool has_exclude,
                 const std::vector<T>& norms2)
      : x_(x),
        xp_(x.data_ptr<T>()),
        lab_(label_ids(labels, x.size(0))),
        b_(x.size(0)),
        dim_(x.size(1)),
        metric_(metric),
        has_exclude_(has_exclude),
        col_a_(b_),
        col_b_(b_),
        tol_(b_),
        pos_(b_, /*largest=*/true),
        neg_(b_, /*largest=*/false) {
    const T max_n2 = b_ > 0 ? *std::max_element(norms2.begin(), norms2.end()) : T(0);
    for (int64_t j = 0; j < b_; ++j) {
      selection_coefs<T>(metric, norms2[j], &col_a_[j], &col_b_[j]);
      tol_[j] = score_tolerance<T>(metric, norms2[j], max_n2, dim_);
    }
  }

  // Mines every anchor; pos/neg receive the hardest positive/negative (-1: none).
  void run(int64_t* pos, int64_t* neg) {
    const int64_t rows = kPanelRows;
    at::Tensor panel = at::empty({rows * b_}, x_.options());
    for (int64_t r0 = 0; r0 < b_; r0 += rows) {
      const int64_t nr = std::min(rows, b_ - r0), nc = b_ - r0;
      at::Tensor g = panel.narrow(0, 0, nr * nc).view({nr, nc});
      at::mm_out(g, x_.narrow(0, r0, nr), x_.narrow(0, r0, nc).t());  // BLAS: the heavy part
      const T* gp = g.data_ptr<T>();
      // One parallel region per panel: tasks [0, n_blocks) are the column side's anchor
      // blocks (anchors beyond the panel), the rest the row side's groups of kRowGroup rows
      // (the panel's own anchors). They touch disjoint anchors, so any schedule gives the
      // same result.
      const int64_t c_lo = r0 + nr;
      const int64_t n_blocks = (b_ - c_lo + kColumnBlock - 1) / kColumnBlock;
      const int64_t n_groups = (nr + kRowGroup - 1) / kRowGroup;
      const std::vector<int64_t> tasks = interleave(n_blocks, n_groups);
      at::parallel_for(0, n_blocks + n_groups, 1, [&](int64_t t0, int64_t t1) {
        std::vector<T> chunk_p, chunk_n;
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t k = tasks[t];
          if (k < n_blocks) {
            const int64_t j0 = c_lo + k * kColumnBlock, j1 = std::min(b_, j0 + kColumnBlock);
            column_side(gp, nc, r0, nr, j0, j1);
            continue;
          }
          const int64_t q0 = (k - n_blocks) * kRowGroup, q1 = std::min(nr, q0 + kRowGroup);
          for (int64_t r = q0; r < q1; ++r) row_side(gp + r * nc, r0, r0 + r, chunk_p, chunk_n);
        }
      });
    }
    for (int64_t i = 0; i < b_; ++i) {
      pos[i] = pos_.index[i];
      neg[i] = neg_.index[i];
    }
  }

 private:
  // Task ids [0, n_a) and [n_a, n_a + n_b), interleaved in proportion. parallel_for gives
  // each thread one contiguous range of tasks, and a column-side entry costs more than a
  // row-side one: in id order one thread would get the column side, the other the rows.
  static std::vector<int64_t> interleave(int64_t n_a, int64_t n_b) {
    std::vector<int64_t> order;
    order.reserve(n_a + n_b);
    int64_t a = 0, b = 0;
    while (a < n_a || b < n_b) {
      // (a + 1/2) / n_a <= (b + 1/2) / n_b: the first kind is not ahead of its share.
      if (b == n_b || (a < n_a && (2 * a + 1) * n_b <= (2 * b + 1) * n_a)) {
        order.push_back(a++);
      } else {
        order.push_back(n_a + b++);
      }
    }
    return order;
  }

  double exact_distance(int64_t a, int64_t j) const {
    return fastmine::cpu::exact_distance(xp_ + a * dim_, xp_ + j * dim_, dim_, metric_);
  }

  // Anchors [j0, j1) receive the panel's rows r0 + r, r ascending, as candidates. g: the
  // panel (row stride nc, column c is anchor r0 + c).
  void column_side(const T* g, int64_t nc, int64_t r0, int64_t nr, int64_t j0, int64_t j1) {
    T* bp = pos_.best.data();
    T* bn = neg_.best.data();
    int32_t* ip = pos_.index.data();
    int32_t* in = neg_.index.data();
    const T* tol = tol_.data();
    const int32_t* lab = lab_.data();
    auto dist = [&](int64_t a, int64_t j) { return exact_distance(a, j); };
    for (int64_t r = 0; r < nr; ++r) {
      const int64_t i = r0 + r;
      const int32_t i32 = int32_t(i);
      const T ca = col_a_[i], cb = col_b_[i];
      const int32_t li = lab[i];
      const T* gr = g + r * nc - r0;  // gr[j]: entry for anchor j
      int flagged = 0;
      // Branch-free, so that it vectorises: a score beyond an anchor's best takes the lead,
      // one far behind is dropped, and a near-tie is only counted here and decided below.
#pragma omp simd reduction(+ : flagged)
      for (int64_t j = j0; j < j1; ++j) {
        const T s = selection_score(ca, cb, gr[j]);
        const int same = lab[j] == li;
        const T p = bp[j], n = bn[j], t = tol[j];
        const int take_p = same & int(s > p + t);
        const int take_n = (1 - same) & int(s < n - t);
        const int near_p = same & (1 - take_p) & int(s >= p - t);
        const int near_n = (1 - same) & (1 - take_n) & int(s <= n + t);
        bp[j] = take_p ? s : p;
        ip[j] = take_p ? i32 : ip[j];
        bn[j] = take_n ? s : n;
        in[j] = take_n ? i32 : in[j];
        flagged += near_p | near_n;
      }
      if (flagged == 0) continue;
      for (int64_t j = j0; j < j1; ++j) {
        const bool same = lab[j] == li;
        if ((same ? ip[j] : in[j]) == i32) continue;  // took the lead above
        const T s = selection_score(ca, cb, gr[j]);
        Hardest<T>& h = same ? pos_ : neg_;
        if (!Hardest<T>::behind(h.largest, s, h.best[j], tol[j])) h.consider(j, s, i, tol[j], dist);
      }
    }
  }

  // Anchor i receives candidates j in [r0, B), ascending, from its panel row g (g[c]: column
  // r0 + c). Pass 1 finds each chunk's best scores with SIMD reductions; pass 2 offers only
  // the chunks within tol of the anchor's best overall: the others hold no contender.
  void row_side(const T* g, int64_t r0, int64_t i, std::vector<T>& chunk_p,
                std::vector<T>& chunk_n) {
    const T inf = std::numeric_limits<T>::infinity();
    const int32_t li = lab_[i];
    const int64_t excl = has_exclude_ ? i : -1;
    const T* ca = col_a_.data() + r0;
    const T* cb = col_b_.data() + r0;
    const int32_t* rl = lab_.data() + r0;
    const int64_t n = b_ - r0, ex = excl - r0;
    T best_p = pos_.best[i], best_n = neg_.best[i];
    chunk_p.clear();
    chunk_n.clear();
    for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
      const int64_t c1 = std::min(n, c0 + kChunk);
      T cp = -inf, cn = inf;
#pragma omp simd reduction(max : cp) reduction(min : cn)
      for (int64_t c = c0; c < c1; ++c) {
        const T s = selection_score(ca[c], cb[c], g[c]);
        const bool same = rl[c] == li;
        const T vp = (same && c != ex) ? s : -inf;
        const T vn = same ? inf : s;
        cp = vp > cp ? vp : cp;
        cn = vn < cn ? vn : cn;
      }
      chunk_p.push_back(cp);
      chunk_n.push_back(cn);
      best_p = cp > best_p ? cp : best_p;
      best_n = cn < best_n ? cn : best_n;
    }
    const T t = tol_[i];
    auto dist = [&](int64_t a, int64_t j) { return exact_distance(a, j); };
    for (int64_t k = 0; k < int64_t(chunk_p.size()); ++k) {
      const bool pos_here = chunk_p[k] != -inf && !(chunk_p[k] < best_p - t);
      const bool neg_here = chunk_n[k] != inf && !(chunk_n[k] > best_n + t);
      if (!pos_here && !neg_here) continue;
      const int64_t c1 = std::min(n, (k + 1) * kChunk);
      for (int64_t c = k * kChunk; c < c1; ++c) {
        const bool same = rl[c] == li;
        if (same ? (!pos_here || c == ex) : !neg_here) continue;
        const T s = selection_score(ca[c], cb[c], g[c]);
        Hardest<T>& h = same ? pos_ : neg_;
        if (!Hardest<T>::behind(h.largest, s, h.best[i], t)) h.consider(i, s, r0 + c, t, dist);
      }
    }
  }

  at::Tensor x_;
  const T* xp_;
  std::vector<int32_t> lab_;
  int64_t b_, dim_, metric_;
  bool has_exclude_;
  std::vector<T> col_a_, col_b_, tol_;
  Hardest<T> pos_, neg_;
};

}  // namespace fastmine::cpu
