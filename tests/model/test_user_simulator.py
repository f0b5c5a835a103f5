"""The user simulator's replay data (fmdev.local.users): held-out MovieLens 100K users, their histories as a client
sends them, and the item they really chose next, which no served version trained on."""

from __future__ import annotations

import numpy as np
import pytest

from fmdev.local.users import Simulator, held_out_users, outcome_body, recommend_body, top_items
from fmrec.data.movielens import load_ml100k
from fmrec.data.split import leave_one_out
from fmrec.serving.client import bucket


@pytest.fixture(scope="module")
def log():  # type: ignore[no-untyped-def]
    return load_ml100k()


def test_each_user_replays_the_history_before_the_held_out_event_and_chooses_it_next(log) -> None:  # type: ignore[no-untyped-def]
    users = held_out_users(log, history=50, min_history=5)
    split = leave_one_out(log)
    sl = split.log
    assert len(users) == len({u.key for u in users}) > 900
    for user in users[:: 97]:
        code = sl.user_ids.index(user.key.removeprefix("ml100k-")) + 1
        events = np.arange(int(split.offsets[code - 1]), int(split.offsets[code]))
        last = int(events[-1])  # the leave-one-out test event: held out of every training run
        assert user.next_item == sl.item_ids[int(sl.item[last]) - 1]
        assert user.items == tuple(sl.item_ids[int(c) - 1] for c in sl.item[events[:-1]][-50:])
        assert list(user.timestamps) == sorted(user.timestamps) and user.timestamps[-1] <= int(sl.timestamp[last])
        assert all(a in {"1", "2", "3", "4", "5"} for a in user.actions)
        assert user.bucket == bucket(user.key)


def test_short_histories_are_left_out_and_long_ones_cut_to_the_newest(log) -> None:  # type: ignore[no-untyped-def]
    users = held_out_users(log, history=7, min_history=30)
    assert users and all(len(u.items) == 7 for u in users)
    assert len(users) < len(held_out_users(log, history=7, min_history=5))


def test_the_requests_are_kserve_v2_json_as_the_served_model_reads_them() -> None:
    users = held_out_users(load_ml100k())
    body = recommend_body(users[0], k=10)
    n = len(users[0].items)
    assert [(i["name"], i["datatype"], i["shape"]) for i in body["inputs"]] == [
        ("ITEMS", "BYTES", [1, n]), ("TIMESTAMPS", "INT64", [1, n]), ("ACTIONS", "BYTES", [1, n]), ("K", "INT32", [1, 1])]
    assert outcome_body("played", 3)["inputs"] == [{"name": "OUTCOME", "datatype": "BYTES", "shape": [1, 1], "data": ["played"]},
                                                   {"name": "POSITION", "datatype": "INT32", "shape": [1, 1], "data": [3]}]
    assert [i["name"] for i in outcome_body("ignored", None)["inputs"]] == ["OUTCOME"]
    assert top_items({"outputs": [{"name": "TOPK_ITEMS", "data": ["5", "9", ""]}]}) == ["5", "9"]
    with pytest.raises(ValueError, match="TOPK_ITEMS"):
        top_items({"outputs": []})


def test_bad_settings_are_refused_with_the_setting_named() -> None:
    users = held_out_users(load_ml100k())[:3]
    for kwargs, word in (({"noise": 1.5}, "noise"), ({"skew": -0.1}, "skew"), ({"rate": 0}, "rate"), ({"duration": -1}, "duration")):
        with pytest.raises(ValueError, match=word):
            Simulator("http://127.0.0.1:1", users, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no users"):
        Simulator("http://127.0.0.1:1", [])
