"""The raw values behind the codes travel with a trained version: vocabularies, popularity deciles,
and adapters that know which FM version they belong to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmrec import checkpoint
from fmrec.data.movielens import load_ml100k
from fmrec.data.synthetic import generate
from fmrec.data.tabular import FeatureSchema, load_table
from fmrec.nn.adapters import Adapter
from fmrec.train.pretrain import build_model
from fmrec.vocab import Vocabulary, popularity_deciles


def test_movielens_vocabulary_has_raw_ids_ratings_and_deciles() -> None:
    log = load_ml100k()
    vocab = Vocabulary.from_log(log)
    assert vocab.items == log.item_ids and vocab.actions == ("1", "2", "3", "4", "5")
    codes = vocab.encode("item", ["50", "no-such-movie", "1"])
    assert list(codes) == [log.item_ids.index("50") + 1, 0, log.item_ids.index("1") + 1]
    assert list(vocab.decode_items(codes)) == ["50", "", "1"]
    assert list(vocab.encode("action", ["5", "1", "4.5"])) == [5, 1, 0]
    counts = np.bincount(log.item, minlength=log.n_items + 1)
    star_wars = log.item_ids.index("50") + 1  # the most rated movie of ML-100K
    assert counts.argmax() == star_wars and vocab.item_decile[star_wars] == 1
    assert vocab.item_decile[int(np.argmin(counts[1:])) + 1] == 10
    assert sorted(set(vocab.item_decile[1:])) == list(range(1, 11))


@pytest.mark.parametrize(("counts", "want"), [
    ([5, 9, 1, 0, 7, 3, 2, 8, 6, 4], [0, 5, 1, 9, 10, 3, 7, 8, 2, 4, 6]),
    ([1, 1, 1], [0, 1, 4, 7]),  # ties keep item order; fewer items than deciles
], ids=["ten-items", "ties"])
def test_popularity_deciles(counts: list[int], want: list[int]) -> None:
    assert list(popularity_deciles(np.array(counts))) == want


def test_context_and_action_vocabularies_survive_loading_and_saving(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": ["a", "a", "b", "b"], "item_id": ["x", "y", "x", "z"], "timestamp": [1, 2, 3, 4],
                          "rating": ["like", "skip", "like", "like"], "device": ["tv", "phone", "tv", "web"]})
    frame.to_csv(tmp_path / "e.csv", index=False)
    log = load_table(tmp_path / "e.csv", FeatureSchema(contextFields=("device",)))
    assert log.action_ids == ("like", "skip") and log.context_ids == {"device": ("phone", "tv", "web")}
    assert log.take(np.array([0, 1])).context_ids == log.context_ids  # slicing keeps them
    vocab = Vocabulary.from_log(log)
    assert list(vocab.encode("device", ["web", "fridge"])) == [3, 0]
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    model = build_model(log, d_model=8, n_layers=1, n_heads=1, context_len=4, event_fields=("item", "action", "device"))
    checkpoint.save(model, tmp_path / "fm", {"data": "csv"}, vocab)
    assert checkpoint.load_vocab(tmp_path / "fm") == vocab
    checkpoint.save(model, tmp_path / "old", {"data": "csv"})
    assert checkpoint.load_vocab(tmp_path / "old") is None  # written the old way


def test_an_adapter_refuses_an_fm_version_it_was_not_trained_on(tmp_path: Path) -> None:
    log = generate(n_events=2_000, n_users=100, n_items=50, seed=1)
    fm = build_model(log, d_model=16, n_layers=1, n_heads=1, context_len=8)
    adapter = Adapter(fm, "bottleneck", 4)
    torch.nn.init.normal_(adapter.up.weight)
    checkpoint.save_adapter(adapter, fm, tmp_path / "liked", "liked", {})
    loaded, info = checkpoint.load_adapter(tmp_path / "liked", fm)
    assert info["task"] == "liked" and torch.equal(loaded.up.weight, adapter.up.weight)
    other = build_model(log, d_model=16, n_layers=1, n_heads=1, context_len=8)
    with pytest.raises(ValueError, match=r"liked/adapter.pt was trained on another FM version"):
        checkpoint.load_adapter(tmp_path / "liked", other)
