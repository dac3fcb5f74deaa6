"""fastmine.semi_hard_triplet_loss against the float64 oracle, with rounding-aware rules.

``check_semi_hard`` runs fastmine (loss, info, gradients) and the oracle on the same values
and checks, per docs/semantics.md:
  * the pairs (anchor, positive), in row-major order, exactly;
  * every chosen negative is a legal pick up to rounding: a negative of the anchor that is
    (within tol) the nearest one farther than the positive, or (within tol) the farthest
    negative when (within tol) none is farther;
  * the negative equals the oracle's where nothing is within tol of the threshold d_ip or of
    the oracle's pick; for integer-grid data (exact arithmetic) everywhere;
  * the loss, per-pair terms, distances and gradients against the oracle evaluated at
    fastmine's own triplets (so that a legal near-tie pick does not void the comparison),
    and against the oracle's own loss where the triplets coincide.
"""

from __future__ import annotations

import torch

import fastmine
from fastmine import reference as R
from helpers import RTOL, assert_close_rel, loss_dtype, selection_tolerance, upstream_weights


def run_semi_hard(case, *, dtype=None, device="cpu", **kw):
    """fastmine's (loss, info, grad_x, grad_ref) on case (converted to dtype/device)."""
    c = case.to(device=device, dtype=dtype or case.x.dtype)
    x = c.x.clone().requires_grad_(True)
    ref = None if c.ref is None else c.ref.clone().requires_grad_(True)
    extra = c.kwargs()
    if ref is not None:
        extra["ref_embeddings"] = ref
    loss, info = fastmine.semi_hard_triplet_loss(x, c.labels, return_info=True, **extra, **kw)
    target = loss
    if loss.dim() == 1:
        target = (loss * upstream_weights(loss.numel(), loss.dtype, loss.device)).sum()
    inputs = [x] if ref is None else [x, ref]
    grads = torch.autograd.grad(target, inputs, allow_unused=True)
    gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
    gr = None if ref is None else (grads[1] if grads[1] is not None else torch.zeros_like(ref))
    return loss.detach(), info, gx, gr


def oracle_at(c64, a, p, n, *, margin, metric, reduction):
    """The float64 oracle's (loss, per_pair, pos_dist, neg_dist, gx, gr) at given triplets."""
    x = c64.x.clone().requires_grad_(True)
    ref = None if c64.ref is None else c64.ref.clone().requires_grad_(True)
    loss, per, pd, nd = R.semi_hard_from_indices(
        x, a, p, n, margin=margin, metric=metric, reduction=reduction, ref_embeddings=ref
    )
    target = loss
    if loss.dim() == 1:
        target = (loss * upstream_weights(loss.numel(), loss.dtype, loss.device)).sum()
    inputs = [x] if ref is None else [x, ref]
    if target.requires_grad:
        grads = torch.autograd.grad(target, inputs, allow_unused=True)
    else:
        grads = [None] * len(inputs)
    gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
    gr = None if ref is None else (grads[1] if grads[1] is not None else torch.zeros_like(ref))
    return loss.detach(), per.detach(), pd.detach(), nd.detach(), gx, gr


def _selection(d, metric):
    return d * d if metric == "euclidean" else d  # the kernels' domain (tolerances apply there)


def check_negatives(s, nmask, dp, n_k, n_o, tol, *, exact):
    """s: (P, M) oracle selection values of each pair's anchor row; nmask: (P, M) negatives;
    dp: (P,) the positive's value; tol: (P,). Rows holding a NaN are left to the loss check."""
    rows = torch.arange(s.shape[0])
    finite = ~torch.isnan(torch.where(nmask, s, torch.zeros_like(s))).any(1) & ~torch.isnan(dp)
    if exact:
        bad = finite & (n_k != n_o)
        assert not bad.any(), (
            f"exact arithmetic: negatives differ at pairs {bad.nonzero()[:5].flatten().tolist()}: "
            f"fastmine {n_k[bad][:5].tolist()}, oracle {n_o[bad][:5].tolist()}"
        )
        return
    assert bool(nmask[rows, n_k].all()), "a chosen negative is not a negative of its anchor"
    t = tol[:, None]
    inf = torch.tensor(float("inf"), dtype=s.dtype)
    chosen = s[rows, n_k]
    sure = nmask & (s > dp[:, None] + t)
    maybe = nmask & (s > dp[:, None] - t)
    min_sure = torch.where(sure, s, inf).amin(1)
    max_neg = torch.where(nmask, s, -inf).amax(1)
    fallback_ok = chosen >= max_neg - tol
    semi_ok = maybe[rows, n_k] & (chosen <= min_sure + tol)
    ok = torch.where(sure.any(1), semi_ok, semi_ok | fallback_ok)
    bad = finite & ~ok
    assert not bad.any(), (
        f"{int(bad.sum())} pairs chose an illegal negative; first pair {int(bad.nonzero()[0])}: "
        f"chose value {chosen[bad][0].item()!r}, positive {dp[bad][0].item()!r}, "
        f"nearest farther {min_sure[bad][0].item()!r}, farthest {max_neg[bad][0].item()!r}"
    )
    # Unambiguous pairs: no negative within tol of the threshold, none near the oracle's pick.
    near_threshold = (nmask & ((s - dp[:, None]).abs() <= t)).any(1)
    near_pick = (nmask & ((s - s[rows, n_o][:, None]).abs() <= t)).sum(1) > 1
    clear = finite & ~near_threshold & ~near_pick
    bad = clear & (n_k != n_o)
    assert not bad.any(), f"clear pick differs at pairs {bad.nonzero()[:5].flatten().tolist()}"


def check_semi_hard(
    case, *, dtype=None, margin=0.3, metric="euclidean", reduction="mean", check_grad=True, device="cpu"
):
    """fastmine on ``case`` in ``dtype`` against the float64 oracle (see module docstring).
    Returns (loss, info)."""
    dtype = dtype or case.x.dtype
    rtol = RTOL[dtype]
    loss_k, info, gx_k, gr_k = run_semi_hard(
        case, dtype=dtype, device=device, margin=margin, metric=metric, reduction=reduction
    )
    assert loss_k.dtype == loss_dtype(dtype)
    info = type(info)(*(t.cpu() for t in info))
    c64 = case.to(dtype=dtype).to(dtype=torch.float64)  # the kernel's values, in float64
    ref64 = c64.x if c64.ref is None else c64.ref
    dist = R.pairwise_distance(c64.x, ref64, metric=metric)
    pos_mask, neg_mask = R.batch_hard_masks(c64.labels, c64.ref_labels, c64.self_offset)
    a_o, p_o, n_o = R.semi_hard_select(dist, pos_mask, neg_mask)
    a_k, p_k, n_k = info.anchor_idx, info.pos_idx, info.neg_idx
    assert torch.equal(a_k, a_o) and torch.equal(p_k, p_o), "pairs differ from the oracle's"
    assert int(info.num_pairs) == a_o.numel()
    assert n_k.shape == n_o.shape and n_k.dtype == torch.int64
    if a_o.numel():
        s = _selection(dist[a_o], metric)
        tol = selection_tolerance(c64.x, ref64, metric, dtype)[a_o, 0]
        exact = case.exact and metric != "cosine"
        check_negatives(s, neg_mask[a_o], s[torch.arange(a_o.numel()), p_o], n_k, n_o, tol, exact=exact)
    loss_o, per_o, pd_o, nd_o, gx_o, gr_o = oracle_at(
        c64, a_k, p_k, n_k, margin=margin, metric=metric, reduction=reduction
    )
    # Cosine's 1 - cos is accurate to ~eps absolutely, not relatively, near 0 (duplicate
    # rows: 0 here, 2.2e-16 in the oracle), as in the batch-hard checks (helpers.py).
    dfloor = 1.0 if metric == "cosine" else None
    assert_close_rel(loss_k, loss_o, rtol, floor=dfloor, what="loss at fastmine's triplets")
    assert_close_rel(info.pos_dist, pd_o, rtol, floor=dfloor, what="pos_dist")
    assert_close_rel(info.neg_dist, nd_o, rtol, floor=dfloor, what="neg_dist")
    if torch.equal(n_k, n_o):
        full = R.semi_hard_triplet_loss(
            c64.x, c64.labels, margin=margin, metric=metric, reduction=reduction, **_ref_kwargs(c64)
        )
        assert_close_rel(loss_k, full, rtol, what="loss vs the oracle's own")
    z = pd_o - nd_o + margin
    kink = (z.abs() < 100 * rtol * (1 + pd_o.abs() + nd_o.abs())) & (z != 0)
    active_k = int(info.num_active)
    certain = int((per_o > 0).sum())
    assert certain - int((kink & (z > 0)).sum()) <= active_k <= certain + int((kink & (z <= 0)).sum())
    if check_grad and not bool(kink.any()) and bool(torch.isfinite(loss_o).all()):
        floor = _gradient_scale(c64, metric, reduction, a_o.numel())
        assert_close_rel(gx_k, gx_o, 10 * rtol, floor=floor, what="grad x")
        if gr_k is not None:
            assert_close_rel(gr_k, gr_o, 10 * rtol, floor=floor, what="grad ref")
    return loss_k, info


def _gradient_scale(c64, metric, reduction, num_pairs) -> float:
    """Size of one pair's gradient contribution: the absolute floor for gradient entries that
    cancel to ~0 (rounding there is relative to the terms, not to their sum)."""
    rows = c64.x if c64.ref is None else torch.cat([c64.x, c64.ref])
    norms = rows.norm(dim=1)
    if metric == "euclidean":
        g = 1.0
    elif metric == "sqeuclidean":
        g = 4.0 * float(norms.max()) + 1e-30
    else:
        g = 2.0 / max(float(norms.min()), 1e-3)
    return g * (1.0 / max(num_pairs, 1) if reduction == "mean" else 1.5)


def _ref_kwargs(c):
    out = {}
    if c.ref is not None:
        out.update(ref_embeddings=c.ref, ref_labels=c.ref_labels)
    if c.self_offset is not None:
        out["self_offset"] = c.self_offset
    return out


def tfa_semihard_loss(labels: torch.Tensor, dist: torch.Tensor, margin: float) -> torch.Tensor:
    """TensorFlow Addons' ``triplet_semihard_loss`` algorithm, line by line in PyTorch, on a
    given (B, B) distance matrix: the (B*B, B) tiled mask, and masked min/max by the
    shift-by-the-row-extremum trick. A second, independent oracle (values only; it assumes
    every anchor has a negative, where TF-Addons and docs/semantics.md agree)."""
    b = labels.shape[0]
    adjacency = labels[:, None] == labels[None, :]
    adjacency_not = ~adjacency
    pdist_tile = dist.repeat(b, 1)  # row t*B + s holds dist[s]
    mask = adjacency_not.repeat(b, 1) & (pdist_tile > dist.t().reshape(-1, 1))
    mask_final = (mask.to(dist.dtype).sum(1, keepdim=True) > 0).reshape(b, b).t()

    def masked_minimum(data, m):
        axis_max = data.max(1, keepdim=True).values
        return ((data - axis_max) * m).min(1, keepdim=True).values + axis_max

    def masked_maximum(data, m):
        axis_min = data.min(1, keepdim=True).values
        return ((data - axis_min) * m).max(1, keepdim=True).values + axis_min

    negatives_outside = masked_minimum(pdist_tile, mask.to(dist.dtype)).reshape(b, b).t()
    negatives_inside = masked_maximum(dist, adjacency_not.to(dist.dtype)).repeat(1, b)
    semi_hard_negatives = torch.where(mask_final, negatives_outside, negatives_inside)
    loss_mat = margin + dist - semi_hard_negatives
    mask_positives = adjacency.to(dist.dtype) - torch.eye(b, dtype=dist.dtype)
    num_positives = mask_positives.sum()
    return (torch.relu(loss_mat) * mask_positives).sum() / num_positives
