"""Miners against pytorch-metric-learning 2.9 (a second, independent oracle).

PML's distance objects that compute fastmine's metrics:
  euclidean    LpDistance(normalize_embeddings=False)            (p=2, power=1)
  sqeuclidean  LpDistance(normalize_embeddings=False, power=2)
  cosine       CosineSimilarity()  (a similarity; PML flips its comparisons: its margin
               ap_sim - an_sim equals fastmine's d_an - d_ap with d = 1 - cos)
Random P x K float64 batches; the tests assert that no triplet lies within rounding of a
threshold (no candidate within rounding of the best), so PML's and fastmine's rounding, or
PML's torch.max tie choice, cannot make them differ: then outputs must be identical.
PML has no self_offset (with a reference set it excludes nothing).
"""

from __future__ import annotations

import pytest
import torch

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances, miners  # noqa: E402

import fastmine  # noqa: E402
from fastmine import reference as R  # noqa: E402

METRICS = R.METRICS
TYPES = R.TRIPLET_TYPES


def pml_distance(metric):
    if metric == "euclidean":
        return distances.LpDistance(normalize_embeddings=False)
    if metric == "sqeuclidean":
        return distances.LpDistance(normalize_embeddings=False, power=2)
    return distances.CosineSimilarity()


def pk_batch(p, k, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(k)
    labels = labels[torch.randperm(p * k, generator=g)]
    centers = 1.5 * torch.randn(p, d, generator=g, dtype=torch.float64)
    x = centers[labels] + torch.randn(p * k, d, generator=g, dtype=torch.float64)
    return x.to(dtype), labels


def ref_set(m, d, classes, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype), torch.randint(0, classes, (m,), generator=g))


def assert_same(got, want):
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert g.dtype == torch.int64
        assert torch.equal(g, w.to(torch.int64)), (g[:10], w[:10])


def margins_clear_of(x, labels, metric, thresholds, tol, ref=None, ref_labels=None):
    t, valid = R.triplet_margins(
        x.double(), labels, metric=metric, ref_embeddings=None if ref is None else ref.double(), ref_labels=ref_labels
    )
    for thr in thresholds:
        assert not ((t[valid] - thr).abs() <= tol).any(), "test data too close to a threshold"


CASES = [(8, 4, 16, 0), (16, 4, 8, 1), (4, 8, 32, 2), (10, 3, 4, 3), (32, 4, 16, 4)]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("p,k,d,seed", CASES)
def test_batch_hard_miner(metric, p, k, d, seed):
    x, y = pk_batch(p, k, d, seed)
    want = miners.BatchHardMiner(distance=pml_distance(metric))(x, y)
    assert_same(fastmine.mine_batch_hard(x, y, metric=metric), want)


@pytest.mark.parametrize("metric", METRICS)
def test_batch_hard_miner_with_ref(metric):
    x, y = pk_batch(8, 4, 16, 5)
    r, ry = ref_set(50, 16, 10, 6)
    want = miners.BatchHardMiner(distance=pml_distance(metric))(x, y, r, ry)
    assert_same(fastmine.mine_batch_hard(x, y, metric=metric, ref_embeddings=r, ref_labels=ry), want)


def test_batch_hard_miner_drops_invalid_anchors():
    """Singletons (no positive) are dropped by both; so is every anchor of a one-class ref."""
    x, _ = pk_batch(6, 2, 8, 7)
    y = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7])
    want = miners.BatchHardMiner(distance=pml_distance("euclidean"))(x, y)
    got = fastmine.mine_batch_hard(x, y)
    assert_same(got, want)
    assert got[0].tolist() == [0, 1, 3, 4, 6, 7, 9, 10]


def test_batch_hard_miner_nan_follows_pml():
    """A NaN row wins every selection it takes part in, in PML (torch.max/min propagate NaN)
    and in fastmine alike."""
    x, y = pk_batch(6, 4, 8, 8)
    x[5, 0] = float("nan")
    want = miners.BatchHardMiner(distance=pml_distance("euclidean"))(x, y)
    assert_same(fastmine.mine_batch_hard(x, y), want)


@pytest.mark.parametrize("type", TYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("p,k,d,seed", CASES)
def test_triplet_margin_miner(type, metric, p, k, d, seed):
    x, y = pk_batch(p, k, d, seed)
    margin = 0.2 if metric != "sqeuclidean" else 1.0
    margins_clear_of(x, y, metric, (0.0, margin), 1e-9)
    want = miners.TripletMarginMiner(margin=margin, type_of_triplets=type, distance=pml_distance(metric))(x, y)
    got = fastmine.mine_triplets(x, y, margin=margin, type=type, metric=metric)
    assert_same(got, want)


@pytest.mark.parametrize("type", TYPES)
@pytest.mark.parametrize("metric", METRICS)
def test_triplet_margin_miner_with_ref(type, metric):
    x, y = pk_batch(8, 4, 16, 9)
    r, ry = ref_set(40, 16, 10, 10)
    margins_clear_of(x, y, metric, (0.0, 0.2), 1e-9, r, ry)
    want = miners.TripletMarginMiner(margin=0.2, type_of_triplets=type, distance=pml_distance(metric))(x, y, r, ry)
    got = fastmine.mine_triplets(x, y, margin=0.2, type=type, metric=metric, ref_embeddings=r, ref_labels=ry)
    assert_same(got, want)


@pytest.mark.parametrize("type", TYPES)
def test_triplet_margin_miner_float32(type):
    """float32: PML's cdist and fastmine's panels round differently; identical unless a
    triplet is within 1e-4 of a threshold (asserted not to be)."""
    x, y = pk_batch(16, 4, 16, 11, torch.float32)
    margins_clear_of(x, y, "euclidean", (0.0, 0.2), 1e-4)
    want = miners.TripletMarginMiner(margin=0.2, type_of_triplets=type, distance=pml_distance("euclidean"))(x, y)
    assert_same(fastmine.mine_triplets(x, y, margin=0.2, type=type), want)
