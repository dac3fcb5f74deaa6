"""fastmine.nn's focal-loss modules and CentroidTripletLoss (which owns its centroids):
against the functional ops and the float64 oracle, option validation at construction,
extra_repr, pickling and state_dict round trips, the centroid parameter's gradient."""

from __future__ import annotations

import inspect
import io
import pickle

import pytest
import torch

import fastmine
import fastmine.nn
from fastmine import reference as R
from helpers import assert_close_rel


def _logits_and_targets(kind, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    if kind == "softmax":
        x = torch.randn(12, 5, generator=g, dtype=dtype) * 3
        return x, torch.randint(0, 5, (12,), generator=g)
    x = torch.randn(6, 7, generator=g, dtype=dtype) * 3
    if kind == "sigmoid":
        return x, (torch.rand(6, 7, generator=g) > 0.7).to(dtype)
    return x, torch.randint(0, 2, (6, 7), generator=g) * 2 - 1


# module class, functional op, oracle, input kind, non-default options
FOCAL = [
    (
        fastmine.nn.SigmoidFocalLoss,
        fastmine.sigmoid_focal_loss,
        R.sigmoid_focal_loss,
        "sigmoid",
        dict(alpha=0.6, gamma=1.5, reduction="mean"),
    ),
    (
        fastmine.nn.SoftmaxFocalLoss,
        fastmine.softmax_focal_loss,
        R.softmax_focal_loss,
        "softmax",
        dict(alpha=0.4, gamma=0.5, reduction="none"),
    ),
    (
        fastmine.nn.FocalStarLoss,
        fastmine.focal_star_loss,
        R.focal_star_loss,
        "star",
        dict(gamma=3.0, beta=0.5, reduction="sum"),
    ),
]
FOCAL_IDS = [f[0].__name__ for f in FOCAL]


@pytest.mark.parametrize("cls, fn, oracle, kind, opts", FOCAL, ids=FOCAL_IDS)
def test_focal_defaults_are_the_functionals(cls, fn, oracle, kind, opts):
    op_params = {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    ctor = inspect.signature(cls.__init__).parameters
    assert {n: p.default for n, p in ctor.items() if n != "self"} == op_params
    assert all(p.kind is p.KEYWORD_ONLY for n, p in ctor.items() if n != "self")
    assert cls().options() == op_params
    assert set(opts) <= set(op_params)


@pytest.mark.parametrize("use_opts", [False, True])
@pytest.mark.parametrize("cls, fn, oracle, kind, opts", FOCAL, ids=FOCAL_IDS)
def test_focal_module_equals_functional_and_oracle(cls, fn, oracle, kind, opts, use_opts):
    kw = opts if use_opts else {}
    x, t = _logits_and_targets(kind, 3)
    xk = x.clone().requires_grad_(True)
    got = cls(**kw)(xk, t)
    assert torch.equal(got.detach(), fn(x, t, **kw))  # same op, same options: bitwise
    xo = x.clone().requires_grad_(True)
    want = oracle(xo, t, **kw)
    assert_close_rel(got.detach(), want.detach(), 1e-9, what="loss vs oracle")
    w = torch.linspace(0.5, 1.5, got.numel(), dtype=got.dtype).reshape(got.shape)
    (got * w).sum().backward()
    (want * w).sum().backward()
    assert_close_rel(xk.grad, xo.grad, 1e-8, what="gradient vs oracle")


def test_softmax_focal_tensor_alpha_is_a_buffer():
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], dtype=torch.float64)
    module = fastmine.nn.SoftmaxFocalLoss(alpha=alpha, gamma=1.0)
    assert "alpha" in dict(module.named_buffers())
    alpha[0] = 5.0  # the module keeps its own copy
    assert float(module.alpha[0]) == pytest.approx(0.1)
    x, t = _logits_and_targets("softmax", 4)
    want = fastmine.softmax_focal_loss(x, t, alpha=module.alpha, gamma=1.0)
    assert torch.equal(module(x, t), want)
    # saved by state_dict as a buffer (not duplicated in the options' extra state)
    state = module.state_dict()
    assert torch.equal(state["alpha"], module.alpha)
    extra = next(v for k, v in state.items() if k.endswith("_extra_state"))
    assert set(extra) == {"gamma", "reduction"}
    other = fastmine.nn.SoftmaxFocalLoss(alpha=torch.ones(5, dtype=torch.float64))
    other.load_state_dict(state)
    assert torch.equal(other.alpha, module.alpha) and other.gamma == 1.0
    assert torch.equal(other(x, t), want)
    assert "gamma=1.0" in repr(module) and "tensor" not in repr(module)


FOCAL_BAD = [
    (fastmine.nn.SigmoidFocalLoss, dict(alpha=1.5), ValueError, "alpha"),
    (fastmine.nn.SigmoidFocalLoss, dict(gamma=-1.0), ValueError, "gamma"),
    (fastmine.nn.SigmoidFocalLoss, dict(reduction="mean_positive"), ValueError, "reduction"),
    (fastmine.nn.SoftmaxFocalLoss, dict(alpha=torch.ones(2, 2)), ValueError, "alpha"),
    (fastmine.nn.SoftmaxFocalLoss, dict(alpha=torch.ones(3, dtype=torch.int64)), TypeError, "alpha"),
    (fastmine.nn.SoftmaxFocalLoss, dict(alpha=torch.ones(3, requires_grad=True)), ValueError, "alpha"),
    (fastmine.nn.SoftmaxFocalLoss, dict(alpha="0.5"), TypeError, "alpha"),
    (fastmine.nn.FocalStarLoss, dict(gamma=0.0), ValueError, "gamma"),
    (fastmine.nn.FocalStarLoss, dict(beta=float("nan")), ValueError, "beta"),
]


@pytest.mark.parametrize(
    "cls, kw, exc, name", FOCAL_BAD, ids=[f"{b[0].__name__}-{b[3]}-{i}" for i, b in enumerate(FOCAL_BAD)]
)
def test_focal_bad_options_fail_at_construction(cls, kw, exc, name):
    with pytest.raises(exc, match=name):
        cls(**kw)


@pytest.mark.parametrize("cls, fn, oracle, kind, opts", FOCAL, ids=FOCAL_IDS)
def test_focal_repr_pickle_and_state_dict(cls, fn, oracle, kind, opts):
    module = cls(**opts)
    for name, value in opts.items():
        assert f"{name}={value!r}" in repr(module)
    x, t = _logits_and_targets(kind, 5, torch.float32)
    clone = pickle.loads(pickle.dumps(module))
    assert clone.options() == module.options() and torch.equal(clone(x, t), module(x, t))
    fresh = cls()
    assert fresh.options() != module.options()
    fresh.load_state_dict(module.state_dict())
    assert fresh.options() == module.options()


# --- CentroidTripletLoss ---------------------------------------------------------------


def _embedded(seed, b=20, d=8, c=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.randint(0, c, (b,), generator=g)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_centroid_module_equals_functional_and_oracle(reduction):
    x, y = _embedded(0)
    module = fastmine.nn.CentroidTripletLoss(5, 8, scale=2.0, reduction=reduction).double()
    assert isinstance(module.centroids, torch.nn.Parameter)
    assert torch.equal(module.centroids.detach(), fastmine.onehot_centroids(5, 8, scale=2.0).double())
    xk = x.clone().requires_grad_(True)
    got = module(xk, y)
    assert torch.equal(
        got.detach(), fastmine.centroid_triplet_loss(x, y, module.centroids.detach(), reduction=reduction)
    )
    xo = x.clone().requires_grad_(True)
    co = module.centroids.detach().clone().requires_grad_(True)
    want = R.centroid_triplet_loss(xo, y, co, reduction=reduction)
    assert_close_rel(got.detach(), want.detach(), 1e-9, what="loss vs oracle")
    w = torch.linspace(0.5, 1.5, got.numel(), dtype=got.dtype).reshape(got.shape)
    (got * w).sum().backward()
    (want * w).sum().backward()
    assert_close_rel(xk.grad, xo.grad, 1e-8, what="embedding gradient vs oracle")
    assert_close_rel(module.centroids.grad, co.grad, 1e-8, what="centroid gradient vs oracle")


def test_centroids_learn_and_checkpoint():
    """An optimiser step moves the centroids; state_dict carries them to a fresh module."""
    x, y = _embedded(1, dtype=torch.float32)
    module = fastmine.nn.CentroidTripletLoss(5, 8)
    opt = torch.optim.SGD(module.parameters(), lr=0.5)
    module(x, y).backward()
    opt.step()
    assert not torch.equal(module.centroids.detach(), fastmine.onehot_centroids(5, 8))
    fresh = fastmine.nn.CentroidTripletLoss(5, 8)
    fresh.load_state_dict(module.state_dict())
    assert torch.equal(fresh.centroids, module.centroids)
    assert torch.equal(fresh(x, y), module(x, y))
    clone = pickle.loads(pickle.dumps(module))
    assert torch.equal(clone.centroids, module.centroids)
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False).centroids, module.centroids)


def test_fixed_centroids_are_a_buffer():
    x, y = _embedded(2, dtype=torch.float32)
    module = fastmine.nn.CentroidTripletLoss(5, 8, learnable=False, reduction="sum")
    assert list(module.parameters()) == [] and "centroids" in dict(module.named_buffers())
    assert "centroids" in module.state_dict()
    xk = x.clone().requires_grad_(True)
    module(xk, y).backward()
    assert xk.grad is not None and module.centroids.grad is None
    text = repr(module)
    assert "num_classes=5" in text and "dim=8" in text and "learnable=False" in text
    assert "reduction='sum'" in text


def test_centroids_follow_the_embeddings_dtype():
    """float32 parameters with float64 embeddings: computed in float64, the gradient still
    reaches the float32 parameter."""
    x, y = _embedded(3)
    module = fastmine.nn.CentroidTripletLoss(5, 8)
    loss = module(x, y)
    assert loss.dtype == torch.float64
    loss.backward()
    assert module.centroids.grad is not None and module.centroids.grad.dtype == torch.float32
    want = fastmine.centroid_triplet_loss(x, y, module.centroids.detach().double())
    assert torch.equal(loss.detach(), want)


@pytest.mark.parametrize(
    "args, kw, exc, name",
    [
        ((1, 8), {}, ValueError, "num_classes"),
        ((5, 4), {}, ValueError, "dim"),
        ((5.0, 8), {}, TypeError, "num_classes"),
        ((5, 8), dict(learnable=1), TypeError, "learnable"),
        ((5, 8), dict(reduction="mean_nonzero"), ValueError, "reduction"),
        ((5, 8), dict(scale=float("inf")), ValueError, "scale"),
    ],
)
def test_centroid_bad_options_fail_at_construction(args, kw, exc, name):
    with pytest.raises(exc, match=name):
        fastmine.nn.CentroidTripletLoss(*args, **kw)


def test_centroid_labels_out_of_range_name_the_argument():
    x, _ = _embedded(4, dtype=torch.float32)
    with pytest.raises(ValueError, match="labels"):
        fastmine.nn.CentroidTripletLoss(5, 8)(x, torch.full((20,), 5))
