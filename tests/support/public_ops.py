"""Every public op of fastmine as one row of a table: how to call it (its inputs, built for a
kind of batch at a dtype and on a device), which options are worth covering, which function
of fastmine/reference.py (the float64 oracle) defines its result, and what it owes on bad
input, on NaN and on an empty batch.

tests/properties/test_contract.py runs every row over the properties that every op owes, on
every device of the ``device`` fixture, so that a new public op needs one row here.
op_table.py is the same idea one level down: the raw ops of ``torch.ops.fastmine`` and their
C++ argument contracts.

A row's ``make(g, kind, dtype, device, variant)`` returns the keyword arguments of one call:
its tensors and the options the variant fixes. Variant keys that start with "_" steer
``make`` (a reference set, a layout) and are not passed to the op. Kinds:

  random     an ordinary batch (several classes, every label with a positive)
  one_class  every label the same (no negative anywhere)
  distinct   every label different (no positive anywhere)
  single     one row (its reference set, with ``self_offset``, only the row itself: no pair)
  large      a batch big enough to be split across threads and blocks (determinism)
  hub        clusters on a sphere and one point at its centre, every anchor's hardest
             negative (and a copy of it in every reference set): one row of the gradient
             sums a contribution from every anchor (determinism of the scatter)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import fastmine
from fastmine import reference as R

F64 = torch.float64
KINDS = ("random", "one_class", "distinct", "single")
# Inputs that carry gradients, and that a NaN may be put in; every other tensor is data
# (labels, targets, class weights).
DIFFERENTIABLE = ("embeddings", "ref_embeddings", "x", "y", "logits", "centroids")


@dataclass(frozen=True)
class Bad:
    """A malformed call: ``change(kw)`` returns the valid call's keyword arguments with one
    thing wrong; the op must raise ``error`` with a message matching ``match``."""

    id: str
    change: Callable[[Dict[str, Any]], Dict[str, Any]]
    error: type
    match: str


@dataclass(frozen=True)
class PublicOp:
    name: str
    fn: Callable[..., Any]
    oracle: Callable[..., Any]
    make: Callable[[torch.Generator, str, torch.dtype, torch.device, Dict[str, Any]], Dict[str, Any]]
    variants: Sequence[Dict[str, Any]]
    kinds: Sequence[str] = KINDS
    # A loss (float output, gradients to its DIFFERENTIABLE inputs) or a miner (int64
    # indices, compared exactly, no gradient).
    miner: bool = False
    # What a NaN in a differentiable input must give: "nonfinite" (a non-finite result; for
    # a miner, a non-finite distance on a mined triplet, so that its loss is NaN) or
    # "raises" (a ValueError that says so).
    nan: str = "nonfinite"
    # The non-finite values that must propagate. An infinite logit is a limit that the focal
    # losses take (a certain, right prediction costs 0): for them only NaN must.
    non_finite: Tuple[str, ...] = ("nan", "inf", "-inf")
    # An empty batch: (error, match) it must raise, or None: the oracle's result.
    empty: Optional[Tuple[type, str]] = (ValueError, "embeddings")
    bad: Sequence[Bad] = field(default_factory=tuple)
    # Options that make every anchor's loss active on the "hub" batch, so that the hub's row
    # of the gradient sums a contribution from each of them; None: the op has no scatter
    # for the hub to stress, and no hub batch.
    hub: Optional[Dict[str, Any]] = None
    # The result's dtype for float16/bfloat16 inputs: a loss comes back in float32
    # (docs/semantics.md, "Everywhere"); None: the input's dtype.
    half_result: Optional[torch.dtype] = torch.float32

    def call(self, kw: Dict[str, Any]) -> Any:
        return self.fn(**kw)

    def oracle_call(self, kw: Dict[str, Any]) -> Any:
        return self.oracle(**kw)


def variant_id(v: Dict[str, Any]) -> str:
    return "-".join(f"{k.lstrip('_')}={v[k]}" for k in sorted(v)) or "default"


def options(variant: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in variant.items() if not k.startswith("_")}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g, *shape, dtype, device, scale=1.0):
    # Drawn in float64 on the CPU, then cast: the same numbers on every device and dtype.
    return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype=dtype, device=device)


def _sizes(kind: str) -> Tuple[int, int, int]:
    """(B, D, M): the batch, the features, the reference set's extra rows."""
    if kind == "single":
        return 1, 5, 4
    if kind == "large":
        return 257, 33, 300
    if kind == "hub":
        return 300, HUB_CLASSES, 300
    return 10, 5, 13


HUB_CLASSES = 16


def _hub_rows(g, n, d, dtype, device):
    """n - 1 rows in HUB_CLASSES tight clusters on a sphere of radius 10 (orthogonal centres,
    14 apart) and, last, the origin in a class of its own: 10 from everyone, the nearest
    point of another class for every anchor."""
    lab = torch.arange(n - 1) % HUB_CLASSES
    x = 10 * torch.eye(d, dtype=F64)[lab] + 0.3 * torch.randn(n - 1, d, generator=g, dtype=F64)
    x = torch.cat([x, torch.zeros(1, d, dtype=F64)])
    lab = torch.cat([lab, torch.tensor([HUB_CLASSES])])
    return x.to(dtype=dtype, device=device), lab.to(device)


def _labels(kind: str, n: int, classes: int, device, start: int = 0) -> torch.Tensor:
    if kind == "one_class":
        lab = torch.zeros(n, dtype=torch.int64)
    elif kind == "distinct":
        lab = torch.arange(start, start + n)
    else:
        lab = torch.arange(n) % classes
    return lab.to(device)


# ---- embedding ops: the losses and miners on (embeddings, labels[, reference set]) ------------


def make_embedding_call(g, kind, dtype, device, variant):
    b, d, m = _sizes(kind)
    if kind == "hub":
        x, lab = _hub_rows(g, b, d, dtype, device)
    else:
        x = _randn(g, b, d, dtype=dtype, device=device)
        lab = _labels(kind, b, 3, device)
    kw: Dict[str, Any] = dict(embeddings=x, labels=lab)
    ref = variant.get("_ref")
    if ref is not None:
        extra = _randn(g, m, d, dtype=dtype, device=device)
        # distinct: the reference rows' labels differ from the batch's and from each other
        extra_lab = _labels(kind, m, 4, device, start=b)
        if kind == "hub":
            # far from every cluster (|r| ~ 40), labels of every class, and first a copy of
            # the hub, which stays every anchor's hardest negative
            extra = extra * 10
            extra[0] = 0.0
            extra_lab = torch.randint(0, HUB_CLASSES + 1, (m,), generator=g).to(device)
            extra_lab[0] = HUB_CLASSES
        if ref == "self_offset" and kind == "single":
            # the row's only reference row is itself, which is excluded: no pair at all
            kw.update(ref_embeddings=x.clone(), ref_labels=lab.clone(), self_offset=0)
        elif ref == "self_offset":
            kw.update(
                ref_embeddings=torch.cat([extra[:2], x, extra[2:]]),
                ref_labels=torch.cat([extra_lab[:2], lab, extra_lab[2:]]),
                self_offset=2,
            )
        else:
            kw.update(ref_embeddings=extra, ref_labels=extra_lab)
    kw.update(options(variant))
    return kw


def _other_device(device: torch.device) -> str:
    # Without a GPU the meta device plays the other device: a real, distinct torch device.
    return "cpu" if device.type != "cpu" else ("cuda" if torch.cuda.is_available() else "meta")


def _with(**changes):
    """A Bad.change that overrides keyword arguments; a callable value gets the valid call."""

    def change(kw):
        kw = dict(kw)
        for k, v in changes.items():
            if v is _DROP:
                kw.pop(k, None)
            else:
                kw[k] = v(kw) if callable(v) else v
        return kw

    return change


_DROP = object()


def _ref_rows(kw, n):
    x = kw["embeddings"]
    return torch.randn(n, x.shape[1], dtype=x.dtype, device=x.device)


def _ref_labels(kw, n):
    return (torch.arange(n) % 3).to(kw["labels"].device)


# The argument contract every op on (embeddings, labels) shares (docs/semantics.md,
# "Everywhere"): checked on the valid "random" call without a reference set.
EMBEDDING_BAD = (
    Bad("embeddings-1d", _with(embeddings=lambda kw: kw["embeddings"][:, 0]), ValueError, "embeddings"),
    Bad("embeddings-3d", _with(embeddings=lambda kw: kw["embeddings"][:, :, None]), ValueError, "embeddings"),
    Bad("embeddings-0d", _with(embeddings=lambda kw: kw["embeddings"][0, 0]), ValueError, "embeddings"),
    Bad("embeddings-no-features", _with(embeddings=lambda kw: kw["embeddings"][:, :0]), ValueError, "embeddings"),
    Bad("embeddings-int", _with(embeddings=lambda kw: kw["embeddings"].long()), TypeError, "embeddings"),
    Bad("embeddings-int32", _with(embeddings=lambda kw: kw["embeddings"].int()), TypeError, "embeddings"),
    Bad("embeddings-bool", _with(embeddings=lambda kw: kw["embeddings"] > 0), TypeError, "embeddings"),
    Bad("embeddings-list", _with(embeddings=lambda kw: kw["embeddings"].tolist()), TypeError, "embeddings"),
    Bad("labels-2d", _with(labels=lambda kw: kw["labels"][:, None]), ValueError, "labels"),
    Bad("labels-short", _with(labels=lambda kw: kw["labels"][:-1]), ValueError, "labels"),
    Bad("labels-long", _with(labels=lambda kw: torch.cat([kw["labels"], kw["labels"][:1]])), ValueError, "labels"),
    Bad("labels-0d", _with(labels=lambda kw: kw["labels"][0]), ValueError, "labels"),
    Bad("labels-one", _with(labels=lambda kw: kw["labels"][:1]), ValueError, "labels"),
    Bad("labels-float", _with(labels=lambda kw: kw["labels"].float()), TypeError, "labels"),
    Bad("labels-double", _with(labels=lambda kw: kw["labels"].double()), TypeError, "labels"),
    Bad("labels-bool", _with(labels=lambda kw: kw["labels"] > 0), TypeError, "labels"),
    Bad(
        "labels-other-device",
        _with(labels=lambda kw: kw["labels"].to(_other_device(kw["embeddings"].device))),
        ValueError,
        "labels",
    ),
    Bad("metric-unknown", _with(metric="manhattan"), ValueError, "metric"),
    Bad("metric-case", _with(metric="Euclidean"), ValueError, "metric"),
    Bad("metric-empty", _with(metric=""), ValueError, "metric"),
    Bad("metric-l2", _with(metric="l2"), ValueError, "metric"),
    Bad(
        "ref-feature-mismatch",
        _with(
            ref_embeddings=lambda kw: torch.randn(8, kw["embeddings"].shape[1] + 1, device=kw["embeddings"].device),
            ref_labels=lambda kw: _ref_labels(kw, 8),
        ),
        ValueError,
        "ref_embeddings",
    ),
    Bad(
        "ref-1d",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 8)[:, 0], ref_labels=lambda kw: _ref_labels(kw, 8)),
        ValueError,
        "ref_embeddings",
    ),
    Bad(
        "ref-empty",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 0), ref_labels=lambda kw: _ref_labels(kw, 0)),
        ValueError,
        "ref_embeddings",
    ),
    Bad(
        "ref-dtype-mismatch",
        _with(
            ref_embeddings=lambda kw: _ref_rows(kw, 8).to(
                torch.float64 if kw["embeddings"].dtype != torch.float64 else torch.float32
            ),
            ref_labels=lambda kw: _ref_labels(kw, 8),
        ),
        TypeError,
        "ref_embeddings",
    ),
    Bad(
        "ref-other-device",
        _with(
            ref_embeddings=lambda kw: _ref_rows(kw, 8).to(_other_device(kw["embeddings"].device)),
            ref_labels=lambda kw: _ref_labels(kw, 8),
        ),
        ValueError,
        "ref_embeddings",
    ),
    Bad("ref-without-labels", _with(ref_embeddings=lambda kw: _ref_rows(kw, 8)), ValueError, "ref_labels"),
    Bad("ref-labels-without-ref", _with(ref_labels=lambda kw: _ref_labels(kw, 8)), ValueError, "ref_embeddings"),
    Bad(
        "ref-labels-short",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 8), ref_labels=lambda kw: _ref_labels(kw, 7)),
        ValueError,
        "ref_labels",
    ),
    Bad(
        "ref-labels-long",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 8), ref_labels=lambda kw: _ref_labels(kw, 9)),
        ValueError,
        "ref_labels",
    ),
    Bad(
        "ref-labels-2d",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 8), ref_labels=lambda kw: _ref_labels(kw, 8)[:, None]),
        ValueError,
        "ref_labels",
    ),
    Bad(
        "ref-labels-float",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 8), ref_labels=lambda kw: _ref_labels(kw, 8).float()),
        TypeError,
        "ref_labels",
    ),
    Bad(
        "ref-labels-other-device",
        _with(
            ref_embeddings=lambda kw: _ref_rows(kw, 8),
            ref_labels=lambda kw: _ref_labels(kw, 8).to(_other_device(kw["embeddings"].device)),
        ),
        ValueError,
        "ref_labels",
    ),
    Bad("self-offset-without-ref", _with(self_offset=0), ValueError, "self_offset"),
    # B = 10, M = 12: the valid offsets are 0, 1, 2
    Bad(
        "self-offset-negative",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 12), ref_labels=lambda kw: _ref_labels(kw, 12), self_offset=-1),
        ValueError,
        "self_offset",
    ),
    Bad(
        "self-offset-past-end",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 12), ref_labels=lambda kw: _ref_labels(kw, 12), self_offset=3),
        ValueError,
        "self_offset",
    ),
    Bad(
        "self-offset-far-past-end",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 12), ref_labels=lambda kw: _ref_labels(kw, 12), self_offset=100),
        ValueError,
        "self_offset",
    ),
    # a reference set shorter than the batch cannot hold it at any offset
    Bad(
        "self-offset-ref-shorter-than-batch",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 9), ref_labels=lambda kw: _ref_labels(kw, 9), self_offset=0),
        ValueError,
        "self_offset",
    ),
    Bad(
        "self-offset-float",
        _with(ref_embeddings=lambda kw: _ref_rows(kw, 12), ref_labels=lambda kw: _ref_labels(kw, 12), self_offset=1.0),
        TypeError,
        "self_offset",
    ),
)


def _bad_reductions(*names):
    return tuple(Bad(f"reduction-{n or 'empty'}", _with(reduction=n), ValueError, "reduction") for n in names)


def _bad_margin(name):
    return tuple(
        Bad(f"{name}-{v}", _with(**{name: v}), err, name)
        for v, err in ((math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError), ("0.3", TypeError))
    ) + (
        Bad(f"{name}-none", _with(**{name: None}), TypeError, name),
        Bad(f"{name}-tensor", _with(**{name: torch.tensor(0.3)}), TypeError, name),
    )


# ---- pairwise_distance ----------------------------------------------------------------------


def make_pairwise_call(g, kind, dtype, device, variant):
    b = {"single": 1, "large": 333}.get(kind, 10)
    m = {"single": 1, "large": 277}.get(kind, 7)
    d = 40 if kind == "large" else 5
    kw: Dict[str, Any] = dict(x=_randn(g, b, d, dtype=dtype, device=device))
    if variant.get("_y"):
        y = _randn(g, m, d, dtype=dtype, device=device)
        if kind == "random":
            y[:2] = kw["x"][:2]  # exact zero distances
        kw["y"] = y
    kw.update(options(variant))
    return kw


PAIRWISE_BAD = (
    Bad("x-1d", _with(x=lambda kw: kw["x"][:, 0]), ValueError, "x"),
    Bad("x-empty", _with(x=lambda kw: kw["x"][:0]), ValueError, "x"),
    Bad("x-int", _with(x=lambda kw: kw["x"].long()), TypeError, "x"),
    Bad("y-1d", _with(y=lambda kw: kw["x"][:, 0]), ValueError, "y"),
    Bad("y-feature-mismatch", _with(y=lambda kw: torch.cat([kw["x"], kw["x"][:, :1]], 1)), ValueError, "y"),
    Bad(
        "y-dtype-mismatch",
        _with(y=lambda kw: kw["x"].to(torch.float64 if kw["x"].dtype != torch.float64 else torch.float32)),
        TypeError,
        "y",
    ),
    Bad("y-other-device", _with(y=lambda kw: kw["x"].to(_other_device(kw["x"].device))), ValueError, "y"),
    Bad("metric-unknown", _with(metric="hamming"), ValueError, "metric"),
)


# ---- centroid triplet bound ------------------------------------------------------------------


def make_centroid_call(g, kind, dtype, device, variant):
    b, d, _ = _sizes(kind)
    c = 4
    labels = {"one_class": torch.zeros(b, dtype=torch.int64)}.get(kind, torch.arange(b) % c).to(device)
    kw = dict(
        embeddings=_randn(g, b, d, dtype=dtype, device=device),
        labels=labels,
        centroids=_randn(g, c, d, dtype=dtype, device=device, scale=2.0),
    )
    kw.update(options(variant))
    return kw


CENTROID_BAD = (
    Bad("labels-past-classes", _with(labels=lambda kw: kw["labels"] + 1), ValueError, "labels"),
    Bad("labels-negative", _with(labels=lambda kw: kw["labels"] - 1), ValueError, "labels"),
    Bad("labels-short", _with(labels=lambda kw: kw["labels"][:-1]), ValueError, "labels"),
    Bad("labels-float", _with(labels=lambda kw: kw["labels"].float()), TypeError, "labels"),
    Bad("centroids-features", _with(centroids=lambda kw: kw["centroids"][:, :3]), ValueError, "centroids"),
    Bad(
        "centroids-one-class",
        _with(centroids=lambda kw: kw["centroids"][:1], labels=lambda kw: kw["labels"] * 0),
        ValueError,
        "C >= 2",
    ),
    Bad(
        "centroids-dtype",
        _with(
            centroids=lambda kw: kw["centroids"].to(
                torch.float64 if kw["centroids"].dtype != torch.float64 else torch.float32
            )
        ),
        TypeError,
        "centroids",
    ),
    Bad("centroids-1d", _with(centroids=lambda kw: kw["centroids"][0]), ValueError, "centroids"),
    Bad("embeddings-1d", _with(embeddings=lambda kw: kw["embeddings"][0]), ValueError, "embeddings"),
    Bad("embeddings-int", _with(embeddings=lambda kw: kw["embeddings"].long()), TypeError, "embeddings"),
) + _bad_reductions("mean_nonzero", "avg")


# ---- the focal-loss family --------------------------------------------------------------------


def _focal_shape(kind):
    return {"single": (1,), "large": (3 * (1 << 14) + 123,)}.get(kind, (6, 4))


def make_sigmoid_focal_call(g, kind, dtype, device, variant):
    shape = _focal_shape(kind)
    logits = _randn(g, *shape, dtype=dtype, device=device, scale=3.0)
    if variant.get("_binary") or kind == "one_class":
        targets = (torch.rand(*shape, generator=g, dtype=F64) > 0.5).to(F64)
        if kind == "one_class":
            targets = torch.ones(*shape, dtype=F64)
    else:
        targets = torch.rand(*shape, generator=g, dtype=F64)
    kw = dict(logits=logits, targets=targets.to(dtype=dtype, device=device))
    kw.update(options(variant))
    return kw


def make_focal_star_call(g, kind, dtype, device, variant):
    kw = make_sigmoid_focal_call(g, kind, dtype, device, dict(variant, _binary=True))
    if variant.get("_signs"):
        kw["targets"] = kw["targets"] * 2 - 1  # {-1, +1} labels work as well as {0, 1}
    return kw


def make_softmax_focal_call(g, kind, dtype, device, variant):
    n, c = {"single": (1, 5), "large": (3 * (1 << 11) + 7, 7)}.get(kind, (6, 5))
    spatial = (2, 3) if variant.get("_spatial") else ()
    logits = _randn(g, n, c, *spatial, dtype=dtype, device=device, scale=2.0)
    if kind == "one_class":
        target = torch.zeros(n, *spatial, dtype=torch.int64)
    else:
        target = torch.randint(0, c, (n, *spatial), generator=g)
    kw: Dict[str, Any] = dict(logits=logits, target=target.to(device))
    if variant.get("_alpha_tensor"):
        kw["alpha"] = torch.rand(c, generator=g, dtype=F64).to(dtype=dtype, device=device)
    kw.update(options(variant))
    return kw


SIGMOID_FOCAL_BAD = (
    Bad("targets-shape", _with(targets=lambda kw: kw["targets"][:, :2]), ValueError, "targets"),
    Bad("targets-broadcast", _with(targets=lambda kw: kw["targets"][0]), ValueError, "targets"),
    Bad("targets-int", _with(targets=lambda kw: (kw["targets"] > 0.5).long()), TypeError, "targets"),
    Bad(
        "targets-requires-grad", _with(targets=lambda kw: kw["targets"].clone().requires_grad_()), ValueError, "targets"
    ),
    Bad("logits-int", _with(logits=lambda kw: kw["logits"].long()), TypeError, "logits"),
    Bad("logits-list", _with(logits=[1.0]), TypeError, "logits"),
    Bad("gamma-negative", _with(gamma=-1.0), ValueError, "gamma"),
    Bad("alpha-above-1", _with(alpha=1.5), ValueError, "alpha"),
    Bad("alpha-nan", _with(alpha=math.nan), ValueError, "alpha"),
) + _bad_reductions("avg", "mean_nonzero")

FOCAL_STAR_BAD = (
    Bad("targets-transposed", _with(targets=lambda kw: kw["targets"].T), ValueError, "targets"),
    Bad("logits-int", _with(logits=lambda kw: kw["logits"].long()), TypeError, "logits"),
    Bad("gamma-zero", _with(gamma=0.0), ValueError, "gamma"),
    Bad("beta-inf", _with(beta=math.inf), ValueError, "beta"),
) + _bad_reductions("avg")


def _one_entry(t, value):
    """t with its last entry set to value: one bad index among valid ones, which a range check
    that reduces over the whole tensor must still find."""
    t = t.clone()
    t.view(-1)[-1] = value
    return t


SOFTMAX_FOCAL_BAD = (
    Bad("target-past-classes", _with(target=lambda kw: kw["target"].clamp(max=0) + 5), ValueError, "target"),
    Bad(
        "target-one-past-classes",
        _with(target=lambda kw: _one_entry(kw["target"], kw["logits"].shape[1])),
        ValueError,
        "target",
    ),
    Bad("target-negative", _with(target=lambda kw: kw["target"].clamp(max=0) - 1), ValueError, "target"),
    Bad("target-float", _with(target=lambda kw: kw["target"].float()), TypeError, "target"),
    Bad("target-short", _with(target=lambda kw: kw["target"][:-1]), ValueError, "target"),
    Bad("alpha-length", _with(alpha=lambda kw: torch.ones(4, device=kw["logits"].device)), ValueError, "alpha"),
    Bad("alpha-2d", _with(alpha=lambda kw: torch.ones(5, 1, device=kw["logits"].device)), ValueError, "alpha"),
    Bad(
        "alpha-int",
        _with(alpha=lambda kw: torch.ones(5, dtype=torch.long, device=kw["logits"].device)),
        TypeError,
        "alpha",
    ),
    Bad("logits-1d", _with(logits=lambda kw: kw["logits"][0]), ValueError, "logits"),
    Bad("gamma-negative", _with(gamma=-0.5), ValueError, "gamma"),
) + _bad_reductions("avg", "mean_positive")


# ---- the oracles of the miners ------------------------------------------------------------------


def _oracle_mine_semi_hard(**kw):
    info = R.semi_hard_triplet_loss(**kw, return_info=True)[1]
    return info.anchor_idx, info.pos_idx, info.neg_idx


REF_MODES = (None, "ref", "self_offset")

OPS: List[PublicOp] = [
    PublicOp(
        "pairwise_distance",
        fastmine.pairwise_distance,
        R.pairwise_distance,
        make_pairwise_call,
        variants=[dict(metric=m, _y=y) for m in R.METRICS for y in (False, True)],
        kinds=("random", "single"),
        empty=(ValueError, "x"),
        bad=PAIRWISE_BAD,
        half_result=None,
    ),
    PublicOp(
        "batch_hard_triplet_loss",
        fastmine.batch_hard_triplet_loss,
        R.batch_hard_triplet_loss,
        make_embedding_call,
        # Each metric, hinge and soft, each reduction, each reference-set mode (not their
        # product: the per-op tests sweep that).
        variants=[
            dict(metric="euclidean", reduction="mean"),
            dict(metric="sqeuclidean", soft=True, reduction="none"),
            dict(metric="cosine", reduction="mean_nonzero", _ref="ref"),
            dict(metric="euclidean", soft=True, reduction="sum", _ref="self_offset"),
            dict(metric="sqeuclidean", margin=1.0, reduction="mean_nonzero", _ref="self_offset"),
            dict(metric="cosine", soft=True, reduction="none", _ref="ref"),
            dict(metric="euclidean", reduction="none", _ref="self_offset"),
        ],
        bad=EMBEDDING_BAD
        + _bad_reductions("avg", "mean_positive", "", "MEAN")
        + _bad_margin("margin")
        + (Bad("keyword-neg-margin", _with(neg_margin=0.5), TypeError, "neg_margin"),),
        hub=dict(margin=30.0),
    ),
    PublicOp(
        "batch_all_triplet_loss",
        fastmine.batch_all_triplet_loss,
        R.batch_all_triplet_loss,
        make_embedding_call,
        variants=[
            dict(metric="euclidean", reduction="mean_positive"),
            dict(metric="sqeuclidean", soft=True, reduction="mean"),
            dict(metric="cosine", reduction="sum", _ref="ref"),
            dict(metric="euclidean", soft=True, reduction="mean_positive", _ref="ref"),
            dict(metric="sqeuclidean", margin=1.0, reduction="sum", _ref="self_offset"),
            dict(metric="cosine", soft=True, reduction="mean", _ref="self_offset"),
        ],
        bad=EMBEDDING_BAD
        + _bad_reductions("avg", "none", "mean_nonzero", "", "MEAN")
        + _bad_margin("margin")
        + (Bad("keyword-neg-margin", _with(neg_margin=0.5), TypeError, "neg_margin"),),
        hub=dict(margin=30.0),
    ),
    PublicOp(
        "contrastive_loss",
        fastmine.contrastive_loss,
        R.contrastive_loss,
        make_embedding_call,
        # power 1 and 2 take their own code paths
        variants=[
            dict(metric="euclidean", reduction="mean"),
            dict(metric="sqeuclidean", power=1, neg_margin=3.0, reduction="sum"),
            dict(metric="cosine", power=1.5, pos_margin=0.2, reduction="mean_nonzero"),
            dict(metric="cosine", power=2, reduction="mean", _ref="ref"),
            dict(metric="euclidean", power=1.5, pos_margin=0.2, neg_margin=2.5, reduction="sum", _ref="ref"),
            dict(metric="sqeuclidean", power=1, reduction="mean_nonzero", _ref="self_offset"),
            dict(metric="euclidean", power=2, neg_margin=2.0, reduction="mean", _ref="self_offset"),
        ],
        bad=EMBEDDING_BAD
        + _bad_reductions("avg", "none", "mean_positive", "", "MEAN")
        + _bad_margin("pos_margin")
        + _bad_margin("neg_margin")
        + tuple(
            Bad(f"power-{p}", _with(power=p), ValueError, "power")
            for p in (0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf)
        )
        + (
            Bad("power-str", _with(power="2"), TypeError, "power"),
            Bad("power-none", _with(power=None), TypeError, "power"),
            Bad("keyword-margin", _with(margin=0.5), TypeError, "margin"),
            Bad("keyword-return-info", _with(return_info=True), TypeError, "return_info"),
        ),
        hub=dict(neg_margin=20.0),
    ),
    PublicOp(
        "semi_hard_triplet_loss",
        fastmine.semi_hard_triplet_loss,
        R.semi_hard_triplet_loss,
        make_embedding_call,
        variants=[
            dict(metric="euclidean", reduction="mean"),
            dict(metric="sqeuclidean", reduction="none"),
            dict(metric="cosine", reduction="sum", margin=0.5),
            dict(metric="euclidean", reduction="none", _ref="ref"),
            dict(metric="cosine", reduction="mean", _ref="self_offset"),
            dict(metric="sqeuclidean", reduction="sum", margin=1.0, _ref="self_offset"),
        ],
        bad=EMBEDDING_BAD + _bad_reductions("avg", "mean_nonzero", "mean_positive", "", "MEAN") + _bad_margin("margin"),
        hub=dict(margin=30.0),
    ),
    PublicOp(
        "centroid_triplet_loss",
        fastmine.centroid_triplet_loss,
        R.centroid_triplet_loss,
        make_centroid_call,
        variants=[dict(reduction=r) for r in R.REDUCTIONS_CENTROID],
        kinds=("random", "one_class", "single"),
        bad=CENTROID_BAD,
    ),
    PublicOp(
        "sigmoid_focal_loss",
        fastmine.sigmoid_focal_loss,
        R.sigmoid_focal_loss,
        make_sigmoid_focal_call,
        variants=[
            dict(),
            dict(alpha=-1.0, gamma=0.5, reduction="mean"),
            dict(alpha=1.0, gamma=0.0, reduction="sum", _binary=True),
            dict(alpha=0.0, gamma=3.3, reduction="none", _binary=True),
        ],
        kinds=("random", "one_class", "single"),
        non_finite=("nan",),
        empty=None,
        bad=SIGMOID_FOCAL_BAD,
    ),
    PublicOp(
        "focal_star_loss",
        fastmine.focal_star_loss,
        R.focal_star_loss,
        make_focal_star_call,
        variants=[
            dict(),
            dict(gamma=1.0, beta=0.3, reduction="sum", _signs=True),
            dict(gamma=0.5, beta=-1.0, reduction="none"),
        ],
        kinds=("random", "one_class", "single"),
        non_finite=("nan",),
        empty=None,
        bad=FOCAL_STAR_BAD,
    ),
    PublicOp(
        "softmax_focal_loss",
        fastmine.softmax_focal_loss,
        R.softmax_focal_loss,
        make_softmax_focal_call,
        variants=[
            dict(),
            dict(gamma=0.0, reduction="sum"),
            dict(alpha=0.3, gamma=1.5, reduction="none"),
            dict(gamma=2.0, reduction="mean", _alpha_tensor=True),
            dict(gamma=0.7, reduction="none", _spatial=True),
        ],
        kinds=("random", "one_class", "single"),
        non_finite=("nan",),
        empty=None,
        bad=SOFTMAX_FOCAL_BAD,
    ),
    PublicOp(
        "mine_batch_hard",
        fastmine.mine_batch_hard,
        R.mine_batch_hard,
        make_embedding_call,
        variants=[dict(metric=m, _ref=r) for m, r in zip(R.METRICS, REF_MODES)],
        miner=True,
        bad=EMBEDDING_BAD,
    ),
    PublicOp(
        "mine_semi_hard",
        fastmine.mine_semi_hard,
        _oracle_mine_semi_hard,
        make_embedding_call,
        variants=[dict(metric=m, _ref=r) for m, r in zip(R.METRICS, REF_MODES)],
        miner=True,
        bad=EMBEDDING_BAD,
    ),
    PublicOp(
        "mine_triplets",
        fastmine.mine_triplets,
        R.mine_triplets,
        make_embedding_call,
        variants=[
            dict(type="all", metric="euclidean"),
            dict(type="hard", metric="sqeuclidean", margin=0.5, _ref="ref"),
            dict(type="semihard", metric="cosine", margin=0.3, _ref="self_offset"),
            dict(type="easy", metric="euclidean", margin=0.1, _ref="self_offset"),
        ],
        miner=True,
        nan="raises",
        bad=EMBEDDING_BAD
        + (
            Bad("type-unknown", _with(type="medium"), ValueError, "type"),
            Bad("margin-nan", _with(margin=math.nan), ValueError, "margin"),
            Bad("margin-inf", _with(margin=math.inf), ValueError, "margin"),
            Bad("margin-str", _with(margin="0.2"), TypeError, "margin"),
        ),
    ),
]

BY_NAME = {op.name: op for op in OPS}
