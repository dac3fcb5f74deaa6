"""What every public op owes, run over the table of public ops (support/public_ops.py) on every
device of the ``device`` fixture (cuda cases skip without a GPU):

* oracle parity: values and gradients against the float64 oracle (fastmine/reference.py),
  in every dtype, on ordinary and degenerate batches (one class, all labels distinct, one
  row); a batch with nothing to learn from gives exact zeros, still attached to the graph;
* return_info: the mined indices, counts and distances are the oracle's, on the input's device;
* an empty batch: refused with an error naming the argument, or the oracle's result;
* torch.library.opcheck of every raw op the call reaches, forward and backward;
* torch.compile(fullgraph=True), through AOT autograd and through inductor, gives the eager
  values, gradients and info;
* a NaN or an infinity in any differentiable input never gives a finite loss, on ordinary
  and degenerate batches: the non-finite entries of the result are the oracle's, a NaN
  stays a NaN (a miner: never a finite distance on the triplets it mines, or a ValueError);
* bitwise determinism, in every dtype, info included: the same call again and again, and
  (on the CPU) on one thread and on all; on a large batch and on a batch whose hub row sums
  a gradient contribution from every anchor;
* double backward raises a clear error;
* bad input: the documented exception, with a message that names the argument.

Deep, op-specific checks (hypothesis sweeps, tie rules, adversarial and large inputs) are in
tests/ops/; this file is what a new op must pass on day one.
"""

from __future__ import annotations

import contextlib
import inspect
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from public_ops import BY_NAME, DIFFERENTIABLE, OPS, PublicOp, gen, variant_id

F64 = torch.float64
HALF = (torch.float16, torch.bfloat16)
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# The kernels' accuracy against the float64 oracle, relative to the result's magnitude
# (half inputs: against the oracle on the same rounded values, docs/semantics.md's 2e-2).
RTOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 2e-2}


def _cases(kinds=None, first_variant_only=False, losses_only=False):
    out = []
    for op in OPS:
        if losses_only and op.miner:
            continue
        variants = op.variants[:1] if first_variant_only else op.variants
        for i, v in enumerate(variants):
            for kind in kinds if kinds is not None else [None]:
                if kind is not None and kind not in op.kinds:
                    continue
                vid = f"{op.name}-{i}-{variant_id(v)}" + (f"-{kind}" if kind else "")
                out.append(pytest.param(op, v, kind, id=vid))
    return out


def _tensors(out):
    """The op's result as a tuple of tensors (a loss, a miner's (a, p, n), or a loss and the
    fields of its info)."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple):
        return (out[0], *out[1])
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _takes_info(op: PublicOp) -> bool:
    return "return_info" in inspect.signature(op.fn).parameters


def _result_dtype(op: PublicOp, dtype):
    return op.half_result if dtype in HALF and op.half_result is not None else dtype


def _grad_inputs(kw):
    return [k for k in DIFFERENTIABLE if isinstance(kw.get(k), torch.Tensor) and kw[k].is_floating_point()]


def _fresh(kw, dtype=None, device=None, requires_grad=False):
    """A copy of the call's tensors (cast to `dtype` where floating; labels stay), the
    differentiable ones made leaves that require grad."""
    out = {}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().clone()
            if device is not None:
                v = v.to(device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            if requires_grad and k in DIFFERENTIABLE and v.is_floating_point():
                v.requires_grad_(True)
        out[k] = v
    return out


def _run(op: PublicOp, kw, *, oracle=False, grads=True, info=False):
    """(outputs, gradients of sum(loss * w) to each differentiable input) of one call; w is a
    fixed weight per loss element, so that "none" reductions are checked element by element.
    With info, the call returns its info too, whose fields follow the loss in the outputs."""
    kw = _fresh(kw, requires_grad=grads and not op.miner)
    if info:
        kw["return_info"] = True
    out = _tensors(op.oracle_call(kw) if oracle else op.call(kw))
    if op.miner or not grads:
        return tuple(t.detach() for t in out), ()
    loss = out[0]
    names = _grad_inputs(kw)
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=F64).reshape(loss.shape).to(loss.dtype).to(loss.device)
    if loss.requires_grad:
        got = torch.autograd.grad((loss * w).sum(), [kw[n] for n in names], allow_unused=True)
    else:
        got = [None] * len(names)
    gs = tuple(torch.zeros_like(kw[n]) if g is None else g for n, g in zip(names, got))
    return tuple(t.detach() for t in out), gs


def _assert_close(actual, expected, rtol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.detach().to("cpu", F64)
    expected = expected.detach().to("cpu", F64)
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True, msg=lambda m: f"{what}: {m}"
    )


def _assert_bitwise(a, b, what):
    assert len(a) == len(b), what
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape, f"{what}[{i}]"
        if u.is_floating_point():  # NaN bits compare too
            u, v = u.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)
        assert torch.equal(u, v), f"{what}[{i}] differs"


# ---- oracle parity, with gradients, on ordinary and degenerate batches ------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op, variant, kind", _cases(kinds=("random", "one_class", "distinct", "single")))
def test_matches_oracle(op, variant, kind, dtype, device):
    kw = op.make(gen(0), kind, dtype, device, variant)
    out, grads = _run(op, kw)
    # the oracle on the very values the op saw (half inputs: rounded), in float64
    exp, exp_grads = _run(op, _fresh(kw, dtype=F64, device="cpu"), oracle=True)
    assert len(out) == len(exp)
    for t in out:
        assert t.device.type == device.type, "the result lives on the input's device"
    if op.miner:
        for name, u, v in zip("apn", out, exp):
            assert u.dtype == torch.int64, name
            assert torch.equal(u.cpu(), v), f"{name}: {u.tolist()} != {v.tolist()}"
        return
    rtol = RTOL[dtype]
    assert out[0].dtype == _result_dtype(op, dtype)
    _assert_close(out[0], exp[0], rtol, "loss")
    names = _grad_inputs(kw)
    for name, g, e in zip(names, grads, exp_grads):
        assert g.dtype == dtype, name
        _assert_close(g, e, rtol if dtype in HALF else rtol * 10, f"gradient of {name}")
    # Every loss, also that of a batch with nothing to learn from (no valid anchor, no pair),
    # is attached to the inputs, not a constant: backward() accepts it. Where the oracle's
    # loss and gradients are exactly zero, the op's are too, not zero up to rounding.
    kw = _fresh(kw, requires_grad=True)
    assert op.call(kw).requires_grad, "the loss is attached to the graph"
    if not (exp[0] == 0).all() or not all(bool((e == 0).all()) for e in exp_grads):
        return
    assert bool((out[0] == 0).all()), f"the oracle's loss is exactly 0, the op's {out[0]}"
    for name, g in zip(names, grads):
        assert bool((g == 0).all()), f"the oracle's gradient of {name} is exactly 0"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "op, variant, kind",
    [p for p in _cases(kinds=("random", "one_class", "distinct", "single")) if _takes_info(p.values[0])],
)
def test_info_matches_oracle(op, variant, kind, dtype, device):
    """return_info: the same loss, and an info whose indices, masks and counts are the
    oracle's exactly and whose distances are the oracle's to the dtype's tolerance, every
    field on the input's device."""
    kw = op.make(gen(0), kind, dtype, device, variant)
    out, _ = _run(op, kw, info=True)
    exp, _ = _run(op, _fresh(kw, dtype=F64, device="cpu"), oracle=True, info=True)
    plain, _ = _run(op, kw)
    _assert_bitwise(out[:1], plain, "the loss with return_info")
    fields = type(op.call(dict(kw, return_info=True))[1])._fields
    assert len(out) == len(exp) == 1 + len(fields)
    for name, u, v in zip(fields, out[1:], exp[1:]):
        assert u.device.type == device.type, f"info.{name} lives on the input's device"
        if v.is_floating_point():
            _assert_close(u, v, RTOL[dtype], f"info.{name}")
        else:
            assert u.dtype == v.dtype, f"info.{name}: {u.dtype}, the oracle's {v.dtype}"
            assert torch.equal(u.cpu(), v), f"info.{name}: {u.tolist()} != {v.tolist()}"


@pytest.mark.parametrize("op", [pytest.param(op, id=op.name) for op in OPS])
def test_empty_batch(op, device):
    kw = op.make(gen(0), "random", torch.float64, device, {})
    first = next(iter(kw))  # embeddings, x, logits: the batch dimension comes first
    lead = kw[first].shape[0]
    empty = {k: (v[:0] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == lead else v) for k, v in kw.items()}
    if op.empty is not None:
        error, match = op.empty
        with pytest.raises(error, match=match):
            op.call(empty)
        return
    for variant in op.variants:
        call = op.make(gen(0), "random", torch.float64, device, variant)
        call = {
            k: (v[:0] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == lead else v) for k, v in call.items()
        }
        out, grads = _run(op, call)
        exp, exp_grads = _run(op, _fresh(call, device="cpu"), oracle=True)
        _assert_close(out[0], exp[0], 1e-12, f"empty batch, {variant_id(variant)}")
        for g in grads:
            assert g.shape[0] == 0


@pytest.mark.parametrize("op, variant, kind", _cases(losses_only=True))
def test_double_backward_is_refused(op, variant, kind, device):
    kw = _fresh(op.make(gen(6), "random", F64, device, variant), requires_grad=True)
    (loss,) = _tensors(op.call(kw))
    x = kw[_grad_inputs(kw)[0]]
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=F64, device=loss.device).reshape(loss.shape)
    (g,) = torch.autograd.grad((loss * w).sum(), x, create_graph=True)
    # The error names the public function that was called, not the raw op behind it.
    with pytest.raises(RuntimeError, match=rf"fastmine\.{op.name}: double backward"):
        torch.autograd.grad(g.sum(), x)


# ---- custom-op machinery: opcheck, torch.compile ---------------------------------------------


class _RecordRawOps(TorchDispatchMode):
    """Records every call of a torch.ops.fastmine op: (op, args, kwargs, which args required
    grad), so that opcheck sees exactly what the public function passes."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "fastmine":
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def _copy_arg(a, requires_grad):
    if not isinstance(a, torch.Tensor):
        return a
    a = a.detach().clone()
    return a.requires_grad_(True) if requires_grad and a.is_floating_point() else a


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("op, variant, kind", _cases())
def test_opcheck_every_raw_op_reached(op, variant, kind, dtype, device):
    kw = _fresh(op.make(gen(1), "random", dtype, device, variant), requires_grad=not op.miner)
    with _RecordRawOps() as rec:
        (first, *_) = _tensors(op.call(kw))
        if first.requires_grad:
            first.sum().backward()
    assert rec.calls, f"{op.name} reached no torch.ops.fastmine op"
    for func, args, kwargs in rec.calls:
        forward = not func.name().endswith("_backward")
        args = tuple(_copy_arg(a, forward and getattr(a, "requires_grad", False)) for a in args)
        torch.library.opcheck(func, args, {k: _copy_arg(v, False) for k, v in kwargs.items()})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("op, variant, kind", _cases())
def test_compile_fullgraph_matches_eager(op, variant, kind, backend, device):
    """One graph, no break, through the op's fake kernel; the compiled call gives the eager
    values, gradients and info, and the oracle's loss."""
    torch._dynamo.reset()
    kw = op.make(gen(2), "random", torch.float32, device, variant)
    names = sorted(k for k, v in kw.items() if isinstance(v, torch.Tensor))
    rest = {k: v for k, v in kw.items() if k not in names}
    if _takes_info(op):
        rest["return_info"] = True

    def f(*tensors):
        return op.fn(**dict(zip(names, tensors)), **rest)

    def both(fn):
        fresh = _fresh(kw, requires_grad=not op.miner)
        out = _tensors(fn(*[fresh[n] for n in names]))
        if op.miner:
            return out
        diff = _grad_inputs(fresh)
        gs = torch.autograd.grad(out[0].sum(), [fresh[n] for n in diff])
        return (*(t.detach() for t in out), *gs)

    eager = both(f)
    compiled = both(torch.compile(f, fullgraph=True, backend=backend))
    assert len(eager) == len(compiled)
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    exp, _ = _run(op, _fresh(kw, dtype=F64, device="cpu"), oracle=True, grads=False)
    if op.miner:
        for name, u, v in zip("apn", compiled, exp):
            assert torch.equal(u.cpu(), v), f"compiled {name}: {u.tolist()} != {v.tolist()}"
    else:
        _assert_close(compiled[0], exp[0], RTOL[torch.float32], "compiled loss vs the oracle")


# ---- NaN ----------------------------------------------------------------------------------------


def _mined_distances(kw, out):
    """d(a, n) - d(a, p) of the mined triplets, from the oracle's distances."""
    from fastmine import reference as R

    a, p, n = (t.cpu() for t in out)
    x = kw["embeddings"].detach().cpu().double()
    ref = kw.get("ref_embeddings")
    ref = x if ref is None else ref.detach().cpu().double()
    d = R.pairwise_distance(x, ref, metric=kw.get("metric", "euclidean"))
    return d[a, n] - d[a, p]


def _nan_cases():
    """Each differentiable input poisoned in its first, middle and last row on an ordinary
    batch, and wholly (NaN). On each degenerate batch of the op, the batch's middle row:
    there, nothing else to learn from, only the rule "a non-finite embedding gives a
    non-finite loss" carries it. A batch with nothing to mine gives a miner no triplet to
    carry it."""
    out = []
    for param in _cases():
        op, variant, _ = param.values
        for kind in ("random", "one_class", "distinct", "single"):
            if kind not in op.kinds or (op.miner and kind != "random"):
                continue
            probe = op.make(gen(0), kind, F64, torch.device("cpu"), variant)
            for name in _grad_inputs(probe)[: None if kind == "random" else 1]:
                n = probe[name].shape[0]
                rows = sorted({0, n // 2, n - 1}) if kind == "random" else [n // 2]
                cases = [(row, bad) for row in rows for bad in op.non_finite]
                if kind == "random":
                    cases.append(("all", "nan"))
                for row, bad in cases:
                    out.append(
                        pytest.param(
                            op, variant, kind, name, row, float(bad), id=f"{param.id}-{kind}-{name}[{row}]-{bad}"
                        )
                    )
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("op, variant, kind, where, row, bad", _nan_cases())
def test_non_finite_input_never_gives_a_finite_loss(op, variant, kind, where, row, bad, dtype, device):
    kw = op.make(gen(3), kind, dtype, device, variant)
    poisoned = kw[where].clone()
    if row == "all":
        poisoned.fill_(bad)
    else:
        poisoned[row].view(-1)[poisoned[row].numel() // 2] = bad
    kw[where] = poisoned
    if op.nan == "raises":
        with pytest.raises(ValueError, match="non-finite"):
            op.call(kw)
        return
    out = _tensors(op.call(kw))
    if op.miner:
        t = _mined_distances(kw, out)
        assert t.numel() and not torch.isfinite(t).all(), f"only finite distances on the mined triplets: {t}"
        return
    loss = out[0].cpu()
    exp = op.oracle_call(_fresh(kw, dtype=F64, device="cpu"))
    assert loss.shape == exp.shape, f"shape {tuple(loss.shape)}, the oracle's {tuple(exp.shape)}"
    if exp.numel() == 0:  # reduction "none" with no pair: no entry to carry it
        return
    assert not torch.isfinite(loss).all(), f"finite loss {loss} with {bad} in {where}[{row}]"
    assert not torch.isfinite(exp).all(), "the oracle disagrees"
    # Entry by entry (a "none" reduction, a distance matrix): the entries a non-finite input
    # reaches are the oracle's, and a NaN stays a NaN there (a NaN candidate is never
    # skipped by a comparison). An infinity may become a NaN (inf - inf) in one and not in
    # the other.
    assert torch.equal(~torch.isfinite(loss), ~torch.isfinite(exp)), f"non-finite entries: {loss} vs the oracle's {exp}"
    if math.isnan(bad):
        assert torch.equal(torch.isnan(loss), torch.isnan(exp)), f"NaN entries: {loss} vs the oracle's {exp}"


# ---- determinism ----------------------------------------------------------------------------------

# Runs compared with the first one: a race that reorders a sum shows in some runs, not all.
REPEATS = 3


@contextlib.contextmanager
def _threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _determinism_cases():
    out = []
    for op in OPS:
        for i, v in enumerate(op.variants):
            for kind in ("large", "hub"):
                if kind == "hub" and op.hub is None:
                    continue
                out.append(pytest.param(op, v, kind, id=f"{op.name}-{i}-{variant_id(v)}-{kind}"))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op, variant, kind", _determinism_cases())
def test_bitwise_deterministic(op, variant, kind, dtype, device):
    """A batch large enough to be split across threads (CPU) and blocks (CUDA), and the hub
    batch, whose hub row sums a gradient contribution from every anchor: the same call gives
    the same bits (loss, gradients, info), run after run and, on the CPU, on one thread and
    on all."""
    kw = op.make(gen(4), kind, dtype, device, variant)
    if kind == "hub":
        kw.update(op.hub)
    info = _takes_info(op)
    first = sum(_run(op, kw, info=info), ())
    for i in range(REPEATS):
        _assert_bitwise(first, sum(_run(op, kw, info=info), ()), f"run {i + 2}")
    if device.type == "cpu":
        with _threads(1):
            one = sum(_run(op, kw, info=info), ())
        _assert_bitwise(first, one, "one thread")


def test_hub_is_everyones_hardest_negative(device):
    """The hub batch is what the determinism cases rely on: with the hub options, every
    anchor is active and picks the hub (or, against a reference set, its copy there) as its
    hardest negative."""
    op = BY_NAME["batch_hard_triplet_loss"]
    for ref in (None, "ref", "self_offset"):
        kw = op.make(gen(4), "hub", torch.float32, device, {} if ref is None else {"_ref": ref})
        _, info = op.call(dict(kw, **op.hub, return_info=True))
        anchors = kw["labels"] != kw["labels"][-1]
        hub = kw["embeddings"].shape[0] - 1 if ref is None else 0
        assert bool((info.neg_idx[anchors] == hub).all()), f"{ref}: {info.neg_idx[anchors].unique().tolist()}"
        assert int(info.num_active) == int(info.num_valid) >= int(anchors.sum()), ref


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op", [pytest.param(op, id=op.name) for op in OPS if "self_offset" in inspect.signature(op.fn).parameters]
)
def test_every_self_offset_in_range_is_accepted(op, device):
    """B = 10 rows inside a reference set of M = 12: offsets 0, 1 and 2 are all valid."""
    kw = op.make(gen(7), "random", torch.float32, device, {})
    x = kw["embeddings"]
    for offset in (0, 1, 2):
        ref = torch.cat([x[:0].new_ones(offset, x.shape[1]), x, x[:0].new_ones(2 - offset, x.shape[1])])
        ref_labels = torch.cat(
            [kw["labels"].new_full((offset,), 7), kw["labels"], kw["labels"].new_full((2 - offset,), 7)]
        )
        op.call(dict(kw, ref_embeddings=ref, ref_labels=ref_labels, self_offset=offset))


def _bad_cases():
    return [pytest.param(op, bad, id=f"{op.name}-{bad.id}") for op in OPS for bad in op.bad]


@pytest.mark.parametrize("op, bad", _bad_cases())
def test_bad_input_names_the_argument(op, bad, device):
    kw = bad.change(op.make(gen(5), "random", torch.float32, device, {}))
    with pytest.raises(bad.error, match=bad.match):
        op.call(kw)
