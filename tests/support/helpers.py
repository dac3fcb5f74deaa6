"""Comparison helpers: fastmine against the float64 oracle (fastmine/reference.py).

The central one is ``check_batch_hard``: it runs fastmine (loss, info, gradients) and the
oracle on the same inputs, then checks, per docs/semantics.md:
  * valid mask and counts exactly (num_active up to terms within rounding of 0);
  * the selected pairs' distances and the loss to the dtype's tolerance (against the oracle
    at fastmine's own choices, and against the oracle's choices where they coincide);
  * every mined index is a legal candidate (label, not excluded) whose distance is within
    rounding of the best; the index equals the oracle's where the gap to the runner-up is
    clear; where the near-best candidates are bitwise-identical rows (or, for integer-grid
    data, where all arithmetic is exact) the lowest index must win;
  * gradients against the oracle's gradients *for fastmine's mined indices*, so that a legal
    near-tie pick does not make the gradient comparison meaningless.
"""

from __future__ import annotations

import math

import torch

import fastmine
from fastmine import reference as R

HALF = (torch.float16, torch.bfloat16)

# Relative tolerances owed by docs/semantics.md against a float64 oracle (float64 itself: ours).
RTOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def eps(dtype) -> float:
    return torch.finfo(dtype).eps


def assert_close_rel(actual, expected, rtol, *, floor=None, what=""):
    """|a - e| <= rtol * (|e| + floor) elementwise; floor defaults to max(|e|) (a normwise
    floor for entries near zero), never below 1e-12. NaN must match NaN."""
    actual = torch.as_tensor(actual).detach().to(torch.float64).cpu()
    expected = torch.as_tensor(expected).detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN pattern differs\nactual={actual}\nexpected={expected}"
    a, e = actual[~nan_e], expected[~nan_e]
    if a.numel() == 0:
        return
    inf_e = torch.isinf(e)
    assert torch.equal(a[inf_e], e[inf_e]), f"{what}: infinities differ"
    a, e = a[~inf_e], e[~inf_e]
    if a.numel() == 0:
        return
    if floor is None:
        floor = float(e.abs().max())
    floor = max(floor, 1e-12)
    err = (a - e).abs()
    bound = rtol * (e.abs() + floor)
    bad = err > bound
    if bad.any():
        i = int(torch.argmax((err / bound)))
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{e.numel()} entries off (rtol={rtol}, floor={floor:.3g}); "
            f"worst at flat index {i}: actual={a.flatten()[i].item()!r} "
            f"expected={e.flatten()[i].item()!r} |err|={err.flatten()[i].item():.3g}"
        )


def upstream_weights(n: int, dtype, device) -> torch.Tensor:
    """Distinct per-anchor weights for reduction='none' backward (tests per-anchor grads)."""
    return torch.linspace(0.5, 1.5, n, dtype=dtype, device=device)


def run_fastmine(case, *, dtype=None, device="cpu", **kw):
    """fastmine's (loss, info, grad_x, grad_ref) on case (converted to dtype/device)."""
    c = case.to(device=device, dtype=dtype or case.x.dtype)
    x = c.x.clone().requires_grad_(True)
    ref = None if c.ref is None else c.ref.clone().requires_grad_(True)
    extra = c.kwargs()
    if ref is not None:
        extra["ref_embeddings"] = ref
    loss, info = fastmine.batch_hard_triplet_loss(x, c.labels, return_info=True, **extra, **kw)
    target = loss
    if loss.dim() == 1:
        target = (loss * upstream_weights(loss.numel(), loss.dtype, loss.device)).sum()
    inputs = [x] if ref is None else [x, ref]
    grads = torch.autograd.grad(target, inputs, allow_unused=True)
    gx = grads[0]
    gr = grads[1] if ref is not None else None
    return loss.detach(), info, gx, gr


def run_oracle_with_indices(
    case,
    pos_idx,
    neg_idx,
    *,
    dtype=None,
    margin=0.3,
    metric="euclidean",
    soft=False,
    reduction="mean",
    oracle_device="cpu",
    nonzero_count=None,
):
    """The float64 oracle's (loss, per_anchor, pos_dist, neg_dist, gx, gr) for given indices,
    on the case's values after a round trip through ``dtype`` (the kernel's inputs)."""
    dtype = dtype or case.x.dtype
    c = case.to(dtype=dtype).to(device=oracle_device, dtype=torch.float64)
    x = c.x.clone().requires_grad_(True)
    ref = None if c.ref is None else c.ref.clone().requires_grad_(True)
    loss, per_anchor, pd, nd = R.batch_hard_from_indices(
        x,
        pos_idx.to(oracle_device),
        neg_idx.to(oracle_device),
        margin=margin,
        metric=metric,
        soft=soft,
        reduction=reduction,
        ref_embeddings=ref,
    )
    if reduction == "mean_nonzero" and nonzero_count is not None:
        # the denominator fastmine counted (validated by the caller, see check_batch_hard)
        loss = per_anchor.sum() / max(int(nonzero_count), 1)
    target = loss
    if loss.dim() == 1:
        target = (loss * upstream_weights(loss.numel(), loss.dtype, loss.device)).sum()
    inputs = [x] if ref is None else [x, ref]
    grads = torch.autograd.grad(target, inputs, allow_unused=True)
    gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
    gr = None
    if ref is not None:
        gr = grads[1] if grads[1] is not None else torch.zeros_like(ref)
    return loss.detach(), per_anchor.detach(), pd.detach(), nd.detach(), gx, gr


def loss_dtype(dtype):
    return torch.float32 if dtype in HALF else dtype


def _selection_domain(dist: torch.Tensor, metric: str) -> torch.Tensor:
    # Kernels select with |u|^2 + |v|^2 - 2uv: compare euclidean candidates as squares.
    return dist * dist if metric == "euclidean" else dist


def selection_tolerance(x64, ref64, metric, dtype, sel_eps=None):
    """(B, 1) tolerance on the selection value within which two candidates may swap.

    sel_eps: the unit roundoff of the kernel's dot products (default: dtype's eps; half
    inputs accumulate in float32; pass 2**-11 where TF32 is enabled)."""
    e = sel_eps if sel_eps is not None else eps(loss_dtype(dtype))
    d = x64.shape[1]
    if metric == "cosine":
        return torch.full((x64.shape[0], 1), 64 * e * (1 + math.sqrt(d)), dtype=torch.float64, device=x64.device)
    nx = (x64 * x64).sum(1, keepdim=True)
    nr = (ref64 * ref64).sum(1).max()
    return 64 * e * (nx + nr + 1e-30) * (1 + math.sqrt(d) / 4)


def check_selection(dist, mask, idx_k, idx_o, valid, ref_group, tol, *, largest, exact, what):
    """Checks fastmine's mined indices idx_k against the oracle (see module docstring).

    dist: oracle (B, M) selection values (float64); mask: candidates; ref_group: (M,) id of
    each reference row's bit pattern in the kernel's dtype (equal ids = identical rows);
    tol: (B, 1). All tensors on one device."""
    b, m = dist.shape
    rows = torch.arange(b, device=dist.device)
    k = idx_k.clamp(min=0)
    o = idx_o.clamp(min=0)
    best = dist[rows, o]
    check = valid & ~torch.isnan(best)
    in_range = (idx_k >= 0) & (idx_k < m)
    legal = in_range & mask[rows, k]
    _fail(
        check & ~legal,
        f"{what}: mined index is not a candidate (wrong label, excluded, or out of range)",
        idx_k,
        idx_o,
        best,
        dist,
    )
    t = torch.zeros_like(tol) if exact else tol
    near = mask & ((dist - best[:, None]).abs() <= t)
    first = near.int().argmax(1)  # lowest near-best index
    count = near.sum(1)
    chosen = dist[rows, k]
    if exact:
        _fail(check & (k != first), f"{what}: exact tie: the lowest index must win", idx_k, first, best, dist)
        return
    gap_ok = (chosen >= best - t[:, 0]) if largest else (chosen <= best + t[:, 0])
    _fail(check & ~gap_ok, f"{what}: chosen candidate is worse than the best beyond rounding", idx_k, idx_o, best, dist)
    _fail(
        check & (count == 1) & (k != o),
        f"{what}: the best candidate is clear, fastmine chose another",
        idx_k,
        idx_o,
        best,
        dist,
    )
    identical = ~(near & (ref_group[None, :] != ref_group[first][:, None])).any(1)
    _fail(
        check & (count > 1) & identical & (k != first),
        f"{what}: tie between bitwise-identical reference rows: the lowest index must win",
        idx_k,
        first,
        best,
        dist,
    )
    _fail(check & (count > 1) & ~near[rows, k], f"{what}: chosen candidate is not near-best", idx_k, idx_o, best, dist)


def _fail(bad, msg, idx_k, idx_ref, best, dist):
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        k = int(idx_k[i])
        kv = dist[i, k].item() if 0 <= k < dist.shape[1] else float("nan")
        raise AssertionError(
            f"{msg}: {int(bad.sum())} anchors, first {i}: fastmine chose {k} (value {kv!r}), "
            f"expected {int(idx_ref[i])} (best value {best[i].item()!r})"
        )


def row_groups(rows: torch.Tensor) -> torch.Tensor:
    """(M,) ids, equal exactly for bitwise-identical rows."""
    if rows.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=rows.device)
    iv = {2: torch.int16, 4: torch.int32, 8: torch.int64}[rows.element_size()]
    bits = rows.contiguous().view(iv)
    return torch.unique(bits, dim=0, return_inverse=True)[1]


def hinge_ambiguous(per_z: torch.Tensor, valid, tol: float) -> bool:
    """True when some valid anchor's z sits within tol of the hinge's kink (but not at 0 in
    exact arithmetic): its gradient may legitimately be 0 in one precision and 1 in another."""
    z = per_z[valid]
    return bool(((z.abs() < tol) & (z != 0)).any())


def gradient_scale(c64, info_o, per_o, metric, reduction) -> float:
    """Size of one anchor's gradient contribution: the absolute floor for gradient entries
    that cancel to ~0 (rounding there is relative to the terms, not to the sum)."""
    rows = c64.x if c64.ref is None else torch.cat([c64.x, c64.ref])
    norms = rows.norm(dim=1)
    if metric == "euclidean":
        g = 1.0
    elif metric == "sqeuclidean":
        g = 4.0 * float(norms.max()) + 1e-30
    else:
        g = 2.0 / max(float(norms.min()), 1e-3)
    n_valid = max(int(info_o.valid.sum()), 1)
    if reduction == "mean":
        w = 1.0 / n_valid
    elif reduction == "mean_nonzero":
        w = 1.0 / max(int((per_o > 0).sum()), 1)
    else:
        w = 1.5
    return g * w


def check_batch_hard(
    case,
    *,
    dtype=None,
    device="cpu",
    margin=0.3,
    metric="euclidean",
    soft=False,
    reduction="mean",
    rtol=None,
    check_grad=True,
    check_indices=True,
    oracle_device=None,
    sel_eps=None,
):
    """fastmine on ``case`` (in dtype, on device) against the float64 oracle (run on
    oracle_device, default: the same device). Returns (fastmine's loss, info)."""
    dtype = dtype or case.x.dtype
    rtol = rtol if rtol is not None else RTOL[dtype]
    od = torch.device(oracle_device or device)
    kw = dict(margin=margin, metric=metric, soft=soft, reduction=reduction)
    loss_k, info_k, gx_k, gr_k = run_fastmine(case, dtype=dtype, device=device, **kw)
    info_k = type(info_k)(*(t.to(od) for t in info_k))

    # Oracle on the very values the kernel saw (rounded to dtype), in float64.
    ck = case.to(dtype=dtype)
    c64 = ck.to(device=od, dtype=torch.float64)
    loss_o, info_o = R.batch_hard_triplet_loss(c64.x, c64.labels, return_info=True, **c64.kwargs(), **kw)

    b = case.x.shape[0]
    exp_loss_dtype = loss_dtype(dtype)
    assert loss_k.dtype == exp_loss_dtype, f"loss dtype {loss_k.dtype}, expected {exp_loss_dtype}"
    assert loss_k.device.type == torch.device(device).type, f"loss on {loss_k.device}"
    assert loss_k.shape == ((b,) if reduction == "none" else ()), f"loss shape {tuple(loss_k.shape)}"
    assert gx_k is not None and gx_k.dtype == dtype and gx_k.shape == case.x.shape, (
        f"grad embeddings: dtype {gx_k.dtype if gx_k is not None else None}, expected {dtype}"
    )

    # Info: structure and exact fields.
    assert torch.equal(info_k.valid, info_o.valid), "valid mask differs from the oracle"
    assert int(info_k.num_valid) == int(info_o.num_valid)
    assert info_k.pos_idx.dtype == torch.int64 and info_k.neg_idx.dtype == torch.int64
    inval = ~info_o.valid
    assert bool((info_k.pos_idx[inval] == -1).all()), "pos_idx must be -1 for invalid anchors"
    assert bool((info_k.neg_idx[inval] == -1).all()), "neg_idx must be -1 for invalid anchors"
    assert bool((info_k.pos_dist[inval] == 0).all()), "pos_dist must be 0 for invalid anchors"
    assert bool((info_k.neg_dist[inval] == 0).all()), "neg_dist must be 0 for invalid anchors"
    for f in ("pos_dist", "neg_dist"):
        assert not getattr(info_k, f).requires_grad, f"info.{f} must be detached"

    # Mined indices.
    ref64 = c64.x if c64.ref is None else c64.ref
    ref_rows = (ck.x if ck.ref is None else ck.ref).to(od)
    if check_indices:
        dist = _selection_domain(R.pairwise_distance(c64.x, ref64, metric=metric), metric)
        pos_mask, neg_mask = R.batch_hard_masks(c64.labels, c64.ref_labels, c64.self_offset)
        tol = selection_tolerance(c64.x, ref64, metric, dtype, sel_eps)
        exact = case.exact and metric != "cosine" and dtype not in HALF and sel_eps is None
        groups = row_groups(ref_rows)
        check_selection(
            dist,
            pos_mask,
            info_k.pos_idx,
            info_o.pos_idx,
            info_o.valid,
            groups,
            tol,
            largest=True,
            exact=exact,
            what="pos_idx",
        )
        check_selection(
            dist,
            neg_mask,
            info_k.neg_idx,
            info_o.neg_idx,
            info_o.valid,
            groups,
            tol,
            largest=False,
            exact=exact,
            what="neg_idx",
        )
        del dist

    # Loss and gradients against the oracle evaluated at fastmine's own (legal) choices.
    _, per_o, pd_o, nd_o, _, _ = run_oracle_with_indices(
        case, info_k.pos_idx, info_k.neg_idx, dtype=dtype, oracle_device=od, **kw
    )
    valid = info_o.valid
    z = pd_o - nd_o + margin
    if soft:
        # softplus(z) underflows near the dtype's smallest normal: whether such a term counts
        # as "non-zero" (num_active, mean_nonzero's denominator) is a rounding accident.
        uncertain = valid & (z < math.log(torch.finfo(exp_loss_dtype).tiny) + 5)
    else:
        # z within rounding of the hinge's kink: l and dl/dz may be 0 or not in either precision
        kink_tol = 10 * min(rtol, 1e-4) * (pd_o.abs().max().item() + nd_o.abs().max().item() + 1)
        uncertain = valid & (z.abs() < kink_tol) & (z != 0)
    ambiguous = (not soft) and bool(uncertain.any())
    certain = int((valid & ~uncertain & (per_o > 0)).sum())
    k_active = int(info_k.num_active)
    assert certain <= k_active <= certain + int(uncertain.sum()), (
        f"num_active {k_active}, the oracle says {certain} (+ up to {int(uncertain.sum())} within rounding)"
    )
    frac = k_active / max(int(info_o.num_valid), 1)
    assert abs(float(info_k.active_fraction) - frac) < 1e-6, "active_fraction"

    lo, per_o, pd_o, nd_o, gx_o, gr_o = run_oracle_with_indices(
        case, info_k.pos_idx, info_k.neg_idx, dtype=dtype, oracle_device=od, nonzero_count=k_active, **kw
    )
    # The selected pairs' distances, computed precisely (cosine's 1 - cos is accurate to ~eps
    # absolutely, not relatively, near 0).
    dfloor = 1.0 if metric == "cosine" else None
    assert_close_rel(info_k.pos_dist, pd_o, rtol, floor=dfloor, what="pos_dist")
    assert_close_rel(info_k.neg_dist, nd_o, rtol, floor=dfloor, what="neg_dist")
    assert_close_rel(
        loss_k, lo, rtol, floor=max(1.0, float(lo.abs().max())), what="loss vs oracle at fastmine's indices"
    )
    # Against the oracle's own choices: where fastmine took a different candidate within
    # rounding of the best (docs/semantics.md allows it; check_selection bounded it), the loss may differ
    # by that rounding, e.g. sqrt(eps * |u|^2) for a euclidean distance near 0.
    same = (
        torch.isclose(pd_o, info_o.pos_dist, rtol=1e-12, atol=1e-300)
        & torch.isclose(nd_o, info_o.neg_dist, rtol=1e-12, atol=1e-300)
    ) | ~valid
    if bool(same.all()):
        if reduction == "mean_nonzero":
            per_full = R.batch_hard_triplet_loss(c64.x, c64.labels, **c64.kwargs(), **{**kw, "reduction": "none"})
            loss_o = per_full.sum() / max(k_active, 1)
        assert_close_rel(loss_k, loss_o, rtol, floor=max(1.0, float(loss_o.abs().max())), what="loss vs oracle")
    if check_grad and not ambiguous:
        floor = gradient_scale(c64, info_o, per_o, metric, reduction)
        assert_close_rel(gx_k, gx_o, rtol, floor=max(floor, float(gx_o.abs().max())), what="grad embeddings")
        if gr_o is not None:
            assert gr_k is not None and gr_k.dtype == dtype
            assert_close_rel(gr_k, gr_o, rtol, floor=max(floor, float(gr_o.abs().max())), what="grad ref_embeddings")
    return loss_k, info_k


def well_separated(
    x, labels, *, metric="euclidean", margin=0.3, ref=None, ref_labels=None, self_offset=None, gap=1e-3
) -> bool:
    """True when every valid anchor's hardest positive/negative beats the runner-up by > gap
    and z = d+ - d- + margin is > gap away from 0: gradcheck's perturbations cannot flip a
    choice or cross the hinge's kink."""
    r = x if ref is None else ref
    d = R.pairwise_distance(x.detach().double(), r.detach().double(), metric=metric)
    pos, neg = R.batch_hard_masks(labels, ref_labels, self_offset)
    for i in range(x.shape[0]):
        p, n = d[i][pos[i]], d[i][neg[i]]
        if p.numel() == 0 or n.numel() == 0:
            continue
        ps, ns = p.sort(descending=True).values, n.sort().values
        if ps.numel() > 1 and ps[0] - ps[1] <= gap:
            return False
        if ns.numel() > 1 and ns[1] - ns[0] <= gap:
            return False
        if abs(float(ps[0] - ns[0]) + margin) <= gap:
            return False
    return True


# ---- determinism ----------------------------------------------------------------------------


def hub_batch(b=600, d=16, classes=16, dtype=torch.float64, device="cpu"):
    """Clusters on a sphere of radius 10 plus one singleton point at the origin: the origin is
    every anchor's hardest negative, so one reference row receives B gradient contributions."""
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(d, dtype=torch.float64)[:classes]  # orthogonal: clusters 14.1 apart
    lab = torch.arange(b - 1) % classes
    x = 10 * centers[lab] + 0.3 * torch.randn(b - 1, d, generator=g, dtype=torch.float64)
    x = torch.cat([x, torch.zeros(1, d, dtype=torch.float64)])
    lab = torch.cat([lab, torch.tensor([classes])])
    return x.to(dtype=dtype, device=device), lab.to(device)


def run_twice_inputs(x, lab, **kw):
    """(loss, grads..., info...) of one fresh batch-hard call: compare two of these bitwise."""
    xr = x.clone().requires_grad_(True)
    ref = kw.pop("ref_embeddings", None)
    extra = {}
    if ref is not None:
        ref = ref.clone().requires_grad_(True)
        extra["ref_embeddings"] = ref
    loss, info = fastmine.batch_hard_triplet_loss(xr, lab, return_info=True, **kw, **extra)
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype, device=loss.device).reshape(loss.shape)
    grads = torch.autograd.grad((loss * w).sum(), [xr] + ([ref] if ref is not None else []))
    return (loss.detach(), *grads, *info)


def assert_bitwise(a, b):
    """Tensors pairwise identical: floats bit for bit (NaN payloads and -0.0 included)."""
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape and u.device == v.device, f"output {i}"
        if u.is_floating_point():
            iv = {2: torch.int16, 4: torch.int32, 8: torch.int64}[u.element_size()]
            u, v = u.contiguous().view(iv), v.contiguous().view(iv)
        assert torch.equal(u, v), f"output {i} differs between runs"


# ---- all-pairs losses: batch-all triplet and contrastive ------------------------------------
#
# Both are sums over many terms, each a hinge (or softplus) of an expression in distances.
# fastmine's distances differ from the oracle's by rounding, so a term whose argument lies
# within rounding of the hinge's kink may be active in one and inactive in the other. Such
# terms form the "band": they may shift a non-zero count (num_active, mean_positive and
# mean_nonzero denominators) within [certain, certain + band], and each may add or drop its
# gradient contribution (the hinge's derivative jumps there). The checks below allow exactly
# that: the kernel's counts must lie in that range, the oracle is evaluated with the
# kernel's denominators, and the gradient may differ from the oracle's by at most the sum of
# the band terms' |contributions|, computed explicitly per term.

LOG_TINY64 = math.log(torch.finfo(torch.float64).tiny)

# The absolute floors below (loss "magnitude", gradient row floors) add up the sizes of the
# pieces that a kernel combines (distances, GEMM terms) and that cancel in the result:
# rounding is ~eps relative to them. They enter at FLOOR_FACTOR * rtol, which still leaves
# >= 10x room over float32 rounding (measured: error / floor <= 2e-7) while a relative error
# of rtol in the result itself is caught.
FLOOR_FACTOR = 0.1


def kink_tolerance(rtol: float, scale: float) -> float:
    """Half-width of the band around a hinge's kink, for terms of size ~scale."""
    return 10 * min(rtol, 1e-4) * (scale + 1.0)


def _leaf(t):
    return None if t is None else t.detach().clone().requires_grad_(True)


def run_all_pairs(fn, case, *, dtype=None, device="cpu", return_info=False, **kw):
    """fastmine's (loss, info, grad_x, grad_ref) for fn (batch_all_triplet_loss or
    contrastive_loss) on case converted to dtype/device; info is None unless return_info."""
    c = case.to(device=device, dtype=dtype or case.x.dtype)
    x, ref = _leaf(c.x), _leaf(c.ref)
    extra = c.kwargs()
    if ref is not None:
        extra["ref_embeddings"] = ref
    if return_info:
        extra["return_info"] = True
    out = fn(x, c.labels, **extra, **kw)
    loss, info = out if return_info else (out, None)
    inputs = [x] if ref is None else [x, ref]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
    gr = None
    if ref is not None:
        gr = grads[1] if grads[1] is not None else torch.zeros_like(ref)
    return loss.detach(), info, gx, gr


def pair_gradient_floor(x64, ref64, has_ref, weight, dist, metric):
    """Per-row absolute floors ((B, 1), (M, 1) or None) for gradient entries: the sum over a
    row's pairs of |dL/dd_ij| times the size of the pieces a kernel combines into dd_ij/dx
    (they cancel where the gradient is ~0, and rounding is relative to them, not to the sum).

    weight: (B, M) |dL/dd_ij|; dist: (B, M) distances."""
    nx = x64.norm(dim=1)[:, None]
    nr = ref64.norm(dim=1)[None, :]
    if metric == "euclidean":
        # GEMM form (x_i - r_j) / d; near-duplicates (d^2 < 1e-2 (|x|^2 + |r|^2)) are exact
        piece = 1 + torch.where(dist > 0, (nx + nr) / dist.clamp(min=1e-300), torch.zeros_like(dist)).clamp(max=15)
        gx = gr = piece
    elif metric == "sqeuclidean":
        gx = gr = 2 * (nx + nr)
    else:
        gx = 2 / nx.clamp(min=R.COSINE_EPS) * torch.ones_like(dist)
        gr = 2 / nr.clamp(min=R.COSINE_EPS) * torch.ones_like(dist)
    w = weight.abs()
    w = torch.where(torch.isfinite(w), w, torch.zeros_like(w))
    fx = (w * gx).sum(1, keepdim=True)
    fr = (w * gr).sum(0)[:, None]
    if not has_ref:
        return fx + fr, None
    return fx, fr


def band_gradient_bound(x64, ref64, has_ref, i_idx, j_idx, coef, metric):
    """Elementwise sum over the pairs (i_idx[k], j_idx[k]) of |coef[k] * grad d(x_i, r_j)|,
    as ((B, D), (M, D) or None): the most those pairs' gradient terms can add or drop."""
    bx = torch.zeros_like(x64)
    br = torch.zeros_like(ref64)
    if i_idx.numel():
        u = x64[i_idx].detach().clone().requires_grad_(True)
        v = ref64[j_idx].detach().clone().requires_grad_(True)
        d = R.pairwise_distance_rows(u, v, metric)
        gu, gv = torch.autograd.grad(d.sum(), [u, v])
        c = coef.abs().to(gu.dtype)[:, None]
        bx.index_add_(0, i_idx, (c * gu).abs())
        br.index_add_(0, j_idx, (c * gv).abs())
    if not has_ref:
        return bx + br, None
    return bx, br


def _check_common_outputs(loss_k, gx_k, gr_k, case, dtype, device):
    exp = loss_dtype(dtype)
    assert loss_k.dtype == exp, f"loss dtype {loss_k.dtype}, expected {exp}"
    assert loss_k.shape == (), f"loss shape {tuple(loss_k.shape)}"
    assert loss_k.device.type == torch.device(device).type, f"loss on {loss_k.device}"
    assert gx_k.dtype == dtype and gx_k.shape == case.x.shape, f"grad embeddings dtype {gx_k.dtype}"
    if case.ref is not None:
        assert gr_k is not None and gr_k.dtype == dtype and gr_k.shape == case.ref.shape


def _compare_grads(gx_k, gr_k, gx_o, gr_o, bx, br, rtol, fx, fr, what):
    """|g_k - g_o| <= rtol (|g_o| + max(max |g_o|, FLOOR_FACTOR * row floor)) + band bound,
    elementwise: the normwise floor of the batch-hard checks, or the row's own floor where the
    gradient cancels to ~0 (e.g. cosine in D = 1)."""
    for gk, go, bound, fl, name in ((gx_k, gx_o, bx, fx, "embeddings"), (gr_k, gr_o, br, fr, "ref_embeddings")):
        if go is None:
            continue
        gk64 = gk.detach().to(torch.float64).to(go.device)
        assert torch.equal(torch.isnan(gk64), torch.isnan(go)), f"{what}: grad {name}: NaN pattern"
        err = (gk64 - go).abs()
        # + the spacing of the gradient dtype's subnormals (float16: 6e-8), where it rounds
        fi = torch.finfo(gk.dtype)
        normwise = float(go[torch.isfinite(go)].abs().max()) if bool(torch.isfinite(go).any()) else 0.0
        floor = torch.clamp(FLOOR_FACTOR * fl, min=normwise)
        allowed = rtol * (go.abs() + floor + 1e-12) + bound + fi.smallest_normal * fi.eps
        bad = err > allowed
        if bad.any():
            k = int(torch.argmax(err - allowed))
            raise AssertionError(
                f"{what}: grad {name}: {int(bad.sum())}/{go.numel()} entries off (rtol={rtol}); "
                f"worst at flat index {k}: actual={gk64.flatten()[k].item()!r} "
                f"expected={go.flatten()[k].item()!r} floor={floor.flatten()[k // go.shape[1]].item():.3g} "
                f"band bound={bound.flatten()[k].item():.3g}"
            )


def _check_loss(loss_k, loss_o, rtol, magnitude, slack, what):
    lk, lo = float(loss_k), float(loss_o.detach())
    if math.isnan(lo):
        assert math.isnan(lk), f"{what}: expected NaN, got {lk}"
        return
    bound = rtol * (abs(lo) + FLOOR_FACTOR * magnitude + 1e-12) + slack
    assert abs(lk - lo) <= bound, (
        f"{what}: fastmine {lk!r}, oracle {lo!r}, |err| {abs(lk - lo):.3g} > {bound:.3g} "
        f"(rtol {rtol}, magnitude {magnitude:.3g}, band slack {slack:.3g})"
    )


def check_batch_all(
    case,
    *,
    dtype=None,
    device="cpu",
    margin=0.3,
    metric="euclidean",
    soft=False,
    reduction="mean_positive",
    rtol=None,
    check_grad=True,
    oracle_device=None,
):
    """fastmine.batch_all_triplet_loss on case (in dtype, on device) against the float64 oracle
    (on oracle_device, default the same device): info counts, loss and gradients. Returns
    (loss, info)."""
    dtype = dtype or case.x.dtype
    rtol = rtol if rtol is not None else RTOL[dtype]
    od = torch.device(oracle_device or device)
    kw = dict(margin=margin, metric=metric, soft=soft)
    loss_k, info_k, gx_k, gr_k = run_all_pairs(
        fastmine.batch_all_triplet_loss, case, dtype=dtype, device=device, return_info=True, reduction=reduction, **kw
    )
    _check_common_outputs(loss_k, gx_k, gr_k, case, dtype, device)
    assert isinstance(info_k, fastmine.BatchAllInfo)
    b = case.x.shape[0]
    for name in ("valid_per_anchor", "active_per_anchor", "num_valid", "num_active"):
        t = getattr(info_k, name)
        assert t.dtype == torch.int64, f"info.{name} dtype {t.dtype}"
        assert t.shape == ((b,) if name.endswith("anchor") else ()), f"info.{name} shape {tuple(t.shape)}"
    assert info_k.active_fraction.is_floating_point() and info_k.active_fraction.dim() == 0
    assert not any(t.requires_grad for t in info_k)
    info_k = type(info_k)(*(t.to(od) for t in info_k))

    c64 = case.to(dtype=dtype).to(device=od, dtype=torch.float64)
    has_ref = c64.ref is not None
    ref64 = c64.ref if has_ref else c64.x
    with torch.no_grad():
        dist = R.pairwise_distance(c64.x, ref64, metric=metric)
        pos, neg = R.batch_hard_masks(c64.labels, c64.ref_labels, c64.self_offset)
    valid_o = pos.sum(1) * neg.sum(1)
    assert torch.equal(info_k.valid_per_anchor, valid_o), "valid_per_anchor differs from the oracle"
    assert int(info_k.num_valid) == int(valid_o.sum()) and int(info_k.num_active) == int(info_k.active_per_anchor.sum())
    frac = int(info_k.num_active) / max(int(info_k.num_valid), 1)
    assert abs(float(info_k.active_fraction) - frac) <= 1e-6 * max(frac, 1e-30) + 1e-12, "active_fraction"

    # The band, the certain actives and the loss's natural size, anchor chunk by anchor chunk.
    finite_d = dist[torch.isfinite(dist)]
    tol = kink_tolerance(rtol, float(finite_d.abs().max()) if finite_d.numel() else 0.0)
    cos_floor = 1.0 if metric == "cosine" else 0.0
    certain = torch.zeros(b, dtype=torch.int64, device=od)
    band_n = torch.zeros(b, dtype=torch.int64, device=od)
    band_a, band_p, band_n_idx = [], [], []
    magnitude = 0.0
    m = dist.shape[1]
    pair_w = torch.zeros_like(dist)
    step = max(1, (1 << 22) // max(1, m * m))
    with torch.no_grad():
        for i0 in range(0, b, step):
            d = dist[i0 : i0 + step]
            valid = pos[i0 : i0 + step, :, None] & neg[i0 : i0 + step, None, :]
            z = d[:, :, None] - d[:, None, :] + margin
            size = d[:, :, None].abs() + d[:, None, :].abs() + abs(margin) + cos_floor
            if soft:
                band = valid & (z < LOG_TINY64 + 5)  # softplus underflow: count only
                sure = valid & ~band
                weight = torch.sigmoid(z)
                # the gradient's weight sigmoid(z) moves by sigmoid'(z) dz, dz ~ eps * size
                gweight = weight + weight * (1 - weight) * size
            else:
                band = valid & (z.abs() <= tol)
                sure = valid & (z > tol)
                weight = (z > -tol).to(z.dtype)
                gweight = weight
                a, p, n = torch.nonzero(band, as_tuple=True)
                band_a.append(a + i0)
                band_p.append(p)
                band_n_idx.append(n)
            weight = torch.where(valid, weight, torch.zeros_like(z))
            gweight = torch.where(valid, gweight, torch.zeros_like(z))
            magnitude += float((weight * size).sum())
            # |dL/dd| per pair (times denom): a positive p gets the weight of each of its
            # negatives, a negative n that of each of its positives
            pair_w[i0 : i0 + step] = gweight.sum(2) + gweight.sum(1)
            certain[i0 : i0 + step] = sure.sum((1, 2))
            band_n[i0 : i0 + step] = band.sum((1, 2))
    finite_rows = torch.isfinite(c64.x).all(1)
    act = info_k.active_per_anchor
    bad = finite_rows & ((act < certain) | (act > certain + band_n))
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise AssertionError(
            f"active_per_anchor[{i}] = {int(act[i])}, the oracle says {int(certain[i])}"
            f" (+ up to {int(band_n[i])} within rounding of the kink)"
        )

    # Oracle loss and gradients with the kernel's denominator (validated just above).
    if reduction == "mean_positive":
        denom = max(int(info_k.num_active), 1)
    elif reduction == "mean":
        denom = max(int(valid_o.sum()), 1)
    else:
        denom = 1
    x, ref = _leaf(c64.x), _leaf(c64.ref)
    total = R.batch_all_triplet_loss(
        x, c64.labels, reduction="sum", ref_embeddings=ref, ref_labels=c64.ref_labels, self_offset=c64.self_offset, **kw
    )
    loss_o = total / denom
    if reduction != "mean_positive":
        full = R.batch_all_triplet_loss(c64.x, c64.labels, reduction=reduction, **c64.kwargs(), **kw)
        assert_close_rel(loss_o.detach(), full, 1e-12, floor=1e-300, what="oracle reductions")
    n_band = int(band_n.sum())
    _check_loss(loss_k, loss_o, rtol, magnitude / denom, n_band * tol / denom, "batch-all loss")
    if not check_grad:
        return loss_k, info_k
    inputs = [x] if ref is None else [x, ref]
    grads = torch.autograd.grad(loss_o, inputs, allow_unused=True)
    gx_o = grads[0] if grads[0] is not None else torch.zeros_like(x)
    gr_o = None
    if ref is not None:
        gr_o = grads[1] if grads[1] is not None else torch.zeros_like(ref)
    bx, br = torch.zeros_like(c64.x), (None if ref is None else torch.zeros_like(ref64))
    if band_a:
        a, p, n = torch.cat(band_a), torch.cat(band_p), torch.cat(band_n_idx)
        if a.numel():
            w = torch.full((a.numel(),), 1.0 / denom, dtype=torch.float64, device=od)
            bx1, br1 = band_gradient_bound(c64.x, ref64, has_ref, a, p, w, metric)
            bx2, br2 = band_gradient_bound(c64.x, ref64, has_ref, a, n, w, metric)
            bx = bx1 + bx2
            br = None if br1 is None else br1 + br2
    fx, fr = pair_gradient_floor(c64.x, ref64, has_ref, pair_w / denom, dist, metric)
    _compare_grads(gx_k, gr_k, gx_o, gr_o, bx, br, rtol, fx, fr, "batch-all")
    return loss_k, info_k


def contrastive_op_counts(case, *, dtype, device, pos_margin, neg_margin, power, metric):
    """(pos_nonzero, neg_nonzero) as fastmine's op counted them (csrc/ops.cpp's layout)."""
    c = case.to(device=device, dtype=dtype)
    x = c.x.float() if (c.x.device.type == "cpu" and dtype in HALF) else c.x
    if c.ref is None:
        ref, rl, triangle, has_excl, off = x, c.labels, True, False, 0
    else:
        ref = c.ref.float() if (c.ref.device.type == "cpu" and dtype in HALF) else c.ref
        rl, triangle = c.ref_labels, False
        has_excl, off = c.self_offset is not None, c.self_offset or 0
    mid = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}[metric]
    out = torch.ops.fastmine.contrastive(
        x, c.labels, ref, rl, float(pos_margin), float(neg_margin), float(power), mid, triangle, has_excl, off
    )
    return int(out[1].sum()), int(out[4].sum())


def check_contrastive(
    case,
    *,
    dtype=None,
    device="cpu",
    pos_margin=0.0,
    neg_margin=1.0,
    power=2,
    metric="euclidean",
    reduction="mean",
    rtol=None,
    check_grad=True,
    oracle_device=None,
):
    """fastmine.contrastive_loss on case (in dtype, on device) against the float64 oracle:
    loss and gradients, with the band rule of this section. Returns the loss."""
    dtype = dtype or case.x.dtype
    rtol = rtol if rtol is not None else RTOL[dtype]
    od = torch.device(oracle_device or device)
    kw = dict(pos_margin=pos_margin, neg_margin=neg_margin, power=power, metric=metric)
    loss_k, _, gx_k, gr_k = run_all_pairs(
        fastmine.contrastive_loss, case, dtype=dtype, device=device, reduction=reduction, **kw
    )
    _check_common_outputs(loss_k, gx_k, gr_k, case, dtype, device)

    c64 = case.to(dtype=dtype).to(device=od, dtype=torch.float64)
    has_ref = c64.ref is not None
    ref64 = c64.ref if has_ref else c64.x
    x, ref = _leaf(c64.x), _leaf(c64.ref)
    term, allowed, same, own_finite = R.contrastive_terms(
        x, c64.labels, ref_embeddings=ref, ref_labels=c64.ref_labels, self_offset=c64.self_offset, **kw
    )
    with torch.no_grad():
        dist = R.pairwise_distance(c64.x, ref64, metric=metric)
        v = torch.where(same, dist - pos_margin, neg_margin - dist)
        finite_d = dist[allowed & torch.isfinite(dist)]
        tol = kink_tolerance(
            rtol, (float(finite_d.abs().max()) if finite_d.numel() else 0.0) + abs(pos_margin) + abs(neg_margin)
        )
        band = allowed & (v.abs() <= tol)
        sure = allowed & (v > tol)
        cert_p, cert_n = int((sure & same).sum()), int((sure & ~same).sum())
        band_p, band_n = int((band & same).sum()), int((band & ~same).sum())
    zero = torch.zeros_like(term)
    # the oracle's rule: a non-finite anchor's contribution is NaN
    pos_sum = torch.where(own_finite, torch.where(same, term, zero).sum(1), torch.nan).sum()
    neg_sum = torch.where(own_finite, torch.where(same, zero, term).sum(1), torch.nan).sum()
    if reduction == "mean_nonzero":
        if band_p + band_n:
            nz_p, nz_n = contrastive_op_counts(case, dtype=dtype, device=device, **kw)
            assert cert_p <= nz_p <= cert_p + band_p, f"positive non-zero count {nz_p}, oracle {cert_p}+{band_p}"
            assert cert_n <= nz_n <= cert_n + band_n, f"negative non-zero count {nz_n}, oracle {cert_n}+{band_n}"
        else:
            nz_p, nz_n = cert_p, cert_n
        w_p, w_n = 1.0 / max(nz_p, 1), 1.0 / max(nz_n, 1)
    elif reduction == "mean":
        w_p = w_n = 1.0 / max(int(allowed.sum()), 1)
    else:
        w_p = w_n = 1.0
    loss_o = pos_sum * w_p + neg_sum * w_n
    if not (band_p + band_n) or reduction != "mean_nonzero":
        full = R.contrastive_loss(c64.x, c64.labels, reduction=reduction, **c64.kwargs(), **kw)
        assert_close_rel(loss_o.detach(), full, 1e-12, floor=1e-300, what="oracle reductions")
    with torch.no_grad():
        wpair = torch.where(same, torch.full_like(v, w_p), torch.full_like(v, w_n))
        vp = v.clamp(min=0)
        slope = power * torch.where(vp > 0, vp, torch.ones_like(vp)) ** (power - 1)
        slope = torch.where(vp > 0, slope, torch.full_like(vp, float(power == 1)))
        size = dist.abs() + (abs(pos_margin) + abs(neg_margin)) + (1.0 if metric == "cosine" else 0.0)
        active = allowed & (v > -tol)
        magnitude = float(torch.where(active, wpair * (term.detach() + slope * size), zero.detach()).sum())
        slack = float(torch.where(band, wpair, zero.detach()).sum()) * max(tol, tol**power)
    _check_loss(loss_k, loss_o, rtol, magnitude, slack, "contrastive loss")
    if not check_grad:
        return loss_k
    inputs = [x] if ref is None else [x, ref]
    grads = torch.autograd.grad(loss_o, inputs, allow_unused=True)
    gx_o = grads[0] if grads[0] is not None else torch.zeros_like(x)
    gr_o = None
    if ref is not None:
        gr_o = grads[1] if grads[1] is not None else torch.zeros_like(ref)
    i_idx, j_idx = torch.nonzero(band, as_tuple=True)
    # d term / d d near the kink: power * |v|^(power - 1) (1 for power 1: the jump)
    coef = wpair[i_idx, j_idx] * power * torch.clamp(v[i_idx, j_idx].abs(), min=tol) ** (power - 1)
    bx, br = band_gradient_bound(c64.x, ref64, has_ref, i_idx, j_idx, coef, metric)
    with torch.no_grad():
        # |dL/dd| = w p v^(p-1), plus how far rounding of d (~eps (|d| + 1)) moves it:
        # w |p (p-1)| v^(p-2) (|d| + 1) (ill-conditioned near the kink for p < 2)
        vt = v.clamp(min=tol)
        slope1 = power * vt ** (power - 1)
        slope2 = abs(power * (power - 1)) * vt ** (power - 2) * (dist.abs() + 1)
        pw = torch.where(allowed & (v > -tol), wpair * (slope1 + slope2), torch.zeros_like(v))
    fx, fr = pair_gradient_floor(c64.x, ref64, has_ref, pw, dist, metric)
    _compare_grads(gx_k, gr_k, gx_o, gr_o, bx, br, rtol, fx, fr, "contrastive")
    return loss_k
