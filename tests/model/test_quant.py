"""int8 weights: per-row round trip error bounded, int8 tensors on disk, the artifact at least 3x
smaller than fp32, and the exported int8 model is the one quantised offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fmrec import checkpoint
from fmrec.data.split import LeaveOneOut, leave_one_out
from fmrec.data.synthetic import generate
from fmrec.serving.artifact import load_version
from fmrec.serving.bench import dir_bytes
from fmrec.serving.export import export_triton
from fmrec.serving.infer import quantize_int8
from fmrec.serving.quant import Int8Embedding, Int8Linear, dequantize_rows, is_int8, quantize_rows
from fmrec.train import build_model, evaluate, ranked_scores
from fmrec.vocab import Vocabulary

from .serving_cases import assert_same_ranking, evaluated_scores, query


@pytest.mark.parametrize("w", [
    pytest.param(torch.randn(50, 16), id="gaussian"),
    pytest.param(torch.randn(50, 16) * torch.logspace(-4, 2, 50)[:, None], id="rows-of-very-different-scale"),
    pytest.param(torch.zeros(3, 8), id="all-zero-rows"),
    pytest.param(torch.tensor([[1e-30, -2e-30], [127.0, -127.0]]), id="tiny-and-exact"),
])
def test_round_trip_error_is_at_most_half_a_step_per_row(w: torch.Tensor) -> None:
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
    err = (dequantize_rows(q, scale) - w).abs()
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5) + 1e-38).all()), err.max()
    assert int(q.abs().max()) <= 127


def test_layers_compute_what_their_dequantised_weights_compute() -> None:
    torch.manual_seed(0)
    lin, emb = torch.nn.Linear(8, 5), torch.nn.Embedding(10, 8, padding_idx=0)
    ql, qe = Int8Linear.from_float(lin), Int8Embedding.from_float(emb)
    x, idx = torch.randn(3, 8), torch.tensor([[0, 3, 9]])
    torch.testing.assert_close(ql(x), x @ dequantize_rows(ql.weight_q, ql.scale).T + lin.bias)
    torch.testing.assert_close(qe(idx), qe.weight[idx])
    assert bool((qe(torch.tensor([0])) == 0).all()), "the padding row stays zero"
    assert (ql(x) - lin(x)).abs().max() < 0.05


@pytest.fixture(scope="module")
def split() -> LeaveOneOut:
    return leave_one_out(generate(n_events=4_000, n_users=120, n_items=600, seed=3))


@pytest.fixture(scope="module")
def fm_dir(split: LeaveOneOut, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model(split.log, d_model=64, n_layers=1, n_heads=2, context_len=16, event_fields=("item", "action"))
    out = tmp_path_factory.mktemp("fm")
    checkpoint.save(model, out, {"data": "in-memory"}, Vocabulary.from_log(split.log, split.train_mask()))
    return out


def test_the_int8_export_stores_int8_and_is_at_least_3x_smaller(fm_dir: Path, tmp_path: Path) -> None:
    fp32 = export_triton(fm_dir, tmp_path, name="fp32", k=10)
    int8 = export_triton(fm_dir, tmp_path, name="int8", k=10, int8=True)
    blob = torch.load(int8 / "1" / "model.pt", weights_only=True)
    assert blob["quantization"] == "int8-rows/v1"
    assert blob["state_dict"]["items.ids.weight_q"].dtype == torch.int8
    matrices = {k: v.dtype for k, v in blob["state_dict"].items() if v.dim() == 2}
    assert set(matrices.values()) <= {torch.int8, torch.uint8}, f"fp32 matrices left: {matrices}"
    ratio = (fp32 / "1" / "model.pt").stat().st_size / (int8 / "1" / "model.pt").stat().st_size
    assert ratio >= 3, f"int8 weights only {ratio:.2f}x smaller"
    assert dir_bytes(int8) * 2.5 < dir_bytes(fp32), "the whole folder (vocab.json, model.py included) shrinks too"
    assert "int8" in (int8 / "config.pbtxt").read_text()


def test_the_exported_int8_model_is_the_offline_int8_model(fm_dir: Path, split: LeaveOneOut, tmp_path: Path) -> None:
    int8 = export_triton(fm_dir, tmp_path, name="int8", k=10, int8=True)
    exported, _ = checkpoint.load(int8 / "1")
    fm, _ = checkpoint.load(fm_dir)
    offline = quantize_int8(fm)
    assert is_int8(exported) and is_int8(offline) and not is_int8(fm), "quantize_int8 must leave the fp32 model alone"
    users = split.test_users[:40]
    for (_, a), (_, b) in zip(ranked_scores(exported, split, users, "test"), ranked_scores(offline, split, users, "test"),
                              strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert evaluate(exported, split) == evaluate(offline, split)
    rec, _, _ = load_version(int8 / "1", k_max=10, int8=True)  # what Triton's model.py loads
    assert is_int8(rec.fm), "an int8 version is served as int8"
    served = users[users >= 0][:12]
    got = rec.recommend([query(split, int(u)) for u in served])
    want = evaluated_scores(offline, split, served)
    for b, u in enumerate(served):
        assert_same_ranking(got[b].codes, want[b], u, got[b].scores.tolist())
