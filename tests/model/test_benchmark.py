"""The tuned benchmark's selection rule, interval and bookkeeping (the training itself is what `make bench` runs),
and the one source of the FM's defaults: the point it chose is what `fmrec train` trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmdev.bench.recsys import grid as bench_grid
from fmdev.bench.recsys import report
from fmdev.bench.recsys.grid import chosen
from fmdev.bench.recsys.protocol import Clock, Protocol, Selector
from fmdev.bench.recsys.report import paired_bootstrap
from fmrec.eval.metrics import ndcg_at
from fmrec.train.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]


def test_selector_keeps_the_best_validation_check_and_stops_after_patience() -> None:
    sel = Selector(Protocol(every=5, patience=2, max_epochs=100))
    assert sel.check(5, 0.10) == (True, False)
    assert sel.check(10, 0.12) == (True, False)
    assert sel.check(15, 0.11) == (False, False)
    assert sel.check(20, 0.12) == (False, True)  # a tie is no gain: the earlier epoch stays chosen
    assert (sel.best, sel.best_epoch) == (0.12, 10)


def test_selector_stops_at_max_epochs() -> None:
    sel = Selector(Protocol(every=5, patience=10, max_epochs=10))
    assert sel.check(5, 0.1) == (True, False)
    assert sel.check(10, 0.2) == (True, True)


def test_ndcg_per_user() -> None:
    got = ndcg_at(np.array([0, 1, 9, 10, 50]))
    assert got == pytest.approx([1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0])


def test_paired_bootstrap_interval_covers_a_known_shift_and_excludes_zero() -> None:
    rng = np.random.default_rng(1)
    b = rng.random(900)
    a = b + 0.05 + rng.normal(0, 0.05, 900)
    mean, lo, hi = paired_bootstrap(a, b)
    assert lo < 0.05 < hi and lo > 0
    assert mean == pytest.approx(float((a - b).mean()))
    _, lo0, hi0 = paired_bootstrap(b, b.copy())
    assert lo0 == hi0 == 0.0


class _Log:
    def __init__(self, data: str) -> None:
        self.data = data

    def fingerprint(self) -> str:
        return self.data


class _Split:
    def __init__(self, data: str = "sha256:ml-100k") -> None:
        self.log = _Log(data)


SPLIT = _Split()


def _point(model: str, val: float, L: int) -> dict:
    return {"model": model, "config": {"session_max_len": L}, "val_NDCG@10": val, "best_epoch": 5}


def test_chosen_is_by_validation_only() -> None:
    doc = {"points": [_point("sasrec", 0.10, 50), _point("sasrec", 0.12, 200), _point("hstu", 0.09, 50)]}
    doc["points"][0]["test"] = {"NDCG@10": 0.5}  # a better test score must not matter
    picks = chosen(doc)
    assert picks["sasrec"]["config"] == {"session_max_len": 200}
    assert picks["hstu"]["val_NDCG@10"] == 0.09


def test_tune_resumes_and_refuses_another_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict]] = []

    def fake_run(split, kind, config, seed, protocol, log):  # type: ignore[no-untyped-def]
        calls.append((kind, config))
        return {**_point(kind, 0.1 + config["session_max_len"] / 1e4, config["session_max_len"]), "config": config,
                "test_ranks": [0], "train_s_total": 1.0}

    monkeypatch.setattr(bench_grid, "run_one", fake_run)
    grid = {"sasrec": [{"session_max_len": 50}, {"session_max_len": 200}]}
    path = tmp_path / "t.json"
    bench_grid.tune(SPLIT, path, ["sasrec"], Protocol(), grid=grid, log=lambda m: None)  # type: ignore[arg-type]
    assert len(calls) == 2
    doc = bench_grid.tune(SPLIT, path, ["sasrec"], Protocol(), grid=grid, log=lambda m: None)  # type: ignore[arg-type]
    assert len(calls) == 2, "finished grid points are not run again"
    assert doc["chosen"]["sasrec"]["config"] == {"session_max_len": 200}
    text = path.read_text()
    assert json.loads(text)["points"][0]["test_ranks"] == [0] and '"test_ranks": [0]' in text, "ranks kept, on one line"
    with pytest.raises(SystemExit, match="protocol"):
        bench_grid.tune(SPLIT, path, ["sasrec"], Protocol(every=1), grid=grid, log=lambda m: None)  # type: ignore[arg-type]


def test_summary_picks_the_best_baseline_on_validation_and_compares_per_user() -> None:
    class Split:
        test_users = np.arange(4)

    def run(model: str, seed: int, ranks: list[int], val: float) -> dict:
        config = bench_grid.GRID_ORIGIN.to_config() if model == "fm" else {"n_blocks": 2, "n_factors": 64, "session_max_len": 50}
        return {"model": model, "seed": seed, "config": config, "params": 1,
                "test": {"HR@10": 0.0, "NDCG@10": float(ndcg_at(np.array(ranks)).mean()), "NDCG@20": 0.0, "HR@50": 0.0},
                "val_NDCG@10": val, "best_epoch": 5, "train_s_to_best": 1.0, "test_ranks": ranks}

    doc = {"runs": [run("fm", 0, [0, 0, 50, 50], 0.2), run("fm", 1, [0, 0, 50, 50], 0.2),
                    run("sasrec", 0, [50, 0, 50, 50], 0.15), run("hstu", 0, [0, 0, 0, 50], 0.1)]}
    s = report.summarise(doc, Split())  # type: ignore[arg-type]
    assert s["best"] == "sasrec", "hstu scores better on test but worse on validation"
    assert s["diff"] == pytest.approx(0.25)
    assert s["ratio"] == pytest.approx(2.0)
    assert "FM - RecTools SASRec" in report.table(s)


def test_grid_table_shows_test_numbers_only_for_the_point_chosen_on_validation() -> None:
    def point(L: int, val: float, test: float) -> dict:
        return {"model": "sasrec", "config": {"n_blocks": 2, "n_factors": 64, "session_max_len": L}, "val_NDCG@10": val,
                "best_epoch": 10, "train_s_to_best": 1.0, "train_s_total": 2.0, "test": {"NDCG@10": test, "HR@10": 0.5}}

    rows = report.grid_table({"points": [point(50, 0.10, 0.30), point(200, 0.12, 0.08)]}).splitlines()[2:]
    assert rows[0].startswith("| RecTools SASRec | 2x64, length 200 | **0.1200** |") and "**0.0800**" in rows[0]
    assert "0.3000" not in rows[1], "a point not chosen shows no test score"


def test_bench_reuses_the_tuning_run_of_the_chosen_point_and_runs_the_other_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake_run(split, kind, config, seed, protocol, log):  # type: ignore[no-untyped-def]
        calls.append(seed)
        return {**_point(kind, 0.2, config["session_max_len"]), "seed": seed, "test_ranks": [seed, 1, 2], "train_s_total": 1.0}

    monkeypatch.setattr(bench_grid, "run_one", fake_run)
    tuning = tmp_path / "t.json"
    bench_grid.tune(SPLIT, tuning, ["sasrec"], Protocol(), grid={"sasrec": [{"session_max_len": 50}]}, log=lambda m: None)  # type: ignore[arg-type]
    assert calls == [0]
    doc = bench_grid.bench(SPLIT, tuning, tmp_path / "r.json", ["sasrec"], [0, 1, 2], Protocol(), log=lambda m: None)  # type: ignore[arg-type]
    assert calls == [0, 1, 2], "seed 0 is the tuning run, not trained again"
    assert [r["test_ranks"][0] for r in doc["runs"]] == [0, 1, 2]
    doc = bench_grid.bench(SPLIT, tuning, tmp_path / "r2.json", ["sasrec"], [0], Protocol(every=1), log=lambda m: None)  # type: ignore[arg-type]
    assert calls == [0, 1, 2, 0], "a run under another protocol is not the tuning run"


def test_runs_on_another_split_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_grid, "run_one", lambda split, kind, config, seed, protocol, log: {
        **_point(kind, 0.1, config["session_max_len"]), "test_ranks": [0], "train_s_total": 1.0})
    path = tmp_path / "t.json"
    grid = {"sasrec": [{"session_max_len": 50}]}
    bench_grid.tune(SPLIT, path, ["sasrec"], Protocol(), grid=grid, log=lambda m: None)  # type: ignore[arg-type]
    other = _Split("sha256:reordered")
    with pytest.raises(SystemExit, match="made on data sha256:ml-100k, not this data"):
        bench_grid.tune(other, path, ["sasrec"], Protocol(), grid=grid, log=lambda m: None)  # type: ignore[arg-type]
    with pytest.raises(SystemExit, match="made on data"):
        bench_grid.bench(other, path, tmp_path / "r.json", ["sasrec"], [0], Protocol(), log=lambda m: None)  # type: ignore[arg-type]


def test_ablation_compares_each_fm_point_with_the_base_on_validation_only() -> None:
    base = bench_grid.ABLATION_BASE.to_config()

    def point(config: dict, val: float) -> dict:
        return {"model": "fm", "config": config, "val_NDCG@10": val, "best_epoch": 10, "train_s_to_best": 1.0,
                "test": {"NDCG@10": 0.9999, "HR@10": 0.5}}

    doc = {"points": [point(base, 0.10), point({**base, "dropout": 0.3}, 0.11), point({**base, "ema": 0.99}, 0.09)]}
    rows = report.ablation_table(doc).splitlines()[2:]
    assert rows[0].startswith("| dropout 0.3 | 0.1100 | +10.0% |")
    assert rows[1].startswith("| none (the base point) | 0.1000 | +0.0% |") and rows[2].startswith("| ema 0.99 | 0.0900 | -10.0% |")
    assert "0.9999" not in report.ablation_table(doc), "no test number"
    with pytest.raises(SystemExit, match="no FM base point"):
        report.ablation_table({"points": doc["points"][1:]})


def test_clock_counts_only_between_start_and_stop_and_marks_the_selected_epoch() -> None:
    import time

    clock = Clock()
    clock.start()
    sum(i * i for i in range(200_000))  # CPU work
    clock.stop()
    clock.mark_best()
    time.sleep(0.05)  # outside start/stop: not counted
    clock.start()
    time.sleep(0.05)  # wall time, next to no CPU
    clock.stop()
    r = clock.record()
    assert r["train_s_to_best"] <= r["train_s_total"] and r["train_cpu_s_to_best"] <= r["train_cpu_s_total"]
    assert 0.04 <= clock.wall - clock.best_wall < 0.09, "only the second interval's wall time is added after the mark"
    assert clock.cpu - clock.best_cpu < 0.03, "sleeping costs no CPU time"
    with pytest.raises(AssertionError, match="without start"):
        clock.stop()


def test_runs_of_a_configuration_no_longer_chosen_leave_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid point added later wins on validation: bench reruns the new pick, and the old pick's
    runs move to 'superseded' instead of being averaged with the new ones."""
    val = {50: 0.10, 200: 0.12}
    monkeypatch.setattr(bench_grid, "run_one", lambda split, kind, config, seed, protocol, log: {
        **_point(kind, val[config["session_max_len"]], config["session_max_len"]), "seed": seed, "test_ranks": [0],
        "train_s_total": 1.0})
    tuning, results = tmp_path / "t.json", tmp_path / "r.json"
    quiet = lambda m: None  # noqa: E731
    bench_grid.tune(SPLIT, tuning, ["sasrec"], Protocol(), grid={"sasrec": [{"session_max_len": 50}]}, log=quiet)  # type: ignore[arg-type]
    bench_grid.bench(SPLIT, tuning, results, ["sasrec"], [0, 1], Protocol(), log=quiet)  # type: ignore[arg-type]
    bench_grid.tune(SPLIT, tuning, ["sasrec"], Protocol(), grid={"sasrec": [{"session_max_len": 50}, {"session_max_len": 200}]},
                   log=quiet)  # type: ignore[arg-type]
    doc = bench_grid.bench(SPLIT, tuning, results, ["sasrec"], [0, 1], Protocol(), log=quiet)  # type: ignore[arg-type]
    assert {r["config"]["session_max_len"] for r in doc["runs"]} == {200} and len(doc["runs"]) == 2
    assert [r["config"]["session_max_len"] for r in doc["superseded"]] == [50, 50]
    assert json.loads(results.read_text())["superseded"][0]["seed"] == 0, "kept on disk, not thrown away"


def test_the_default_recipe_is_the_fm_point_the_benchmark_chose() -> None:
    """One source of defaults: `fmrec train` (and `make train-fm`) trains what `make tune` chose on validation."""
    doc = json.loads((REPO / "benchmarks" / "tuning.json").read_text())
    assert bench_grid.same(Recipe().to_config(), chosen(doc)["fm"]["config"]), \
        "benchmarks/tuning.json chose another FM point: make it fmrec.train.recipe.Recipe's defaults"


def test_the_grid_is_the_one_the_tuning_file_holds_so_tune_reruns_nothing() -> None:
    doc = json.loads((REPO / "benchmarks" / "tuning.json").read_text())
    recorded = sorted(json.dumps(p["config"], sort_keys=True) for p in doc["points"] if p["model"] == "fm")
    assert sorted(json.dumps(c, sort_keys=True) for c in bench_grid.default_grid()["fm"]) == recorded
    for p in doc["points"]:
        if p["model"] == "fm":
            again = Recipe.from_config(p["config"]).to_config()
            assert list(again.items()) == list(p["config"].items()), "every recorded point is a Recipe, key order too"


def test_the_train_command_defaults_to_the_recipe_and_flags_override_single_fields() -> None:
    from fmrec.__main__ import parser
    from fmrec.cli.args import recipe_from, settings_from

    args = parser().parse_args(["train", "--out", "x"])
    assert recipe_from(args) == Recipe()
    assert settings_from(args) == Recipe().settings(seed=42, precision="auto", device="auto")
    args = parser().parse_args(["train", "--out", "x", "--context-len", "200", "--event-fields", "item", "--stride", "0"])
    assert recipe_from(args) == Recipe().but(context_len=200, event_fields=["item"], stride=None)
    assert settings_from(args).stride == 200, "stride 0: windows as long as the context, no overlap"
    assert settings_from(parser().parse_args(["train", "--out", "x", "--context-len", "16"])).stride == 16, "capped at the context"
    with pytest.raises(ValueError, match=r"recipe fields \['width'\] are unknown"):
        Recipe.from_config({"width": 64})
