"""Export an FM version plus any number of its task adapters as one Triton model (python backend),
and beside it the model that counts what users did with its recommendations.

    REPO/NAME/config.pbtxt              inputs/outputs (fmrec.serving.protocol), dynamic batching, top_k and int8
    REPO/NAME/1/...                     the version folder (fmrec.serving.artifact)
    REPO/NAME_outcome/config.pbtxt      the outcome model: OUTCOME, POSITION, TASK in, ACK out; the recommend
                                        model's name, version, tasks and top_k as parameters
    REPO/NAME_outcome/1/model.py        a copy of fmrec/serving/outcome_model.py (no weights)

REPO is a model repository as Triton (`tritonserver --model-repository=REPO`) and KServe's Triton
runtime (storageUri = REPO, mounted at /mnt/models) expect it; both load every model of the
repository (a server started with --model-control-mode=explicit must --load-model both NAME and
NAME_outcome). Everything a request may need is checked here, so a model whose fields cannot be
served fails at export, naming the field.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fmrec import checkpoint
from fmrec.nn.adapters import AdapterBase
from fmrec.nn.fm import FMConfig, FoundationModel
from fmrec.serving import artifact, protocol
from fmrec.serving.infer import FM_TASK, quantize_int8
from fmrec.serving.metrics import score_buckets
from fmrec.tokens import FIELDS
from fmrec.vocab import Vocabulary

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {inputs}
]
output [
  {outputs}
]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
parameters: {{ key: "top_k" value: {{ string_value: "{k}" }} }}
parameters: {{ key: "int8" value: {{ string_value: "{int8}" }} }}
parameters: {{ key: "threads" value: {{ string_value: "{threads}" }} }}
"""
OUTCOME_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {inputs}
]
output [
  {outputs}
]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
parameters: {{ key: "recommender" value: {{ string_value: "{model}" }} }}
parameters: {{ key: "recommender_version" value: {{ string_value: "{version}" }} }}
parameters: {{ key: "tasks" value: {{ string_value: "{tasks}" }} }}
parameters: {{ key: "top_k" value: {{ string_value: "{k}" }} }}
"""
FAULTS = ("fault_error_share", "fault_latency_ms")  # test-only: see fmrec.serving.triton_model.Faults
KEEP_META = ("dataFingerprint", "featureFingerprint", "metrics", "topScoreDeciles")  # never paths


class ExportError(ValueError):
    """The model cannot be exported as it is; the message names what and how to fix it."""


def check_servable(cfg: FMConfig, vocab: Vocabulary) -> None:
    """Every event field the model was trained with must be computable from a request."""
    if len(vocab.items) != cfg.n_items:
        raise ExportError(f"event field 'item': the vocabulary has {len(vocab.items)} item IDs, the model {cfg.n_items} items; "
                          "export the checkpoint together with the data it was trained on")
    for name in cfg.event_fields:
        if name not in FIELDS:
            raise ExportError(f"event field {name!r} cannot be served: requests can carry only {list(FIELDS)}")
        if name in ("item", "timeGap", "hourOfDay", "dayOfWeek", "relativeTime"):
            continue  # item IDs are checked above; time fields come from TIMESTAMPS
        values = vocab.values(name)
        if values is None:
            raise ExportError(f"event field {name!r} cannot be served: the checkpoint has no raw values for its codes, so a "
                              f"request's {name.upper()} could not be encoded; retrain with this fmrec (it saves them) "
                              f"or drop {name!r} from eventFields")
        if len(values) + 1 > cfg.vocab[name]:
            raise ExportError(f"event field {name!r}: {len(values)} raw values but the model embeds {cfg.vocab[name] - 1} codes; "
                              "the vocabulary is not the one the model was trained with")


def vocabulary(model_dir: Path, meta: dict[str, Any]) -> Vocabulary:
    """The checkpoint's Vocabulary; for checkpoints older than vocabularies, rebuilt from its training data."""
    vocab = checkpoint.load_vocab(model_dir)
    if vocab is not None:
        return vocab
    from fmrec.data.sources import load_data
    from fmrec.data.split import leave_one_out

    data = meta.get("data")
    if not data:
        raise ExportError(f"{model_dir}: the checkpoint has no vocabulary and names no data to rebuild it from; "
                          "retrain it with `python -m fmrec train`, which saves one")
    log = load_data(str(data))
    if meta.get("dataFingerprint") not in (None, log.fingerprint()):
        raise ExportError(f"{model_dir}: its data {data!r} has changed since training (fingerprint differs), so the item IDs "
                          "may not match the codes; retrain it with `python -m fmrec train`, which saves the vocabulary")
    split = leave_one_out(log)
    return Vocabulary.from_log(split.log, split.train_mask("test"))


Adapters = Mapping[str, Path] | Sequence[tuple[str, Path]]  # task ("" = the name saved with the adapter) -> folder


def load_adapters(fm: FoundationModel, adapters: Adapters) -> tuple[dict[str, AdapterBase], dict[str, Any]]:
    """Adapters by task name, each checked to be trained on this FM; and the top-score deciles each recorded."""
    out: dict[str, AdapterBase] = {}
    deciles: dict[str, Any] = {}
    for task, path in adapters.items() if isinstance(adapters, Mapping) else adapters:
        adapter, info = checkpoint.load_adapter(path, fm)
        name = task or str(info.get("task") or "")
        if not name:
            raise ExportError(f"{path}: the adapter has no task name; name it with --adapter NAME={path}")
        if name in out or name == FM_TASK:
            raise ExportError(f"task {name!r} is given twice (or is {FM_TASK!r}, the FM's own); give each adapter its own name")
        out[name] = adapter
        deciles[name] = info.get("meta", {}).get("topScoreDeciles")
    return out, deciles


def export_triton(model_dir: Path, repo: Path, name: str = "fmrec", k: int = 100, int8: bool = False,
                  adapters: Adapters = (), max_batch: int = 64, delay_us: int = 2000,
                  instances: int = 1, threads: int = 1) -> Path:
    """Write repo/<name>/ from the FM checkpoint in model_dir and adapters {task ("" = its own name): folder}."""
    fm, meta = checkpoint.load(model_dir)
    vocab = vocabulary(model_dir, meta)
    check_servable(fm.cfg, vocab)
    if not 1 <= k <= fm.cfg.n_items:
        raise ExportError(f"--top-k {k} must be between 1 and the model's {fm.cfg.n_items} items")
    loaded, deciles = load_adapters(fm, adapters)
    buckets = {FM_TASK: score_buckets(meta.get("topScoreDeciles"))} | {t: score_buckets(d) for t, d in deciles.items()}
    target = repo / name
    if int8:  # adapters were checked against the fp32 FM above; the version records the int8 FM they are served with
        fm = quantize_int8(fm)
    manifest = artifact.write_version(target / "1", fm, vocab, loaded, {k: meta[k] for k in KEEP_META if k in meta}, buckets)
    (target / "config.pbtxt").write_text(CONFIG.format(
        name=name, max_batch=max_batch, delay_us=delay_us, instances=instances, k=k, int8=str(int8).lower(), threads=threads,
        inputs=",\n  ".join(s.pbtxt() for s in protocol.INPUTS),
        outputs=",\n  ".join(s.pbtxt() for s in protocol.outputs(fm.cfg.d_model))))
    export_outcomes(repo, name, "1", tuple(manifest.tasks), k, max_batch=max_batch, delay_us=delay_us)
    return target


def export_outcomes(repo: Path, model: str, version: str, tasks: Sequence[str], k: int, max_batch: int = 64,
                    delay_us: int = 2000) -> Path:
    """Write repo/<model>_outcome/: the model that counts outcomes reported for the recommend model `model`.

    `tasks` are the recommend model's, the foundation model's own first; `k` its maximum K."""
    if not tasks or any("," in t for t in tasks):
        raise ExportError(f"tasks {list(tasks)}: give the recommend model's task names, the foundation model's first")
    target = repo / protocol.outcome_model(model)
    (target / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(__file__).with_name("outcome_model.py"), target / "1" / "model.py")
    (target / "config.pbtxt").write_text(OUTCOME_CONFIG.format(
        name=target.name, max_batch=max_batch, delay_us=delay_us, model=model, version=version, tasks=",".join(tasks), k=k,
        inputs=",\n  ".join(s.pbtxt() for s in protocol.OUTCOME_INPUTS),
        outputs=",\n  ".join(s.pbtxt() for s in protocol.OUTCOME_OUTPUTS)))
    return target


def set_faults(model: Path, error_share: float = 0.0, latency_ms: float = 0.0) -> None:
    """Test-only: make an exported model (repo/<name>) fail a share of requests and answer late.

    Written as config.pbtxt parameters, read when Triton loads the model; 0 and 0 remove them."""
    if not 0 <= error_share <= 1:
        raise ExportError(f"fault error share {error_share} must be between 0 and 1")
    if latency_ms < 0:
        raise ExportError(f"fault latency {latency_ms} ms must not be negative")
    config = model / "config.pbtxt"
    if not config.is_file():
        raise ExportError(f"{config} does not exist: give the exported model's folder (the repository's <name>/)")
    lines = [line for line in config.read_text().splitlines() if not any(f'"{key}"' in line for key in FAULTS)]
    for key, value in zip(FAULTS, (error_share, latency_ms)):
        if value:
            lines.append(f'parameters: {{ key: "{key}" value: {{ string_value: "{value:g}" }} }}')
    config.write_text("\n".join(lines) + "\n")
