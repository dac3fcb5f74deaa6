"""Every raw op of ``torch.ops.fastmine`` as a table: how to build a valid call at given
sizes, what each argument is, and the malformed variants of a call that the op's C++
contract must refuse with an error naming the argument.

Shared by the contract tests (which generate cases) and ``contract_worker.py`` (which runs
them in a separate process, so that a crash is a reported failure). A case is plain data
(JSON): ``{"op", "device", "dtype", "sizes": {b, m, d, p, c}, "seed", "mutation"}`` with
``mutation`` = ``[kind, argument, variant]`` or None for the valid call.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

F32, F64, LONG = torch.float32, torch.float64, torch.int64
NAN, INF = float("nan"), float("inf")


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return F64 if dtype == F64 else F32


class Arg:
    """One argument of an op: its name and kind.

    kinds: ``emb`` (2-D float; ``primary`` is the tensor the others must match), ``long``
    (int64 labels of some length), ``index`` (int64 entries in [lo, hi)), ``loss`` (float
    tensor in the loss dtype), ``targets`` (same shape and dtype as logits), ``grad_elem``
    (an elementwise loss's upstream gradient: 0-d or logits' shape), ``alpha_vec`` (C class
    weights in logits' dtype), and the scalars ``metric``, ``type``, ``offset``,
    ``finite``, ``positive``, ``alpha``, ``gamma0`` (>= 0), ``gamma_pos`` (> 0),
    ``triangle``, ``flag``, ``other`` (not mutated).
    """

    def __init__(self, name: str, kind: str, *, primary: bool = False, lo: int = 0, hi: int = 0):
        self.name, self.kind, self.primary, self.lo, self.hi = name, kind, primary, lo, hi


def _rng(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _emb(g, rows, d, dtype, dev):
    return torch.randn(rows, d, generator=g, dtype=F64).to(dtype).to(dev)


def _labels(g, n, dev, classes=3):
    return torch.randint(0, classes, (n,), generator=g).to(dev)


def _vec(g, n, dtype, dev):
    return torch.rand(n, generator=g, dtype=F64).to(dtype).to(dev)


def _index(g, n, lo, hi, dev):
    if hi <= lo:
        return torch.full((n,), lo, dtype=LONG).to(dev) if lo < 0 else torch.zeros(0, dtype=LONG).to(dev)
    return torch.randint(lo, hi, (n,), generator=g).to(dev)


# ---- the ops --------------------------------------------------------------------------------
# Each builder returns [(Arg, value)] in schema order.

Built = List[Tuple[Arg, Any]]


def _mined(g, s, dtype, dev) -> Built:
    b, m, d = s["b"], s["m"], s["d"]
    return [
        (Arg("x", "emb", primary=True), _emb(g, b, d, dtype, dev)),
        (Arg("labels", "long"), _labels(g, b, dev)),
        (Arg("ref", "emb"), _emb(g, m, d, dtype, dev)),
        (Arg("ref_labels", "long"), _labels(g, m, dev)),
    ]


def _exclusion(s) -> Built:
    # has_exclude with the anchors at the start of the reference set when it can hold them.
    has = s["m"] >= s["b"]
    return [(Arg("has_exclude", "flag"), has), (Arg("exclude_offset", "offset"), 0)]


def pairwise_distance(g, s, dtype, dev) -> Built:
    return [
        (Arg("x", "emb", primary=True), _emb(g, s["b"], s["d"], dtype, dev)),
        (Arg("y", "emb"), _emb(g, s["m"], s["d"], dtype, dev)),
        (Arg("metric", "metric"), 0),
        (Arg("allow_tf32", "flag"), False),
    ]


def pairwise_distance_backward(g, s, dtype, dev) -> Built:
    b, m = s["b"], s["m"]
    return [
        (Arg("grad", "loss"), torch.rand(b, m, generator=g, dtype=F64).to(dtype).to(dev)),
        (Arg("x", "emb", primary=True), _emb(g, b, s["d"], dtype, dev)),
        (Arg("y", "emb"), _emb(g, m, s["d"], dtype, dev)),
        (Arg("dist", "loss"), torch.rand(b, m, generator=g, dtype=F64).to(dtype).to(dev)),
        (Arg("metric", "metric"), 1),
    ]


def batch_hard_triplet(g, s, dtype, dev) -> Built:
    return (
        _mined(g, s, dtype, dev)
        + [(Arg("margin", "finite"), 0.3), (Arg("metric", "metric"), 0), (Arg("soft", "flag"), False)]
        + _exclusion(s)
        + [(Arg("allow_tf32", "flag"), False)]
    )


def batch_hard_triplet_backward(g, s, dtype, dev) -> Built:
    b, m, d = s["b"], s["m"], s["d"]
    ld = loss_dtype(dtype)
    idx = _index(g, b, -1, m, dev)
    return [
        (Arg("grad_loss", "loss"), _vec(g, b, ld, dev)),
        (Arg("grad_pos_dist", "loss"), _vec(g, b, ld, dev)),
        (Arg("grad_neg_dist", "loss"), _vec(g, b, ld, dev)),
        (Arg("x", "emb", primary=True), _emb(g, b, d, dtype, dev)),
        (Arg("ref", "emb"), _emb(g, m, d, dtype, dev)),
        (Arg("pos_idx", "index", lo=-1, hi=m), idx),
        (Arg("neg_idx", "index", lo=-1, hi=m), idx.flip(0).contiguous()),
        (Arg("pos_dist", "loss"), _vec(g, b, ld, dev) + 0.5),
        (Arg("neg_dist", "loss"), _vec(g, b, ld, dev) + 0.5),
        (Arg("margin", "finite"), 0.3),
        (Arg("metric", "metric"), 0),
        (Arg("soft", "flag"), True),
    ]


def batch_all_triplet(g, s, dtype, dev) -> Built:
    return (
        _mined(g, s, dtype, dev)
        + [(Arg("margin", "finite"), 0.3), (Arg("metric", "metric"), 1), (Arg("soft", "flag"), False)]
        + _exclusion(s)
        + [(Arg("allow_tf32", "flag"), False)]
    )


def batch_all_triplet_backward(g, s, dtype, dev) -> Built:
    return (
        [(Arg("grad", "loss"), _vec(g, s["b"], loss_dtype(dtype), dev))]
        + _mined(g, s, dtype, dev)
        + [(Arg("margin", "finite"), 0.3), (Arg("metric", "metric"), 0), (Arg("soft", "flag"), False)]
        + _exclusion(s)
        + [(Arg("allow_tf32", "flag"), False)]
    )


def _contrastive_tail(s) -> Built:
    return (
        [
            (Arg("pos_margin", "finite"), 0.1),
            (Arg("neg_margin", "finite"), 1.0),
            (Arg("power", "positive"), 2.0),
            (Arg("metric", "metric"), 0),
            (Arg("triangle", "triangle"), False),
        ]
        + _exclusion(s)
        + [(Arg("allow_tf32", "flag"), False)]
    )


def contrastive(g, s, dtype, dev) -> Built:
    return _mined(g, s, dtype, dev) + _contrastive_tail(s)


def contrastive_backward(g, s, dtype, dev) -> Built:
    ld = loss_dtype(dtype)
    return (
        [(Arg("grad_pos", "loss"), _vec(g, s["b"], ld, dev)), (Arg("grad_neg", "loss"), _vec(g, s["b"], ld, dev))]
        + _mined(g, s, dtype, dev)
        + _contrastive_tail(s)
    )


def _logits(g, s, dtype, dev):
    return (
        Arg("logits", "emb", primary=True),
        (torch.randn(s["b"], s["c"], generator=g, dtype=F64) * 3).to(dtype).to(dev),
    )


def _targets(g, s, dtype, dev):
    return Arg("targets", "targets"), torch.rand(s["b"], s["c"], generator=g, dtype=F64).round().to(dtype).to(dev)


def sigmoid_focal(g, s, dtype, dev) -> Built:
    return [
        _logits(g, s, dtype, dev),
        _targets(g, s, dtype, dev),
        (Arg("alpha", "alpha"), 0.25),
        (Arg("gamma", "gamma0"), 2.0),
        (Arg("reduce", "flag"), False),
    ]


def sigmoid_focal_backward(g, s, dtype, dev) -> Built:
    grad = torch.rand(s["b"], s["c"], generator=g, dtype=F64).to(loss_dtype(dtype)).to(dev)
    return [
        (Arg("grad", "grad_elem"), grad),
        _logits(g, s, dtype, dev),
        _targets(g, s, dtype, dev),
        (Arg("alpha", "alpha"), 0.25),
        (Arg("gamma", "gamma0"), 2.0),
    ]


def focal_star(g, s, dtype, dev) -> Built:
    return [
        _logits(g, s, dtype, dev),
        _targets(g, s, dtype, dev),
        (Arg("gamma", "gamma_pos"), 2.0),
        (Arg("beta", "finite"), 1.0),
        (Arg("reduce", "flag"), True),
    ]


def focal_star_backward(g, s, dtype, dev) -> Built:
    grad = torch.rand((), generator=g, dtype=F64).to(loss_dtype(dtype)).to(dev)
    return [
        (Arg("grad", "grad_elem"), grad),
        _logits(g, s, dtype, dev),
        _targets(g, s, dtype, dev),
        (Arg("gamma", "gamma_pos"), 2.0),
        (Arg("beta", "finite"), 1.0),
    ]


def softmax_focal(g, s, dtype, dev) -> Built:
    n, c = s["b"], s["c"]
    return [
        _logits(g, s, dtype, dev),
        (Arg("target", "index", lo=0, hi=c), _index(g, n, 0, c, dev)),
        (Arg("alpha", "alpha_vec"), _vec(g, c, dtype, dev)),
        (Arg("gamma", "gamma0"), 2.0),
        (Arg("with_grad", "flag"), True),
    ]


def _centroid(g, s, dtype, dev) -> Built:
    b, c, d = s["b"], max(s["c"], 2), s["d"]
    return [
        (Arg("x", "emb", primary=True), _emb(g, b, d, dtype, dev)),
        (Arg("labels", "index", lo=0, hi=c), _index(g, b, 0, c, dev)),
        (Arg("centroids", "emb"), _emb(g, c, d, dtype, dev)),
    ]


def centroid_triplet(g, s, dtype, dev) -> Built:
    return _centroid(g, s, dtype, dev)


def centroid_triplet_backward(g, s, dtype, dev) -> Built:
    c = max(s["c"], 2)
    ld = loss_dtype(dtype)
    return (
        [(Arg("grad", "loss"), _vec(g, s["b"], ld, dev))]
        + _centroid(g, s, dtype, dev)
        + [
            (Arg("dist", "loss"), torch.rand(s["b"], c, generator=g, dtype=F64).to(ld).to(dev) + 0.5),
            (Arg("need_centroid_grad", "flag"), True),
        ]
    )


def mine_triplets(g, s, dtype, dev) -> Built:
    return (
        _mined(g, s, dtype, dev)
        + [(Arg("margin", "finite"), 0.2), (Arg("type", "type"), 0), (Arg("metric", "metric"), 0)]
        + _exclusion(s)
    )


def semi_hard_triplet(g, s, dtype, dev) -> Built:
    return _mined(g, s, dtype, dev) + [(Arg("margin", "finite"), 0.2), (Arg("metric", "metric"), 2)] + _exclusion(s)


def semi_hard_triplet_backward(g, s, dtype, dev) -> Built:
    b, m, p, d = s["b"], s["m"], s["p"], s["d"]
    p = p if b > 0 and m > 0 else 0
    ld = loss_dtype(dtype)
    return [
        (Arg("grad_loss", "loss"), _vec(g, p, ld, dev)),
        (Arg("grad_pos_dist", "loss"), _vec(g, p, ld, dev)),
        (Arg("grad_neg_dist", "loss"), _vec(g, p, ld, dev)),
        (Arg("x", "emb", primary=True), _emb(g, b, d, dtype, dev)),
        (Arg("ref", "emb"), _emb(g, m, d, dtype, dev)),
        (Arg("anchor_idx", "index", lo=0, hi=b), _index(g, p, 0, b, dev)),
        (Arg("pos_idx", "index", lo=0, hi=m), _index(g, p, 0, m, dev)),
        (Arg("neg_idx", "index", lo=0, hi=m), _index(g, p, 0, m, dev)),
        (Arg("pos_dist", "loss"), _vec(g, p, ld, dev) + 0.5),
        (Arg("neg_dist", "loss"), _vec(g, p, ld, dev) + 0.5),
        (Arg("margin", "finite"), 0.2),
        (Arg("metric", "metric"), 0),
    ]


OPS: Dict[str, Callable[..., Built]] = {
    f.__name__: f
    for f in (
        pairwise_distance,
        pairwise_distance_backward,
        batch_hard_triplet,
        batch_hard_triplet_backward,
        batch_all_triplet,
        batch_all_triplet_backward,
        contrastive,
        contrastive_backward,
        sigmoid_focal,
        sigmoid_focal_backward,
        focal_star,
        focal_star_backward,
        softmax_focal,
        centroid_triplet,
        centroid_triplet_backward,
        mine_triplets,
        semi_hard_triplet,
        semi_hard_triplet_backward,
    )
}
# contrastive_with_grad takes contrastive's arguments (a CPU kernel only).
OPS["contrastive_with_grad"] = contrastive
CPU_ONLY = {"contrastive_with_grad"}
# Ops whose kernels compute only in float32/float64, on every device.
FLOAT_ONLY = {"mine_triplets"}


# ---- malformed variants -----------------------------------------------------------------------


def mutations(op: str, device: str, sizes: Dict[str, int]) -> List[list]:
    """Every malformed variant of a valid call of ``op`` at these sizes, as
    ``[kind, argument, variant]``: each must raise an error naming ``argument``."""
    out: List[list] = []
    built = OPS[op](_rng(0), sizes, F32, "cpu")
    values = {a.name: v for a, v in built}
    for arg, value in built:
        name, kind = arg.name, arg.kind
        if isinstance(value, torch.Tensor):
            if kind not in ("grad_elem",) and not (op.startswith(("sigmoid", "focal")) and arg.primary):
                out += [["rank", name, "down"], ["rank", name, "up"]]
            if kind == "grad_elem":
                out.append(["rank", name, "up"])
            if kind in ("long", "index", "loss", "alpha_vec", "targets", "grad_elem") and value.dim() >= 1:
                out += (
                    [["length", name, "+1"], ["length", name, "-1"]] if value.shape[0] > 0 else [["length", name, "+1"]]
                )
            if kind == "emb" and not arg.primary:
                out.append(["features", name, "+1"])
            out.append(["dtype", name, "int32" if value.dtype.is_floating_point else "float32"])
            if value.dtype.is_floating_point and not arg.primary:
                out.append(["dtype", name, "other_float"])
            if value.dtype.is_floating_point and arg.primary and (device == "cpu" or op in FLOAT_ONLY):
                out.append(["dtype", name, "float16"])
            if kind == "index" and value.numel() > 0:
                out += [["index", name, "high"], ["index", name, "low"], ["index", name, "huge"]]
            if device == "cuda":
                out.append(["device", name, "cpu"])
        elif kind == "metric":
            out += [["enum", name, v] for v in (3, -1, 7, 11)]
        elif kind == "type":
            out += [["enum", name, v] for v in (4, -1, 99)]
        elif kind == "offset":
            if values.get("has_exclude"):
                out += [["offset", name, v] for v in ("-1", "past_end", "huge")]
            out.append(["offset", name, "without_exclude"])
        elif kind in ("finite",):
            out += [["scalar", name, v] for v in ("nan", "inf")]
        elif kind == "positive":
            out += [["scalar", name, v] for v in ("0", "-1", "nan", "inf")]
        elif kind == "alpha":
            out += [["scalar", name, v] for v in ("1.5", "nan")]
        elif kind == "gamma0":
            out += [["scalar", name, v] for v in ("-1", "nan")]
        elif kind == "gamma_pos":
            out += [["scalar", name, v] for v in ("0", "-1", "inf")]
        elif kind == "triangle":
            if sizes["m"] != sizes["b"]:
                out.append(["triangle", name, "rows"])
            elif values.get("has_exclude"):
                out.append(["triangle", name, "with_exclude"])
    if op.startswith("centroid"):
        out.append(["classes", "centroids", "1"])
    if op == "softmax_focal" and sizes["b"] > 0:
        out.append(["classes", "logits", "0"])
    return out


def _resize0(t: torch.Tensor, n: int) -> torch.Tensor:
    """t with n entries along dim 0 (repeating or cutting its rows; zeros when it has none)."""
    if t.shape[0] == 0:
        return torch.zeros((n,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    reps = math.ceil(n / t.shape[0])
    return t.repeat((reps,) + (1,) * (t.dim() - 1))[:n].contiguous()


def apply(built: Built, mutation: Optional[list], sizes: Dict[str, int]) -> List[Any]:
    """The op's positional arguments with ``mutation`` applied."""
    args = [v for _, v in built]
    if mutation is None:
        return args
    kind, name, variant = mutation
    names = [a.name for a, _ in built]
    i = names.index(name)
    v = args[i]
    if kind == "rank":
        if variant == "up":
            args[i] = v.unsqueeze(0)
        else:
            args[i] = (
                v.reshape(-1)
                if v.dim() >= 2
                else v.reshape(-1)[:1].reshape(())
                if v.numel()
                else torch.zeros((), dtype=v.dtype, device=v.device)
            )
    elif kind == "length":
        args[i] = _resize0(v, v.shape[0] + (1 if variant == "+1" else -1))
    elif kind == "features":
        args[i] = torch.cat(
            [v, v[:, :1] if v.shape[1] else torch.zeros(v.shape[0], 1, dtype=v.dtype, device=v.device)], 1
        )
    elif kind == "dtype":
        if variant == "other_float":  # float32 <-> float64: a float dtype, but not the one due
            args[i] = v.to(F32 if v.dtype == F64 else F64)
        else:
            args[i] = v.to(getattr(torch, variant))
    elif kind == "index":
        w = v.clone()
        spec = built[i][0]
        w[0] = {"high": spec.hi, "low": spec.lo - 1, "huge": 1 << 40}[variant]
        args[i] = w
    elif kind == "device":
        args[i] = v.cpu()
    elif kind == "enum":
        args[i] = int(variant)
    elif kind == "offset":
        b, m = sizes["b"], sizes["m"]
        if variant == "without_exclude":
            args[names.index("has_exclude")] = False
            args[i] = 1
        else:
            args[i] = {"-1": -1, "past_end": m - b + 1, "huge": 1 << 40}[variant]
    elif kind == "scalar":
        args[i] = float(variant)
    elif kind == "triangle":
        args[i] = True
        if variant == "with_exclude":
            args[names.index("has_exclude")] = True
    elif kind == "classes":
        if name == "centroids":
            args[i] = v[:1].contiguous()
        else:  # logits with C = 0 classes (alpha follows, so that only C is wrong)
            args[i] = v[:, :0].contiguous()
            args[names.index("alpha")] = args[names.index("alpha")][:0].contiguous()
            args[names.index("target")] = torch.zeros_like(args[names.index("target")])
    else:
        raise ValueError(f"unknown mutation kind {kind!r}")
    return args


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as t in a strided (non-contiguous) layout."""
    if t.dim() == 0 or t.numel() == 0:
        return t
    wide = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


def build(case: Dict[str, Any]) -> Tuple[Callable[..., Any], List[Any], Built]:
    """The op and its (possibly malformed) positional arguments for a case."""
    dtype = getattr(torch, case.get("dtype", "float32"))
    built = OPS[case["op"]](_rng(case.get("seed", 0)), case["sizes"], dtype, case["device"])
    args = apply(built, case.get("mutation"), case["sizes"])
    return getattr(torch.ops.fastmine, case["op"]), args, built
