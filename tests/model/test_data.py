"""The data contract: loaders, deterministic ordering, fingerprints, leave-one-out split."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmrec.data import SCHEMA_VERSION, leave_one_out
from fmrec.data.movielens import age_band, load_ml100k, locate_ml100k, region_from_zip
from fmrec.data.schema import EventLog
from fmrec.data.synthetic import generate
from fmrec.data.tabular import FeatureSchema, SchemaError, load_table


@pytest.fixture(scope="module")
def ml() -> EventLog:
    return load_ml100k()


def test_ml100k_is_read_from_the_installed_wheel_not_the_repo(ml: EventLog) -> None:
    folder = locate_ml100k()
    assert "site-packages" in str(folder)
    repo = Path(__file__).resolve().parents[2]
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout
    assert "ml-100k" not in tracked and "u.data" not in tracked
    assert (len(ml), ml.n_users, ml.n_items) == (100_000, 943, 1682)
    assert set(np.unique(ml.action)) == {1, 2, 3, 4, 5}


def test_ml100k_side_information(ml: EventLog) -> None:
    assert ml.items is not None and ml.users is not None
    assert "Comedy" in ml.items.genre_names and "Sci-Fi" in ml.items.genre_names
    toy_story = ml.item_ids.index("1") + 1
    assert ml.items.titles[toy_story] == "Toy Story"
    assert ml.items.genres[toy_story, ml.items.genre_names.index("Animation")]
    assert ml.items.year_bucket[toy_story] > 0
    assert set(ml.users.vocab) == {"ageBand", "gender", "occupation", "region"}
    assert (ml.users.columns["region"][1:] > 0).all()


def test_zip_and_age_buckets() -> None:
    assert region_from_zip("85711") == "us-8" and region_from_zip("T8H1N") == "intl"
    assert age_band(7) == "<18" and age_band(24) == "18-24" and age_band(56) == "56+"


def test_order_is_deterministic_despite_timestamp_ties(ml: EventLog) -> None:
    # In ML-100K most events share their timestamp with another event of the same user.
    same = (np.diff(ml.user) == 0) & (np.diff(ml.timestamp) == 0)
    assert same.mean() > 0.5
    shuffled = ml.take(np.random.default_rng(1).permutation(len(ml))).sorted()
    assert np.array_equal(shuffled.item, ml.item) and np.array_equal(shuffled.user, ml.user)


def test_timestamp_ties_follow_no_order_of_items(ml: EventLog) -> None:
    # Ties broken by item code made every burst ascend in code, so the held-out event was the tied
    # item with the highest code. The tie key (item hash x timestamp) must leave no such pattern: the next tied
    # event has a higher code about half the time, in ML-100K and for a single user's ties.
    same = (np.diff(ml.user) == 0) & (np.diff(ml.timestamp) == 0)
    ascending = (np.diff(ml.item) > 0)[same]
    assert 0.45 < ascending.mean() < 0.55, f"{ascending.mean():.3f} of tied neighbours ascend in item code"
    by_user = [ascending[ml.user[:-1][same] == u].mean() for u in (1, 13, 405)]  # users with long tied bursts
    assert all(0.3 < m < 0.7 for m in by_user), by_user


def test_fingerprint_is_stable_and_sensitive(ml: EventLog) -> None:
    again = load_ml100k()
    assert ml.fingerprint() == again.fingerprint()
    assert ml.fingerprint().startswith("sha256:")
    changed_action = ml.action.copy()
    changed_action[0] = 6 - changed_action[0] if changed_action[0] != 3 else 4
    altered = EventLog(user=ml.user, item=ml.item, timestamp=ml.timestamp, action=changed_action, user_ids=ml.user_ids,
                       item_ids=ml.item_ids, n_actions=5, items=ml.items, users=ml.users)
    assert altered.fingerprint() != ml.fingerprint()
    assert altered.feature_fingerprint() == ml.feature_fingerprint()
    assert SCHEMA_VERSION == "events/v2"


def test_leave_one_out(ml: EventLog) -> None:
    split = leave_one_out(ml)
    assert len(split.test_users) == 943  # every ML-100K user has at least 20 ratings
    u = int(split.test_users[0])
    test_idx, val_idx = split.target(u, "test"), split.target(u, "val")
    assert test_idx == val_idx + 1
    assert split.log.user[test_idx] == u and test_idx == split.offsets[u] - 1  # the user's last event
    hist = split.history(u, "test")
    assert hist[-1] == val_idx and (split.log.timestamp[hist] <= split.log.timestamp[test_idx]).all()
    mask = split.train_mask("test")
    assert mask.sum() == len(ml) - 943 and not mask[test_idx] and mask[val_idx]
    assert split.train_mask("val").sum() == len(ml) - 2 * 943


def test_csv_and_parquet_roundtrip(tmp_path: Path, ml: EventLog) -> None:
    frame = pd.DataFrame({
        "uid": np.array(ml.user_ids)[ml.user - 1], "sku": np.array(ml.item_ids)[ml.item - 1],
        "when": ml.timestamp, "stars": ml.action, "device": np.where(ml.item % 2 == 0, "tv", "phone"),
    }).sample(frac=1.0, random_state=3)
    schema = FeatureSchema(userField="uid", itemField="sku", timestampField="when", actionField="stars", contextFields=("device",))
    frame.to_csv(tmp_path / "events.csv", index=False)
    frame.to_parquet(tmp_path / "events.parquet")
    from_csv = load_table(tmp_path / "events.csv", schema)
    from_pq = load_table(tmp_path / "events.parquet", schema)
    for log in (from_csv, from_pq):
        assert len(log) == len(ml) and log.n_items == ml.n_items and set(log.context) == {"device"}
    assert from_csv.fingerprint() == from_pq.fingerprint()


def test_missing_column_names_the_field(tmp_path: Path) -> None:
    pd.DataFrame({"user_id": ["a"], "item_id": ["b"], "ts": [1]}).to_csv(tmp_path / "e.csv", index=False)
    with pytest.raises(SchemaError, match=r"\['timestamp', 'rating'\].*featureSchema"):
        load_table(tmp_path / "e.csv")


def test_iso_dates_are_accepted_and_garbage_is_named(tmp_path: Path) -> None:
    pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "y"], "timestamp": ["2024-01-01T00:00:00Z", "2024-01-02"]}).to_csv(tmp_path / "d.csv", index=False)
    log = load_table(tmp_path / "d.csv", FeatureSchema(actionField=None))
    assert list(log.timestamp) == [1704067200, 1704153600]
    pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": ["yesterday"]}).to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(SchemaError, match="'yesterday'"):
        load_table(tmp_path / "g.csv", FeatureSchema(actionField=None))


def test_synthetic_log_has_the_promised_shape() -> None:
    log = generate(n_events=200_000, n_users=2_000, n_items=5_000, seed=7)
    assert len(log) == 200_000 and log.n_users == 2_000
    assert np.array_equal(log.item, generate(n_events=200_000, n_users=2_000, n_items=5_000, seed=7).item)
    counts = np.sort(np.bincount(log.item, minlength=log.n_items + 1)[1:])[::-1]
    assert counts[: len(counts) // 100].sum() / counts.sum() > 0.10  # power law: top 1% of items > 10% of events
    assert (np.diff(log.user) >= 0).all()
    same_user = np.diff(log.user) == 0
    assert (np.diff(log.timestamp)[same_user] >= 0).all()
    # sessions: consecutive events of a user often share a genre
    assert log.items is not None
    g = log.items.genres.argmax(axis=1)[log.item]
    assert (g[1:] == g[:-1])[same_user].mean() > 0.5
