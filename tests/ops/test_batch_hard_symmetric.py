"""Batch-hard mining when the batch is its own reference set (the CPU's symmetric sweep:
upper-triangle panels, each entry offered to its row's anchor and to its column's anchor).

The sweep must choose exactly what the full-matrix path chooses for an explicit reference
set, across panel boundaries (a panel is 128 rows), for every metric and dtype, with exact
ties decided by the lowest index, and bitwise the same whatever the thread count.
"""

from __future__ import annotations

import pytest
import torch

import fastmine
from fastmine import reference as R

OP = torch.ops.fastmine.batch_hard_triplet
METRIC_ID = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}
SIZES = (129, 300, 700)  # one row past a panel; several panels; several column blocks


def _raw(x, lab, ref, ref_lab, metric, has_exclude=True):
    return OP(x, lab, ref, ref_lab, 0.2, METRIC_ID[metric], False, has_exclude, 0, False)


def _embeddings(kind, b, d, dtype, gen):
    if kind == "random":
        x = torch.randn(b, d, generator=gen, dtype=torch.float64)
    elif kind == "grid":  # small integers: exact scores, so ties are real ties
        x = torch.randint(-2, 3, (b, d), generator=gen).double()
    else:  # each row copied several times, the copies spread over all panels
        base = torch.randn(max(1, b // 6), d, generator=gen, dtype=torch.float64)
        x = base[torch.randint(0, base.shape[0], (b,), generator=gen)]
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", R.METRICS)
@pytest.mark.parametrize("kind", ["random", "grid", "copies"])
@pytest.mark.parametrize("b", SIZES)
def test_self_reference_chooses_as_explicit_reference(b, kind, metric, dtype):
    gen = torch.Generator().manual_seed(b)
    x = _embeddings(kind, b, 9, dtype, gen)
    lab = torch.randint(0, max(2, b // 5), (b,), generator=gen)
    got = _raw(x, lab, x, lab, metric)
    want = _raw(x, lab, x.clone(), lab.clone(), metric)  # a copy: the full-matrix path
    assert torch.equal(got[1], want[1]), "hardest positives differ"
    assert torch.equal(got[2], want[2]), "hardest negatives differ"
    for k in (0, 3, 4):
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean"])
def test_float64_oracle_over_several_panels(metric):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(300, 16, generator=gen, dtype=torch.float64)
    lab = torch.randint(0, 60, (300,), generator=gen)
    loss, info = fastmine.batch_hard_triplet_loss(x, lab, metric=metric, return_info=True, reduction="none")
    want = R.batch_hard_triplet_loss(x, lab, metric=metric, reduction="none", return_info=True)
    torch.testing.assert_close(loss, want[0])
    assert torch.equal(info.pos_idx, want[1].pos_idx)
    assert torch.equal(info.neg_idx, want[1].neg_idx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", R.METRICS)
def test_exact_copies_in_other_panels_lowest_index_wins(metric, dtype):
    """Anchors in the first and the last panel, each with exact copies among its negatives
    in other panels: the copies tie exactly and the lowest index must win, whether a copy
    reached the anchor through its row (later columns) or through earlier panels' columns."""
    b = 700
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(b, 12, generator=gen, dtype=torch.float64)
    lab = torch.arange(b) + 10
    lab[1] = lab[0]  # anchor 0 needs a positive
    lab[b - 2] = lab[b - 1]
    x[250] = x[640] = x[0] + 1e-3  # anchor 0's nearest negative, twice
    x[5] = x[150] = x[b - 1] + 1e-3  # anchor b-1's nearest negative, twice
    x = x.to(dtype)
    _, pos, neg, _, _ = _raw(x, lab, x, lab, metric)
    assert neg[0].item() == 250
    assert neg[b - 1].item() == 5


def test_own_row_is_a_positive_without_exclusion():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=gen)
    lab = torch.randint(0, 50, (300,), generator=gen)
    got = _raw(x, lab, x, lab, "sqeuclidean", has_exclude=False)
    want = _raw(x, lab, x.clone(), lab.clone(), "sqeuclidean", has_exclude=False)
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


def test_same_bits_whatever_the_thread_count():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(700, 32, generator=gen)
    lab = torch.randint(0, 100, (700,), generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _raw(x, lab, x, lab, "euclidean")
        torch.set_num_threads(max(2, threads))
        many = _raw(x, lab, x, lab, "euclidean")
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("metric", R.METRICS)
def test_near_ties_decided_on_exact_distances(metric, dtype):
    """Two negatives whose distances differ by far less than a score's rounding: the later
    one is truly nearer and must win, though a comparison of scores cannot tell them apart
    (and prefers the lower index on a tie). Through the row (anchor 0, candidates in later
    panels) and through earlier panels' columns (anchor b-1)."""
    b = 700
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(b, 12, generator=gen, dtype=torch.float64)
    lab = torch.arange(b) + 10
    lab[1] = lab[0]
    lab[b - 2] = lab[b - 1]
    for anchor, first, second in ((0, 250, 640), (b - 1, 5, 150)):
        x[first] = x[anchor] + 0.05 * torch.randn(12, generator=gen, dtype=torch.float64)
        # second: first moved towards the anchor by a few units in the last place
        x[second] = x[first] + 1e-5 * (x[anchor] - x[first])
    x = x.to(dtype)
    assert not torch.equal(x[250], x[640]) and not torch.equal(x[5], x[150])
    _, _, neg, _, _ = _raw(x, lab, x, lab, metric)
    want = R.batch_hard_triplet_loss(x.double(), lab, metric=metric, reduction="none", return_info=True)[1]
    assert want.neg_idx[0].item() == 640 and want.neg_idx[b - 1].item() == 150  # the setup holds
    assert neg[0].item() == 640
    assert neg[b - 1].item() == 150
