// Semi-hard triplet loss on the CPU: row panels of distances from BLAS (panel.h); per anchor
// ONE pass over its row serves all its positives, O(M log K) for K positives:
//
//  * the anchor's positive distances are sorted once (v_1 <= ... <= v_K);
//  * a negative at distance d is a semi-hard candidate exactly for the positives with
//    v_k < d, i.e. for the first t(d) = #{k : v_k < d} of them; it goes to bucket t(d),
//    which keeps the nearest negative (lowest index on ties);
//  * the nearest candidate of sorted positive k is the best of buckets k+1 .. K: a suffix
//    minimum over the buckets. The same pass keeps the farthest negative (the fallback).
//
// With a few positives (K <= 64: P x K batches) the bucket scatter costs more than asking
// every positive directly, and the direct form is branch-free: SIMD lanes each keep, per
// positive, the nearest candidate in their own columns (scan_row_few below).
//
// Never B x M x M (TF's tiled-mask formulation), never the B x M matrix (one panel at a
// time). The chosen pairs' distances are then recomputed exactly (direct differences, in
// double) for the loss, as batch-hard does. Backward: O(P * D) from the saved triplets,
// deterministic (rows sum their edges in a fixed order, row_groups.h).
#include "cpu/engine/vec_math.h"  // first: selects ATen's SIMD implementation (see there)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/distance.h"
#include "common/semi_hard.h"
#include "common/triplet.h"
#include "cpu/contract_cpu.h"
#include "cpu/engine/duplicate_rows.h"
#include "cpu/engine/exact_distance.h"
#include "cpu/engine/label_classes.h"
#include "cpu/engine/panel.h"
#include "cpu/engine/row_groups.h"

namespace fastmine::cpu {
namespace {

// Number of pairs of each anchor (its positives, if it has a negative) from label counts
// only, and their prefix sums: where each anchor's pairs go in the outputs.
std::vector<int64_t> pair_offsets(const int64_t* lab, int64_t b, const int64_t* rlab, int64_t m,
                                  bool has_exclude, int64_t exclude_offset) {
  std::vector<int64_t> sorted(rlab, rlab + m);
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> off(b + 1, 0);
  for (int64_t i = 0; i < b; ++i) {
    const auto range = std::equal_range(sorted.begin(), sorted.end(), lab[i]);
    int64_t same = range.second - range.first;
    const int64_t excl = has_exclude ? i + exclude_offset : -1;
    const int64_t negatives = m - same;
    if (excl >= 0 && excl < m && rlab[excl] == lab[i]) --same;
    off[i + 1] = off[i] + (negatives > 0 ? same : 0);
  }
  return off;
}

// Per-thread scratch of the row scan.
template <typename T>
struct RowScratch {
  std::vector<T> vals;             // the finite-or-inf positive distances, sorted
  std::vector<int64_t> cols;       // their columns
  std::vector<int64_t> ranks;      // their rank in column order (= output slot)
  std::vector<int64_t> nan_ranks;  // ranks of positives at a NaN distance
  std::vector<std::pair<T, int64_t>> sort_buf;
  std::vector<ArgBest<T>> buckets;
};

// The semi-hard negative of each of anchor i's positives, written as column indices into
// pos[rank], neg[rank] (rank = the positive's place in column order).
template <typename T>
void scan_row(const T* d, const int64_t* rl, int64_t m, int64_t li, int64_t excl, RowScratch<T>& s,
              int64_t* pos, int64_t* neg) {
  s.sort_buf.clear();
  s.nan_ranks.clear();
  int64_t rank = 0;
  for (int64_t j = 0; j < m; ++j) {
    if (rl[j] != li || j == excl) continue;
    pos[rank] = j;
    if (fm_isnan(d[j]))
      s.nan_ranks.push_back(rank);
    else
      s.sort_buf.emplace_back(d[j], rank);
    ++rank;
  }
  // By (distance, rank): equal distances keep column order (irrelevant to the result).
  std::sort(s.sort_buf.begin(), s.sort_buf.end());
  const int64_t k = int64_t(s.sort_buf.size());
  s.vals.resize(k);
  s.ranks.resize(k);
  for (int64_t q = 0; q < k; ++q) {
    s.vals[q] = s.sort_buf[q].first;
    s.ranks[q] = s.sort_buf[q].second;
  }
  s.buckets.assign(k + 1, ArgBest<T>{});
  ArgBest<T> easy;
  const T* v = s.vals.data();
  for (int64_t j = 0; j < m; ++j) {
    if (rl[j] == li) continue;
    const T dn = d[j];
    easy.offer(dn, j, /*is_max=*/true);
    if (fm_isnan(dn)) continue;  // easy now holds a NaN: it wins every pair (see choice)
    int64_t t;
    if (k <= 16) {  // a few positives (the P x K case): a branch-free count
      t = 0;
      for (int64_t q = 0; q < k; ++q) t += semi_hard_candidate(dn, v[q]);
    } else {
      t = std::lower_bound(v, v + k, dn) - v;  // #{q : v_q < dn}
    }
    if (t > 0) s.buckets[t].offer(dn, j, /*is_max=*/false);
  }
  ArgBest<T> cur;  // best of buckets t .. k
  for (int64_t t = k; t >= 1; --t) {
    cur.merge(s.buckets[t], /*is_max=*/false);
    neg[s.ranks[t - 1]] = semi_hard_choice(cur, easy);
  }
  for (int64_t r : s.nan_ranks) neg[r] = semi_hard_choice(ArgBest<T>{}, easy);
}

// ---- few positives: SIMD lanes ----
//
// The same choice as scan_row, found without buckets: for each positive (value v_q), the
// nearest negative with d > v_q, and the farthest negative, each with the lowest index on
// exact ties. Lane l of a W-wide vector sees columns j = l (mod W) in ascending order, so
// keeping a lane's leader on ties (strict comparisons) keeps its lowest index; the lanes are
// then merged with ArgBest, whose (value, then lowest index) order does not depend on the
// order candidates come in. Hence the same winners as one scan in column order.

constexpr int64_t kFewPositives = 64;  // at most this many: lanes; more: scan_row's buckets
constexpr int kPositivesPerPass = 4;   // positives served by one pass over the row

template <typename T>
using LaneInt = at::vec::int_same_size_t<T>;  // labels and indices, in lanes as wide as T

// One pass over row d for the NQ positives at v[0 .. NQ): semi[q] gets the nearest negative
// farther than v[q]; with kEasy, `easy` gets the farthest non-NaN negative above -inf and
// `nan` whether any negative is NaN.
//
// A column of the anchor's class enters as x = -inf, which no rule picks (-inf is not > v_q,
// nor > the running maximum, which starts at -inf): one mask, no branch. A negative truly at
// -inf is skipped as well; it can be the farthest only if every negative is -inf, which the
// caller settles. A NaN negative never passes a comparison; it is only flagged (it then
// wins every pair, which the caller settles too). The nearest candidate starts at +inf and
// is replaced only by a smaller one, so a candidate at +inf is never recorded: it could
// only be chosen when nothing finite is a candidate, and then the fallback, the farthest
// negative, is the first negative at +inf, the same column.
template <typename T, int NQ, bool kEasy>
void lane_pass(const T* d, const LaneInt<T>* rl, LaneInt<T> li, int64_t m, const T* v,
               ArgBest<T>* semi, ArgBest<T>& easy, bool& nan) {
  using I = LaneInt<T>;
  using V = at::vec::Vectorized<T>;
  using VI = at::vec::Vectorized<I>;
  constexpr int W = V::size();
  static_assert(VI::size() == W, "index lanes must line up with distance lanes");
  constexpr T kInf = std::numeric_limits<T>::infinity();
  const V ninf(-kInf);
  const VI anchor(li), stride{I(W)};
  const V none = at::vec::cast<T>(VI(I(-1)));  // index lanes hold I's bits in a T vector
  VI col = VI::arange(I(0), I(1));
  V thr[NQ], best[NQ], best_at[NQ];
  for (int q = 0; q < NQ; ++q) {
    thr[q] = V(v[q]);
    best[q] = V(kInf);
    best_at[q] = none;
  }
  V far = ninf, far_at = none, any_nan(T(0));

  const auto block = [&](const V& dv, const VI& lv) {
    const V x = V::blendv(ninf, dv, at::vec::cast<T>(lv != anchor));
    const V at_col = at::vec::cast<T>(col);
    if constexpr (kEasy) {
      any_nan = any_nan | x.isnan();
      const V farther = x > far;
      far = V::blendv(far, x, farther);
      far_at = V::blendv(far_at, at_col, farther);
    }
    for (int q = 0; q < NQ; ++q) {
      const V nearer = (x > thr[q]) & (x < best[q]);
      best[q] = V::blendv(best[q], x, nearer);
      best_at[q] = V::blendv(best_at[q], at_col, nearer);
    }
    col = col + stride;
  };
  int64_t j = 0;
  for (; j + W <= m; j += W) block(V::loadu(d + j), VI::loadu(rl + j));
  if (j < m) {  // the tail, padded with inert columns (the anchor's class, at -inf)
    T dt[W];
    I lt[W];
    std::fill(dt, dt + W, -kInf);
    std::fill(lt, lt + W, li);
    std::copy(d + j, d + m, dt);
    std::copy(rl + j, rl + m, lt);
    block(V::loadu(dt), VI::loadu(lt));
  }

  // Merge the lanes (index -1: nothing in that lane).
  T val[W], bits[W];
  I at_[W];
  const auto merge = [&](const V& value, const V& index, ArgBest<T>& into, bool is_max) {
    value.store(val);
    index.store(bits);
    std::memcpy(at_, bits, sizeof(at_));
    for (int l = 0; l < W; ++l)
      if (at_[l] >= 0) into.offer(val[l], at_[l], is_max);
  };
  for (int q = 0; q < NQ; ++q) merge(best[q], best_at[q], semi[q], /*is_max=*/false);
  if constexpr (kEasy) {
    merge(far, far_at, easy, /*is_max=*/true);
    any_nan.store(val);
    std::memcpy(at_, val, sizeof(at_));
    for (int l = 0; l < W; ++l) nan |= at_[l] != 0;
  }
}

template <typename T, bool kEasy>
void lane_pass_n(int nq, const T* d, const LaneInt<T>* rl, LaneInt<T> li, int64_t m, const T* v,
                 ArgBest<T>* semi, ArgBest<T>& easy, bool& nan) {
  static_assert(kPositivesPerPass == 4);
  switch (nq) {
    case 1:
      return lane_pass<T, 1, kEasy>(d, rl, li, m, v, semi, easy, nan);
    case 2:
      return lane_pass<T, 2, kEasy>(d, rl, li, m, v, semi, easy, nan);
    case 3:
      return lane_pass<T, 3, kEasy>(d, rl, li, m, v, semi, easy, nan);
    default:
      return lane_pass<T, 4, kEasy>(d, rl, li, m, v, semi, easy, nan);
  }
}

// scan_row for an anchor with 1 <= k <= kFewPositives positives (`cols`, its class's columns
// less excl, ascending: rank order) and at least one negative. rl: the columns' class ids;
// li: the anchor's.
template <typename T>
void scan_row_few(const T* d, const LaneInt<T>* rl, LaneInt<T> li, int64_t m, const int64_t* cols,
                  int64_t ncols, int64_t excl, int64_t* pos, int64_t* neg) {
  T v[kFewPositives];
  int64_t k = 0;
  for (int64_t c = 0; c < ncols; ++c) {
    if (cols[c] == excl) continue;
    pos[k] = cols[c];
    v[k] = d[cols[c]];  // a NaN positive has no candidate (d > NaN is false): the fallback
    ++k;
  }
  ArgBest<T> semi[kFewPositives] = {};
  ArgBest<T> easy{};  // value-initialised: read only once index >= 0, but gcc cannot tell
  bool nan = false;
  for (int64_t q0 = 0; q0 < k && !nan; q0 += kPositivesPerPass) {
    const int nq = int(std::min<int64_t>(kPositivesPerPass, k - q0));
    if (q0 == 0)
      lane_pass_n<T, true>(nq, d, rl, li, m, v, semi, easy, nan);
    else
      lane_pass_n<T, false>(nq, d, rl, li, m, v + q0, semi + q0, easy, nan);
  }
  if (nan || easy.index < 0) {
    // A NaN negative wins every pair, its first one (ArgBest's rule); without one, no lane
    // holding a farthest negative means every negative is at -inf: the first negative.
    for (int64_t j = 0; j < m; ++j) {
      if (rl[j] == li || (nan && !fm_isnan(d[j]))) continue;
      easy.value = d[j];
      easy.index = j;
      break;
    }
  }
  for (int64_t q = 0; q < k; ++q) neg[q] = semi_hard_choice(semi[q], easy);
}

template <typename T>
void semi_hard_forward_impl(const at::Tensor& x, const int64_t* lab, const at::Tensor& ref,
                            const int64_t* rlab, double margin, int64_t metric, bool has_exclude,
                            int64_t exclude_offset, const std::vector<int64_t>& off,
                            at::Tensor& loss, at::Tensor& anchor_idx, at::Tensor& pos_idx,
                            at::Tensor& neg_idx, at::Tensor& pos_dist, at::Tensor& neg_dist,
                            at::Tensor& nonfinite) {
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* rp = ref.data_ptr<T>();
  int64_t* ai = anchor_idx.data_ptr<int64_t>();
  int64_t* pi = pos_idx.data_ptr<int64_t>();
  int64_t* ni = neg_idx.data_ptr<int64_t>();
  const auto copies = duplicate_rows(rp, m, dim);

  const LabelClasses<LaneInt<T>> classes(rlab, m);
  // Lanes count columns in I: the lane path needs every index (and one stride past) to fit.
  const bool lanes_fit = m <= int64_t(std::numeric_limits<LaneInt<T>>::max()) - 64;

  const Panels<T> panels(x, ref, metric);
  at::Tensor buf = panels.panel_buffer();
  for (int64_t r0 = 0; r0 < b; r0 += panels.rows) {
    const int64_t nr = std::min(panels.rows, b - r0);
    if (off[r0 + nr] == off[r0]) continue;  // no pair in this panel
    at::Tensor dist = panel_view(buf, nr, m);
    panels.distances(r0, 0, dist);
    T* dp = dist.data_ptr<T>();
    at::parallel_for(0, nr, 4, [&](int64_t a, int64_t e) {
      RowScratch<T> scratch;
      for (int64_t r = a; r < e; ++r) {
        const int64_t i = r0 + r;
        if (off[i + 1] == off[i]) continue;
        T* d = dp + r * m;
        for (const auto& [j, first] : copies) d[j] = d[first];
        const int64_t excl = has_exclude ? i + exclude_offset : -1;
        // The anchor has off[i + 1] - off[i] positives (less excl), and a negative.
        if (off[i + 1] - off[i] <= kFewPositives && lanes_fit) {
          const int64_t c = classes.class_of(lab[i]);
          scan_row_few(d, classes.id.data(), LaneInt<T>(c), m,
                       classes.cols.data() + classes.start[c], classes.size_of(c), excl,
                       pi + off[i], ni + off[i]);
        } else {
          scan_row(d, rlab, m, lab[i], excl, scratch, pi + off[i], ni + off[i]);
        }
      }
    });
  }

  // The chosen pairs' distances, exactly, and the term.
  T* lp = loss.data_ptr<T>();
  T* pd = pos_dist.data_ptr<T>();
  T* nd = neg_dist.data_ptr<T>();
  at::parallel_for(0, b, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* xi = xp + i * dim;
      for (int64_t q = off[i]; q < off[i + 1]; ++q) {
        const double dpos = accumulate_pair(xi, rp + pi[q] * dim, dim).finalize(metric);
        const double dneg = accumulate_pair(xi, rp + ni[q] * dim, dim).finalize(metric);
        ai[q] = i;
        pd[q] = T(dpos);
        nd[q] = T(dneg);
        lp[q] = T(semi_hard_term(dpos, dneg, margin));
      }
    }
  });

  // A non-finite row that forms no pair must still poison the reduced loss (docs/semantics.md,
  // "Everywhere").
  bool finite = true;
  for (int64_t i = 0; i < b && finite; ++i) finite = std::isfinite(squared_norm(xp + i * dim, dim));
  for (int64_t j = 0; j < m && finite; ++j) finite = std::isfinite(squared_norm(rp + j * dim, dim));
  nonfinite.fill_(finite ? 0.0 : std::numeric_limits<double>::quiet_NaN());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
semi_hard_triplet_cpu(const at::Tensor& x_, const at::Tensor& labels_, const at::Tensor& ref_,
                      const at::Tensor& ref_labels_, double margin, int64_t metric,
                      bool has_exclude, int64_t exclude_offset) {
  contract::semi_hard_triplet<CpuSide>(x_, labels_, ref_, ref_labels_, margin, metric, has_exclude,
                                       exclude_offset);
  const at::Tensor x = dense(x_), ref = dense(ref_);
  const at::Tensor labels = dense(labels_), ref_labels = dense(ref_labels_);
  const int64_t b = x.size(0), m = ref.size(0);
  const int64_t* lab = labels.data_ptr<int64_t>();
  const int64_t* rlab = ref_labels.data_ptr<int64_t>();
  const std::vector<int64_t> off = pair_offsets(lab, b, rlab, m, has_exclude, exclude_offset);
  const int64_t p = off[b];
  at::Tensor loss = at::empty({p}, x.options());
  at::Tensor pos_dist = at::empty({p}, x.options());
  at::Tensor neg_dist = at::empty({p}, x.options());
  at::Tensor anchor_idx = at::empty({p}, labels.options());
  at::Tensor pos_idx = at::empty({p}, labels.options());
  at::Tensor neg_idx = at::empty({p}, labels.options());
  at::Tensor nonfinite = at::empty({}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "semi_hard_triplet_cpu", [&] {
    semi_hard_forward_impl<scalar_t>(x, lab, ref, rlab, margin, metric, has_exclude, exclude_offset,
                                     off, loss, anchor_idx, pos_idx, neg_idx, pos_dist, neg_dist,
                                     nonfinite);
  });
  return {loss, anchor_idx, pos_idx, neg_idx, pos_dist, neg_dist, nonfinite};
}

// Gradient of sum_q [gl_q * l_q + gpd_q * d(a_q, p_q) + gnd_q * d(a_q, n_q)]. Pair q has two
// edges, e = 2q (to its positive) and 2q + 1 (to its negative), each with a coefficient
// dL/dd and the distance's gradient (common/distance.h distance_grad).
template <typename T>
void semi_hard_backward_impl(const T* gl, const T* gpd, const T* gnd, const at::Tensor& x,
                             const at::Tensor& ref, const int64_t* ai, const int64_t* pi,
                             const int64_t* ni, const T* pd, const T* nd, int64_t p, double margin,
                             int64_t metric, at::Tensor& gx, at::Tensor& gr) {
  const int64_t b = x.size(0), m = ref.size(0), dim = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* rp = ref.data_ptr<T>();
  std::vector<double> nx2(metric == kCosine ? b : 0), nr2(metric == kCosine ? m : 0);
  for (int64_t i = 0; i < int64_t(nx2.size()); ++i) nx2[i] = squared_norm(xp + i * dim, dim);
  for (int64_t j = 0; j < int64_t(nr2.size()); ++j) nr2[j] = squared_norm(rp + j * dim, dim);

  std::vector<double> coef(2 * p);
  std::vector<DistGrad<double>> dg(2 * p);
  at::parallel_for(0, p, 256, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const double t = double(gl[q]) * semi_hard_term_grad(double(pd[q]), double(nd[q]), margin);
      coef[2 * q] = t + double(gpd[q]);
      coef[2 * q + 1] = -t + double(gnd[q]);
      const double na = metric == kCosine ? nx2[ai[q]] : 0.0;
      dg[2 * q] = distance_grad(metric, double(pd[q]), na, metric == kCosine ? nr2[pi[q]] : 0.0);
      dg[2 * q + 1] =
          distance_grad(metric, double(nd[q]), na, metric == kCosine ? nr2[ni[q]] : 0.0);
    }
  });
  auto target = [&](int64_t e) { return (e & 1) ? ni[e >> 1] : pi[e >> 1]; };

  // Anchor side: dd/dx = au x + cross r. Each anchor row sums its edges in edge order.
  const RowGroups by_anchor(b, 2 * p, [&](int64_t e) { return ai[e >> 1]; });
  T* gxp = gx.data_ptr<T>();
  at::parallel_for(0, b, 16, [&](int64_t i0, int64_t i1) {
    std::vector<double> acc(dim);
    for (int64_t i = i0; i < i1; ++i) {
      if (by_anchor.start[i] == by_anchor.start[i + 1]) continue;
      std::fill(acc.begin(), acc.end(), 0.0);
      const T* xi = xp + i * dim;
      for (int64_t s = by_anchor.start[i]; s < by_anchor.start[i + 1]; ++s) {
        const int64_t e = by_anchor.order[s];
        const double ca = coef[e] * dg[e].au, cc = coef[e] * dg[e].cross;
        const T* rj = rp + target(e) * dim;
        for (int64_t k = 0; k < dim; ++k) acc[k] += ca * double(xi[k]) + cc * double(rj[k]);
      }
      for (int64_t k = 0; k < dim; ++k) gxp[i * dim + k] = T(acc[k]);
    }
  });

  // Reference side: dd/dr = cross x + bv r. A row may be chosen by many pairs.
  const RowGroups by_target(m, 2 * p, target);
  T* grp = gr.data_ptr<T>();
  at::parallel_for(0, m, 16, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(dim);
    for (int64_t j = j0; j < j1; ++j) {
      if (by_target.start[j] == by_target.start[j + 1]) continue;
      std::fill(acc.begin(), acc.end(), 0.0);
      const T* rj = rp + j * dim;
      for (int64_t s = by_target.start[j]; s < by_target.start[j + 1]; ++s) {
        const int64_t e = by_target.order[s];
        const double cc = coef[e] * dg[e].cross, cb = coef[e] * dg[e].bv;
        const T* xi = xp + ai[e >> 1] * dim;
        for (int64_t k = 0; k < dim; ++k) acc[k] += cc * double(xi[k]) + cb * double(rj[k]);
      }
      for (int64_t k = 0; k < dim; ++k) grp[j * dim + k] = T(acc[k]);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> semi_hard_triplet_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& grad_pos_dist, const at::Tensor& grad_neg_dist,
    const at::Tensor& x_, const at::Tensor& ref_, const at::Tensor& anchor_idx_,
    const at::Tensor& pos_idx_, const at::Tensor& neg_idx_, const at::Tensor& pos_dist_,
    const at::Tensor& neg_dist_, double margin, int64_t metric) {
  contract::semi_hard_triplet_backward<CpuSide>(grad_loss, grad_pos_dist, grad_neg_dist, x_, ref_,
                                                anchor_idx_, pos_idx_, neg_idx_, pos_dist_,
                                                neg_dist_, margin, metric);
  const at::Tensor x = dense(x_), ref = dense(ref_);
  const at::Tensor ai = dense(anchor_idx_), pi = dense(pos_idx_), ni = dense(neg_idx_);
  const int64_t p = ai.numel();
  at::Tensor gx = at::zeros_like(x);
  at::Tensor gr = at::zeros_like(ref);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "semi_hard_triplet_backward_cpu", [&] {
    const at::Tensor gl = dense(grad_loss), gpd = dense(grad_pos_dist), gnd = dense(grad_neg_dist),
                     pd = dense(pos_dist_), nd = dense(neg_dist_);
    semi_hard_backward_impl<scalar_t>(
        gl.data_ptr<scalar_t>(), gpd.data_ptr<scalar_t>(), gnd.data_ptr<scalar_t>(), x, ref,
        ai.data_ptr<int64_t>(), pi.data_ptr<int64_t>(), ni.data_ptr<int64_t>(),
        pd.data_ptr<scalar_t>(), nd.data_ptr<scalar_t>(), p, margin, metric, gx, gr);
  });
  return {gx, gr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmine, CPU, m) {
  m.impl("semi_hard_triplet", &semi_hard_triplet_cpu);
  m.impl("semi_hard_triplet_backward", &semi_hard_triplet_backward_cpu);
}

}  // namespace fastmine::cpu
