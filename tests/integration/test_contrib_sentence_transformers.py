"""fastmine.contrib.sentence_transformers: the drop-ins give sentence-transformers' numbers
(loss and gradient) for each loss and distance function, on the batches its docs require and
on the degenerate ones they rule out; an unfusable distance falls back to the parent with one
warning; a SentenceTransformerTrainer run follows the same loss trajectory."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import warnings

import pytest
import torch

# Nothing may reach the network: the model is built in the test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("sentence_transformers")
from sentence_transformers.sentence_transformer import losses as st_losses  # noqa: E402

import fastmine  # noqa: E402
import fastmine.contrib.sentence_transformers as fm_st  # noqa: E402
from helpers import assert_close_rel  # noqa: E402

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
Dist = st_losses.BatchHardTripletLossDistanceFunction

# (fastmine class, sentence-transformers class, the method computing a batch's loss)
LOSSES = [
    (fm_st.BatchHardTripletLoss, st_losses.BatchHardTripletLoss, "batch_hard_triplet_loss"),
    (
        fm_st.BatchHardSoftMarginTripletLoss,
        st_losses.BatchHardSoftMarginTripletLoss,
        "batch_hard_triplet_soft_margin_loss",
    ),
    (fm_st.BatchAllTripletLoss, st_losses.BatchAllTripletLoss, "batch_all_triplet_loss"),
    (fm_st.BatchSemiHardTripletLoss, st_losses.BatchSemiHardTripletLoss, "batch_semi_hard_triplet_loss"),
]
LOSS_IDS = [ours.__name__ for ours, _, _ in LOSSES]
METRICS = {
    "euclidean": Dist.euclidean_distance,
    "sqeuclidean": fm_st.squared_euclidean_distance,
    "cosine": Dist.cosine_distance,
}


def _pair(ours, theirs, distance, margin):
    kw = {"distance_metric": distance}
    if theirs is not st_losses.BatchHardSoftMarginTripletLoss:  # it has no margin
        kw["margin"] = margin
    return ours(None, **kw), theirs(None, **kw)


def _loss_and_grad(loss_obj, method, x, labels):
    x = x.detach().clone().requires_grad_()
    loss = getattr(loss_obj, method)(labels, x)
    loss.backward()
    return loss.detach(), x.grad


def _check(ours, theirs, method, x, labels, rtol):
    got, got_grad = _loss_and_grad(ours, method, x, labels)
    want, want_grad = _loss_and_grad(theirs, method, x, labels)
    assert_close_rel(got, want, rtol, what="loss")
    assert_close_rel(got_grad, want_grad, rtol, what="gradient")
    return want


def _pk(p, k, d, seed, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)[torch.randperm(p * k, generator=g)]
    return torch.randn(p * k, d, generator=g, dtype=dtype) * scale, labels


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("ours,theirs,method", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("seed,scale,margin", [(0, 1.0, 5.0), (1, 0.3, 1.0), (2, 0.05, 0.2)])
def test_parity_on_documented_batches(ours, theirs, method, metric, seed, scale, margin):
    # Scales and margins put a varying share of the anchors / triplets in the active region.
    x, labels = _pk(8, 4, 16, seed, scale=scale)
    a, b = _pair(ours, theirs, METRICS[metric], margin)
    assert a.uses_fastmine
    _check(a, b, method, x, labels, 1e-9)


@pytest.mark.parametrize("ours,theirs,method", LOSSES, ids=LOSS_IDS)
def test_parity_in_float32_and_with_uneven_classes(ours, theirs, method):
    x, labels = _pk(16, 4, 32, 3, dtype=torch.float32, scale=0.2)
    labels = labels.clone()
    labels[labels == 15] = 14  # one class of 8 among classes of 4
    a, b = _pair(ours, theirs, Dist.euclidean_distance, 1.0)
    _check(a, b, method, x, labels, 2e-4)


# Batches sentence-transformers' docs rule out (>= 2 samples per label): labels seen once
# (an anchor without a positive), a single label (no negative anywhere), one sample.
DEGENERATE = {
    "some_singletons": torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 4, 5]),
    "all_singletons": torch.arange(6),
    "one_label": torch.zeros(6, dtype=torch.int64),
    "one_sample": torch.zeros(1, dtype=torch.int64),
}


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("ours,theirs,method", LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("batch", sorted(DEGENERATE))
def test_degenerate_batches_match_sentence_transformers(ours, theirs, method, metric, batch):
    labels = DEGENERATE[batch]
    x = torch.randn(labels.numel(), 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.4
    a, b = _pair(ours, theirs, METRICS[metric], 1.0)
    _check(a, b, method, x, labels, 1e-9)


def test_degenerate_batches_are_where_fastmines_own_conventions_differ():
    # The cases above are only telling if sentence-transformers' numbers there are not
    # fastmine's defaults (invalid anchors contribute 0, means over valid anchors / pairs).
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 0.4
    some = DEGENERATE["some_singletons"]
    st_hard = st_losses.BatchHardTripletLoss(None, margin=1.0).batch_hard_triplet_loss(some, x)
    assert abs(float(st_hard) - float(fastmine.batch_hard_triplet_loss(x, some, margin=1.0))) > 1e-3
    one = DEGENERATE["one_label"]
    st_semi = st_losses.BatchSemiHardTripletLoss(None, margin=1.0).batch_semi_hard_triplet_loss(one, x[:6])
    assert float(st_semi) > 1.0 and float(fastmine.semi_hard_triplet_loss(x[:6], one, margin=1.0)) == 0.0
    st_soft = st_losses.BatchHardSoftMarginTripletLoss(None).batch_hard_triplet_soft_margin_loss(one, x[:6])
    assert float(st_soft) == pytest.approx(0.6931471805599453)


def test_batch_all_counts_triplets_above_zero_where_sentence_transformers_counts_above_1e16():
    # The one documented difference: a triplet whose loss lies in (0, 1e-16]. Anchor 0 with
    # its positive 1 and negative 2 at the same distance 1: that triplet's loss is the margin,
    # 1e-17; every other triplet is inactive (class 1 is a tight pair away from class 0).
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.01]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    ours, theirs = _pair(fm_st.BatchAllTripletLoss, st_losses.BatchAllTripletLoss, Dist.euclidean_distance, 1e-17)
    got = float(ours.batch_all_triplet_loss(labels, x))
    want = float(theirs.batch_all_triplet_loss(labels, x))
    assert got == pytest.approx(1e-17, rel=1e-6)  # the mean over the one active triplet
    assert want == pytest.approx(0.1, rel=1e-6)  # 1e-17 / (0 counted + 1e-16)
    # With any real margin both count the same triplets.
    ours.triplet_margin = theirs.triplet_margin = 0.5
    assert float(ours.batch_all_triplet_loss(labels, x)) == pytest.approx(
        float(theirs.batch_all_triplet_loss(labels, x)), rel=1e-12
    )


@pytest.mark.parametrize(
    "distance,metric",
    [
        (Dist.euclidean_distance, "euclidean"),
        (Dist.eucledian_distance, "euclidean"),
        (functools.partial(Dist.euclidean_distance, squared=True), "sqeuclidean"),
        (functools.partial(Dist.euclidean_distance, squared=False), "euclidean"),
        (fm_st.squared_euclidean_distance, "sqeuclidean"),
        (Dist.cosine_distance, "cosine"),
        (lambda e: Dist.euclidean_distance(e), None),
        (functools.partial(Dist.euclidean_distance, squared=True, extra=1), None),
        (torch.cdist, None),
    ],
)
def test_fused_metric_recognises_sentence_transformers_functions_only(distance, metric):
    assert fm_st.fused_metric(distance) == metric


def test_partial_squared_matches_sentence_transformers_own_partial():
    x, labels = _pk(6, 3, 8, 7)
    dist = functools.partial(Dist.euclidean_distance, squared=True)
    for ours, theirs, method in LOSSES:
        a, b = _pair(ours, theirs, dist, 2.0)
        _check(a, b, method, x, labels, 1e-9)


@pytest.mark.parametrize("ours,theirs,method", LOSSES, ids=LOSS_IDS)
def test_unfusable_distance_falls_back_to_the_parent_with_one_warning(ours, theirs, method, monkeypatch):
    def manhattan(e):
        return torch.cdist(e, e, p=1)

    x, labels = _pk(5, 3, 8, 8)
    a, b = _pair(ours, theirs, manhattan, 1.0)
    assert not a.uses_fastmine
    called = []
    for name in ("batch_hard_triplet_loss", "batch_all_triplet_loss", "semi_hard_triplet_loss", "contrastive_loss"):
        monkeypatch.setattr(fastmine, name, lambda *args, _n=name, **kw: called.append(_n))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _check(a, b, method, x, labels, 1e-12)
        _check(a, b, method, x, labels, 1e-12)
    fallbacks = [w for w in caught if "manhattan" in str(w.message)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    assert "sentence-transformers' own implementation" in str(fallbacks[0].message)
    assert called == []


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("ours,theirs,method", LOSSES, ids=LOSS_IDS)
def test_fused_path_computes_through_fastmine(ours, theirs, method, metric, monkeypatch):
    # Neither the parent's computation (B x B tensors) nor its distance function may run.
    called = []

    def spy(real, name):
        def wrapper(*args, **kwargs):
            called.append((name, kwargs.get("metric")))
            return real(*args, **kwargs)

        return wrapper

    for name in ("batch_hard_triplet_loss", "batch_all_triplet_loss", "semi_hard_triplet_loss", "contrastive_loss"):
        monkeypatch.setattr(fastmine, name, spy(getattr(fastmine, name), name))
    monkeypatch.setattr(theirs, method, lambda *_a, **_k: pytest.fail("the parent's code ran"))
    a = ours(None, distance_metric=METRICS[metric])
    x, labels = _pk(4, 4, 8, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = getattr(a, method)(labels, x)
    assert value.ndim == 0 and torch.isfinite(value)
    assert called and all(m == metric for _, m in called)


def test_distance_metric_is_resolved_at_each_call():
    x, labels = _pk(6, 3, 8, 10)
    ours = fm_st.BatchHardTripletLoss(None, margin=2.0)
    theirs = st_losses.BatchHardTripletLoss(None, distance_metric=Dist.cosine_distance, margin=2.0)
    ours.distance_metric = Dist.cosine_distance
    _check(ours, theirs, "batch_hard_triplet_loss", x, labels, 1e-9)


@pytest.mark.parametrize("ours,theirs,method", LOSSES, ids=LOSS_IDS)
def test_drop_in_keeps_the_parent_interface(ours, theirs, method):
    a, b = _pair(ours, theirs, fm_st.squared_euclidean_distance, 0.7)
    assert isinstance(a, theirs)
    assert type(a).__name__ == theirs.__name__  # the model card's "loss:<name>" tag
    assert a.get_config_dict() == b.get_config_dict()
    assert a.get_config_dict()["distance_metric"] == "squared_euclidean_distance"
    assert a.citation == b.citation
    default_a, default_b = ours(None), theirs(None)
    assert default_a.get_config_dict() == default_b.get_config_dict()
    x, labels = _pk(4, 2, 8, 11)
    got = a.compute_loss_from_embeddings([x], labels)
    assert_close_rel(got, b.compute_loss_from_embeddings([x], labels), 1e-9, what="loss")


def test_labels_of_the_wrong_size_name_the_argument():
    x, labels = _pk(4, 2, 8, 12)
    with pytest.raises(ValueError, match="labels"):
        fm_st.BatchHardTripletLoss(None).batch_hard_triplet_loss(labels[:-1], x)


def test_import_is_lazy_and_fails_clearly_without_sentence_transformers():
    code = (
        "import sys, fastmine; assert 'sentence_transformers' not in sys.modules; "
        "sys.modules['sentence_transformers'] = None\n"
        "try:\n    import fastmine.contrib.sentence_transformers\nexcept ImportError as e:\n"
        "    assert 'pip install sentence-transformers' in str(e), e; print('OK')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT_DIR, timeout=120)
    assert proc.stdout.strip() == "OK", proc.stdout + proc.stderr
