"""Bad input: the right exception type, and a message that names the argument. The shared
argument contract is checked for every loss (the ``op`` fixture).

A second device is needed for the "different devices" checks: without a GPU the meta device
plays that role (it is a real, distinct torch device that the checks must notice)."""

from __future__ import annotations

import math

import pytest
import torch

import fastmine

F64 = torch.float64
OTHER_DEVICE = "cuda" if torch.cuda.is_available() else "meta"


def emb(b=6, d=3, dtype=F64):
    return torch.randn(b, d, dtype=dtype)


def lab(b=6):
    return torch.arange(b) % 3


LOSSES = {
    "batch_hard": fastmine.batch_hard_triplet_loss,
    "batch_all": fastmine.batch_all_triplet_loss,
    "contrastive": fastmine.contrastive_loss,
}
# Names that are not reductions of each loss (including other losses' reductions).
BAD_REDUCTIONS = {
    "batch_hard": ["avg", "mean_positive", "", "MEAN"],
    "batch_all": ["avg", "none", "mean_nonzero", "", "MEAN"],
    "contrastive": ["avg", "none", "mean_positive", "", "MEAN"],
}
MARGINS = {"batch_hard": ["margin"], "batch_all": ["margin"], "contrastive": ["pos_margin", "neg_margin"]}


@pytest.fixture(params=list(LOSSES))
def op(request):
    """Each loss shares the argument contract (SPEC "Everywhere")."""
    return request.param


@pytest.fixture
def bh(op):
    def call(**kw):
        args = dict(embeddings=emb(), labels=lab())
        args.update(kw)
        x = args.pop("embeddings")
        y = args.pop("labels")
        return LOSSES[op](x, y, **args)

    return call


# ---- the losses: ValueError -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6,), (6, 3, 1), ()], ids=["1-D", "3-D", "0-D"])
def test_embeddings_not_2d(shape, bh):
    with pytest.raises(ValueError, match="embeddings"):
        bh(embeddings=torch.randn(shape, dtype=F64))


def test_embeddings_empty(bh):
    with pytest.raises(ValueError, match="embeddings"):
        bh(embeddings=torch.empty(0, 3, dtype=F64), labels=torch.empty(0, dtype=torch.int64))


def test_embeddings_zero_features(bh):
    with pytest.raises(ValueError, match="embeddings"):
        bh(embeddings=torch.empty(6, 0, dtype=F64))


@pytest.mark.parametrize(
    "labels",
    [
        torch.zeros(6, 1, dtype=torch.int64),
        torch.zeros(5, dtype=torch.int64),
        torch.zeros(7, dtype=torch.int64),
        torch.tensor(0),
    ],
    ids=["2-D", "short", "long", "0-D"],
)
def test_labels_bad_shape(labels, bh):
    with pytest.raises(ValueError, match="labels"):
        bh(labels=labels)


def test_no_silent_broadcast_of_labels(bh):
    with pytest.raises(ValueError, match="labels"):
        bh(labels=torch.zeros(1, dtype=torch.int64))


def test_ref_embeddings_feature_mismatch(bh):
    with pytest.raises(ValueError, match="ref_embeddings"):
        bh(ref_embeddings=emb(8, 4), ref_labels=lab(8))


def test_ref_embeddings_not_2d(bh):
    with pytest.raises(ValueError, match="ref_embeddings"):
        bh(ref_embeddings=torch.randn(8, dtype=F64), ref_labels=lab(8))


def test_ref_embeddings_empty(bh):
    with pytest.raises(ValueError, match="ref_embeddings"):
        bh(ref_embeddings=torch.empty(0, 3, dtype=F64), ref_labels=torch.empty(0, dtype=torch.int64))


@pytest.mark.parametrize("n", [7, 9])
def test_ref_labels_length_mismatch(n, bh):
    with pytest.raises(ValueError, match="ref_labels"):
        bh(ref_embeddings=emb(8), ref_labels=lab(n))


def test_ref_labels_not_1d(bh):
    with pytest.raises(ValueError, match="ref_labels"):
        bh(ref_embeddings=emb(8), ref_labels=lab(8)[:, None])


def test_ref_embeddings_without_ref_labels(bh):
    with pytest.raises(ValueError, match="ref_labels"):
        bh(ref_embeddings=emb(8))


def test_ref_labels_without_ref_embeddings(bh):
    with pytest.raises(ValueError, match="ref_embeddings"):
        bh(ref_labels=lab(8))


def test_self_offset_without_ref(bh):
    with pytest.raises(ValueError, match="self_offset"):
        bh(self_offset=0)


@pytest.mark.parametrize("offset", [-1, 3, 100])
def test_self_offset_out_of_range(offset, bh):
    # B = 6, M = 8: valid offsets are 0, 1, 2
    with pytest.raises(ValueError, match="self_offset"):
        bh(ref_embeddings=emb(8), ref_labels=lab(8), self_offset=offset)


def test_self_offset_in_range_accepted(bh):
    for offset in (0, 1, 2):
        bh(ref_embeddings=emb(8), ref_labels=lab(8), self_offset=offset)


@pytest.mark.parametrize("metric", ["manhattan", "Euclidean", "", "l2"])
def test_unknown_metric(metric, bh):
    with pytest.raises(ValueError, match="metric"):
        bh(metric=metric)


def test_unknown_reduction(op, bh):
    for reduction in BAD_REDUCTIONS[op]:
        with pytest.raises(ValueError, match="reduction"):
            bh(reduction=reduction)


@pytest.mark.parametrize("margin", [math.nan, math.inf, -math.inf])
def test_non_finite_margin(margin, op, bh):
    for name in MARGINS[op]:
        with pytest.raises(ValueError, match=name):
            bh(**{name: margin})


@pytest.mark.parametrize("power", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf])
def test_contrastive_bad_power(power):
    with pytest.raises(ValueError, match="power"):
        fastmine.contrastive_loss(emb(), lab(), power=power)


@pytest.mark.parametrize(
    "name, value",
    [
        ("margin", "0.3"),
        ("margin", None),
        ("margin", torch.tensor(0.3)),
        ("pos_margin", "0"),
        ("neg_margin", None),
        ("power", "2"),
        ("power", None),
    ],
)
def test_non_number_hyperparameter(name, value):
    fn = fastmine.contrastive_loss if name != "margin" else fastmine.batch_all_triplet_loss
    with pytest.raises(TypeError, match=name):
        fn(emb(), lab(), **{name: value})


def test_margin_arguments_are_per_loss():
    """contrastive_loss has pos_margin/neg_margin, not margin; the triplet losses the reverse:
    a misspelt keyword is an error, never silently ignored."""
    with pytest.raises(TypeError):
        fastmine.contrastive_loss(emb(), lab(), margin=0.5)
    with pytest.raises(TypeError):
        fastmine.batch_all_triplet_loss(emb(), lab(), neg_margin=0.5)
    with pytest.raises(TypeError):
        fastmine.contrastive_loss(emb(), lab(), return_info=True)


@pytest.mark.cuda(gpu_optional=True)
def test_labels_on_other_device(bh):
    with pytest.raises(ValueError, match="labels"):
        bh(labels=lab().to(OTHER_DEVICE))


@pytest.mark.cuda(gpu_optional=True)
def test_ref_embeddings_on_other_device(bh):
    with pytest.raises(ValueError, match="ref_embeddings"):
        bh(ref_embeddings=emb(8).to(OTHER_DEVICE), ref_labels=lab(8))


@pytest.mark.cuda(gpu_optional=True)
def test_ref_labels_on_other_device(bh):
    with pytest.raises(ValueError, match="ref_labels"):
        bh(ref_embeddings=emb(8), ref_labels=lab(8).to(OTHER_DEVICE))


# ---- batch_hard_triplet_loss: TypeError ---------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool], ids=str)
def test_non_integer_labels(dtype, bh):
    with pytest.raises(TypeError, match="labels"):
        bh(labels=lab().to(dtype))


def test_non_integer_ref_labels(bh):
    with pytest.raises(TypeError, match="ref_labels"):
        bh(ref_embeddings=emb(8), ref_labels=lab(8).float())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool], ids=str)
def test_non_floating_embeddings(dtype, bh):
    with pytest.raises(TypeError, match="embeddings"):
        bh(embeddings=torch.ones(6, 3, dtype=dtype))


def test_ref_dtype_mismatch(bh):
    with pytest.raises(TypeError, match="ref_embeddings"):
        bh(ref_embeddings=emb(8, dtype=torch.float32), ref_labels=lab(8))


# ---- pairwise_distance --------------------------------------------------------------------


def test_pairwise_x_not_2d():
    with pytest.raises(ValueError, match="x"):
        fastmine.pairwise_distance(torch.randn(4, dtype=F64))


def test_pairwise_y_not_2d():
    with pytest.raises(ValueError, match="y"):
        fastmine.pairwise_distance(emb(), torch.randn(4, dtype=F64))


def test_pairwise_empty():
    with pytest.raises(ValueError, match="x"):
        fastmine.pairwise_distance(torch.empty(0, 3, dtype=F64))


def test_pairwise_feature_mismatch():
    with pytest.raises(ValueError, match="y"):
        fastmine.pairwise_distance(emb(4, 3), emb(5, 4))


def test_pairwise_unknown_metric():
    with pytest.raises(ValueError, match="metric"):
        fastmine.pairwise_distance(emb(), metric="hamming")


def test_pairwise_integer_input():
    with pytest.raises(TypeError, match="x"):
        fastmine.pairwise_distance(torch.ones(3, 2, dtype=torch.int64))


def test_pairwise_dtype_mismatch():
    with pytest.raises(TypeError, match="y"):
        fastmine.pairwise_distance(emb(dtype=torch.float32), emb())


@pytest.mark.cuda(gpu_optional=True)
def test_pairwise_other_device():
    with pytest.raises(ValueError, match="y"):
        fastmine.pairwise_distance(emb(), emb().to(OTHER_DEVICE))


# ---- double backward ----------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, {"soft": True}, {"metric": "cosine", "reduction": "none"}, {"ref": True}])
def test_batch_hard_double_backward_refused(kw):
    kw = dict(kw)
    x = emb().requires_grad_(True)
    extra = {}
    if kw.pop("ref", False):
        extra = dict(ref_embeddings=emb(8).requires_grad_(True), ref_labels=lab(8))
    loss = fastmine.batch_hard_triplet_loss(x, lab(), margin=5.0, **kw, **extra)
    (g,) = torch.autograd.grad(loss.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.sum(), x)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_pairwise_double_backward_refused(metric):
    x = emb().requires_grad_(True)
    y = emb(4).requires_grad_(True)
    d = fastmine.pairwise_distance(x, y, metric=metric)
    (g,) = torch.autograd.grad(d.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.sum(), x)


@pytest.mark.parametrize("name", ["batch_all", "contrastive"])
@pytest.mark.parametrize("kw", [{}, {"metric": "cosine"}, {"metric": "sqeuclidean"}, {"ref": True}])
def test_all_pairs_double_backward_refused(name, kw):
    kw = dict(kw)
    x = emb().requires_grad_(True)
    extra = {}
    if kw.pop("ref", False):
        extra = dict(ref_embeddings=emb(8).requires_grad_(True), ref_labels=lab(8))
    loss = LOSSES[name](x, lab(), **kw, **extra)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.sum(), x)
