"""The adapter kinds that change more than the final user state: lora (low-rank updates inside the
frozen FM's attention) and distilled (a small student of its own). Each starts where it should,
round-trips through adapter.pt, refuses an FM it was not trained on, and learns on a tiny log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fmrec import checkpoint
from fmrec.data.split import LeaveOneOut, leave_one_out
from fmrec.data.synthetic import generate
from fmrec.nn.adapters import AdaptedModel, AdapterBase, Distilled, LoRA, build_adapter
from fmrec.nn.fm import FoundationModel
from fmrec.tokens import tokenize
from fmrec.train.batching import history_tensors
from fmrec.train.finetune import finetune
from fmrec.train.loop import TrainSettings
from fmrec.train.pretrain import build_model

T = 12
SETTINGS = {"lora": {"rank": 4, "alpha": 8.0}, "distilled": {"layers": 1, "width": 8}}


@pytest.fixture(scope="module")
def split() -> LeaveOneOut:
    return leave_one_out(generate(n_events=6_000, n_users=150, n_items=120, n_genres=5, seed=7))


def fm_of(split: LeaveOneOut, seed: int = 0) -> FoundationModel:
    torch.manual_seed(seed)
    return build_model(split.log, d_model=16, n_layers=2, n_heads=2, context_len=T, dropout=0.0,
                       event_fields=("item", "action", "timeGap")).eval()


@pytest.fixture(scope="module")
def fm(split: LeaveOneOut) -> FoundationModel:
    return fm_of(split)


def history(split: LeaveOneOut, fm: FoundationModel, n: int = 8) -> dict[str, torch.Tensor]:
    return history_tensors(tokenize(split.log), split, split.test_users[:n], "test", T, fm.cfg.event_fields, torch.device("cpu"))


def trained_looking(adapter: AdapterBase, seed: int) -> AdapterBase:
    """Random non-zero weights everywhere (a LoRA with B = 0 would score like the FM and hide mistakes)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.3)
    return adapter.eval()


def test_untrained_lora_scores_exactly_like_the_frozen_fm_and_never_changes_its_weights(split: LeaveOneOut,
                                                                                         fm: FoundationModel) -> None:
    hist = history(split, fm)
    base = fm.score_next(hist)[0]
    weights = {k: v.clone() for k, v in fm.state_dict().items()}
    lora = LoRA(fm, rank=4, alpha=8.0)
    assert torch.equal(AdaptedModel(fm, lora).eval().score_next(hist)[0], base)
    changed = AdaptedModel(fm, trained_looking(LoRA(fm, 4, 8.0), 1)).eval().score_next(hist)[0]
    assert not torch.allclose(changed, base)
    assert torch.equal(fm.score_next(hist)[0], base), "the FM without deltas must score as before"
    assert all(torch.equal(weights[k], v) for k, v in fm.state_dict().items())


def test_lora_updates_q_k_v_and_the_output_projection_of_every_block(fm: FoundationModel) -> None:
    lora = LoRA(fm, rank=4, alpha=8.0)
    c, layers = fm.cfg.d_model, fm.cfg.n_layers
    assert lora.num_params() == layers * 4 * 2 * 4 * c + fm.cfg.n_items + 1
    assert lora.scale == 2.0 and lora.settings() == {"rank": 4, "alpha": 8.0}
    x = torch.randn(2, 3, c)
    with torch.no_grad():
        lora.b.normal_()
    qkv = lora.delta(1, "qkv", x)
    assert qkv.shape == (2, 3, 3 * c)
    for j in range(3):  # q, k, v in the order the fused projection splits them
        want = 2.0 * (x @ lora.a[1, j].T) @ lora.b[1, j].T
        assert torch.allclose(qkv[..., j * c:(j + 1) * c], want, atol=1e-6)
    assert torch.allclose(lora.delta(0, "proj", x), 2.0 * (x @ lora.a[0, 3].T) @ lora.b[0, 3].T, atol=1e-6)


def test_the_student_is_small_and_never_runs_the_fm_blocks(split: LeaveOneOut, fm: FoundationModel) -> None:
    student = Distilled(fm, layers=1, width=8)
    assert student.num_params() < 0.5 * fm.num_params() and student.settings() == {"layers": 1, "width": 8}
    calls = []
    handle = fm.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        scores, user = AdaptedModel(fm, student).eval().score_next(history(split, fm))
    finally:
        handle.remove()
    assert not calls and scores.shape == (8, fm.cfg.n_items + 1) and user.shape == (8, fm.cfg.d_model)
    assert torch.isinf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("kind", ["lora", "distilled", "bottleneck"])
def test_save_load_gives_identical_scores_and_another_fm_is_refused_naming_the_file(
        split: LeaveOneOut, fm: FoundationModel, kind: str, tmp_path: Path) -> None:
    adapter = trained_looking(build_adapter(fm, kind, SETTINGS.get(kind, {"dim": 4})), 2)
    hist = history(split, fm)
    want = AdaptedModel(fm, adapter).eval().score_next(hist)[0]
    checkpoint.save_adapter(adapter, fm, tmp_path / "task", "task", {"minAction": 4})
    loaded, info = checkpoint.load_adapter(tmp_path / "task", fm)
    assert type(loaded) is type(adapter) and info["kind"] == kind and info["settings"] == adapter.settings()
    assert torch.equal(AdaptedModel(fm, loaded).eval().score_next(hist)[0], want)
    other = fm_of(split, seed=1)
    with pytest.raises(ValueError, match=r"task/adapter.pt was trained on another FM version"):
        checkpoint.load_adapter(tmp_path / "task", other)


@pytest.mark.parametrize("kind", ["lora", "distilled"])
def test_finetune_lowers_the_loss_and_trains_only_the_adapter(split: LeaveOneOut, kind: str) -> None:
    fm = fm_of(split)
    frozen = {k: v.clone() for k, v in fm.state_dict().items()}
    model = AdaptedModel(fm, build_adapter(fm, kind, SETTINGS[kind]))
    hist = finetune(model, split, split.test_users, TrainSettings(epochs=4, batch_size=32, lr=5e-3), log=lambda m: None, min_action=4)
    assert hist[-1]["loss"] < hist[0]["loss"], hist
    assert all(torch.equal(frozen[k], v) for k, v in fm.state_dict().items())
    if isinstance(model.adapter, LoRA):
        assert model.adapter.b.abs().sum() > 0


def test_an_unknown_kind_is_refused_naming_the_kinds(fm: FoundationModel) -> None:
    with pytest.raises(ValueError, match=r"adapter kind 'prefix' is not one of \['head', 'bottleneck', 'lora', 'distilled'\]"):
        build_adapter(fm, "prefix")


@pytest.mark.parametrize(("flags", "kind", "settings"), [
    (["--adapter", "lora", "--rank", "2", "--alpha", "6"], "lora", {"rank": 2, "alpha": 6.0}),
    (["--adapter", "distilled", "--layers", "2", "--width", "8"], "distilled", {"layers": 2, "width": 8}),
], ids=["lora", "distilled"])
def test_the_finetune_command_trains_and_saves_each_kind_with_its_settings(tmp_path: Path, flags: list[str], kind: str,
                                                                          settings: dict[str, float]) -> None:
    from fmrec.__main__ import main
    from fmrec.data.sources import load_data

    torch.manual_seed(0)
    fm = build_model(load_data("synthetic:3000"), d_model=16, n_layers=1, n_heads=2, context_len=8)
    checkpoint.save(fm, tmp_path / "fm", {"data": "synthetic:3000"})
    assert main(["finetune", "--model", str(tmp_path / "fm"), "--out", str(tmp_path / "task"), "--epochs", "1",
                 *flags]) == 0
    adapter, info = checkpoint.load_adapter(tmp_path / "task", checkpoint.load(tmp_path / "fm")[0])
    assert adapter.kind == kind and adapter.settings() == settings and info["task"] == "task"
    metrics = json.loads((tmp_path / "task" / "metrics.json").read_text())
    assert metrics["adapter_params"] == adapter.num_params() and metrics["train_s"] > 0
