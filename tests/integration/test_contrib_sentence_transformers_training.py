"""A SentenceTransformerTrainer run with fastmine's drop-in loss follows the loss trajectory
of the same run with sentence-transformers' own loss. The model is a static-embedding model
over a word-level tokenizer built here: nothing is downloaded."""

from __future__ import annotations

import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest.importorskip("sentence_transformers")
pytest.importorskip("datasets")
pytest.importorskip("accelerate")
from datasets import Dataset  # noqa: E402
from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer import losses as st_losses  # noqa: E402
from sentence_transformers.sentence_transformer.modules import StaticEmbedding  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

import fastmine.contrib.sentence_transformers as fm_st  # noqa: E402

CLASSES, PER_CLASS, WORDS_PER_CLASS, DIM = 6, 8, 10, 16


def _model(seed: int) -> SentenceTransformer:
    words = [f"w{i}" for i in range(CLASSES * WORDS_PER_CLASS)]
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    weights = torch.randn(len(vocab), DIM, generator=torch.Generator().manual_seed(seed))
    return SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_weights=weights)], device="cpu")


def _dataset() -> Dataset:
    # Each class draws its words mostly from its own range, overlapping the next class's.
    rng = random.Random(0)
    sentences, labels = [], []
    for c in range(CLASSES):
        lo = c * WORDS_PER_CLASS
        for _ in range(PER_CLASS):
            sentences.append(
                " ".join(
                    f"w{rng.randrange(lo, lo + WORDS_PER_CLASS + 4) % (CLASSES * WORDS_PER_CLASS)}" for _ in range(5)
                )
            )
            labels.append(c)
    return Dataset.from_dict({"sentence": sentences, "label": labels})


def _train(loss_cls, out_dir, **loss_kw):
    model = _model(seed=0)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=3,
        per_device_train_batch_size=12,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    # The default batch sampler: random batches, so some hold a label once (the degenerate
    # anchors whose numbers the drop-ins match too).
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=_dataset(), loss=loss_cls(model, **loss_kw)
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return model, losses


PAIRS = [
    (fm_st.BatchHardTripletLoss, st_losses.BatchHardTripletLoss, {}),  # margin 5, its default
    (fm_st.BatchHardSoftMarginTripletLoss, st_losses.BatchHardSoftMarginTripletLoss, {}),
    (fm_st.BatchAllTripletLoss, st_losses.BatchAllTripletLoss, {"margin": 1.0}),
    (
        fm_st.BatchSemiHardTripletLoss,
        st_losses.BatchSemiHardTripletLoss,
        {"margin": 1.0, "distance_metric": fm_st.squared_euclidean_distance},
    ),
]


@pytest.mark.parametrize("ours,theirs,kw", PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_trainer_trajectory_equals_sentence_transformers(ours, theirs, kw, tmp_path, monkeypatch):
    batches = []  # the label sets fastmine was given, step by step

    def spy(real):
        def wrapper(emb, labels, *args, **kwargs):
            if "ref_embeddings" not in kwargs:
                batches.append(labels.tolist())
            return real(emb, labels, *args, **kwargs)

        return wrapper

    for name in ("batch_hard_triplet_loss", "batch_all_triplet_loss", "semi_hard_triplet_loss", "contrastive_loss"):
        monkeypatch.setattr(fm_st.fastmine, name, spy(getattr(fm_st.fastmine, name)))
    model_ours, traj_ours = _train(ours, tmp_path / "ours", **kw)
    monkeypatch.undo()
    assert len(batches) == 12, "every step must compute through fastmine"
    assert any(min(b.count(c) for c in set(b)) == 1 for b in batches), "no batch held a label once"
    model_theirs, traj_theirs = _train(theirs, tmp_path / "theirs", **kw)
    assert len(traj_ours) == len(traj_theirs) == 12  # 48 samples / 12 per step x 3 epochs
    assert traj_ours == pytest.approx(traj_theirs, rel=1e-4, abs=1e-6)
    assert max(traj_theirs) - min(traj_theirs) > 1e-2, "a flat trajectory would prove nothing"
    w_ours = model_ours[0].embedding.weight.detach()
    w_theirs = model_theirs[0].embedding.weight.detach()
    assert not torch.equal(w_theirs, _model(seed=0)[0].embedding.weight), "training moved nothing"
    torch.testing.assert_close(w_ours, w_theirs, rtol=1e-4, atol=1e-5)


def test_model_card_names_the_loss_and_its_config(tmp_path):
    model, _ = _train(fm_st.BatchHardTripletLoss, tmp_path / "run", margin=1.0)
    model.save(str(tmp_path / "saved"))
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "[<code>BatchHardTripletLoss</code>]" in card or "BatchHardTripletLoss" in card
    assert "loss:BatchHardTripletLoss" in card
    assert '"margin": 1.0' in card and '"distance_metric": "euclidean_distance"' in card
    assert "hermans2017defense" in card  # the citation
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    torch.testing.assert_close(torch.as_tensor(reloaded.encode(["w1 w2"])), torch.as_tensor(model.encode(["w1 w2"])))
