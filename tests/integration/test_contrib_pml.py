"""fastmine.contrib.pml: the drop-ins give pytorch-metric-learning's numbers (loss and
gradient) for every supported configuration, the same training trajectory when swapped into
a PML training loop, and clear errors for unsupported options."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
from pytorch_metric_learning import distances, reducers, regularizers  # noqa: E402

import fastmine.contrib.pml as fm_pml  # noqa: E402
from helpers import assert_close_rel  # noqa: E402

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRIPLET_CONFIGS = [
    dict(),
    dict(margin=0.2, distance=distances.LpDistance(normalize_embeddings=False)),
    dict(margin=0.1, reducer=reducers.MeanReducer()),
    dict(margin=0.3, reducer=reducers.SumReducer(), smooth_loss=True),
    dict(margin=0.15, distance=distances.CosineSimilarity()),
    dict(margin=0.5, distance=distances.LpDistance(power=2, normalize_embeddings=False)),
]
CONTRASTIVE_CONFIGS = [
    dict(),
    dict(pos_margin=0.2, neg_margin=0.8, distance=distances.LpDistance(normalize_embeddings=False)),
    dict(pos_margin=0.9, neg_margin=0.3, distance=distances.CosineSimilarity()),
    dict(neg_margin=1.5, reducer=reducers.SumReducer(), distance=distances.LpDistance(normalize_embeddings=False)),
    dict(pos_margin=0.1, neg_margin=2.0, distance=distances.LpDistance(power=2)),
]
PAIRS = [(pml_losses.TripletMarginLoss, fm_pml.TripletMarginLoss, c) for c in TRIPLET_CONFIGS] + [
    (pml_losses.ContrastiveLoss, fm_pml.ContrastiveLoss, c) for c in CONTRASTIVE_CONFIGS
]
IDS = [f"{a.__name__}-{i}" for i, (a, _, _) in enumerate(PAIRS)]


def _batch(seed, b, d=6, classes=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (b,), generator=g))


def _loss_and_grad(loss_fn, x, labels, **kw):
    x = x.clone().requires_grad_(True)
    ref = kw.get("ref_emb")
    if ref is not None:
        kw["ref_emb"] = ref = ref.clone().requires_grad_(True)
    loss = loss_fn(x, labels, **kw)
    loss.backward()
    # an unused input (PML's zero loss ignores ref_emb) gets no gradient: that is zeros
    gx = torch.zeros_like(x) if x.grad is None else x.grad
    gr = None if ref is None else (torch.zeros_like(ref) if ref.grad is None else ref.grad)
    return loss.detach(), gx, gr


@pytest.mark.parametrize("pml_cls, fm_cls, config", PAIRS, ids=IDS)
@given(
    seed=st.integers(0, 2**31 - 1), b=st.integers(1, 24), ref=st.sampled_from(["none", "other", "same_labels_object"])
)
def test_same_numbers_as_pml(pml_cls, fm_cls, config, seed, b, ref):
    x, labels = _batch(seed, b)
    kw = {}
    if ref == "other":
        kw = dict(zip(("ref_emb", "ref_labels"), _batch(seed + 1, 17)))
    elif ref == "same_labels_object":  # PML drops the diagonal when ref_labels is labels
        kw = dict(ref_emb=x.flip(1).clone(), ref_labels=labels)
    want = _loss_and_grad(pml_cls(**config), x, labels, **kw)
    got = _loss_and_grad(fm_cls(**config), x, labels, **kw)
    what = f"{pml_cls.__name__}({config}) ref={ref}"
    assert_close_rel(got[0], want[0], 1e-9, floor=1e-12, what=f"loss {what}")
    scale = float(want[1].abs().max()) if want[1].numel() else 0.0
    assert_close_rel(got[1], want[1], 1e-8, floor=max(scale, 1e-12), what=f"grad {what}")
    if kw:
        scale = float(want[2].abs().max())
        assert_close_rel(got[2], want[2], 1e-8, floor=max(scale, 1e-12), what=f"ref grad {what}")


@pytest.mark.parametrize("pml_cls, fm_cls, config", PAIRS, ids=IDS)
def test_drop_in_training_trajectory(pml_cls, fm_cls, config):
    """A PML-style loop (fixed seed, small MLP, a few SGD steps): swapping in fastmine's
    class gives the same loss trajectory."""

    def trajectory(loss_cls):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        loss_func = loss_cls(**config)
        g = torch.Generator().manual_seed(1)
        out = []
        for _ in range(8):
            data = torch.randn(32, 10, generator=g, dtype=torch.float64)
            labels = torch.randint(0, 5, (32,), generator=g)
            loss = loss_func(model(data), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
        return torch.tensor(out, dtype=torch.float64)

    want, got = trajectory(pml_cls), trajectory(fm_cls)
    assert bool((want[1:] != want[0]).any()), "the loop must actually train"
    assert_close_rel(got, want, 1e-7, floor=1e-9, what="loss trajectory")


def test_they_are_pml_losses():
    assert isinstance(fm_pml.TripletMarginLoss(), pml_losses.TripletMarginLoss)
    assert isinstance(fm_pml.ContrastiveLoss(), pml_losses.ContrastiveLoss)
    assert fm_pml.TripletMarginLoss().margin == pml_losses.TripletMarginLoss().margin == 0.05


@pytest.mark.parametrize("fm_cls", [fm_pml.TripletMarginLoss, fm_pml.ContrastiveLoss])
def test_indices_tuple_is_pmls_own_computation(fm_cls):
    x, labels = _batch(3, 16)
    a = torch.tensor([0, 1, 2])
    p = torch.tensor([5, 6, 7])
    n = torch.tensor([9, 10, 11])
    pml_cls = pml_losses.TripletMarginLoss if fm_cls is fm_pml.TripletMarginLoss else pml_losses.ContrastiveLoss
    assert torch.equal(fm_cls()(x, labels, (a, p, n)), pml_cls()(x, labels, (a, p, n)))


UNSUPPORTED = [
    (fm_pml.TripletMarginLoss, dict(swap=True), "swap"),
    (fm_pml.TripletMarginLoss, dict(triplets_per_anchor=10), "triplets_per_anchor"),
    (fm_pml.TripletMarginLoss, dict(distance=distances.LpDistance(p=1)), "distance"),
    (fm_pml.TripletMarginLoss, dict(distance=distances.SNRDistance()), "distance"),
    (fm_pml.TripletMarginLoss, dict(distance=distances.DotProductSimilarity()), "distance"),
    (fm_pml.TripletMarginLoss, dict(reducer=reducers.ThresholdReducer(low=0.1)), "reducer"),
    (fm_pml.TripletMarginLoss, dict(embedding_regularizer=regularizers.LpRegularizer()), "embedding_regularizer"),
    (fm_pml.ContrastiveLoss, dict(reducer=reducers.MeanReducer()), "reducer"),
    (fm_pml.ContrastiveLoss, dict(distance=distances.LpDistance(power=3)), "distance"),
]


@pytest.mark.parametrize(
    "cls, kw, match", UNSUPPORTED, ids=[f"{c.__name__}-{m}-{i}" for i, (c, _, m) in enumerate(UNSUPPORTED)]
)
def test_unsupported_options_raise(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


def test_changed_attribute_is_checked_at_call():
    loss_fn = fm_pml.TripletMarginLoss()
    loss_fn.swap = True
    with pytest.raises(ValueError, match="swap"):
        loss_fn(*_batch(0, 8))


def test_labels_required():
    with pytest.raises(ValueError, match="labels"):
        fm_pml.ContrastiveLoss()(_batch(0, 8)[0])


def test_import_is_lazy_and_fails_clearly_without_pml():
    code = (
        "import sys, fastmine; assert 'pytorch_metric_learning' not in sys.modules; "
        "sys.modules['pytorch_metric_learning'] = None\n"
        "try:\n    import fastmine.contrib.pml\nexcept ImportError as e:\n"
        "    assert 'pip install pytorch-metric-learning' in str(e), e; print('OK')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT_DIR, timeout=120)
    assert proc.stdout.strip() == "OK", proc.stdout + proc.stderr
