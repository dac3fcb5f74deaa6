"""fastmine.nn: the loss modules against the functional ops and the float64 oracle; option
validation at construction; extra_repr; pickling and state_dict round trips."""

from __future__ import annotations

import inspect
import io
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastmine
import fastmine.nn
from fastmine import reference as R
from helpers import assert_close_rel

# module class, functional op, oracle, non-default options to try
MODULES = [
    (
        fastmine.nn.BatchHardTripletLoss,
        fastmine.batch_hard_triplet_loss,
        R.batch_hard_triplet_loss,
        dict(margin=0.7, metric="sqeuclidean", soft=True, reduction="sum"),
    ),
    (
        fastmine.nn.BatchAllTripletLoss,
        fastmine.batch_all_triplet_loss,
        R.batch_all_triplet_loss,
        dict(margin=0.1, metric="cosine", soft=False, reduction="mean"),
    ),
    (
        fastmine.nn.ContrastiveLoss,
        fastmine.contrastive_loss,
        R.contrastive_loss,
        dict(pos_margin=0.1, neg_margin=1.5, power=1, metric="euclidean", reduction="mean_nonzero"),
    ),
    (
        fastmine.nn.SemiHardTripletLoss,
        fastmine.semi_hard_triplet_loss,
        R.semi_hard_triplet_loss,
        dict(margin=0.6, metric="cosine", reduction="sum"),
    ),
]
IDS = [m[0].__name__ for m in MODULES]
REF_ARGS = ("ref_embeddings", "ref_labels", "self_offset", "return_info")


def _batch(seed, b=24, d=8, classes=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype)
    labels = torch.randint(0, classes, (b,), generator=g)
    return x, labels


@pytest.mark.parametrize("cls, fn, oracle, opts", MODULES, ids=IDS)
def test_defaults_and_options_are_the_functionals(cls, fn, oracle, opts):
    """The constructor's keyword-only options are exactly the op's, with the same defaults."""
    op_params = {
        n: p.default
        for n, p in inspect.signature(fn).parameters.items()
        if p.kind is p.KEYWORD_ONLY and n not in REF_ARGS
    }
    ctor = inspect.signature(cls.__init__).parameters
    assert {n: p.default for n, p in ctor.items() if n != "self"} == op_params
    assert all(p.kind is p.KEYWORD_ONLY for n, p in ctor.items() if n != "self")
    assert cls().options() == op_params
    assert set(opts) <= set(op_params)


@pytest.mark.parametrize("cls, fn, oracle, opts", MODULES, ids=IDS)
@given(seed=st.integers(0, 2**31 - 1), use_opts=st.booleans(), with_ref=st.booleans())
def test_module_equals_functional_and_oracle(cls, fn, oracle, opts, seed, use_opts, with_ref):
    kw = opts if use_opts else {}
    x, labels = _batch(seed)
    extra = {}
    if with_ref:
        rx, rl = _batch(seed + 1, b=30)
        rx = torch.cat([rx[:4], x, rx[4:]])
        rl = torch.cat([rl[:4], labels, rl[4:]])
        extra = dict(ref_embeddings=rx, ref_labels=rl, self_offset=4)
    module = cls(**kw)
    xk = x.clone().requires_grad_(True)
    got = module(xk, labels, **extra)
    want = fn(x, labels, **extra, **kw)
    assert torch.equal(got.detach(), want)  # same op, same options: bitwise
    xo = x.clone().requires_grad_(True)
    expected = oracle(xo, labels, **extra, **kw)
    assert_close_rel(got.detach(), expected.detach(), 1e-9, what="loss vs oracle")
    w = torch.linspace(0.5, 1.5, got.numel(), dtype=got.dtype).reshape(got.shape)
    (got * w).sum().backward()
    (expected * w).sum().backward()
    assert_close_rel(xk.grad, xo.grad, 1e-8, what="gradient vs oracle")


@pytest.mark.parametrize(
    "cls", [fastmine.nn.BatchHardTripletLoss, fastmine.nn.BatchAllTripletLoss, fastmine.nn.SemiHardTripletLoss]
)
def test_return_info_passes_through(cls):
    x, labels = _batch(3, dtype=torch.float32)
    loss, info = cls()(x, labels, return_info=True)
    _, info_f = cls.functional(x, labels, return_info=True)
    assert all(torch.equal(a, b) for a, b in zip(info, info_f))


def test_contrastive_module_rejects_return_info():
    x, labels = _batch(3, dtype=torch.float32)
    with pytest.raises(TypeError, match="return_info"):
        fastmine.nn.ContrastiveLoss()(x, labels, return_info=True)


BAD = [
    (fastmine.nn.BatchHardTripletLoss, dict(margin="0.3"), TypeError, "margin"),
    (fastmine.nn.BatchHardTripletLoss, dict(margin=float("nan")), ValueError, "margin"),
    (fastmine.nn.BatchHardTripletLoss, dict(metric="l1"), ValueError, "metric"),
    (fastmine.nn.BatchHardTripletLoss, dict(reduction="mean_positive"), ValueError, "reduction"),
    (fastmine.nn.BatchHardTripletLoss, dict(soft=1), TypeError, "soft"),
    (fastmine.nn.BatchAllTripletLoss, dict(reduction="none"), ValueError, "reduction"),
    (fastmine.nn.BatchAllTripletLoss, dict(margin=True), TypeError, "margin"),
    (fastmine.nn.ContrastiveLoss, dict(power=0), ValueError, "power"),
    (fastmine.nn.ContrastiveLoss, dict(neg_margin=float("inf")), ValueError, "neg_margin"),
    (fastmine.nn.ContrastiveLoss, dict(pos_margin=None), TypeError, "pos_margin"),
    (fastmine.nn.ContrastiveLoss, dict(reduction="none"), ValueError, "reduction"),
    (fastmine.nn.SemiHardTripletLoss, dict(reduction="mean_nonzero"), ValueError, "reduction"),
    (fastmine.nn.SemiHardTripletLoss, dict(soft=True), TypeError, "soft"),
]


@pytest.mark.parametrize("cls, kw, exc, name", BAD, ids=[f"{b[0].__name__}-{b[3]}" for b in BAD])
def test_bad_options_fail_at_construction(cls, kw, exc, name):
    with pytest.raises(exc, match=name):
        cls(**kw)


@pytest.mark.parametrize("cls", [m[0] for m in MODULES], ids=IDS)
def test_options_are_keyword_only_and_known(cls):
    with pytest.raises(TypeError):
        cls(0.3)
    with pytest.raises(TypeError):
        cls(margn=0.3)


@pytest.mark.parametrize("cls, fn, oracle, opts", MODULES, ids=IDS)
def test_extra_repr_shows_the_options(cls, fn, oracle, opts):
    module = cls(**opts)
    text = repr(module)
    assert text.startswith(cls.__name__ + "(")
    for name, value in opts.items():
        assert getattr(module, name) == value
        assert f"{name}={getattr(module, name)!r}" in text, (name, text)


@pytest.mark.parametrize("cls, fn, oracle, opts", MODULES, ids=IDS)
def test_pickle_and_state_dict_round_trip(cls, fn, oracle, opts):
    module = cls(**opts)
    x, labels = _batch(5, dtype=torch.float32)
    clone = pickle.loads(pickle.dumps(module))
    assert type(clone) is cls and clone.options() == module.options()
    assert torch.equal(clone(x, labels), module(x, labels))
    # torch.save of the whole module too (what checkpointing a model with its loss does)
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False).options() == module.options()
    # state_dict carries the options: a default-built module becomes the configured one
    fresh = cls()
    assert fresh.options() != module.options()
    fresh.load_state_dict(module.state_dict())
    assert fresh.options() == module.options()
    assert torch.equal(fresh(x, labels), module(x, labels))


def test_state_dict_with_bad_options_is_rejected():
    state = fastmine.nn.BatchHardTripletLoss().state_dict()
    key = next(k for k in state if k.endswith("_extra_state"))
    state[key] = dict(state[key], reduction="bogus")
    with pytest.raises(ValueError, match="reduction"):
        fastmine.nn.BatchHardTripletLoss().load_state_dict(state)


def test_inside_a_model_state_dict():
    """A loss held by a model: the model's checkpoint restores the loss's options."""
    model = torch.nn.ModuleDict({"head": torch.nn.Linear(4, 3), "loss": fastmine.nn.BatchHardTripletLoss(margin=0.9)})
    other = torch.nn.ModuleDict({"head": torch.nn.Linear(4, 3), "loss": fastmine.nn.BatchHardTripletLoss()})
    other.load_state_dict(model.state_dict())
    assert other["loss"].margin == 0.9


def test_submodule_import():
    import importlib

    assert importlib.import_module("fastmine.nn") is fastmine.nn
    assert fastmine.nn.BatchHardTripletLoss.__module__ == "fastmine.nn"


def test_compiles_fullgraph():
    module = fastmine.nn.BatchHardTripletLoss(margin=0.2)
    x, labels = _batch(7, dtype=torch.float32)
    compiled = torch.compile(module, fullgraph=True)
    assert torch.allclose(compiled(x, labels), module(x, labels))
