"""The served model in-process: raw requests ranked exactly as evaluation ranks the same history,
for the FM and its adapters (every kind) mixed in one batch, with time and context fields; bad
input is a RequestError that names the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmrec.data.split import LeaveOneOut, leave_one_out
from fmrec.data.synthetic import generate
from fmrec.nn.adapters import AdaptedModel, Adapter, AdapterBase, Distilled, LoRA
from fmrec.nn.fm import FoundationModel
from fmrec.serving.infer import Recommendation, Recommender
from fmrec.serving.request import Query, RequestError, encode
from fmrec.train.pretrain import build_model
from fmrec.vocab import Vocabulary

from .serving_cases import assert_same_ranking, evaluated_scores, query, with_device

T, K = 12, 10
FIELDS = ("item", "action", "timeGap", "hourOfDay", "dayOfWeek", "relativeTime", "device")


@pytest.fixture(scope="module")
def split() -> LeaveOneOut:
    return leave_one_out(with_device(generate(n_events=6_000, n_users=150, n_items=200, seed=5)))


@pytest.fixture(scope="module")
def fm(split: LeaveOneOut) -> FoundationModel:
    torch.manual_seed(0)
    return build_model(split.log, d_model=16, n_layers=1, n_heads=2, context_len=T, event_fields=FIELDS).eval()


def adapter(fm: FoundationModel, seed: int) -> Adapter:
    """An adapter that changes the ranking (a freshly initialised one would score like the FM)."""
    torch.manual_seed(seed)
    a = Adapter(fm, "bottleneck", 4)
    torch.nn.init.normal_(a.up.weight, std=0.5)
    torch.nn.init.normal_(a.item_bias, std=0.5)
    return a.eval()


def lora(fm: FoundationModel, seed: int) -> LoRA:
    """A LoRA adapter that changes the ranking (B = 0, as initialised, would score like the FM)."""
    torch.manual_seed(seed)
    a = LoRA(fm, rank=2, alpha=4.0)
    torch.nn.init.normal_(a.b, std=0.5)
    torch.nn.init.normal_(a.item_bias, std=0.5)
    return a.eval()


def student(fm: FoundationModel, seed: int) -> Distilled:
    torch.manual_seed(seed)
    return Distilled(fm, layers=1, width=8).eval()


def users_of(split: LeaveOneOut) -> np.ndarray:
    lengths = np.array([len(split.history(int(u), "test")) for u in split.test_users])
    long, short = split.test_users[lengths > T + 1], split.test_users[lengths <= T]
    assert len(long) >= 20 and len(short) >= 5, "the data must hold histories longer and shorter than the context"
    return np.concatenate([long[:20], short[:5]])


def test_fm_ranks_raw_requests_exactly_as_evaluation(split: LeaveOneOut, fm: FoundationModel) -> None:
    users = users_of(split)
    rec = Recommender(fm, Vocabulary.from_log(split.log), k_max=K)
    got = rec.recommend([query(split, int(u), shuffle=int(u)) for u in users])  # events arrive in any order
    want = evaluated_scores(fm, split, users)
    for b, u in enumerate(users):
        assert_same_ranking(got[b].codes, want[b], u, got[b].scores.tolist())
        assert list(got[b].items) == [split.log.item_ids[c - 1] for c in got[b].codes]  # raw IDs out


def test_the_oldest_event_in_the_window_keeps_its_real_time_gap(split: LeaveOneOut, fm: FoundationModel) -> None:
    """Sending only the newest T events loses the oldest one's gap; sending T + 1 keeps it."""
    vocab = Vocabulary.from_log(split.log)
    u = int(users_of(split)[0])
    full = query(split, u)
    cut = {n: Query(items=full.items[-n:], actions=full.actions[-n:], timestamps=full.timestamps[-n:],  # type: ignore[index]
                    context={k: v[-n:] for k, v in full.context.items()}) for n in (T, T + 1)}
    whole = encode(full, vocab, FIELDS, T).tokens["timeGap"]
    assert np.array_equal(encode(cut[T + 1], vocab, FIELDS, T).tokens["timeGap"], whole)
    short = encode(cut[T], vocab, FIELDS, T).tokens["timeGap"]
    assert short[0] == 1 and not np.array_equal(short, whole), "the window's oldest event should have lost its real gap"


def assert_each_row_ranks_as_its_task_alone(got: list[Recommendation], split: LeaveOneOut, fm: FoundationModel,
                                            adapters: dict[str, AdapterBase], users: np.ndarray, tasks: list[str]) -> None:
    for task in set(tasks):
        model = fm if task == "fm" else AdaptedModel(fm, adapters[task])
        mine = np.array([u for u, t in zip(users, tasks, strict=True) if t == task])
        want = evaluated_scores(model, split, mine)
        rows = [b for b, t in enumerate(tasks) if t == task]
        for row, w, u in zip(rows, want, mine, strict=True):
            assert got[row].task == task
            assert_same_ranking(got[row].codes, w, u, got[row].scores.tolist())


def test_adapters_and_the_fm_in_one_batch_rank_as_each_evaluated_alone(split: LeaveOneOut, fm: FoundationModel) -> None:
    adapters: dict[str, AdapterBase] = {"liked": adapter(fm, 1), "jp": adapter(fm, 2)}
    rec = Recommender(fm, Vocabulary.from_log(split.log), adapters, k_max=K)
    users = users_of(split)
    tasks = [("fm", "liked", "jp")[b % 3] for b in range(len(users))]
    got = rec.recommend([query(split, int(u), task=t) for u, t in zip(users, tasks, strict=True)])  # one mixed batch
    assert_each_row_ranks_as_its_task_alone(got, split, fm, adapters, users, tasks)
    # the adapters really differ from the FM, so the check above could tell them apart
    fm_only = rec.recommend([query(split, int(users[1]))])[0]
    assert not np.array_equal(fm_only.codes, got[1].codes)


def test_every_adapter_kind_in_one_batch_ranks_as_each_evaluated_alone(split: LeaveOneOut, fm: FoundationModel) -> None:
    """The FM and bottleneck rows share one plain backbone pass; each LoRA task runs the backbone
    with its own updates on its own rows; the student never runs the FM's blocks."""
    adapters: dict[str, AdapterBase] = {"liked": adapter(fm, 1), "lora-a": lora(fm, 2), "lora-b": lora(fm, 3), "small": student(fm, 4)}
    rec = Recommender(fm, Vocabulary.from_log(split.log), adapters, k_max=K)
    users = users_of(split)
    order = ("fm", "lora-a", "liked", "small", "lora-b")
    tasks = [order[b % len(order)] for b in range(len(users))]
    passes: list[int] = []  # rows in each pass through the FM's blocks
    hook = fm.blocks[0].register_forward_hook(lambda module, inputs, output: passes.append(int(inputs[0].shape[0])))
    try:
        got = rec.recommend([query(split, int(u), task=t) for u, t in zip(users, tasks, strict=True)])  # one mixed batch
    finally:
        hook.remove()
    rows = {t: tasks.count(t) for t in order}
    assert sorted(passes) == sorted([rows["fm"] + rows["liked"], rows["lora-a"], rows["lora-b"]])
    assert_each_row_ranks_as_its_task_alone(got, split, fm, adapters, users, tasks)
    # every task ranks the same user differently, so the check above could tell them apart
    u = int(users[0])
    tops = {t: tuple(rec.recommend([query(split, u, task=t)])[0].codes) for t in order}
    assert len(set(tops.values())) == len(order), tops


def test_unknown_values_are_counted_and_dropped_never_fatal(split: LeaveOneOut, fm: FoundationModel) -> None:
    rec = Recommender(fm, Vocabulary.from_log(split.log), k_max=K)
    q = query(split, int(split.test_users[0]))
    noisy = Query(items=[*q.items, "brand-new-item", "another"], actions=[*q.actions, "5", "9"],  # type: ignore[misc]
                  timestamps=np.concatenate([q.timestamps, [2_000_000_000, 2_000_000_001]]),  # type: ignore[list-item]
                  context={"device": [*q.context["device"], "fridge", "tv"]})
    got = rec.recommend([noisy])[0]
    assert got.unknown == {"item": 2, "action": 1, "device": 1} and got.events == len(q.items) + 2
    assert np.array_equal(got.codes, rec.recommend([q])[0].codes)  # the unknown events were dropped, nothing else changed
    assert "" not in set(got.items) and len(got.items) == K


def test_exclude_k_and_the_history_are_never_recommended(split: LeaveOneOut, fm: FoundationModel) -> None:
    rec = Recommender(fm, Vocabulary.from_log(split.log), k_max=K)
    q = query(split, int(split.test_users[3]))
    first = rec.recommend([q])[0]
    assert not set(first.items) & set(q.items)
    fewer = rec.recommend([Query(items=q.items, actions=q.actions, timestamps=q.timestamps, context=q.context,
                                 exclude=list(first.items[:2]) + ["not-an-item"], k=3)])[0]
    assert list(fewer.items) == list(first.items[2:5]) and fewer.scores.shape == (3,)


@pytest.mark.parametrize(("change", "message"), [
    ({"task": "nope"}, r"unknown TASK 'nope': this model serves \['fm'\]"),
    ({"k": K + 1}, r"K=11 is outside 1..10.*re-export with a larger --top-k"),
    ({"timestamps": None}, r"TIMESTAMPS is required: this model was trained with \['timeGap', 'hourOfDay', 'dayOfWeek', 'relativeTime'\]"),
    ({"actions": None}, r"ACTIONS is required"),
    ({"actions": ["5"]}, r"ACTIONS has 1 entries but ITEMS has \d+"),
    ({"context": {"device": ["tv"]}}, r"DEVICE has 1 entries"),
    ({"context": {"weather": []}}, r"context inputs \['weather'\] are not context fields"),
], ids=["unknown-task", "k-too-large", "no-timestamps", "no-actions", "actions-misaligned", "device-misaligned", "bad-context"])
def test_bad_requests_name_the_input_and_the_fix(split: LeaveOneOut, fm: FoundationModel, change: dict[str, object],
                                                 message: str) -> None:
    rec = Recommender(fm, Vocabulary.from_log(split.log), k_max=K)
    q = query(split, int(split.test_users[0]))
    fields = {"items": q.items, "actions": q.actions, "timestamps": q.timestamps, "context": q.context} | change
    with pytest.raises(RequestError, match=message):
        rec.prepare(Query(**fields))  # type: ignore[arg-type]
