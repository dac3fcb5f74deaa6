"""Comparison helpers for the miners: fastmine's (a, p, n) against the float64 oracle.

Mined sets may differ from the oracle's only where rounding decides: a triplet whose margin
t = d(a, n) - d(a, p) lies within `tol` of a threshold of its type (0 or the margin), or a
batch-hard candidate within `tol` of the best. On exact data (integer grids, float64,
non-cosine: every distance and every t exact) nothing may differ.
"""

from __future__ import annotations

import torch

from fastmine import reference as R

TRIPLET_TYPES = R.TRIPLET_TYPES


def tolerance(dtype, dist: torch.Tensor, exact: bool) -> float:
    """How far from a threshold rounding may move t (or a candidate's distance)."""
    if exact:
        return 0.0
    finite = dist[torch.isfinite(dist)]
    scale = 1.0 + (float(finite.abs().max()) if finite.numel() else 0.0)
    return 1e3 * torch.finfo(dtype).eps * scale


def flat(a, p, n, m):
    return (a.long() * m + p.long()) * m + n.long()


def check_triplets(case, mined, *, margin, type, metric, exact=None):
    """fastmine's mine_triplets output `mined` against the oracle on `case` (a Case)."""
    a, p, n = mined
    for t in mined:
        assert t.dtype == torch.int64 and t.dim() == 1 and t.shape == a.shape
    ref = case.x if case.ref is None else case.ref
    m = ref.shape[0]
    x64 = case.x.double()
    kw = case.kwargs()
    if case.ref is not None:
        kw["ref_embeddings"] = case.ref.double()
    t, valid = R.triplet_margins(x64, case.labels, metric=metric, **kw)
    dist = R.pairwise_distance(x64, ref.double(), metric=metric)
    exact = case.exact and metric != "cosine" and case.x.dtype == torch.float64 if exact is None else exact
    tol = tolerance(case.x.dtype, dist, exact)
    # PML's order: row-major over (a, p, n), strictly increasing.
    f = flat(a.cpu(), p.cpu(), n.cpu(), m)
    assert torch.all(f[1:] > f[:-1]), "triplets are not in row-major (a, p, n) order"
    got = torch.zeros(t.numel(), dtype=torch.bool)
    got[f] = True
    got = got.view(t.shape)
    assert not (got & ~valid).any(), "a mined triplet is not a valid (anchor, positive, negative)"
    want = valid & R.triplet_type_mask(t, margin, type)
    diff = got ^ want
    if diff.any():
        near = torch.zeros_like(diff)
        for thr in (0.0, margin):
            if tol > 0:  # exact data: even t == threshold must be decided exactly
                near |= (t - thr).abs() <= tol
        bad = diff & ~near
        assert not bad.any(), (
            f"{int(bad.sum())} triplets differ beyond rounding (tol {tol:.3g}); first "
            f"{bad.nonzero()[:5].tolist()}, t = {t[bad][:5].tolist()}, mined = {got[bad][:5].tolist()}"
        )


def check_batch_hard(case, mined, *, metric):
    """fastmine's mine_batch_hard output against the oracle: anchors exactly; each pick a
    legal candidate within rounding of the best, and the oracle's pick where the gap is clear."""
    a, p, n = mined
    for t in mined:
        assert t.dtype == torch.int64 and t.dim() == 1 and t.shape == a.shape
    x64 = case.x.double()
    kw = case.kwargs()
    ref = case.x if case.ref is None else case.ref
    if case.ref is not None:
        kw["ref_embeddings"] = case.ref.double()
    ea, ep, en = R.mine_batch_hard(x64, case.labels, metric=metric, **kw)
    assert torch.equal(a.cpu(), ea), f"anchors differ: {a.tolist()} vs {ea.tolist()}"
    dist = R.pairwise_distance(x64, ref.double(), metric=metric)
    pos_mask, neg_mask = R.batch_hard_masks(case.labels, case.ref_labels, case.self_offset)
    exact = case.exact and metric != "cosine" and case.x.dtype == torch.float64
    tol = tolerance(case.x.dtype, dist, exact)
    p, n = p.cpu(), n.cpu()
    for k in range(a.numel()):
        i = int(a[k])
        for idx, want, mask, sign in ((p, ep, pos_mask, 1.0), (n, en, neg_mask, -1.0)):
            j, jo = int(idx[k]), int(want[k])
            assert mask[i, j], f"anchor {i}: {j} is not a legal candidate"
            di = dist[i]
            if torch.isnan(di[mask[i]]).any():
                assert j == jo, f"anchor {i}: NaN candidate {jo} not selected (got {j})"
                continue
            best = di[jo]
            assert sign * (best - di[j]) <= tol, f"anchor {i}: picked {j} at {di[j]} vs best {best}"
            # Indices must agree unless a different candidate is within rounding.
            rivals = mask[i] & ((di - best).abs() <= tol)
            rivals[jo] = False
            if exact or not rivals.any():  # exact data: exact ties go to the lowest index
                assert j == jo, f"anchor {i}: picked {j}, expected {jo} (clear gap or exact tie)"
