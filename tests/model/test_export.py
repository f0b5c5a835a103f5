"""Export: the layout Triton and KServe expect, adapters that belong to the FM, and every field a
request will need checked now rather than at request time."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmrec import checkpoint
from fmrec.data.split import LeaveOneOut, leave_one_out
from fmrec.data.synthetic import generate
from fmrec.nn.adapters import Adapter, Distilled, LoRA
from fmrec.serving.artifact import Manifest, load_version
from fmrec.serving.infer import Recommender
from fmrec.serving.export import ExportError, export_triton
from fmrec.serving.request import Query
from fmrec.train.pretrain import build_model
from fmrec.vocab import Vocabulary

from .serving_cases import with_device

FIELDS = ("item", "action", "timeGap", "hourOfDay", "dayOfWeek", "device")


@pytest.fixture(scope="module")
def split() -> LeaveOneOut:
    return leave_one_out(with_device(generate(n_events=3_000, n_users=100, n_items=80, seed=2)))


def saved(split: LeaveOneOut, out: Path, vocab: Vocabulary | None, fields: tuple[str, ...] = FIELDS) -> Path:
    torch.manual_seed(0)
    model = build_model(split.log, d_model=16, n_layers=1, n_heads=2, context_len=8, event_fields=fields)
    checkpoint.save(model, out, {"data": "in-memory", "dataFingerprint": "sha256:x", "settings": {"out": str(out)}}, vocab)
    return out


def test_export_writes_a_model_repository_with_everything_inside(split: LeaveOneOut, tmp_path: Path) -> None:
    fm_dir = saved(split, tmp_path / "fm", Vocabulary.from_log(split.log))
    fm, _ = checkpoint.load(fm_dir)
    checkpoint.save_adapter(Adapter(fm, "head"), fm, tmp_path / "runs" / "jp", "region-jp", {})
    target = export_triton(fm_dir, tmp_path / "repo", name="recs", k=5, adapters={"": tmp_path / "runs" / "jp"})
    assert target == tmp_path / "repo" / "recs"
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "1/adapters/region-jp.pt", "1/model.pt", "1/model.py", "1/serving.json", "1/vocab.json", "config.pbtxt"]
    config = (target / "config.pbtxt").read_text()
    assert 'name: "recs"' in config and 'backend: "python"' in config
    assert '{ name: "ITEMS" data_type: TYPE_STRING dims: [ -1 ] allow_ragged_batch: true }' in config
    assert '{ name: "DEVICE" data_type: TYPE_STRING dims: [ -1 ] allow_ragged_batch: true optional: true }' in config
    assert '{ name: "USER_EMBEDDING" data_type: TYPE_FP32 dims: [ 16 ] }' in config
    manifest = Manifest.read(target / "1")
    assert set(manifest.tasks) == {"fm", "region-jp"} and manifest.fields == FIELDS
    for p in target.rglob("*"):  # the checkpoint's metadata named its folder; the artifact must not
        assert not p.is_file() or str(tmp_path).encode() not in p.read_bytes(), p
    rec, _, _ = load_version(target / "1", k_max=5)
    assert rec.tasks == ("fm", "region-jp")
    assert len(rec.recommend([Query(items=["i1", "i2"], actions=["5", "3"], timestamps=[1, 2], task="region-jp")])[0].items) == 5  # type: ignore[arg-type]


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_lora_and_distilled_adapters_are_served_from_the_export_as_trained(split: LeaveOneOut, tmp_path: Path, int8: bool) -> None:
    fm_dir = saved(split, tmp_path / "fm", Vocabulary.from_log(split.log))
    fm, _ = checkpoint.load(fm_dir)
    torch.manual_seed(1)
    lora = LoRA(fm, rank=2, alpha=4.0)
    torch.nn.init.normal_(lora.b, std=0.5)
    adapters = {"liked": lora, "small": Distilled(fm, layers=1, width=8)}
    for task, a in adapters.items():
        checkpoint.save_adapter(a, fm, tmp_path / task, task, {})
    target = export_triton(fm_dir, tmp_path / "repo", k=5, int8=int8, adapters=[("", tmp_path / t) for t in adapters])
    manifest = Manifest.read(target / "1")
    assert manifest.tasks["liked"]["file"] == "adapters/liked.pt" and manifest.tasks["small"]["file"] == "adapters/small.pt"
    served, _, vocab = load_version(target / "1", k_max=5)
    alone = Recommender(fm, vocab, adapters, k_max=5, int8=int8)
    queries = [Query(items=["i1", "i2", "i7"], actions=["5", "3", "4"], timestamps=[1, 2, 3], task=t)  # type: ignore[arg-type]
               for t in ("fm", "liked", "small")]
    for got, want in zip(served.recommend(queries), alone.recommend(queries), strict=True):
        assert got.task == want.task and list(got.codes) == list(want.codes), got.task
        assert torch.allclose(torch.from_numpy(got.scores), torch.from_numpy(want.scores), atol=1e-5)


@pytest.mark.parametrize(("vocab", "message"), [
    (lambda v: dataclasses.replace(v, context={}), "event field 'device' cannot be served: the checkpoint has no raw values"),
    (lambda v: dataclasses.replace(v, actions=()), "event field 'action' cannot be served"),
    (lambda v: dataclasses.replace(v, context={"device": ("a", "b", "c", "d", "e")}), "event field 'device': 5 raw values"),
    (lambda v: dataclasses.replace(v, items=v.items[:-1], item_decile=v.item_decile[:-1]), "event field 'item': the vocabulary has"),
], ids=["no-device-vocabulary", "no-action-vocabulary", "device-vocabulary-too-large", "item-count-differs"])
def test_a_field_that_cannot_be_served_fails_at_export_naming_it(split: LeaveOneOut, tmp_path: Path, vocab: object,
                                                                 message: str) -> None:
    fm_dir = saved(split, tmp_path / "fm", vocab(Vocabulary.from_log(split.log)))  # type: ignore[operator]
    with pytest.raises(ExportError, match=message):
        export_triton(fm_dir, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_adapters_must_belong_to_the_fm_and_have_distinct_names(split: LeaveOneOut, tmp_path: Path) -> None:
    fm_dir = saved(split, tmp_path / "fm", Vocabulary.from_log(split.log))
    fm, _ = checkpoint.load(fm_dir)
    other = build_model(split.log, d_model=16, n_layers=1, n_heads=2, context_len=8, event_fields=FIELDS)
    checkpoint.save_adapter(Adapter(other, "head"), other, tmp_path / "stale", "stale", {})
    checkpoint.save_adapter(Adapter(fm, "head"), fm, tmp_path / "a", "liked", {})
    with pytest.raises(ValueError, match="stale/adapter.pt was trained on another FM version"):
        export_triton(fm_dir, tmp_path / "repo", k=5, adapters={"": tmp_path / "stale"})
    with pytest.raises(ExportError, match="task 'liked' is given twice"):
        export_triton(fm_dir, tmp_path / "repo", k=5, adapters=[("", tmp_path / "a"), ("liked", tmp_path / "a")])
    with pytest.raises(ValueError, match="task name 'Not OK' must be a lowercase name"):
        export_triton(fm_dir, tmp_path / "repo", k=5, adapters={"Not OK": tmp_path / "a"})


def test_a_checkpoint_without_vocabulary_is_exported_from_its_data_or_refused(tmp_path: Path) -> None:
    log = generate(n_events=20_000, n_users=1000, n_items=1000)  # what --data synthetic:20000 loads
    model = build_model(log, d_model=8, n_layers=1, n_heads=1, context_len=4)
    checkpoint.save(model, tmp_path / "old", {"data": "synthetic:20000", "dataFingerprint": log.fingerprint()})
    target = export_triton(tmp_path / "old", tmp_path / "repo", k=3)
    assert tuple(json.loads((target / "1" / "vocab.json").read_text())["items"]) == log.item_ids
    checkpoint.save(model, tmp_path / "changed", {"data": "synthetic:20000", "dataFingerprint": "sha256:other"})
    with pytest.raises(ExportError, match="has changed since training"):
        export_triton(tmp_path / "changed", tmp_path / "repo2")
    checkpoint.save(model, tmp_path / "nodata", {})
    with pytest.raises(ExportError, match="names no data to rebuild it from"):
        export_triton(tmp_path / "nodata", tmp_path / "repo3")


def test_cli_export_names_the_tasks_and_the_unservable_field(split: LeaveOneOut, tmp_path: Path) -> None:
    fm_dir = saved(split, tmp_path / "fm", Vocabulary.from_log(split.log))
    fm, _ = checkpoint.load(fm_dir)
    checkpoint.save_adapter(Adapter(fm, "head"), fm, tmp_path / "ad", "whatever", {})

    def fmrec(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fmrec", "export", *args], capture_output=True, text=True, timeout=300)

    r = fmrec("--model", str(fm_dir), "--repo", str(tmp_path / "repo"), "--name", "fmrec", "--top-k", "5", "--adapter", f"liked={tmp_path / 'ad'}")
    assert r.returncode == 0, r.stderr
    assert "tasks: fm, liked" in r.stdout and (tmp_path / "repo" / "fmrec" / "1" / "adapters" / "liked.pt").exists()
    bad = saved(split, tmp_path / "bad", dataclasses.replace(Vocabulary.from_log(split.log), context={}))
    r = fmrec("--model", str(bad), "--repo", str(tmp_path / "repo"), "--name", "bad")
    assert r.returncode == 2 and "event field 'device' cannot be served" in r.stderr
