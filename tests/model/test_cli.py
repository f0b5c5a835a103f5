"""The fmrec command line, as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def fmrec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fmrec", *args], capture_output=True, text=True, timeout=600)


def test_train_then_evaluate_and_finetune(tmp_path: Path) -> None:
    out = tmp_path / "fm"
    r = fmrec("train", "--data", "synthetic:30000", "--out", str(out), "--epochs", "2", "--context-len", "32", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "epoch   2/2" in r.stderr and "events/s" in r.stderr  # progress with throughput
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0 <= summary["NDCG@10"] <= 1 and summary["users"] > 0
    for name in ("model.pt", "config.json", "metrics.json", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    meta = json.loads((out / "config.json").read_text())
    assert meta["dataFingerprint"].startswith("sha256:") and meta["config"]["context_len"] == 32

    r = fmrec("evaluate", "--model", str(out))
    assert r.returncode == 0, r.stderr
    assert abs(json.loads(r.stdout)["NDCG@10"] - summary["NDCG@10"]) < 1e-3  # same model, same data, same numbers

    r = fmrec("embed", "--model", str(out), "--out", str(tmp_path / "emb"))
    assert r.returncode == 0, r.stderr
    import numpy as np
    import pandas as pd

    items = np.load(tmp_path / "emb" / "item_embeddings.npy")
    users = pd.read_parquet(tmp_path / "emb" / "user_embeddings.parquet")
    assert items.shape[1] == meta["config"]["d_model"] and len(users) == summary["users"]
    assert len(pd.read_parquet(tmp_path / "emb" / "item_embeddings.parquet")) == items.shape[0]

    r = fmrec("finetune", "--model", str(out), "--slice", "region=r2", "--out", str(tmp_path / "ad"), "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert "frozen FM" in r.stdout and "FM + adapter" in r.stdout
    assert json.loads((tmp_path / "ad" / "metrics.json").read_text())["param_share"] < 0.05

    # export the FM with the adapter (task name: its folder's); the top-score buckets are the deciles training recorded
    deciles = meta["topScoreDeciles"]
    assert len(deciles) == 9 and deciles == sorted(deciles)
    r = fmrec("export", "--model", str(out), "--repo", str(tmp_path / "repo"), "--name", "fmrec", "--adapter", str(tmp_path / "ad"))
    assert r.returncode == 0, r.stderr
    assert "tasks: fm, ad" in r.stdout
    manifest = json.loads((tmp_path / "repo" / "fmrec" / "1" / "serving.json").read_text())
    assert manifest["tasks"]["fm"]["scoreBuckets"] == sorted({float(f"{d:.4g}") for d in deciles})
    assert manifest["tasks"]["ad"]["file"] == "adapters/ad.pt" and len(manifest["tasks"]["ad"]["scoreBuckets"]) >= 2


def test_bad_inputs_say_what_to_do(tmp_path: Path) -> None:
    r = fmrec("train", "--data", "bigquery:foo", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "use movielens100k, synthetic[:EVENTS], parquet:PATH or csv:PATH" in r.stderr
    r = fmrec("evaluate", "--model", str(tmp_path / "nowhere"))
    assert r.returncode != 0 and "train one with `python -m fmrec train" in r.stderr


def test_resume_continues_after_the_last_finished_epoch(tmp_path: Path) -> None:
    out = tmp_path / "fm"
    common = ["train", "--data", "synthetic:20000", "--out", str(out), "--context-len", "16", "--threads", "1", "--resume"]
    r = fmrec(*common, "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert (out / "train_state.pt").exists()
    r = fmrec(*common, "--epochs", "3")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stderr and "after epoch 1" in r.stderr
    assert "epoch   1/3" not in r.stderr and "epoch   3/3" in r.stderr
    curve = json.loads((out / "config.json").read_text())["curve"]
    assert [c["epoch"] for c in curve] == [1.0, 2.0, 3.0]


def test_distributed_data_parallel_under_torchrun(tmp_path: Path) -> None:
    """Two CPU processes (gloo) as torchrun launches them on GPUs: both train, rank 0 writes."""
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "fmrec",
                        "train", "--data", "synthetic:20000", "--out", str(out), "--epochs", "2", "--context-len", "16",
                        "--threads", "1", "--device", "cpu"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TMPDIR": str(tmp_path)})  # torchrun's torchelastic_* directory goes here, not /tmp
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on 2 x cpu" in r.stderr
    assert (out / "model.pt").exists() and json.loads((out / "metrics.json").read_text())["users"] > 0
