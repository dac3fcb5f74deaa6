"""fastmine.contrib.pml miners: PML's ``BatchHardMiner`` and ``TripletMarginMiner`` give
exactly PML's triplets (same tensors, same order) for every supported distance, with and
without a reference set, in float32 and float64; ``SemiHardMiner`` (FaceNet / TF-Addons, not
in PML) matches a brute-force oracle written in PML's terms; swapped into a PML training
loop they give PML's loss trajectory; unsupported options raise.

Exact equality is only owed where no decision is within rounding: every batch is drawn (by
seed, deterministically) until the decisions its test compares are clear of ties by a
tolerance well above the two implementations' rounding (PML's cdist, fastmine's panels).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import pytest
import torch

pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
from pytorch_metric_learning import distances, losses  # noqa: E402

import fastmine.contrib.pml as fm_pml  # noqa: E402
from fastmine import reference as R  # noqa: E402
from helpers import assert_close_rel  # noqa: E402

# name -> factory (a fresh object each time: distances record statistics)
DISTANCES = {
    "lp_normalized": lambda: distances.LpDistance(),  # PML's default
    "lp": lambda: distances.LpDistance(normalize_embeddings=False),
    "lp_sq": lambda: distances.LpDistance(power=2, normalize_embeddings=False),
    "lp_sq_normalized": lambda: distances.LpDistance(power=2),
    "cosine": lambda: distances.CosineSimilarity(),
}
# a margin on each distance's scale, so that every type selects something
MARGINS = {"lp_normalized": 0.3, "lp": 1.0, "lp_sq": 3.0, "lp_sq_normalized": 0.5, "cosine": 0.2}
REFS = ["none", "other", "same_labels_object", "batch_new_labels"]
TYPES = ["all", "hard", "semihard", "easy"]
DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: 1e-6, torch.float32: 1e-4}  # clearance demanded of the test data


# ---- inputs and the PML-side view of them ------------------------------------------------


def _draw(seed: int, b: int, classes: int, ref: str, dtype, d: int = 6):
    """(x, labels, kw) for miner(x, labels, **kw): the reference-set cases of PML's API."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, classes, (b,), generator=g)
    if ref == "other":
        m = 17
        kw = dict(
            ref_emb=torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype),
            ref_labels=torch.randint(0, classes, (m,), generator=g),
        )
    elif ref == "same_labels_object":  # PML drops the diagonal when ref_labels *is* labels
        kw = dict(ref_emb=torch.randn(b, d, generator=g, dtype=torch.float64).to(dtype), ref_labels=y)
    elif ref == "batch_new_labels":  # the batch as a reference set: each anchor is a positive
        kw = dict(ref_emb=x, ref_labels=y.clone())
    else:
        kw = {}
    return x, y, kw


def _view(dist_name: str, x, y, kw):
    """(dd, pos, neg): PML's matrix in float64 as a distance (similarities negated, so that
    larger is always farther) and PML's positive / negative masks."""
    dist = DISTANCES[dist_name]()
    ref, ref_y = kw.get("ref_emb", x).double(), kw.get("ref_labels", y)
    mat = dist(x.double(), ref)
    dd = -mat if dist.is_inverted else mat
    same = y[:, None] == ref_y[None, :]
    pos = same.clone()
    if ref_y is y:  # PML's get_matches_and_diffs: identity, not equality
        pos.fill_diagonal_(False)
    return dd, pos, ~same


def _margins(dd, pos, neg):
    """The valid triplets' margins d(a, n) - d(a, p) (PML's, in distance orientation)."""
    t = dd[:, None, :] - dd[:, :, None]
    return t[pos[:, :, None] & neg[:, None, :]]


def _gaps_clear(values: torch.Tensor, tol: float) -> bool:
    v = values.sort().values
    return bool(((v[1:] - v[:-1]) > tol).all())


def batch_hard_clear(dd, pos, neg, tol) -> bool:
    """Each anchor's farthest positive and nearest negative beat the runner-up by tol."""
    for i in range(dd.shape[0]):
        p, n = dd[i][pos[i]].sort().values, dd[i][neg[i]].sort().values
        if (len(p) > 1 and p[-1] - p[-2] <= tol) or (len(n) > 1 and n[1] - n[0] <= tol):
            return False
    return True


def margins_clear(thresholds) -> Callable:
    def clear(dd, pos, neg, tol) -> bool:
        t = _margins(dd, pos, neg)
        return all(bool(((t - thr).abs() > tol).all()) for thr in thresholds)

    return clear


def semi_hard_clear(dd, pos, neg, tol) -> bool:
    """No negative within tol of a positive's distance, nor of another negative."""
    return margins_clear([0.0])(dd, pos, neg, tol) and all(_gaps_clear(dd[i][neg[i]], tol) for i in range(dd.shape[0]))


def clear_draw(seed, b, classes, ref, dtype, dist_name, clear):
    """The first draw from seed's sequence whose decisions are clear (see the module
    docstring); deterministic."""
    for attempt in range(200):
        x, y, kw = _draw(seed * 1000 + attempt, b, classes, ref, dtype)
        if clear(*_view(dist_name, x, y, kw), TOL[dtype]):
            return x, y, kw
    raise AssertionError("no clear draw: loosen the test data")


def assert_stat(got, want, rtol: float, what: str) -> None:
    """PML's statistics are Python floats: compare them in float64 (assert_close_rel would
    make a float32 tensor of a Python float)."""
    as64 = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
    assert_close_rel(as64(got), as64(want), rtol, what=what)


def assert_same_triplets(got, want, what=""):
    assert isinstance(got, tuple) and len(got) == len(want) == 3, what
    for g, w, name in zip(got, want, "apn"):
        assert g.dtype == w.dtype == torch.int64, f"{what} {name}: {g.dtype} vs {w.dtype}"
        assert torch.equal(g, w), f"{what} {name}:\n got {g.tolist()}\nwant {w.tolist()}"


# ---- BatchHardMiner -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ref", REFS)
@pytest.mark.parametrize("dist_name", DISTANCES)
def test_batch_hard_miner_is_pmls(dist_name, ref, dtype):
    for seed, b, classes in [(1, 24, 4), (2, 16, 8), (3, 9, 3), (4, 32, 6)]:
        x, y, kw = clear_draw(seed, b, classes, ref, dtype, dist_name, batch_hard_clear)
        want = pml_miners.BatchHardMiner(distance=DISTANCES[dist_name]())(x, y, **kw)
        miner = fm_pml.BatchHardMiner(distance=DISTANCES[dist_name]())
        got = miner(x, y, **kw)
        assert_same_triplets(got, want, f"{dist_name} ref={ref} seed={seed}")
        assert miner.num_triplets == len(want[0])


@pytest.mark.parametrize("dist_name", ["lp_normalized", "cosine"])
def test_batch_hard_miner_drops_anchors_without_positive_or_negative(dist_name):
    """Singletons (no positive) and a one-class batch (no negative) are dropped as PML drops
    them; with the batch itself as a reference set a singleton's positive is itself."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, 6, generator=g, dtype=torch.float64)
    cases = [
        (torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7]), {}, [0, 1, 3, 4, 6, 7, 9, 10]),
        (torch.zeros(12, dtype=torch.int64), {}, []),
        (torch.arange(12), {}, []),
        (torch.arange(12), "batch_new_labels", list(range(12))),
    ]
    for y, kw, anchors in cases:
        if kw == "batch_new_labels":
            kw = dict(ref_emb=x, ref_labels=y.clone())
        want = pml_miners.BatchHardMiner(distance=DISTANCES[dist_name]())(x, y, **kw)
        got = fm_pml.BatchHardMiner(distance=DISTANCES[dist_name]())(x, y, **kw)
        assert_same_triplets(got, want, f"labels={y.tolist()}")
        assert got[0].tolist() == anchors
    one = fm_pml.BatchHardMiner()(x[:1], torch.tensor([3]))
    assert_same_triplets(one, pml_miners.BatchHardMiner()(x[:1], torch.tensor([3])), "B=1")


@pytest.mark.parametrize("ref", ["none", "other"])
@pytest.mark.parametrize("dist_name", ["lp_normalized", "lp_sq", "cosine"])
def test_batch_hard_miner_statistics(dist_name, ref):
    x, y, kw = clear_draw(6, 20, 4, ref, torch.float64, dist_name, batch_hard_clear)
    pml = pml_miners.BatchHardMiner(distance=DISTANCES[dist_name](), collect_stats=True)
    fm = fm_pml.BatchHardMiner(distance=DISTANCES[dist_name](), collect_stats=True)
    pml(x, y, **kw), fm(x, y, **kw)
    names = [
        "num_triplets",
        "easiest_triplet",
        "hardest_triplet",
        "easiest_pos_pair",
        "hardest_pos_pair",
        "easiest_neg_pair",
        "hardest_neg_pair",
    ]
    assert set(names) <= set(fm._record_these_stats)
    for name in names:
        assert_stat(getattr(fm, name), getattr(pml, name), 1e-12, what=name)


# ---- TripletMarginMiner ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ref", REFS)
@pytest.mark.parametrize("dist_name", DISTANCES)
def test_triplet_margin_miner_is_pmls(dist_name, ref, dtype):
    margin = MARGINS[dist_name]
    for seed, b, classes in [(11, 20, 4), (12, 12, 6), (13, 24, 3)]:
        x, y, kw = clear_draw(seed, b, classes, ref, dtype, dist_name, margins_clear([0.0, margin]))
        for type in TYPES:
            what = f"{dist_name} {type} ref={ref} seed={seed}"
            want = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=type, distance=DISTANCES[dist_name]())(
                x, y, **kw
            )
            miner = fm_pml.TripletMarginMiner(margin=margin, type_of_triplets=type, distance=DISTANCES[dist_name]())
            got = miner(x, y, **kw)
            assert_same_triplets(got, want, what)  # same triplets, in PML's order
            assert miner.num_triplets == len(want[0])
            if type == "all" and seed == 11:
                assert len(want[0]) > 0, f"{what}: the test must select something"


def test_triplet_margin_miner_default_margin_and_edge_labels():
    """PML's defaults (margin 0.2, "all", LpDistance()); one class, all singletons and B=1
    select nothing, in the same (empty, int64) form."""
    g = torch.Generator().manual_seed(14)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    for y in [torch.randint(0, 3, (10,), generator=g), torch.zeros(10, dtype=torch.int64), torch.arange(10)]:
        assert_same_triplets(
            fm_pml.TripletMarginMiner()(x, y), pml_miners.TripletMarginMiner()(x, y), f"labels={y.tolist()}"
        )
    assert_same_triplets(
        fm_pml.TripletMarginMiner()(x[:1], y[:1]), pml_miners.TripletMarginMiner()(x[:1], y[:1]), "B=1"
    )


@pytest.mark.parametrize("panel_rows", [1024, 3])
@pytest.mark.parametrize("ref", REFS)
@pytest.mark.parametrize("dist_name", ["lp_normalized", "lp_sq", "cosine"])
def test_triplet_margin_miner_statistics(dist_name, ref, panel_rows, monkeypatch):
    """PML's means over every valid triplet, computed without the triplets (in row panels:
    a small panel exercises several)."""
    monkeypatch.setattr(fm_pml, "_STATS_PANEL_ROWS", panel_rows)
    margin = MARGINS[dist_name]
    x, y, kw = clear_draw(15, 14, 3, ref, torch.float64, dist_name, margins_clear([0.0, margin]))
    for type in ("all", "easy"):
        pml = pml_miners.TripletMarginMiner(
            margin=margin, type_of_triplets=type, distance=DISTANCES[dist_name](), collect_stats=True
        )
        fm = fm_pml.TripletMarginMiner(
            margin=margin, type_of_triplets=type, distance=DISTANCES[dist_name](), collect_stats=True
        )
        pml(x, y, **kw), fm(x, y, **kw)
        for name in ["num_triplets", "pos_pair_dist", "neg_pair_dist", "avg_triplet_margin"]:
            assert_stat(getattr(fm, name), getattr(pml, name), 1e-12, f"{type} {name}")
    # no valid triplet: PML's mean of nothing is NaN
    one_class = torch.zeros_like(y)
    pml(x, one_class), fm(x, one_class)
    assert math.isnan(pml.pos_pair_dist) and math.isnan(fm.pos_pair_dist)
    assert math.isnan(fm.avg_triplet_margin) and fm.num_triplets == pml.num_triplets == 0


def test_distance_statistics_are_pmls():
    """The distance object records the norms it saw, as when PML's miner calls it."""
    x, y, kw = _draw(16, 12, 3, "other", torch.float64)
    x = x * 3
    for cls in (fm_pml.BatchHardMiner, fm_pml.TripletMarginMiner, fm_pml.SemiHardMiner):
        pml_cls = getattr(pml_miners, cls.__name__, pml_miners.BatchHardMiner)
        want = distances.LpDistance(collect_stats=True)
        got = distances.LpDistance(collect_stats=True)
        pml_cls(distance=want)(x, y, **kw)
        cls(distance=got)(x, y, **kw)
        for name in ["initial_avg_query_norm", "initial_avg_ref_norm", "final_avg_query_norm", "final_avg_ref_norm"]:
            assert getattr(got, name) != 0, name
            assert_stat(getattr(got, name), getattr(want, name), 1e-14, name)


# ---- SemiHardMiner --------------------------------------------------------------------------


def semi_hard_oracle(dd, pos, neg):
    """FaceNet / TF-Addons semi-hard, brute force in PML's terms: for every positive pair
    (a, p), row-major, of an anchor with a negative, the nearest negative farther than p,
    else the farthest negative; lowest index on exact ties."""
    a_out, p_out, n_out = [], [], []
    for a in range(dd.shape[0]):
        negs = neg[a].nonzero().squeeze(1).tolist()
        if not negs:
            continue
        for p in pos[a].nonzero().squeeze(1).tolist():
            farther = [n for n in negs if dd[a, n] > dd[a, p]]
            if farther:
                n = min(farther, key=lambda j: (float(dd[a, j]), j))
            else:
                n = min(negs, key=lambda j: (-float(dd[a, j]), j))
            a_out.append(a), p_out.append(p), n_out.append(n)
    as_t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return as_t(a_out), as_t(p_out), as_t(n_out)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ref", REFS)
@pytest.mark.parametrize("dist_name", DISTANCES)
def test_semi_hard_miner_is_facenet(dist_name, ref, dtype):
    for seed, b, classes in [(21, 16, 4), (22, 10, 5), (23, 20, 3)]:
        x, y, kw = clear_draw(seed, b, classes, ref, dtype, dist_name, semi_hard_clear)
        view = _view(dist_name, x, y, kw)
        want = semi_hard_oracle(*view)
        miner = fm_pml.SemiHardMiner(distance=DISTANCES[dist_name]())
        got = miner(x, y, **kw)
        what = f"{dist_name} ref={ref} seed={seed}"
        assert_same_triplets(got, want, what)
        assert miner.num_triplets == len(want[0]) > 0
        # fastmine's own oracle, on the same (PML-valued) distance matrix
        assert_same_triplets(got, R.semi_hard_select(*view), f"{what} (reference.py)")


def test_semi_hard_miner_edge_labels_and_statistics():
    g = torch.Generator().manual_seed(24)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    for y in [torch.zeros(10, dtype=torch.int64), torch.arange(10)]:
        a, p, n = fm_pml.SemiHardMiner()(x, y)
        assert a.dtype == torch.int64 and len(a) == len(p) == len(n) == 0
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 4])
    miner = fm_pml.SemiHardMiner(distance=distances.CosineSimilarity(), collect_stats=True)
    a, p, n = miner(x, y)
    sim = distances.CosineSimilarity()(x)
    assert_stat(miner.pos_pair_dist, sim[a, p].mean(), 1e-12, "pos_pair_dist")
    assert_stat(miner.neg_pair_dist, sim[a, n].mean(), 1e-12, "neg_pair_dist")
    assert_stat(miner.avg_triplet_margin, (sim[a, p] - sim[a, n]).mean(), 1e-12, "avg_triplet_margin")


# ---- in a PML training loop -----------------------------------------------------------------


class _BruteSemiHardMiner(pml_miners.BaseMiner):
    """The semi-hard oracle as a PML miner (PML has none of its own)."""

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        mat = self.distance(embeddings, ref_emb)
        dd = -mat if self.distance.is_inverted else mat
        same = labels[:, None] == ref_labels[None, :]
        pos = same.clone()
        if ref_labels is labels:
            pos.fill_diagonal_(False)
        return semi_hard_oracle(dd, pos, ~same)


def _semi_hard_miner(module, **kw):
    """fastmine's SemiHardMiner, or (for the PML side of the loop) the brute-force one."""
    return fm_pml.SemiHardMiner(**kw) if module is fm_pml else _BruteSemiHardMiner(**kw)


LOOP_CASES = (
    [
        ("batch_hard", lambda m, **kw: m.BatchHardMiner(**kw), {}),
        ("batch_hard_cosine", lambda m, **kw: m.BatchHardMiner(**kw), dict(distance=distances.CosineSimilarity())),
    ]
    + [
        (f"triplet_margin_{t}", lambda m, t=t, **kw: m.TripletMarginMiner(type_of_triplets=t, **kw), dict(margin=0.3))
        for t in TYPES
    ]
    + [
        ("semi_hard", lambda m, **kw: _semi_hard_miner(m, **kw), {}),
        (
            "semi_hard_lp",
            lambda m, **kw: _semi_hard_miner(m, **kw),
            dict(distance=distances.LpDistance(normalize_embeddings=False)),
        ),
    ]
)


@pytest.mark.parametrize("name, make, config", LOOP_CASES, ids=[c[0] for c in LOOP_CASES])
def test_drop_in_training_trajectory(name, make, config):
    """A PML training loop (fixed seeds, a linear model, 20 SGD steps, PML's
    TripletMarginLoss on the mined triplets): swapping in fastmine's miner mines the same
    triplets at every step, so the loss trajectory is PML's, bit for bit."""

    def trajectory(module):
        torch.manual_seed(0)
        model = torch.nn.Linear(10, 8).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        miner = make(module, **copy.deepcopy(config))
        # above the miners' 0.3, so that "easy" triplets have a loss too
        loss_func = losses.TripletMarginLoss(margin=0.5)
        g = torch.Generator().manual_seed(1)
        out, counts = [], []
        for _ in range(20):
            data = torch.randn(32, 10, generator=g, dtype=torch.float64)
            labels = torch.randint(0, 6, (32,), generator=g)
            emb = model(data)
            loss = loss_func(emb, labels, miner(emb, labels))
            opt.zero_grad()
            loss.backward()
            opt.step()
            out.append(loss.item())
            counts.append(miner.num_triplets)
        return torch.tensor(out, dtype=torch.float64), counts

    (want, want_n), (got, got_n) = trajectory(pml_miners), trajectory(fm_pml)
    assert bool((want[1:] != want[0]).any()), "the loop must actually train"
    assert sum(want_n) > 0, "the miner must mine something"
    assert got_n == want_n
    assert torch.equal(got, want), f"loss trajectory\n got {got.tolist()}\nwant {want.tolist()}"


# ---- PML's API and the errors ---------------------------------------------------------------


def test_they_are_pml_miners_with_pmls_defaults():
    bh, tm, sh = fm_pml.BatchHardMiner(), fm_pml.TripletMarginMiner(), fm_pml.SemiHardMiner()
    assert isinstance(bh, pml_miners.BatchHardMiner)
    assert isinstance(tm, pml_miners.TripletMarginMiner)
    assert isinstance(sh, pml_miners.BaseMiner)
    assert not isinstance(sh, pml_miners.TripletMarginMiner)
    pml_tm = pml_miners.TripletMarginMiner()
    assert (tm.margin, tm.type_of_triplets) == (pml_tm.margin, pml_tm.type_of_triplets)
    for m in (bh, tm, sh):
        assert type(m.distance) is distances.LpDistance and m.distance.normalize_embeddings
    assert set(fm_pml.__all__) >= {"BatchHardMiner", "TripletMarginMiner", "SemiHardMiner"}


def test_inputs_with_grad_give_no_graph():
    x = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    y = torch.arange(4).repeat(3)
    for miner in (fm_pml.BatchHardMiner(), fm_pml.TripletMarginMiner(), fm_pml.SemiHardMiner()):
        assert all(not t.requires_grad for t in miner(x, y))


UNSUPPORTED = [
    (fm_pml.BatchHardMiner, dict(distance=distances.LpDistance(p=1)), "distance"),
    (fm_pml.BatchHardMiner, dict(distance=distances.SNRDistance()), "distance"),
    (fm_pml.BatchHardMiner, dict(distance=distances.DotProductSimilarity()), "distance"),
    (fm_pml.BatchHardMiner, dict(allowed_pos_range=(0.0, 1.0)), "allowed_pos_range"),
    (fm_pml.BatchHardMiner, dict(allowed_neg_range=(0.0, 1.0)), "allowed_neg_range"),
    (fm_pml.TripletMarginMiner, dict(distance=distances.LpDistance(power=3)), "distance"),
    (fm_pml.TripletMarginMiner, dict(distance=distances.CosineSimilarity(power=2)), "distance"),
    (fm_pml.TripletMarginMiner, dict(type_of_triplets="hardest"), "type_of_triplets"),
    (fm_pml.TripletMarginMiner, dict(margin=float("nan")), "margin"),
    (fm_pml.SemiHardMiner, dict(distance=distances.SNRDistance()), "distance"),
]


@pytest.mark.parametrize(
    "cls, kw, match", UNSUPPORTED, ids=[f"{c.__name__}-{m}-{i}" for i, (c, _, m) in enumerate(UNSUPPORTED)]
)
def test_unsupported_options_raise(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)


@pytest.mark.parametrize(
    "miner, attr, value, match",
    [
        (fm_pml.TripletMarginMiner(), "type_of_triplets", "hardest", "type_of_triplets"),
        (fm_pml.BatchHardMiner(), "neg_strategy", "easy", "neg_strategy"),
        (fm_pml.SemiHardMiner(), "distance", distances.SNRDistance(), "distance"),
    ],
    ids=["type_of_triplets", "neg_strategy", "distance"],
)
def test_changed_attribute_is_checked_at_call(miner, attr, value, match):
    setattr(miner, attr, value)
    x, y, _ = _draw(0, 8, 2, "none", torch.float64)
    with pytest.raises(ValueError, match=match):
        miner(x, y)


@pytest.mark.parametrize("cls", [fm_pml.BatchHardMiner, fm_pml.TripletMarginMiner, fm_pml.SemiHardMiner])
def test_ref_emb_needs_ref_labels(cls):
    """PML would pair a same-sized ref_emb with the batch's labels, silently."""
    x, y, kw = _draw(0, 8, 2, "other", torch.float64)
    for ref_emb in (kw["ref_emb"], kw["ref_emb"][:8]):
        with pytest.raises(ValueError, match="ref_labels are required with ref_emb"):
            cls()(x, y, ref_emb)


def test_triplet_margin_miner_refuses_nan():
    """PML silently drops triplets with a NaN distance; fastmine refuses to mine on NaN."""
    x, y, _ = _draw(0, 8, 2, "none", torch.float64)
    x[3, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fm_pml.TripletMarginMiner(distance=DISTANCES["lp"]())(x, y)


def test_batch_hard_miner_nan_follows_pml():
    """A NaN row wins the selections it takes part in, in PML (torch.max/min propagate NaN)
    and in fastmine alike."""
    g = torch.Generator().manual_seed(25)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    y = torch.arange(4).repeat(4)
    x[5, 0] = float("nan")
    dist = DISTANCES["lp"]
    assert_same_triplets(
        fm_pml.BatchHardMiner(distance=dist())(x, y), pml_miners.BatchHardMiner(distance=dist())(x, y), "NaN"
    )
