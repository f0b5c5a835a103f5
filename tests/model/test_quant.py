"""int8 weights: group-wise round trip error bounded, int8 tensors on disk, the artifact at least 3x
smaller than fp32, the exported int8 model is the one quantised offline, and int8 checkpoints in
the earlier per-row layout still load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fmrec import checkpoint
from fmrec.data.split import LeaveOneOut, leave_one_out
from fmrec.data.synthetic import generate
from fmrec.eval.evaluate import evaluate, ranked_scores
from fmrec.serving.artifact import dir_bytes, load_version
from fmrec.serving.export import export_triton
from fmrec.serving.infer import quantize_int8
from fmrec.serving.quant import FORMAT_V1, GROUP, HalfEmbedding, Int8Embedding, Int8Linear, dequantize, is_int8, quantize_groups
from fmrec.train.pretrain import build_model
from fmrec.vocab import Vocabulary

from .serving_cases import assert_same_ranking, evaluated_scores, query


@pytest.mark.parametrize("w", [
    pytest.param(torch.randn(50, 64), id="gaussian"),
    pytest.param(torch.randn(50, 64) * torch.logspace(-4, 2, 50)[:, None], id="rows-of-very-different-scale"),
    pytest.param(torch.randn(20, 64) * torch.logspace(-6, 3, 64)[None, :], id="columns-of-very-different-scale"),
    pytest.param(torch.randn(30, 19), id="width-not-a-multiple-of-the-group"),
    pytest.param(torch.randn(30, 2), id="narrower-than-a-group"),
    pytest.param(torch.zeros(3, 32), id="all-zero-rows"),
    pytest.param(torch.tensor([[1e-30, -2e-30], [127.0, -127.0]]), id="tiny-and-exact"),
])
def test_round_trip_error_is_at_most_half_a_step_per_group(w: torch.Tensor) -> None:
    q, scale = quantize_groups(w)
    R, C = w.shape
    G = C // GROUP if C > GROUP and C % GROUP == 0 else 1
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (R, G)
    step = scale.float().repeat_interleave(C // G, dim=1)  # (R, C): each element's own group scale
    err = (dequantize(q, scale) - w).abs()
    assert bool((err <= step / 2 * (1 + 1e-5) + 1e-38).all()), err.max()
    assert int(q.abs().max()) <= 127 and bool((scale > 0).all())


def test_groups_follow_the_local_magnitude_where_one_row_scale_cannot() -> None:
    """A row with one large weight: per-row scales would round its small weights to zero."""
    w = torch.full((1, 64), 0.01)
    w[0, 0] = 10.0
    q, scale = quantize_groups(w)
    assert scale.shape == (1, 64 // GROUP)
    torch.testing.assert_close(dequantize(q, scale)[0, GROUP:], w[0, GROUP:], rtol=0.01, atol=0)
    per_row = torch.round(w / (10.0 / 127)) * (10.0 / 127)
    assert bool((per_row[0, GROUP:] == 0).all()), "the case per-row scales lose"


def test_a_diverged_weight_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="retrain"):
        quantize_groups(torch.tensor([[1e10, 1.0]]))
    with pytest.raises(ValueError, match="does not fit fp16.*retrain"):
        HalfEmbedding.from_float(torch.nn.Embedding.from_pretrained(torch.tensor([[1e6, 1.0]])))


def test_layers_compute_what_their_dequantised_weights_compute() -> None:
    torch.manual_seed(0)
    lin, emb = torch.nn.Linear(32, 5), torch.nn.Embedding(10, 32, padding_idx=0)
    ql, qe = Int8Linear.from_float(lin), Int8Embedding.from_float(emb)
    assert ql.scale.shape == (5, 32 // GROUP) and qe.scale.shape == (10, 32 // GROUP)
    x, idx = torch.randn(3, 32), torch.tensor([[0, 3, 9]])
    torch.testing.assert_close(ql(x), x @ dequantize(ql.weight_q, ql.scale).T + lin.bias)
    torch.testing.assert_close(qe(idx), qe.weight[idx], rtol=0, atol=0)
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
    assert blob["quantization"] == "int8-groups/v2"
    assert blob["state_dict"]["items.ids.weight_q"].dtype == torch.int8
    state = blob["state_dict"]
    matrices = {k: v.dtype for k, v in state.items() if v.dim() == 2 and not k.endswith(".scale")}
    assert set(matrices.values()) <= {torch.int8, torch.uint8, torch.float16}, f"fp32 matrices left: {matrices}"
    # the policy: item table int8 with a scale per 16 columns, blocks int8 per row, small input tables fp16
    assert state["items.ids.scale"].shape == (state["items.ids.weight_q"].shape[0], 64 // GROUP)
    assert state["blocks.0.qkv.weight_q"].dtype == torch.int8 and state["blocks.0.qkv.scale"].shape == (3 * 64, 1)
    assert state["pos.weight_h"].dtype == state["fields.action.weight_h"].dtype == torch.float16
    assert {v.dtype for k, v in state.items() if k.endswith(".scale")} == {torch.float16}
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


def test_an_int8_checkpoint_in_the_per_row_layout_still_loads(fm_dir: Path, split: LeaveOneOut, tmp_path: Path) -> None:
    """Versions exported before group scales (one fp32 scale per row) keep serving after an upgrade."""
    int8 = export_triton(fm_dir, tmp_path, name="int8", k=10, int8=True)
    blob = torch.load(int8 / "1" / "model.pt", weights_only=True)
    state = blob["state_dict"]
    state["items.year_bucket"] = state["items.year_bucket"].long()
    for key in [k for k in state if k.endswith((".weight_q", ".weight_h"))]:
        prefix = key[: -len("weight_q")]  # v1: every layer int8 with one fp32 scale per row
        w = state.pop(key).float() if key.endswith("_h") else dequantize(state[key], state[prefix + "scale"])
        key = prefix + "weight_q"
        amax = w.abs().amax(dim=1)
        row = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        state[key] = torch.round(w / row[:, None]).clamp(-127, 127).to(torch.int8)
        state[prefix + "scale"] = row
    blob["quantization"] = FORMAT_V1
    torch.save(blob, int8 / "1" / "model.pt")
    old, _ = checkpoint.load(int8 / "1")
    assert old.items.ids.scale.shape == (old.items.ids.num_embeddings,) and old.items.ids.scale.dtype == torch.float32
    assert isinstance(old.pos, Int8Embedding), "every layer of a v1 checkpoint is int8"
    torch.testing.assert_close(old.items.ids.weight, dequantize(state["items.ids.weight_q"], state["items.ids.scale"]),
                               rtol=0, atol=0)
    fm, _ = checkpoint.load(fm_dir)
    a, b = evaluate(old, split), evaluate(fm, split)
    assert abs(a["NDCG@10"] - b["NDCG@10"]) < 0.02, (a, b)
    blob["quantization"] = "int4-cols/v9"
    torch.save(blob, int8 / "1" / "model.pt")
    with pytest.raises(ValueError, match="int8-groups/v2 and int8-rows/v1"):
        checkpoint.load(int8 / "1")
