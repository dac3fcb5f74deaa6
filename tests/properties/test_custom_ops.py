"""The ops are proper custom ops: torch.library.opcheck (schema, fake kernel, autograd
registration, AOT dispatch) and torch.compile(fullgraph=True) traces through the public API."""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R

ops = torch.ops.fastmine
METRIC_IDS = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}
F64 = torch.float64


def _x(b, d, dtype=F64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


@pytest.mark.parametrize("metric", list(METRIC_IDS))
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_opcheck_pairwise_distance(metric, dtype):
    x, y = _x(7, 5, dtype, 0, True), _x(4, 5, dtype, 1, True)
    torch.library.opcheck(ops.pairwise_distance.default, (x, y, METRIC_IDS[metric]))
    torch.library.opcheck(ops.pairwise_distance.default, (x, x, METRIC_IDS[metric]))


@pytest.mark.parametrize("metric", list(METRIC_IDS))
def test_opcheck_pairwise_distance_backward(metric):
    x, y = _x(7, 5, seed=0), _x(4, 5, seed=1)
    dist = ops.pairwise_distance(x, y, METRIC_IDS[metric])
    grad = _x(7, 4, seed=2)
    torch.library.opcheck(ops.pairwise_distance_backward.default, (grad, x, y, dist, METRIC_IDS[metric]))


def _bh_args(metric, soft, ref, dtype=F64, requires_grad=True):
    x = _x(10, 4, dtype, 0, requires_grad)
    lab = torch.arange(10) % 3
    if ref == "none":
        return (x, lab, x, lab, 0.3, METRIC_IDS[metric], soft, True, 0)
    r = _x(13, 4, dtype, 1, requires_grad)
    rl = torch.arange(13) % 4
    if ref == "self_offset":
        return (x, lab, r, rl, 0.3, METRIC_IDS[metric], soft, True, 2)
    return (x, lab, r, rl, 0.3, METRIC_IDS[metric], soft, False, 0)


@pytest.mark.parametrize("metric", list(METRIC_IDS))
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("ref", ["none", "ref", "self_offset"])
def test_opcheck_batch_hard_triplet(metric, soft, ref):
    torch.library.opcheck(ops.batch_hard_triplet.default, _bh_args(metric, soft, ref))


def test_opcheck_batch_hard_triplet_float32():
    torch.library.opcheck(ops.batch_hard_triplet.default, _bh_args("euclidean", False, "ref", torch.float32))


@pytest.mark.parametrize("metric", list(METRIC_IDS))
def test_opcheck_batch_hard_triplet_backward(metric):
    args = _bh_args(metric, False, "ref", requires_grad=False)
    x, _, r = args[0], args[1], args[2]
    loss, pi, ni, pd, nd = ops.batch_hard_triplet(*args)
    gl = torch.ones_like(loss)
    torch.library.opcheck(
        ops.batch_hard_triplet_backward.default,
        (gl, torch.zeros_like(pd), torch.zeros_like(nd), x, r, pi, ni, pd, nd, 0.3, METRIC_IDS[metric], False),
    )


def test_low_level_op_outputs():
    """Contract of the op itself (csrc/ops.cpp): -1 / 0 for invalid anchors, per-anchor loss."""
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [9.0]], dtype=F64)
    lab = torch.tensor([0, 0, 1, 1, 2])
    loss, pi, ni, pd, nd = ops.batch_hard_triplet(x, lab, x, lab, 0.3, 0, False, True, 0)
    assert pi.tolist() == [1, 0, 3, 2, -1] and ni.tolist() == [2, 2, 1, 4, -1]
    assert pd.tolist() == [1, 1, 3, 3, 0] and nd.tolist() == [3, 2, 2, 3, 0]
    assert loss.tolist() == pytest.approx([0, 0, 1.3, 0.3, 0])


# ---- torch.compile ------------------------------------------------------------------------


def _f(x, lab, ref, ref_lab):
    loss = fastmine.batch_hard_triplet_loss(x, lab, margin=0.5)
    loss2 = fastmine.batch_hard_triplet_loss(
        x, lab, metric="cosine", soft=True, reduction="sum", ref_embeddings=ref, ref_labels=ref_lab, self_offset=3
    )
    d = fastmine.pairwise_distance(x, ref, metric="sqeuclidean")
    return loss + 0.1 * loss2 + 1e-3 * d.mean()


def _g(x, lab):
    loss, info = fastmine.batch_hard_triplet_loss(x, lab, reduction="mean_nonzero", return_info=True)
    return loss * 2, info.pos_idx, info.neg_idx, info.num_active


@pytest.mark.slow
def test_compile_fullgraph_inductor_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 8, generator=g)
    lab = torch.arange(24) % 5
    ref = torch.cat([torch.randn(3, 8, generator=g), x, torch.randn(5, 8, generator=g)])
    ref_lab = torch.cat([torch.tensor([7, 8, 9]), lab, torch.arange(5)])

    def both(fn):
        xr, rr = x.clone().requires_grad_(True), ref.clone().requires_grad_(True)
        out = fn(xr, lab, rr, ref_lab)
        gx, gr = torch.autograd.grad(out, [xr, rr])
        return out.detach(), gx, gr

    eager = both(_f)
    compiled = both(torch.compile(_f, fullgraph=True))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_fullgraph_return_info_aot_eager():
    torch._dynamo.reset()
    x = _x(16, 4, torch.float32, 3)
    lab = torch.arange(16) % 4
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    eager = _g(xe, lab)
    compiled = torch.compile(_g, fullgraph=True, backend="aot_eager")(xc, lab)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a.detach(), b.detach())
    (ge,) = torch.autograd.grad(eager[0], xe)
    (gc,) = torch.autograd.grad(compiled[0], xc)
    torch.testing.assert_close(ge, gc)
    # And compiled matches the oracle.
    torch.testing.assert_close(
        compiled[0].detach().double(),
        2 * R.batch_hard_triplet_loss(x.double(), lab, reduction="mean_nonzero"),
        rtol=1e-5,
        atol=1e-6,
    )


# ---- batch_all_triplet, contrastive ----------------------------------------------------------
# Arguments as fastmine/functional.py passes them (csrc/ops.cpp has the schemas):
#   batch_all_triplet(x, labels, ref, ref_labels, margin, metric, soft, has_exclude, offset)
#   contrastive(x, labels, ref, ref_labels, pos_margin, neg_margin, power, metric, triangle,
#               has_exclude, offset)  -- triangle: the batch against itself, pairs j > i.


def _pair_inputs(ref, dtype=F64, requires_grad=True):
    x = _x(10, 4, dtype, 0, requires_grad)
    lab = torch.arange(10) % 3
    if ref == "none":
        return x, lab, x, lab
    return x, lab, _x(13, 4, dtype, 1, requires_grad), torch.arange(13) % 4


def _ba_args(metric, soft, ref, dtype=F64, requires_grad=True):
    x, lab, r, rl = _pair_inputs(ref, dtype, requires_grad)
    excl, off = {"none": (True, 0), "ref": (False, 0), "self_offset": (True, 2)}[ref]
    return (x, lab, r, rl, 0.5, METRIC_IDS[metric], soft, excl, off)


def _ct_args(metric, power, ref, dtype=F64, requires_grad=True):
    x, lab, r, rl = _pair_inputs(ref, dtype, requires_grad)
    tri, excl, off = {"none": (True, False, 0), "ref": (False, False, 0), "self_offset": (False, True, 2)}[ref]
    return (x, lab, r, rl, 0.2, 2.5, float(power), METRIC_IDS[metric], tri, excl, off)


# Each metric, hinge and soft, each reference-set mode (not their full product: opcheck is slow).
BA_COMBOS = [
    ("euclidean", False, "none"),
    ("sqeuclidean", True, "none"),
    ("cosine", False, "ref"),
    ("euclidean", True, "ref"),
    ("sqeuclidean", False, "self_offset"),
    ("cosine", True, "self_offset"),
]
CT_COMBOS = [
    ("euclidean", 2, "none"),
    ("sqeuclidean", 1, "none"),
    ("cosine", 1.5, "none"),
    ("cosine", 2, "ref"),
    ("euclidean", 1.5, "ref"),
    ("sqeuclidean", 1, "self_offset"),
    ("euclidean", 2, "self_offset"),
]


@pytest.mark.parametrize("metric, soft, ref", BA_COMBOS)
def test_opcheck_batch_all_triplet(metric, soft, ref):
    torch.library.opcheck(ops.batch_all_triplet.default, _ba_args(metric, soft, ref))


def test_opcheck_batch_all_triplet_float32():
    torch.library.opcheck(ops.batch_all_triplet.default, _ba_args("euclidean", False, "ref", torch.float32))


@pytest.mark.parametrize("metric, soft", [("euclidean", False), ("cosine", True)])
def test_opcheck_batch_all_triplet_backward(metric, soft):
    args = _ba_args(metric, soft, "self_offset", requires_grad=False)
    grad = _x(10, 1, seed=5).flatten()
    torch.library.opcheck(ops.batch_all_triplet_backward.default, (grad, *args))


@pytest.mark.parametrize("metric, power, ref", CT_COMBOS)
def test_opcheck_contrastive(metric, power, ref):
    torch.library.opcheck(ops.contrastive.default, _ct_args(metric, power, ref))


def test_opcheck_contrastive_float32():
    torch.library.opcheck(ops.contrastive.default, _ct_args("cosine", 2, "ref", torch.float32))


@pytest.mark.parametrize("metric, power", [("euclidean", 1), ("sqeuclidean", 2), ("cosine", 1.5)])
def test_opcheck_contrastive_backward(metric, power):
    args = _ct_args(metric, power, "ref", requires_grad=False)
    gp, gn = _x(10, 1, seed=5).flatten(), _x(10, 1, seed=6).flatten()
    torch.library.opcheck(ops.contrastive_backward.default, (gp, gn, *args))


def test_low_level_all_pairs_op_outputs():
    """Contract of the ops themselves (csrc/ops.cpp): per-anchor sums and counts."""
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=F64)
    lab = torch.tensor([0, 0, 1, 1])
    s, valid, active = ops.batch_all_triplet(x, lab, x, lab, 0.3, 0, False, True, 0)
    assert valid.dtype == torch.int64 and active.dtype == torch.int64 and s.dtype == F64
    assert valid.tolist() == [2, 2, 2, 2] and active.tolist() == [0, 0, 2, 0]
    assert s.tolist() == pytest.approx([0, 0, 1.6, 0], abs=1e-14)
    out = ops.contrastive(x, lab, x, lab, 0.0, 2.5, 2.0, 0, True, False, 0)
    pos_sum, pos_nz, pos_n, neg_sum, neg_nz, neg_n = (t.tolist() for t in out)
    # pairs j > i: (0,1) same d=1; (0,2), (0,3) different; (1,2) different d=2 (0.5^2);
    # (1,3) different; (2,3) same d=3
    assert pos_n == [1, 0, 1, 0] and neg_n == [2, 2, 0, 0]
    assert pos_sum == pytest.approx([1, 0, 9, 0]) and pos_nz == [1, 0, 1, 0]
    assert neg_sum == pytest.approx([0, 0.25, 0, 0]) and neg_nz == [0, 1, 0, 0]


# ---- torch.compile: batch-all and contrastive --------------------------------------------------


def _compile_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 8, generator=g)
    lab = torch.arange(24) % 5
    ref = torch.cat([torch.randn(3, 8, generator=g), x, torch.randn(5, 8, generator=g)])
    ref_lab = torch.cat([torch.tensor([7, 8, 9]), lab, torch.arange(5)])
    return x, lab, ref, ref_lab


def _compare_compiled(fn, **compile_kw):
    torch._dynamo.reset()
    x, lab, ref, ref_lab = _compile_data()

    def both(f):
        xr, rr = x.clone().requires_grad_(True), ref.clone().requires_grad_(True)
        out = f(xr, lab, rr, ref_lab)
        gx, gr = torch.autograd.grad(out, [xr, rr])
        return out.detach(), gx, gr

    eager = both(fn)
    compiled = both(torch.compile(fn, fullgraph=True, **compile_kw))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return eager


def _batch_all_f(x, lab, ref, ref_lab):
    loss = fastmine.batch_all_triplet_loss(x, lab, margin=0.5)
    loss2, info = fastmine.batch_all_triplet_loss(
        x,
        lab,
        metric="cosine",
        soft=True,
        reduction="sum",
        ref_embeddings=ref,
        ref_labels=ref_lab,
        self_offset=3,
        return_info=True,
    )
    return loss + 0.01 * loss2 + 1e-3 * info.active_fraction


def _contrastive_f(x, lab, ref, ref_lab):
    loss = fastmine.contrastive_loss(x, lab, neg_margin=4.0)
    loss2 = fastmine.contrastive_loss(
        x,
        lab,
        pos_margin=0.3,
        neg_margin=1.0,
        power=1,
        metric="cosine",
        reduction="mean_nonzero",
        ref_embeddings=ref,
        ref_labels=ref_lab,
        self_offset=3,
    )
    return loss + 0.1 * loss2


@pytest.mark.slow
def test_compile_fullgraph_batch_all_matches_eager():
    out, _, _ = _compare_compiled(_batch_all_f)
    x, lab, ref, ref_lab = _compile_data()
    x, ref = x.double(), ref.double()
    loss2, info = R.batch_all_triplet_loss(
        x,
        lab,
        metric="cosine",
        soft=True,
        reduction="sum",
        ref_embeddings=ref,
        ref_labels=ref_lab,
        self_offset=3,
        return_info=True,
    )
    expected = R.batch_all_triplet_loss(x, lab, margin=0.5) + 0.01 * loss2 + 1e-3 * info.active_fraction
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_fullgraph_contrastive_matches_eager():
    out, _, _ = _compare_compiled(_contrastive_f)
    x, lab, ref, ref_lab = _compile_data()
    expected = R.contrastive_loss(x.double(), lab, neg_margin=4.0) + 0.1 * R.contrastive_loss(
        x.double(),
        lab,
        pos_margin=0.3,
        neg_margin=1.0,
        power=1,
        metric="cosine",
        reduction="mean_nonzero",
        ref_embeddings=ref.double(),
        ref_labels=ref_lab,
        self_offset=3,
    )
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
