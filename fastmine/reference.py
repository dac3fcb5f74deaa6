"""Pure-PyTorch oracle: what every fastmine op computes, written the plain way.

Everything here follows docs/semantics.md literally. It materialises the full
B x M distance matrix from direct differences (never the expanded |x|^2 + |y|^2 - 2xy
form), is differentiable with autograd, runs on any device and in any floating dtype
(tests feed it float64). It is slow on purpose: the kernels are tested against it.

    >>> from fastmine import reference
    >>> loss = reference.batch_hard_triplet_loss(x.double(), labels)
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ._types import BatchAllInfo, BatchHardInfo

__all__ = [
    "METRICS",
    "REDUCTIONS_BATCH_HARD",
    "COSINE_EPS",
    "pairwise_distance",
    "batch_hard_masks",
    "batch_hard_select",
    "batch_hard_from_indices",
    "batch_hard_triplet_loss",
    "REDUCTIONS_BATCH_ALL",
    "batch_all_triplet_terms",
    "batch_all_triplet_loss",
    "REDUCTIONS_CONTRASTIVE",
    "hinge_pow",
    "contrastive_pair_mask",
    "contrastive_terms",
    "contrastive_loss",
]

METRICS = ("euclidean", "sqeuclidean", "cosine")
REDUCTIONS_BATCH_HARD = ("mean", "sum", "none", "mean_nonzero")
COSINE_EPS = 1e-8

# Rows of x per chunk when forming x[:, None, :] - y[None, :, :], to bound peak memory.
_CHUNK_ELEMS = 1 << 22


def _safe_sqrt(s: torch.Tensor) -> torch.Tensor:
    """sqrt(s) for s >= 0 whose gradient is 0 (not inf/NaN) where s == 0. NaN stays NaN."""
    zero = s == 0
    return torch.where(zero, torch.zeros_like(s), torch.sqrt(torch.where(zero, torch.ones_like(s), s)))


def _rows(x: torch.Tensor, m: int):
    """Row chunks of x so that a (chunk, m, D) temporary stays around _CHUNK_ELEMS."""
    step = max(1, _CHUNK_ELEMS // max(1, m * x.shape[1]))
    return [x[i : i + step] for i in range(0, x.shape[0], step)]


def _sq_diff(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, M) matrix of ||x_i - y_j||^2 from direct differences."""
    return torch.cat([((c[:, None, :] - y[None, :, :]) ** 2).sum(-1) for c in _rows(x, y.shape[0])], 0)


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, M) matrix of <x_i, y_j> as elementwise products summed (no GEMM)."""
    return torch.cat([(c[:, None, :] * y[None, :, :]).sum(-1) for c in _rows(x, y.shape[0])], 0)


def pairwise_distance(x: torch.Tensor, y: Optional[torch.Tensor] = None, *, metric: str = "euclidean") -> torch.Tensor:
    """(B, M) distances between the rows of x (B, D) and y (M, D); y=None means y = x.

    euclidean: ||u - v|| (gradient 0 where it is 0); sqeuclidean: ||u - v||^2;
    cosine: 1 - <u, v> / (max(||u||, 1e-8) * max(||v||, 1e-8)).
    """
    if y is None:
        y = x
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (B, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    if metric == "sqeuclidean":
        return _sq_diff(x, y)
    if metric == "euclidean":
        return _safe_sqrt(_sq_diff(x, y))
    if metric == "cosine":
        nx = _safe_sqrt((x * x).sum(-1)).clamp_min(COSINE_EPS)
        ny = _safe_sqrt((y * y).sum(-1)).clamp_min(COSINE_EPS)
        return 1 - _dot(x, y) / (nx[:, None] * ny[None, :])
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def batch_hard_masks(
    labels: torch.Tensor,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(positive mask, negative mask), both (B, M) bool, per docs/semantics.md, "Notation".

    Without ref_labels the reference set is the batch and (i, i) is not a positive; with
    ref_labels every pair counts except (i, self_offset + i) when self_offset is given.
    """
    has_ref = ref_labels is not None
    if ref_labels is None:
        ref_labels = labels
    same = labels[:, None] == ref_labels[None, :]
    b, m = same.shape
    excluded = torch.zeros_like(same)
    rows = torch.arange(b, device=labels.device)
    if not has_ref:
        excluded[rows, rows] = True
    elif self_offset is not None:
        excluded[rows, rows + self_offset] = True
    return same & ~excluded, ~same


def _arg_extreme(d: torch.Tensor, mask: torch.Tensor, largest: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per row: the index of the largest (smallest) d over mask, lowest index on exact ties.

    A NaN candidate wins over every number (its lowest index), so a NaN among an anchor's
    candidates can never be skipped. Returns (index, has_candidate); index is 0 where the
    row has no candidate.
    """
    d = d.detach()
    fill = float("-inf") if largest else float("inf")
    masked = torch.where(mask, d, torch.full_like(d, fill))
    nan = mask & torch.isnan(d)
    has_nan = nan.any(1)
    clean = torch.where(nan, torch.full_like(d, fill), masked)
    best = clean.amax(1) if largest else clean.amin(1)
    hit = mask & (d == best[:, None])
    idx = torch.where(has_nan, nan.int().argmax(1), hit.int().argmax(1))
    return idx, mask.any(1)


def batch_hard_select(
    dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pos_idx, neg_idx, valid) from a distance matrix and the masks: hardest positive
    (largest d), hardest negative (smallest d), lowest index on exact ties; -1 where invalid."""
    pos_idx, has_pos = _arg_extreme(dist, pos_mask, largest=True)
    neg_idx, has_neg = _arg_extreme(dist, neg_mask, largest=False)
    valid = has_pos & has_neg
    minus = torch.full_like(pos_idx, -1)
    return torch.where(valid, pos_idx, minus), torch.where(valid, neg_idx, minus), valid


def _reduce(per_anchor: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_anchor
    total = per_anchor.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / valid.sum().clamp(min=1).to(per_anchor.dtype)
    if reduction == "mean_nonzero":
        return total / (per_anchor > 0).sum().clamp(min=1).to(per_anchor.dtype)
    raise ValueError(f"reduction must be one of {REDUCTIONS_BATCH_HARD}, got {reduction!r}")


def batch_hard_from_indices(
    embeddings: torch.Tensor,
    pos_idx: torch.Tensor,
    neg_idx: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    soft: bool = False,
    reduction: str = "mean",
    ref_embeddings: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch-hard loss for *given* mined indices (-1 = invalid anchor).

    Returns (loss, per_anchor, pos_dist, neg_dist). Tests use it to check a kernel's loss and
    gradients when a near-tie lets it pick a different (equally hard) candidate.
    """
    ref = embeddings if ref_embeddings is None else ref_embeddings
    valid = pos_idx >= 0
    pi, ni = pos_idx.clamp(min=0), neg_idx.clamp(min=0)
    d_pos = pairwise_distance_rows(embeddings, ref[pi], metric)
    d_neg = pairwise_distance_rows(embeddings, ref[ni], metric)
    z = d_pos - d_neg + margin
    term = F.softplus(z) if soft else torch.relu(z)
    # An invalid anchor adds 0, but a non-finite anchor embedding still poisons the loss.
    own_finite = torch.isfinite(embeddings).all(1)
    invalid_value = torch.where(own_finite, torch.zeros_like(term), torch.full_like(term, float("nan")))
    per_anchor = torch.where(valid, term, invalid_value)
    zero = torch.zeros_like(d_pos)
    pos_dist = torch.where(valid, d_pos, zero)
    neg_dist = torch.where(valid, d_neg, zero)
    return _reduce(per_anchor, valid, reduction), per_anchor, pos_dist, neg_dist


def pairwise_distance_rows(u: torch.Tensor, v: torch.Tensor, metric: str) -> torch.Tensor:
    """d(u_i, v_i) for matching rows: (B, D), (B, D) -> (B,). Same formulas as pairwise_distance."""
    if metric == "sqeuclidean":
        return ((u - v) ** 2).sum(-1)
    if metric == "euclidean":
        return _safe_sqrt(((u - v) ** 2).sum(-1))
    if metric == "cosine":
        nu = _safe_sqrt((u * u).sum(-1)).clamp_min(COSINE_EPS)
        nv = _safe_sqrt((v * v).sum(-1)).clamp_min(COSINE_EPS)
        return 1 - (u * v).sum(-1) / (nu * nv)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def batch_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    soft: bool = False,
    reduction: str = "mean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
    return_info: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, BatchHardInfo]]:
    """Batch-hard triplet loss exactly as docs/semantics.md defines it (see module doc)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if reduction not in REDUCTIONS_BATCH_HARD:
        raise ValueError(f"reduction must be one of {REDUCTIONS_BATCH_HARD}, got {reduction!r}")
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("ref_embeddings and ref_labels must be given together")
    if self_offset is not None and ref_embeddings is None:
        raise ValueError("self_offset needs ref_embeddings")
    ref = embeddings if ref_embeddings is None else ref_embeddings
    dist = pairwise_distance(embeddings, ref, metric=metric)
    pos_mask, neg_mask = batch_hard_masks(labels, ref_labels, self_offset)
    pos_idx, neg_idx, valid = batch_hard_select(dist, pos_mask, neg_mask)

    rows = torch.arange(embeddings.shape[0], device=embeddings.device)
    d_pos = dist[rows, pos_idx.clamp(min=0)]
    d_neg = dist[rows, neg_idx.clamp(min=0)]
    z = d_pos - d_neg + margin
    term = F.softplus(z) if soft else torch.relu(z)
    own_finite = torch.isfinite(embeddings).all(1)
    invalid_value = torch.where(own_finite, torch.zeros_like(term), torch.full_like(term, float("nan")))
    per_anchor = torch.where(valid, term, invalid_value)
    loss = _reduce(per_anchor, valid, reduction)
    if not return_info:
        return loss
    with torch.no_grad():
        zero = torch.zeros_like(d_pos)
        num_valid = valid.sum()
        num_active = (valid & (per_anchor > 0)).sum()
        info = BatchHardInfo(
            pos_idx=pos_idx,
            neg_idx=neg_idx,
            pos_dist=torch.where(valid, d_pos, zero).detach(),
            neg_dist=torch.where(valid, d_neg, zero).detach(),
            valid=valid,
            num_valid=num_valid,
            num_active=num_active,
            active_fraction=num_active.to(torch.float32) / num_valid.clamp(min=1).to(torch.float32),
        )
    return loss, info


# ---- batch-all triplet loss (docs/semantics.md) ---------------------------------------------

REDUCTIONS_BATCH_ALL = ("mean_positive", "mean", "sum")

# Anchors per chunk of the (chunk, M, M) triplet cube, to bound the temporaries' size.
_CUBE_ELEMS = 1 << 24


def _check_common(metric, reduction, reductions, ref_embeddings, ref_labels, self_offset):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if reduction not in reductions:
        raise ValueError(f"reduction must be one of {reductions}, got {reduction!r}")
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("ref_embeddings and ref_labels must be given together")
    if self_offset is not None and ref_embeddings is None:
        raise ValueError("self_offset needs ref_embeddings")


def _nan_where_not_finite(per_anchor: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """The anchor's contribution is NaN where its own embedding is not finite."""
    own_finite = torch.isfinite(embeddings).all(1)
    return torch.where(own_finite, per_anchor, torch.full_like(per_anchor, float("nan")))


def batch_all_triplet_terms(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    soft: bool = False,
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor: (sum of the triplet terms, number of valid triplets, number of terms > 0).

    The (B, M, M) cube z[i, p, n] = d_ip - d_in + margin is materialised (in anchor chunks)
    and masked by valid[i, p, n] = p in P(i) and n in N(i). The sum is differentiable; the
    counts are int64. A non-finite anchor embedding makes its sum NaN.
    """
    ref = embeddings if ref_embeddings is None else ref_embeddings
    dist = pairwise_distance(embeddings, ref, metric=metric)  # (B, M)
    pos_mask, neg_mask = batch_hard_masks(labels, ref_labels, self_offset)
    m = dist.shape[1]
    step = max(1, _CUBE_ELEMS // max(1, m * m))
    sums, active = [], []
    for i0 in range(0, dist.shape[0], step):
        d = dist[i0 : i0 + step]
        valid = pos_mask[i0 : i0 + step, :, None] & neg_mask[i0 : i0 + step, None, :]
        z = d[:, :, None] - d[:, None, :] + margin  # z[i, p, n]
        term = F.softplus(z) if soft else torch.relu(z)
        term = torch.where(valid, term, torch.zeros_like(term))
        sums.append(term.sum((1, 2)))
        active.append((valid & (term > 0)).sum((1, 2)))
    per_anchor = _nan_where_not_finite(torch.cat(sums), embeddings)
    num_valid = pos_mask.sum(1) * neg_mask.sum(1)
    return per_anchor, num_valid, torch.cat(active)


def batch_all_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    soft: bool = False,
    reduction: str = "mean_positive",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
    return_info: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, BatchAllInfo]]:
    """Batch-all triplet loss exactly as docs/semantics.md defines it.

    Every valid triplet (i, p, n), p in P(i), n in N(i), costs max(d_ip - d_in + margin, 0)
    (softplus with soft=True). reduction: "mean_positive" = sum / #{terms > 0}, "mean" =
    sum / #valid triplets, "sum". No triplet (or no term > 0): 0.0, attached to the graph.
    """
    _check_common(metric, reduction, REDUCTIONS_BATCH_ALL, ref_embeddings, ref_labels, self_offset)
    per_anchor, valid, active = batch_all_triplet_terms(
        embeddings,
        labels,
        margin=margin,
        metric=metric,
        soft=soft,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        self_offset=self_offset,
    )
    total = per_anchor.sum()
    if reduction == "sum":
        loss = total
    else:
        count = active.sum() if reduction == "mean_positive" else valid.sum()
        loss = total / count.clamp(min=1).to(total.dtype)
    if not return_info:
        return loss
    num_valid, num_active = valid.sum(), active.sum()
    info = BatchAllInfo(
        num_valid=num_valid,
        num_active=num_active,
        active_fraction=num_active.to(torch.float32) / num_valid.clamp(min=1).to(torch.float32),
        valid_per_anchor=valid,
        active_per_anchor=active,
    )
    return loss, info


# ---- contrastive loss (docs/semantics.md) -------------------------------------------------

REDUCTIONS_CONTRASTIVE = ("mean", "sum", "mean_nonzero")


def hinge_pow(v: torch.Tensor, power: float) -> torch.Tensor:
    """max(v, 0)^power; gradient 0 where v <= 0 (also at the kink, also for power < 1); NaN
    stays NaN."""
    pos = v > 0
    safe = torch.where(pos, v, torch.ones_like(v))
    out = torch.where(pos, safe**power, torch.zeros_like(v))
    return torch.where(torch.isnan(v), v, out)


def contrastive_pair_mask(
    labels: torch.Tensor,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> torch.Tensor:
    """(B, M) bool: the pairs (i, j) that count. Without ref_labels the unordered pairs
    i < j of the batch; with them every (i, j) except j = self_offset + i."""
    b = labels.shape[0]
    if ref_labels is None:
        return torch.ones(b, b, dtype=torch.bool, device=labels.device).triu(1)
    allowed = torch.ones(b, ref_labels.shape[0], dtype=torch.bool, device=labels.device)
    if self_offset is not None:
        rows = torch.arange(b, device=labels.device)
        allowed[rows, rows + self_offset] = False
    return allowed


def contrastive_terms(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    power: float = 2,
    metric: str = "euclidean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(term, allowed, same, own_finite): the (B, M) per-pair terms (0 outside `allowed`),
    the pair mask, the same-label mask and the (B,) finiteness of each anchor's embedding."""
    ref = embeddings if ref_embeddings is None else ref_embeddings
    rl = labels if ref_labels is None else ref_labels
    dist = pairwise_distance(embeddings, ref, metric=metric)
    allowed = contrastive_pair_mask(labels, ref_labels, self_offset)
    same = labels[:, None] == rl[None, :]
    v = torch.where(same, dist - pos_margin, neg_margin - dist)
    term = torch.where(allowed, hinge_pow(v, power), torch.zeros_like(v))
    return term, allowed, same, torch.isfinite(embeddings).all(1)


def contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    power: float = 2,
    metric: str = "euclidean",
    reduction: str = "mean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> torch.Tensor:
    """Contrastive loss exactly as docs/semantics.md defines it.

    Same-label pairs cost max(d - pos_margin, 0)^power, others max(neg_margin - d, 0)^power.
    reduction: "mean" over all pairs, "sum", "mean_nonzero" = positive part / its #{terms > 0}
    + negative part / its #{terms > 0}. No pair: 0.0, attached to the graph. A non-finite
    anchor embedding makes its contribution (to both parts) NaN.
    """
    _check_common(metric, reduction, REDUCTIONS_CONTRASTIVE, ref_embeddings, ref_labels, self_offset)
    if not (power > 0 and math.isfinite(power)):
        raise ValueError(f"power must be positive and finite, got {power}")
    term, allowed, same, own_finite = contrastive_terms(
        embeddings,
        labels,
        pos_margin=pos_margin,
        neg_margin=neg_margin,
        power=power,
        metric=metric,
        ref_embeddings=ref_embeddings,
        ref_labels=ref_labels,
        self_offset=self_offset,
    )
    zero = torch.zeros_like(term)
    pos = torch.where(same, term, zero)
    neg = torch.where(same, zero, term)
    pos_sum = _nan_where_not_finite(pos.sum(1), embeddings).sum()
    neg_sum = _nan_where_not_finite(neg.sum(1), embeddings).sum()
    if reduction == "sum":
        return pos_sum + neg_sum
    if reduction == "mean":
        return (pos_sum + neg_sum) / allowed.sum().clamp(min=1).to(term.dtype)
    pos_nz = (allowed & same & (term > 0)).sum().clamp(min=1).to(term.dtype)
    neg_nz = (allowed & ~same & (term > 0)).sum().clamp(min=1).to(term.dtype)
    return pos_sum / pos_nz + neg_sum / neg_nz


# ---- centroid triplet bound (docs/semantics.md) ------------------------------------

REDUCTIONS_CENTROID = ("mean", "sum", "none")


def centroid_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Do et al.'s upper bound on the triplet loss with fixed class centroids:
    per sample ||x_i - c_{y_i}|| - 1/(3(C-1)) * sum_{m != y_i} ||x_i - c_m||.

    Distances by direct differences; autograd's norm gives the subgradient 0 at distance 0.
    """
    c = centroids.shape[0]
    d = torch.linalg.vector_norm(embeddings[:, None, :] - centroids[None, :, :], dim=-1)  # (B, C)
    own = F.one_hot(labels.long(), c).bool()
    per_sample = (d * own).sum(1) - (d * ~own).sum(1) / (3 * (c - 1))
    return _reduce_elementwise(per_sample, reduction)


def onehot_centroids(num_classes: int, dim: int, *, scale: float = 1.0, dtype=None, device=None) -> torch.Tensor:
    """Centroid m = scale * e_m (the first num_classes unit vectors of R^dim)."""
    return scale * torch.eye(num_classes, dim, dtype=dtype, device=device)


# ---- focal-loss family (docs/semantics.md) --------------------------------------------------------


def _reduce_elementwise(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean()  # an empty mean is NaN, as torch.mean and torchvision


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "none"
) -> torch.Tensor:
    """torchvision.ops.sigmoid_focal_loss, line for line (stable in float64 at |x| = 1000:
    sigmoid and BCE-with-logits are computed stably by torch)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce_elementwise(loss, reduction)


def softmax_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, alpha=None, gamma: float = 2.0, reduction: str = "mean"
) -> torch.Tensor:
    """-alpha_y (1 - p_y)^gamma log p_y per sample; logits (N, C) or (N, C, d1, ...) with the
    class dimension second, as F.cross_entropy. ``alpha``: None, a float, or a (C,) tensor.
    "mean" averages over samples (not over the alpha weights)."""
    logp = F.log_softmax(logits, dim=1)
    logp_y = logp.gather(1, target.long().unsqueeze(1)).squeeze(1)
    p_y = logp_y.exp()
    loss = -((1 - p_y) ** gamma) * logp_y
    if isinstance(alpha, torch.Tensor):
        loss = alpha.to(loss.dtype)[target.long()] * loss
    elif alpha is not None:
        loss = alpha * loss
    return _reduce_elementwise(loss, reduction)


def focal_star_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, gamma: float = 2.0, beta: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """FL* (Lin et al., appendix A): y = +1 where targets > 0, -1 elsewhere; x_t = y x,
    p*_t = sigmoid(gamma x_t + beta), loss = -log(p*_t) / gamma."""
    y = torch.where(targets > 0, 1.0, -1.0).to(logits.dtype)
    y = torch.where(torch.isnan(targets), torch.nan, y)
    loss = -F.logsigmoid(gamma * y * logits + beta) / gamma
    return _reduce_elementwise(loss, reduction)


# ---- row-sampled oracles for large batches ------------------------------------------------
# At B = 50000 the (B, B) matrices above need 20 GB in float64. These give the same
# per-anchor quantities for a few anchor rows only, each row against the whole batch
# (O(rows x B) memory), from the same definitions: pairwise_distance, batch_hard_masks'
# rules, hinge_pow.


def batch_hard_rows(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    rows: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    soft: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, pos_dist, neg_dist, valid) of the anchors `rows` of batch_hard_triplet_loss's
    reduction="none" (the batch as its own reference set), computed in float64.

    Example:
        >>> x, lab = torch.randn(1000, 8), torch.randint(0, 50, (1000,))
        >>> loss, dp, dn, valid = batch_hard_rows(x, lab, torch.tensor([0, 17]))
    """
    x = embeddings.double()
    d = pairwise_distance(x[rows], x, metric=metric)  # (rows, B)
    same = labels[rows][:, None] == labels[None, :]
    pos = same.clone()
    pos[torch.arange(len(rows)), rows] = False  # the anchor itself is not a positive
    neg = ~same
    pos_idx, has_pos = _arg_extreme(d, pos, largest=True)
    neg_idx, has_neg = _arg_extreme(d, neg, largest=False)
    valid = has_pos & has_neg
    dp = d.gather(1, pos_idx[:, None])[:, 0]
    dn = d.gather(1, neg_idx[:, None])[:, 0]
    z = dp - dn + margin
    term = torch.nn.functional.softplus(z) if soft else z.clamp(min=0)
    zero = torch.zeros_like(z)
    return (torch.where(valid, term, zero), torch.where(valid, dp, zero), torch.where(valid, dn, zero), valid)


def contrastive_rows(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    rows: torch.Tensor,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    power: float = 2,
    metric: str = "euclidean",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor of `rows` (the batch against itself, unordered pairs i < j as
    contrastive_pair_mask): (pos_sum, pos_pairs, neg_sum, neg_pairs) in float64.

    Example:
        >>> x, lab = torch.randn(1000, 8), torch.randint(0, 50, (1000,))
        >>> ps, pn, ns, nn = contrastive_rows(x, lab, torch.tensor([0, 17]))
    """
    x = embeddings.double()
    d = pairwise_distance(x[rows], x, metric=metric)
    allowed = torch.arange(x.shape[0])[None, :] > rows[:, None]
    same = labels[rows][:, None] == labels[None, :]
    v = torch.where(same, d - pos_margin, neg_margin - d)
    term = torch.where(allowed, hinge_pow(v, power), torch.zeros_like(v))
    zero = torch.zeros_like(term)
    pos, neg = allowed & same, allowed & ~same
    return (torch.where(pos, term, zero).sum(1), pos.sum(1), torch.where(neg, term, zero).sum(1), neg.sum(1))


# ---- miners (docs/semantics.md) ------------------------------------------------------------------

TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


def mine_batch_hard(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    metric: str = "euclidean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, p, n): one triplet per valid anchor (a positive and a negative exist), anchors
    ascending, p the farthest positive and n the nearest negative (lowest index on exact
    ties, a NaN candidate wins: batch_hard_select's rules)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    ref = embeddings if ref_embeddings is None else ref_embeddings
    with torch.no_grad():
        dist = pairwise_distance(embeddings, ref, metric=metric)
        pos_mask, neg_mask = batch_hard_masks(labels, ref_labels, self_offset)
        pos_idx, neg_idx, valid = batch_hard_select(dist, pos_mask, neg_mask)
    a = torch.arange(embeddings.shape[0], device=embeddings.device)[valid]
    return a, pos_idx[valid], neg_idx[valid]


def triplet_margins(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    metric: str = "euclidean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(t, valid): the (B, M, M) cube t[a, p, n] = d(a, n) - d(a, p) and the mask of valid
    triplets (p a positive of a, n a negative of a). Plain B x M x M: small inputs only."""
    ref = embeddings if ref_embeddings is None else ref_embeddings
    dist = pairwise_distance(embeddings, ref, metric=metric)
    pos_mask, neg_mask = batch_hard_masks(labels, ref_labels, self_offset)
    t = dist[:, None, :] - dist[:, :, None]
    return t, pos_mask[:, :, None] & neg_mask[:, None, :]


def triplet_type_mask(t: torch.Tensor, margin: float, type: str) -> torch.Tensor:
    """Which margins t pass PML's TripletMarginMiner test for `type` (strict where PML is:
    semihard 0 < t, easy t > margin; "<=" elsewhere)."""
    if type == "all":
        return t <= margin
    if type == "hard":
        return (t <= margin) & (t <= 0)
    if type == "semihard":
        return (t <= margin) & (t > 0)
    if type == "easy":
        return t > margin
    raise ValueError(f"type must be one of {TRIPLET_TYPES}, got {type!r}")


def mine_triplets(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.2,
    type: str = "all",
    metric: str = "euclidean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, p, n): every valid triplet whose margin t = d(a, n) - d(a, p) passes `type`, in
    row-major (a, p, n) order, by enumerating the B x M x M cube. A non-finite distance
    among a valid triplet's raises ValueError (fastmine refuses to mine on NaN)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    with torch.no_grad():
        t, valid = triplet_margins(
            embeddings,
            labels,
            metric=metric,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            self_offset=self_offset,
        )
        if not torch.isfinite(t[valid]).all():
            raise ValueError("non-finite distance: refusing to mine")
        a, p, n = torch.nonzero(valid & triplet_type_mask(t, margin, type), as_tuple=True)
    return a, p, n


# ---- semi-hard triplet loss (docs/semantics.md) ----------------------------------------------

REDUCTIONS_SEMI_HARD = ("mean", "sum", "none")


def semi_hard_select(
    dist: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) int64 indices, one triplet per positive pair (i, p) whose
    anchor has a negative, pairs in row-major (i, p) order.

    n* = the negative with the smallest d_in among those with d_in > d_ip (lowest index on
    exact ties); if there is none, the negative with the largest d_in (TF's fallback). A NaN
    among the anchor's negative distances wins (its lowest index), so it cannot be skipped.
    Materialises one (pairs, M) row per pair: plain, not fast.
    """
    d = dist.detach()
    a, p = (pos_mask & neg_mask.any(1, keepdim=True)).nonzero(as_tuple=True)
    drow, nmask = d[a], neg_mask[a]  # (P, M)
    harder = nmask & (drow > d[a, p][:, None])  # NaN compares False on both sides
    semi, has_semi = _arg_extreme(drow, harder, largest=False)
    easy, _ = _arg_extreme(drow, nmask, largest=True)
    n = torch.where(has_semi, semi, easy)
    nan_neg = nmask & torch.isnan(drow)
    n = torch.where(nan_neg.any(1), nan_neg.int().argmax(1), n)
    return a, p, n


def _poison_if_not_finite(loss: torch.Tensor, *embeddings: torch.Tensor) -> torch.Tensor:
    """loss + NaN when any embedding is non-finite (also one that forms no pair)."""
    finite = torch.stack([torch.isfinite(e).all() for e in embeddings]).all()
    return loss + torch.where(finite, 0.0, float("nan")).to(loss.dtype)


def semi_hard_from_indices(
    embeddings: torch.Tensor,
    anchor_idx: torch.Tensor,
    pos_idx: torch.Tensor,
    neg_idx: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    reduction: str = "mean",
    ref_embeddings: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The semi-hard loss for *given* triplets. Returns (loss, per_pair, pos_dist, neg_dist).

    Tests use it to check a kernel's loss and gradients at the kernel's own choices (a near
    tie may let it pick another, equally valid negative)."""
    ref = embeddings if ref_embeddings is None else ref_embeddings
    xa = embeddings[anchor_idx]
    d_pos = pairwise_distance_rows(xa, ref[pos_idx], metric)
    d_neg = pairwise_distance_rows(xa, ref[neg_idx], metric)
    per_pair = torch.relu(d_pos - d_neg + margin)  # relu keeps NaN
    if reduction == "none":
        return per_pair, per_pair, d_pos, d_neg
    total = per_pair.sum()
    if reduction == "mean":
        total = total / max(per_pair.numel(), 1)
    elif reduction != "sum":
        raise ValueError(f"reduction must be one of {REDUCTIONS_SEMI_HARD}, got {reduction!r}")
    return _poison_if_not_finite(total, embeddings, ref), per_pair, d_pos, d_neg


def semi_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float = 0.3,
    metric: str = "euclidean",
    reduction: str = "mean",
    ref_embeddings: Optional[torch.Tensor] = None,
    ref_labels: Optional[torch.Tensor] = None,
    self_offset: Optional[int] = None,
    return_info: bool = False,
):
    """Semi-hard triplet loss exactly as docs/semantics.md defines it (FaceNet, TF-Addons'
    triplet_semihard_loss, but 0.0 rather than NaN when there is no pair).

    Each positive pair (i, p) with a negative costs max(d_ip - d_in* + margin, 0), n* from
    semi_hard_select. reduction: "mean" over the pairs, "sum", "none" (one value per pair,
    row-major (i, p) order). "mean"/"sum" are NaN when any embedding is non-finite.
    """
    _check_common(metric, reduction, REDUCTIONS_SEMI_HARD, ref_embeddings, ref_labels, self_offset)
    from ._types import SemiHardInfo

    ref = embeddings if ref_embeddings is None else ref_embeddings
    dist = pairwise_distance(embeddings, ref, metric=metric)
    pos_mask, neg_mask = batch_hard_masks(labels, ref_labels, self_offset)
    a, p, n = semi_hard_select(dist, pos_mask, neg_mask)
    per_pair = torch.relu(dist[a, p] - dist[a, n] + margin)
    if reduction == "none":
        loss = per_pair
    else:
        loss = per_pair.sum()
        if reduction == "mean":
            loss = loss / max(per_pair.numel(), 1)
        loss = _poison_if_not_finite(loss, embeddings, ref)
    if not return_info:
        return loss
    with torch.no_grad():
        num_pairs = torch.tensor(a.numel(), device=a.device)
        num_active = (per_pair > 0).sum()
        info = SemiHardInfo(
            anchor_idx=a,
            pos_idx=p,
            neg_idx=n,
            pos_dist=dist[a, p].detach(),
            neg_dist=dist[a, n].detach(),
            num_pairs=num_pairs,
            num_active=num_active,
            active_fraction=num_active.to(torch.float32) / num_pairs.clamp(min=1).to(torch.float32),
        )
    return loss, info
