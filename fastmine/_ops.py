"""Loads the compiled modules and gives their ops fake kernels and autograd.

The schemas live in csrc/ops.cpp. ``fastmine._C`` (CPU kernels + schemas) is always loaded;
``fastmine._C_cuda`` (stable-ABI CUDA kernels) only when a GPU is usable. The autograd
formulas here are thin: every backward is itself a compiled op that reuses what the
forward saved (mined indices, distances), so there is never a second mining pass.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Any, Callable, Optional, Tuple

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))


def _library_path(name: str) -> Optional[str]:
    found = sorted(glob.glob(os.path.join(_HERE, name + ".*.so")) + glob.glob(os.path.join(_HERE, name + ".*.pyd")))
    return found[0] if found else None


def _load(name: str) -> bool:
    path = _library_path(name)
    if path is None:
        return False
    torch.ops.load_library(path)
    return True


def _missing_module_message() -> str:
    """Why fastmine/_C*.so is absent, in the terms of the likely mistake: importing the
    source tree (e.g. Python started in a clone's root, whose fastmine/ shadows the
    installed package) rather than a build."""
    msg = f"fastmine's compiled module {os.path.join(_HERE, '_C')}*.so is missing"
    if not os.path.isfile(os.path.join(os.path.dirname(_HERE), "setup.py")):
        return msg + ": reinstall fastmine (`pip install --no-build-isolation fastmine-*.tar.gz`)"
    msg += (
        f". This is fastmine's uncompiled source tree ({os.path.dirname(_HERE)}), imported "
        "because it comes first on sys.path (Python was started in it, or PYTHONPATH names it)"
    )
    elsewhere = [
        d
        for d in (os.path.join(os.path.abspath(p or os.curdir), "fastmine") for p in sys.path)
        if os.path.realpath(d) != os.path.realpath(_HERE)
        and glob.glob(os.path.join(d, "_C.*.so")) + glob.glob(os.path.join(d, "_C.*.pyd"))
    ]
    if elsewhere:
        msg += f"; it shadows the installed fastmine at {elsewhere[0]}: run from another directory"
    return msg + (
        ", or build the tree in place: `make build` (or `python setup.py build_ext "
        "--inplace`, or `pip install --no-build-isolation -e .`)"
    )


if not _load("_C"):
    raise ImportError(_missing_module_message())

#: True when the CUDA kernels are loaded (a GPU is visible and the module was built).
CUDA_AVAILABLE: bool = torch.cuda.is_available() and _load("_C_cuda")

ops = torch.ops.fastmine
_HALF = (torch.float16, torch.bfloat16)


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """Losses and mined distances come back in float32 for half inputs."""
    return torch.float32 if dtype in _HALF else dtype


def _like(t: torch.Tensor) -> torch.Tensor:
    """A fresh contiguous tensor shaped like t: what the kernels return (never t's strides)."""
    return t.new_empty(t.shape)


def _double_backward_error(public_name: str) -> RuntimeError:
    return RuntimeError(f"fastmine.{public_name}: double backward (a gradient of the gradient) is not supported")


def _no_context(ctx, inputs, output) -> None:
    pass


def _register(
    op: str,
    public_name: str,
    fake: Callable[..., Any],
    backward: Callable[..., Any],
    *,
    setup: Callable[..., None] = _no_context,
    grads: Tuple[str, ...] = (),
    backward_fake: Optional[Callable[..., Any]] = None,
) -> None:
    """Gives ``fastmine::op`` its fake kernel and its autograd.

    ``backward(ctx, *output_grads)`` returns the gradients of the schema's arguments named in
    ``grads``, in that order; every other argument gets None. ``backward_fake`` is the fake
    kernel of the compiled backward ``fastmine::op_backward``, whose own gradient no kernel
    computes: asking for it (double backward) raises, naming ``public_name``.
    """
    names = [a.name for a in getattr(ops, op).default._schema.arguments]
    slots = [names.index(name) for name in grads]

    def backward_all(ctx, *output_grads):
        out: list = [None] * len(names)
        for i, g in zip(slots, backward(ctx, *output_grads), strict=True):
            out[i] = g
        return tuple(out)

    torch.library.register_fake(f"fastmine::{op}", fake)
    torch.library.register_autograd(f"fastmine::{op}", backward_all, setup_context=setup)
    if backward_fake is not None:

        def refuse(ctx, *unused):
            raise _double_backward_error(public_name)

        torch.library.register_fake(f"fastmine::{op}_backward", backward_fake)
        torch.library.register_autograd(f"fastmine::{op}_backward", refuse, setup_context=_no_context)


class _ScaleSaved(torch.autograd.Function):
    """g * saved, for a gradient the forward already computed. The product hangs off
    ``anchor`` (the op's input) so that, under create_graph=True, a gradient of it is asked of
    us and refused, rather than silently zero."""

    @staticmethod
    def forward(ctx, g, saved, anchor, public_name):
        ctx.public_name = public_name
        return g * saved

    @staticmethod
    def backward(ctx, grad):
        raise _double_backward_error(ctx.public_name)


def _scale_saved(g: torch.Tensor, saved: torch.Tensor, anchor: torch.Tensor, public_name: str) -> torch.Tensor:
    if torch.is_grad_enabled():  # create_graph=True
        return _ScaleSaved.apply(g, saved, anchor, public_name)
    return g * saved


# ---- pairwise_distance -------------------------------------------------------------------


def _pairwise_distance_fake(x, y, metric, allow_tf32=False):
    return x.new_empty((x.shape[0], y.shape[0]))


def _pairwise_distance_backward_fake(grad, x, y, dist, metric):
    return _like(x), _like(y)


def _pairwise_setup(ctx, inputs, output):
    x, y, metric = inputs[:3]  # allow_tf32 (inputs[3]) only concerns the forward's tiles
    ctx.save_for_backward(x, y, output)
    ctx.metric = metric


def _pairwise_backward(ctx, grad):
    x, y, dist = ctx.saved_tensors
    return ops.pairwise_distance_backward(grad.contiguous(), x, y, dist, ctx.metric)


_register(
    "pairwise_distance",
    "pairwise_distance",
    _pairwise_distance_fake,
    _pairwise_backward,
    setup=_pairwise_setup,
    grads=("x", "y"),
    backward_fake=_pairwise_distance_backward_fake,
)


# ---- batch_hard_triplet ------------------------------------------------------------------


def _batch_hard_fake(x, labels, ref, ref_labels, margin, metric, soft, has_exclude, exclude_offset, allow_tf32=False):
    b = x.shape[0]
    values = x.new_empty((b,), dtype=loss_dtype(x.dtype))
    index = x.new_empty((b,), dtype=torch.int64)
    return values, index, _like(index), _like(values), _like(values)


def _batch_hard_backward_fake(gl, gpd, gnd, x, ref, pos_idx, neg_idx, pos_dist, neg_dist, margin, metric, soft):
    return _like(x), _like(ref)


def _batch_hard_setup(ctx, inputs, output):
    x, _, ref, _, margin, metric, soft = inputs[:7]  # the backward needs no tiles
    _, pos_idx, neg_idx, pos_dist, neg_dist = output
    ctx.save_for_backward(x, ref, pos_idx, neg_idx, pos_dist, neg_dist)
    ctx.args = (margin, metric, soft)


def _batch_hard_backward(ctx, g_loss, g_pos_idx, g_neg_idx, g_pos_dist, g_neg_dist):
    x, ref, pos_idx, neg_idx, pos_dist, neg_dist = ctx.saved_tensors
    # Outputs nobody used may arrive as None: their gradient is zero.
    g_loss, g_pos_dist, g_neg_dist = (
        torch.zeros_like(pos_dist) if g is None else g.contiguous() for g in (g_loss, g_pos_dist, g_neg_dist)
    )
    return ops.batch_hard_triplet_backward(
        g_loss, g_pos_dist, g_neg_dist, x, ref, pos_idx, neg_idx, pos_dist, neg_dist, *ctx.args
    )


_register(
    "batch_hard_triplet",
    "batch_hard_triplet_loss",
    _batch_hard_fake,
    _batch_hard_backward,
    setup=_batch_hard_setup,
    grads=("x", "ref"),
    backward_fake=_batch_hard_backward_fake,
)


# ---- all-pairs losses: batch_all_triplet, contrastive ------------------------------------
# Their backward recomputes the distances panel by panel (nothing B x M is saved), so the
# context keeps only the inputs.


def _register_all_pairs(name: str, public_name: str, layout: str):
    """Fake kernel and autograd for an all-pairs op.

    ``layout`` names the op's (B,) outputs in order: ``f`` a float per-anchor sum (it has a
    gradient; the backward op takes those gradients first, in this order), ``i`` an int64
    count.
    """
    n_grads = layout.count("f")

    def fake(x, labels, ref, ref_labels, *args):
        dtypes = {"f": loss_dtype(x.dtype), "i": torch.int64}
        return tuple(x.new_empty((x.shape[0],), dtype=dtypes[c]) for c in layout)

    def backward_fake(*args):
        x, ref = args[n_grads], args[n_grads + 2]
        return _like(x), _like(ref)

    def setup(ctx, inputs, output):
        x, labels, ref, ref_labels, *args = inputs
        ctx.save_for_backward(x, labels, ref, ref_labels)
        ctx.args = args

    def backward(ctx, *grads):
        x, labels, ref, ref_labels = ctx.saved_tensors
        float_grads = [
            torch.zeros(x.shape[0], dtype=loss_dtype(x.dtype), device=x.device) if g is None else g.contiguous()
            for g, c in zip(grads, layout)
            if c == "f"
        ]
        return getattr(ops, f"{name}_backward")(*float_grads, x, labels, ref, ref_labels, *ctx.args)

    _register(name, public_name, fake, backward, setup=setup, grads=("x", "ref"), backward_fake=backward_fake)


# (loss_sum, num_triplets, num_active) per anchor
_register_all_pairs("batch_all_triplet", "batch_all_triplet_loss", "fii")
# (pos_sum, pos_nonzero, pos_pairs, neg_sum, neg_nonzero, neg_pairs) per anchor
_register_all_pairs("contrastive", "contrastive_loss", "fiifii")


# ---- contrastive_with_grad: loss and gradient in one pass ---------------------------------


def _contrastive_with_grad_fake(x, labels, ref, ref_labels, *args):
    total = x.new_empty((), dtype=loss_dtype(x.dtype))
    return total, x.new_empty((), dtype=torch.int64), _like(x), _like(ref)


def _with_grad_setup(ctx, inputs, output):
    x, _, ref, *_ = inputs
    _, _, gx, gr = output
    ctx.save_for_backward(gx, gr, x, ref)


def _with_grad_backward(ctx, g_total, *unused):
    gx, gr, x, ref = ctx.saved_tensors
    # The forward already holds the gradient of the total; the upstream gradient is a scalar.
    g = g_total.to(gx.dtype)
    return _scale_saved(g, gx, x, "contrastive_loss"), _scale_saved(g, gr, ref, "contrastive_loss")


_register(
    "contrastive_with_grad",
    "contrastive_loss",
    _contrastive_with_grad_fake,
    _with_grad_backward,
    setup=_with_grad_setup,
    grads=("x", "ref"),
)


def _kernel_devices(op: str) -> frozenset:
    """Device types with a kernel for ``fastmine::op``, read once at import so that callers
    test a constant (a dispatcher query inside torch.compile would break the graph)."""
    keys = {"cpu": "CPU", "cuda": "CUDA"}
    return frozenset(t for t, k in keys.items() if torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmine::{op}", k))


#: The fused contrastive loss+gradient kernel exists on these device types (CPU for now).
CONTRASTIVE_WITH_GRAD_DEVICES = _kernel_devices("contrastive_with_grad")


# ---- focal-loss family ----------------------------------------------------------------------
# Elementwise ops (sigmoid focal, FL*): the forward saves nothing beyond its inputs; the
# backward op recomputes the terms and writes upstream * d loss / d logits in one pass.
# softmax_focal returns (loss, grad) with grad = d loss_row / d logits from the forward's pass;
# its backward scales the rows.


def _register_elementwise_focal(name: str, public_name: str):
    def fake(logits, targets, p1, p2, reduce):
        return logits.new_empty(() if reduce else logits.shape, dtype=loss_dtype(logits.dtype))

    def backward_fake(grad, logits, targets, p1, p2):
        return _like(logits)

    def setup(ctx, inputs, output):
        logits, targets, p1, p2, _ = inputs
        ctx.save_for_backward(logits, targets)
        ctx.params = (p1, p2)

    def backward(ctx, grad):
        logits, targets = ctx.saved_tensors
        return (getattr(ops, f"{name}_backward")(grad.contiguous(), logits, targets, *ctx.params),)

    _register(name, public_name, fake, backward, setup=setup, grads=("logits",), backward_fake=backward_fake)


_register_elementwise_focal("sigmoid_focal", "sigmoid_focal_loss")
_register_elementwise_focal("focal_star", "focal_star_loss")


def _softmax_focal_fake(logits, target, alpha, gamma, with_grad):
    loss = logits.new_empty((logits.shape[0],), dtype=loss_dtype(logits.dtype))
    return loss, logits.new_empty(logits.shape if with_grad else (0,))


def _softmax_focal_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1], inputs[0])


def _softmax_focal_backward(ctx, g_loss, g_grad):
    grad, logits = ctx.saved_tensors
    if grad.numel() != logits.numel():
        raise RuntimeError(
            "fastmine.softmax_focal_loss: the forward was run without its gradient "
            "(with_grad=False); call the public function instead"
        )
    gl = _scale_saved(g_loss.unsqueeze(-1), grad, logits, "softmax_focal_loss")
    return (gl.to(logits.dtype),)


_register(
    "softmax_focal",
    "softmax_focal_loss",
    _softmax_focal_fake,
    _softmax_focal_backward,
    setup=_softmax_focal_setup,
    grads=("logits",),
)


# ---- centroid_triplet: the (B, C) distances of the forward feed the backward --------------------


def _centroid_triplet_fake(x, labels, centroids):
    dt = loss_dtype(x.dtype)
    return x.new_empty((x.shape[0],), dtype=dt), x.new_empty((x.shape[0], centroids.shape[0]), dtype=dt)


def _centroid_triplet_backward_fake(grad, x, labels, centroids, dist, need_centroid_grad):
    return _like(x), centroids.new_empty(centroids.shape if need_centroid_grad else (0,))


def _centroid_setup(ctx, inputs, output):
    x, labels, centroids = inputs
    ctx.save_for_backward(x, labels, centroids, output[1])


def _centroid_backward(ctx, g_loss, g_dist):
    # The distances are an internal output (what the backward needs); the public function
    # never exposes them, so their gradient (zeros or None) is ignored.
    x, labels, centroids, dist = ctx.saved_tensors
    need_c = ctx.needs_input_grad[2]
    gx, gc = ops.centroid_triplet_backward(g_loss.to(dist.dtype).contiguous(), x, labels, centroids, dist, need_c)
    return gx, gc if need_c else None


_register(
    "centroid_triplet",
    "centroid_triplet_loss",
    _centroid_triplet_fake,
    _centroid_backward,
    setup=_centroid_setup,
    grads=("x", "centroids"),
    backward_fake=_centroid_triplet_backward_fake,
)


# ---- miners: integer outputs, no autograd -------------------------------------------------


def _mine_triplets_fake(x, labels, ref, ref_labels, margin, type, metric, has_exclude, exclude_offset):
    # The number of triplets depends on the data: one unbacked size shared by all three.
    n = torch.library.get_ctx().new_dynamic_size()
    return tuple(x.new_empty((n,), dtype=torch.int64) for _ in range(3))


def _no_gradient(ctx, *grads):
    raise RuntimeError("fastmine.mine_triplets: mining has no gradient (its outputs are indices)")


# Integer outputs: autograd never calls this; registered so that an input requiring grad is
# an explicit "no gradient" rather than a missing autograd kernel.
_register("mine_triplets", "mine_triplets", _mine_triplets_fake, _no_gradient)


# ---- semi_hard_triplet: one triplet per positive pair (a data-dependent count P) ---------


def _semi_hard_fake(x, labels, ref, ref_labels, margin, metric, has_exclude, exclude_offset):
    # P (the number of positive pairs whose anchor has a negative) depends on the labels'
    # values: an unbacked size, at most B * M.
    p = torch.library.get_ctx().new_dynamic_size()
    values = x.new_empty((p,), dtype=loss_dtype(x.dtype))
    index = x.new_empty((p,), dtype=torch.int64)
    return (
        values,
        index,
        _like(index),
        _like(index),
        _like(values),
        _like(values),
        x.new_empty((), dtype=loss_dtype(x.dtype)),
    )


def _semi_hard_backward_fake(gl, gpd, gnd, x, ref, anchor_idx, pos_idx, neg_idx, pos_dist, neg_dist, margin, metric):
    return _like(x), _like(ref)


def _semi_hard_setup(ctx, inputs, output):
    x, _, ref, _, margin, metric, _, _ = inputs
    _, anchor_idx, pos_idx, neg_idx, pos_dist, neg_dist, _ = output
    ctx.save_for_backward(x, ref, anchor_idx, pos_idx, neg_idx, pos_dist, neg_dist)
    ctx.args = (margin, metric)


def _semi_hard_backward(ctx, g_loss, g_a, g_p, g_n, g_pos_dist, g_neg_dist, g_nonfinite):
    x, ref, anchor_idx, pos_idx, neg_idx, pos_dist, neg_dist = ctx.saved_tensors
    g_loss, g_pos_dist, g_neg_dist = (
        torch.zeros_like(pos_dist) if g is None else g.contiguous() for g in (g_loss, g_pos_dist, g_neg_dist)
    )
    return ops.semi_hard_triplet_backward(
        g_loss, g_pos_dist, g_neg_dist, x, ref, anchor_idx, pos_idx, neg_idx, pos_dist, neg_dist, *ctx.args
    )


_register(
    "semi_hard_triplet",
    "semi_hard_triplet_loss",
    _semi_hard_fake,
    _semi_hard_backward,
    setup=_semi_hard_setup,
    grads=("x", "ref"),
    backward_fake=_semi_hard_backward_fake,
)
