"""Hypothesis strategies for batch-hard style inputs: shapes, label patterns, embeddings.

Labels: P x K, one class, all distinct, singletons mixed with classes, random; then
optionally shuffled (unsorted), spread out (x 7919) and shifted (huge, e.g. 10**12, or
negative values). Embeddings: gaussian, clustered, an integer grid (exact arithmetic:
many exact ties and duplicates), gaussian with duplicated rows (zero distances).
Random tensors come from a seeded torch.Generator (fast); hypothesis draws the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from hypothesis import strategies as st

LABEL_KINDS = ("pk", "one_class", "distinct", "singletons", "random")
EMBEDDING_KINDS = ("gaussian", "clustered", "grid", "duplicates")
LABEL_SHIFTS = (0, 0, 10**12, -(10**12), -5, 2**62)


@dataclass
class Case:
    """One batch-hard input set (CPU tensors in ``dtype``)."""

    x: torch.Tensor
    labels: torch.Tensor
    ref: Optional[torch.Tensor] = None
    ref_labels: Optional[torch.Tensor] = None
    self_offset: Optional[int] = None
    exact: bool = False  # integer-grid data: every distance is exact, ties are exact

    def kwargs(self):
        out = {}
        if self.ref is not None:
            out.update(ref_embeddings=self.ref, ref_labels=self.ref_labels)
        if self.self_offset is not None:
            out["self_offset"] = self.self_offset
        return out

    def to(self, device=None, dtype=None):
        def conv(t):
            if t is None:
                return None
            if t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return Case(
            conv(self.x), conv(self.labels), conv(self.ref), conv(self.ref_labels), self.self_offset, self.exact
        )


def make_labels(kind: str, b: int, gen: torch.Generator) -> torch.Tensor:
    """Class ids 0..C-1 following a named pattern (sorted; shuffle/shift separately)."""
    if kind == "one_class":
        return torch.zeros(b, dtype=torch.int64)
    if kind == "distinct":
        return torch.arange(b, dtype=torch.int64)
    if kind == "pk":
        k = int(torch.randint(1, 5, (1,), generator=gen))
        return torch.arange(b, dtype=torch.int64) // k
    if kind == "singletons":  # pairs and singletons interleaved: 0 0 1 2 2 3 4 4 ...
        out, c, i = [], 0, 0
        while len(out) < b:
            n = 2 if i % 2 == 0 else 1
            out.extend([c] * n)
            c += 1
            i += 1
        return torch.tensor(out[:b], dtype=torch.int64)
    if kind == "random":
        c = int(torch.randint(1, max(2, b // 2) + 1, (1,), generator=gen))
        return torch.randint(0, c, (b,), generator=gen).sort().values
    raise ValueError(kind)


def shape_labels(lab: torch.Tensor, *, shuffle: bool, shift: int, gen: torch.Generator) -> torch.Tensor:
    if shuffle:
        lab = lab[torch.randperm(lab.numel(), generator=gen)]
    if shift:
        lab = lab * 7919 + shift  # distinct ids stay distinct, far from 0..C-1
    return lab


def make_embeddings(
    kind: str, b: int, d: int, lab: torch.Tensor, gen: torch.Generator, dtype=torch.float64
) -> torch.Tensor:
    if kind == "gaussian":
        x = torch.randn(b, d, generator=gen, dtype=torch.float64)
    elif kind == "clustered":
        if b == 0:
            return torch.empty(0, d, dtype=dtype)
        _, inv = torch.unique(lab, return_inverse=True)
        centers = 3.0 * torch.randn(int(inv.max()) + 1, d, generator=gen, dtype=torch.float64)
        x = centers[inv] + 0.5 * torch.randn(b, d, generator=gen, dtype=torch.float64)
    elif kind == "grid":
        x = torch.randint(-2, 3, (b, d), generator=gen).to(torch.float64)
    elif kind == "duplicates":
        x = torch.randn(b, d, generator=gen, dtype=torch.float64)
        if b > 1:
            n_dup = int(torch.randint(1, b, (1,), generator=gen))
            src = torch.randint(0, b, (n_dup,), generator=gen)
            dst = torch.randint(0, b, (n_dup,), generator=gen)
            x[dst] = x[src]
    else:
        raise ValueError(kind)
    return x.to(dtype)


@st.composite
def batch_hard_cases(
    draw,
    *,
    max_b: int = 64,
    max_d: int = 24,
    ref: Optional[bool] = None,
    dtype=torch.float64,
    embedding_kinds=EMBEDDING_KINDS,
    label_kinds=LABEL_KINDS,
) -> Case:
    """A batch (and maybe a reference set, maybe with the batch inside it at self_offset)."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    b = draw(st.one_of(st.just(1), st.integers(1, max_b)))
    d = draw(st.one_of(st.just(1), st.integers(1, max_d)))
    lkind = draw(st.sampled_from(label_kinds))
    ekind = draw(st.sampled_from(embedding_kinds))
    shuffle = draw(st.booleans())
    shift = draw(st.sampled_from(LABEL_SHIFTS))
    lab0 = make_labels(lkind, b, gen)
    x = make_embeddings(ekind, b, d, lab0, gen, dtype)
    labels = shape_labels(lab0, shuffle=shuffle, shift=shift, gen=gen)
    case = Case(x, labels, exact=ekind == "grid")
    use_ref = draw(st.booleans()) if ref is None else ref
    if not use_ref:
        return case
    # Reference set: `pre` rows, optionally the batch itself (self_offset), `post` rows.
    # Its labels mix the batch's classes with new ones.
    n_pre = draw(st.integers(0, max_b // 2))
    n_post = draw(st.integers(0, max_b // 2))
    contains_batch = draw(st.booleans())
    if n_pre + n_post == 0 and not contains_batch:
        n_post = 1
    extra = n_pre + n_post
    pool = torch.cat([labels, labels.max() + 1 + torch.arange(3, dtype=torch.int64)])
    ex_lab = pool[torch.randint(0, pool.numel(), (extra,), generator=gen)]
    ex_x = make_embeddings(ekind, extra, d, ex_lab, gen, dtype)
    if ekind == "duplicates" and extra > 0:  # some reference rows duplicate batch rows
        k = int(torch.randint(0, extra + 1, (1,), generator=gen))
        ex_x[:k] = x[torch.randint(0, b, (k,), generator=gen)]
    if contains_batch:
        case.ref = torch.cat([ex_x[:n_pre], x, ex_x[n_pre:]])
        case.ref_labels = torch.cat([ex_lab[:n_pre], labels, ex_lab[n_pre:]])
        case.self_offset = n_pre if draw(st.booleans()) else None
    else:
        case.ref, case.ref_labels = ex_x, ex_lab
    return case


@st.composite
def matrices(draw, *, max_n: int = 40, max_d: int = 40, dtype=torch.float64):
    """(x, y) for pairwise_distance: y is None (self distances) or an (M, D) matrix.
    Some rows are duplicated (zero distances) and some are zero vectors (cosine clamp)."""
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    b = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e3]))
    x = scale * torch.randn(b, d, generator=gen, dtype=torch.float64)
    y = None
    if draw(st.booleans()):
        m = draw(st.integers(1, max_n))
        y = scale * torch.randn(m, d, generator=gen, dtype=torch.float64)
        if draw(st.booleans()):  # shared rows: zero distances across x and y
            k = min(b, m)
            y[: k // 2] = x[: k // 2]
    if draw(st.booleans()) and b > 1:
        x[-1] = x[0]
    if draw(st.booleans()):
        x[0] = 0.0
    return x.to(dtype), (None if y is None else y.to(dtype))


def examples(n: int) -> int:
    """n hypothesis examples at the default profile's 40, scaled with the loaded profile
    (HYPOTHESIS_PROFILE=thorough multiplies every count by 12.5): for tests whose own
    @settings(max_examples=...) would otherwise pin the count."""
    from hypothesis import settings

    return max(1, round(n * settings.default.max_examples / 40))
