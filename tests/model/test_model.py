"""Contract tests every model variant passes (after RecTools' tests/models/utils.py): shapes,
causality, padding, save/load, config round-trip, and that training actually learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fmrec import checkpoint
from fmrec.data.split import leave_one_out
from fmrec.data.synthetic import generate
from fmrec.nn.fm import FMConfig
from fmrec.tokens import gap_buckets, tokenize, windows
from fmrec.eval.evaluate import evaluate
from fmrec.eval.metrics import rank_targets, ranking_metrics
from fmrec.train.loop import TrainSettings
from fmrec.train.pretrain import build_model, pretrain

VARIANTS = {
    "item-only": {"event_fields": ("item",)},
    "multi-field": {"event_fields": ("item", "action", "timeGap", "hourOfDay", "dayOfWeek")},
    "relative-time": {"event_fields": ("item", "action", "relativeTime")},
    "multi-task": {"objectives": {"nextItem": 1.0, "multiToken": 0.5, "action": 0.2, "genre": 0.2}, "horizon": 3},
    "sampled-softmax": {"negatives": 64},
    "sliding-window": {"attention_window": 8},
}


@pytest.fixture(scope="module")
def small():  # type: ignore[no-untyped-def]
    log = generate(n_events=20_000, n_users=400, n_items=300, n_genres=6, seed=3)
    return log, leave_one_out(log)


def make(log, **kw):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    arch = {"d_model": 32, "n_layers": 2, "n_heads": 2, "context_len": 16, "dropout": 0.0, "item_id_dropout": 0.0, **kw}
    return build_model(log, **arch)


def test_gap_buckets() -> None:
    ts = np.array([0, 0, 1, 1025, 5, 100], dtype=np.int64)
    user = np.array([1, 1, 1, 1, 2, 2], dtype=np.int64)
    assert list(gap_buckets(ts, user)) == [1, 1, 2, 12, 1, 8]


def test_windows_cover_every_target_once_per_window_and_end_at_newest() -> None:
    offsets = np.array([0, 10, 13], dtype=np.int64)
    keep = np.ones(13, dtype=bool)
    keep[9] = False  # user 1's held-out event
    w = windows(offsets, keep, length=4, stride=2)
    assert [list(x) for x in w[:2]] == [[4, 5, 6, 7, 8], [2, 3, 4, 5, 6]]
    assert all(len(x) <= 5 for x in w) and list(w[-1]) == [10, 11, 12]


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_contract(small, variant: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log, split = small
    model = make(log, **VARIANTS[variant])
    tok = tokenize(split.log)
    from fmrec.train.batching import batch_tensors, history_tensors

    rows = windows(split.offsets, split.train_mask(), 16, 8)[:8]
    H = model.cfg.horizon if "multiToken" in model.cfg.objectives else 1
    inputs, targets = batch_tensors(tok, rows, 16, H, model.cfg.event_fields, torch.device("cpu"))
    model.train()
    loss, parts = model.loss(inputs, targets)
    assert loss.ndim == 0 and torch.isfinite(loss) and "nextItem" in parts
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    users = split.test_users[:5]
    hist = history_tensors(tok, split, users, "test", 16, model.cfg.event_fields, torch.device("cpu"))
    scores, user_emb = model.score_next(hist)
    assert scores.shape == (5, log.n_items + 1) and user_emb.shape == (5, 32)
    assert torch.isinf(scores[:, 0]).all()

    # save/load does not change predictions; the config round-trips
    checkpoint.save(model, tmp_path, {"data": "synthetic"})
    loaded, meta = checkpoint.load(tmp_path)
    assert torch.allclose(loaded.score_next(hist)[0], scores, equal_nan=True)
    assert FMConfig.from_dict(model.cfg.to_dict()) == model.cfg and meta["data"] == "synthetic"


def test_causal_and_padding_invariant(small) -> None:  # type: ignore[no-untyped-def]
    log, split = small
    model = make(log, event_fields=("item", "action")).eval()
    T = 16
    items = torch.randint(1, log.n_items + 1, (1, T))
    acts = torch.randint(1, 6, (1, T))
    base = model({"item": items, "action": acts})
    changed = items.clone()
    changed[0, -1] = (changed[0, -1] % log.n_items) + 1
    out = model({"item": changed, "action": acts})
    assert torch.allclose(out[:, :-1], base[:, :-1], atol=1e-5), "a future event changed an earlier state"
    # The same 10 events, left-padded differently, give the same newest state.
    short = {"item": items[:, -10:], "action": acts[:, -10:]}
    padded = {k: torch.cat([torch.zeros(1, 6, dtype=torch.long), v], dim=1) for k, v in short.items()}
    assert torch.allclose(model(short)[:, -1], model(padded)[:, -1], atol=1e-5)


def test_relative_time_bias_buckets_causality_and_effect(small) -> None:  # type: ignore[no-untyped-def]
    from fmrec.nn.fm import TimeBias

    bias = TimeBias(buckets=24, heads=1)
    with torch.no_grad():
        bias.table.weight.copy_(torch.arange(24, dtype=torch.float32)[:, None])  # bias = bucket number
    times = torch.tensor([[0, 100, 100, 1124]])
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool).tril()
    out = bias(times, mask)[0, 0]
    # same second -> bucket 1; 100 s -> 2 + floor(log2 100) = 8; 1024 s -> 12; 1124 s -> 12; the future is -inf
    assert out[2, 1] == 1 and out[1, 0] == 8 and out[3, 2] == 12 and out[3, 0] == 12 and out[0, 0] == 1
    assert torch.isinf(out[0, 1]) and torch.isinf(out[2, 3])

    log, _ = small
    model = make(log, event_fields=("item", "relativeTime")).eval()
    with torch.no_grad():
        model.time_bias.table.weight.normal_(std=1.0)  # type: ignore[union-attr]
    items = torch.randint(1, log.n_items + 1, (1, 16))
    ts = torch.cumsum(torch.randint(0, 5000, (1, 16)), dim=1)
    base = model({"item": items, "relativeTime": ts})
    later = ts.clone()
    later[0, -1] += 10**6  # only the newest event moves in time
    out = model({"item": items, "relativeTime": later})
    assert torch.allclose(out[:, :-1], base[:, :-1], atol=1e-5), "a future event's time changed an earlier state"
    assert not torch.allclose(out[:, -1], base[:, -1], atol=1e-4), "the time between events changed nothing"


def test_training_learns_and_beats_popularity(small) -> None:  # type: ignore[no-untyped-def]
    log, split = small
    model = make(log, event_fields=("item", "action"), dropout=0.1)
    before = evaluate(model, split, "val")
    hist = pretrain(model, split, TrainSettings(epochs=8, batch_size=64, lr=3e-3, warmup_steps=10), stage="val", log=lambda m: None)
    after = evaluate(model, split, "val")
    assert hist[-1]["loss"] < hist[0]["loss"]
    counts = np.bincount(split.log.item[split.train_mask("val")], minlength=log.n_items + 1)
    pop_scores = torch.tensor(counts, dtype=torch.float32)[None].repeat(len(split.val_users), 1)
    pop_scores[:, 0] = float("-inf")
    target = torch.tensor([split.log.item[split.target(int(u), "val")] for u in split.val_users])
    seen = [split.log.item[split.history(int(u), "val")] for u in split.val_users]
    pop = ranking_metrics(rank_targets(pop_scores, target, seen).numpy())
    assert after["NDCG@10"] > before["NDCG@10"] and after["NDCG@10"] > pop["NDCG@10"], (before, after, pop)


def test_ranking_metrics_and_seen_filter() -> None:
    m = ranking_metrics(np.array([0, 9, 10, 100]), ks=(10,))
    assert m["HR@10"] == 0.5 and abs(m["NDCG@10"] - (1.0 + 1 / np.log2(11)) / 4) < 1e-9
    scores = torch.tensor([[-np.inf, 5.0, 4.0, 3.0]])
    assert int(rank_targets(scores, torch.tensor([3]), [np.array([], dtype=np.int64)])[0]) == 2
    assert int(rank_targets(scores, torch.tensor([3]), [np.array([1], dtype=np.int64)])[0]) == 1


def test_bad_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="model.pt is not a usable fmrec checkpoint"):
        checkpoint.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="train one"):
        checkpoint.load(tmp_path / "missing")


def test_untrained_adapter_scores_like_the_frozen_fm_and_is_small(small) -> None:  # type: ignore[no-untyped-def]
    from fmrec.nn.adapters import AdaptedModel, Adapter
    from fmrec.train.batching import history_tensors

    log, split = small
    fm = make(log).eval()
    tok = tokenize(split.log)
    hist = history_tensors(tok, split, split.test_users[:4], "test", 16, fm.cfg.event_fields, torch.device("cpu"))
    base = fm.score_next(hist)[0]
    for kind in ("bottleneck", "head"):
        adapted = AdaptedModel(fm, Adapter(fm, kind, 8)).eval()
        assert torch.allclose(adapted.score_next(hist)[0], base)
    assert Adapter(fm, "bottleneck", 8).num_params() < 0.05 * fm.num_params()


def test_finetune_trains_only_the_adapter(small) -> None:  # type: ignore[no-untyped-def]
    from fmrec.nn.adapters import AdaptedModel, Adapter
    from fmrec.train.finetune import finetune, slice_users

    log, split = small
    fm = make(log)
    frozen = {k: v.clone() for k, v in fm.state_dict().items()}
    model = AdaptedModel(fm, Adapter(fm, "bottleneck", 8))
    users = slice_users(log, "region", ["r1"])
    hist = finetune(model, split, users, TrainSettings(epochs=3, batch_size=32, lr=3e-3), log=lambda m: None)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert all(torch.equal(frozen[k], v) for k, v in fm.state_dict().items())
    assert model.adapter.up.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="fix spec.task.slice.values"):
        slice_users(log, "region", ["mars"])


def test_weight_average_updates_swaps_and_is_what_training_evaluates_and_keeps(small) -> None:  # type: ignore[no-untyped-def]
    from fmrec.train.loop import WeightAverage

    lin = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    avg = WeightAverage(lin, decay=0.5)
    with torch.no_grad():
        lin.weight.fill_(4.0)
    avg.update()  # 0 -> 0.5 * 0 + 0.5 * 4
    assert float(avg.shadow[0]) == 2.0
    avg.swap()
    assert lin.weight.item() == 2.0 and float(avg.shadow[0]) == 4.0
    avg.swap()
    assert lin.weight.item() == 4.0

    log, split = small
    seen: list[float] = []

    def on_epoch(epoch: int, rec: dict[str, float]) -> bool:
        seen.append(evaluate(model, split, "val")["NDCG@10"])
        return False

    settings = dict(epochs=2, batch_size=64, lr=3e-3, warmup_steps=5)
    model = make(log, event_fields=("item", "action"))
    pretrain(model, split, TrainSettings(**settings, ema=0.9), stage="val", log=lambda m: None, on_epoch=on_epoch)  # type: ignore[arg-type]
    assert evaluate(model, split, "val")["NDCG@10"] == seen[-1], "the model ends with the weights its last check saw"
    plain = make(log, event_fields=("item", "action"))
    pretrain(plain, split, TrainSettings(**settings), stage="val", log=lambda m: None)  # type: ignore[arg-type]
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters(), strict=True))
