"""kopf handlers: read what an assessment needs, assess (pure), patch status once, post Events.

Each kind has one reconcile function, run on create, on spec update, on operator start (resume)
and on a resync timer, so a TaskAdapter or Rollout notices when the objects it references
appear or gain versions. A reconcile that changes nothing writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

from fmop import __version__, metrics
from fmop.api import GROUP, VERSION
from fmop.assess import Verdict, assess_rollout
from fmop.conditions import merge, now_rfc3339
from fmop.config import Config
from fmop.kube import KubeUnavailable, Reader, Workflows, api_client
from fmop.training.render import LABEL_KIND, LABEL_OWNER
from fmop.training.status import Plan, failed_pod, plan_foundation_model, plan_task_adapter

FM, TA, RO = "foundationmodels", "taskadapters", "rollouts"


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    cfg: Config = memo.get("config") or Config()
    memo["config"] = cfg
    memo["reader"] = Reader(api_client())
    memo["workflows"] = Workflows(api_client())
    # Progress and diff-base live in annotations: our status schema is strict and owned by us.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    metrics.BUILD.labels(__version__).set(1)
    metrics.serve(cfg.metrics_port, cfg.bind_address)
    logger.info(f"fm-operator {__version__} watching {'all namespaces' if cfg.clusterwide else ', '.join(cfg.namespaces)}; "
                f"metrics on :{cfg.metrics_port}, resync every {cfg.resync_seconds}s")


def _apply(kind: str, body: kopf.Body, patch: kopf.Patch, verdict: Verdict) -> str:
    """Turn a verdict into one status patch (only when something changed) and Events for transitions."""
    status = dict(body.get("status") or {})
    generation = body.get("metadata", {}).get("generation")
    conditions, transitions = merge(list(status.get("conditions") or []), verdict.conditions, generation, now_rfc3339())
    wanted = {"phase": verdict.phase, "conditions": conditions, "observedGeneration": generation, "message": verdict.message, **verdict.extra}
    changes = {k: v for k, v in wanted.items() if status.get(k) != v}
    if not changes:
        return "unchanged"
    for key, value in changes.items():
        patch.status[key] = value
    for t in transitions:
        metrics.TRANSITIONS.labels(kind, t.cond.type, t.cond.status).inc()
        if t.cond.status == "True":
            kopf.info(body, reason=t.cond.reason, message=f"{t.cond.type}: {t.cond.message}")
        else:
            kopf.warn(body, reason=t.cond.reason, message=f"{t.cond.type}: {t.cond.message}")
    return "changed"


def _reconcile(kind: str, body: kopf.Body, patch: kopf.Patch, decide: Callable[[], Verdict]) -> None:
    start = time.perf_counter()
    result = "error"
    try:
        result = _apply(kind, body, patch, decide())
    except KubeUnavailable as err:
        result = "retry"
        raise kopf.TemporaryError(f"{err}; retrying", delay=10) from err
    finally:
        metrics.RECONCILES.labels(kind, result).inc()
        metrics.DURATION.labels(kind).observe(time.perf_counter() - start)


# ---------------------------------------------------------------- FoundationModel
def _train(kind: str, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, plan: Callable[[list[dict[str, Any]], str], Plan]) -> None:
    """Follow the object's training Workflows: plan (pure) from what is found, apply/delete Workflows, patch status once."""
    workflows: Workflows = memo["workflows"]
    meta = body.get("metadata", {})
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))

    def decide() -> Verdict:
        found = workflows.list(namespace, {LABEL_KIND: kind, LABEL_OWNER: name})
        p = plan(found, "")
        if p.verdict.phase == "Failed" and p.create is None and p.verdict.extra.get("workflowName"):
            wf = next((w for w in found if w["metadata"]["name"] == p.verdict.extra["workflowName"]), None)
            node = failed_pod(wf) if wf else None
            if node:  # the tail of the failed step's own log goes into the message
                p = plan(found, workflows.step_log_tail(namespace, str(p.verdict.extra["workflowName"]), node))
        for stale in p.delete:
            workflows.delete(namespace, stale)
        if p.create is not None:
            workflows.apply(p.create)
        return p.verdict

    _reconcile(kind, body, patch, decide)


def reconcile_foundation_model(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    image = memo["config"].trainer_image
    _train("FoundationModel", body, patch, memo,
           lambda found, log_tail: plan_foundation_model(dict(body), found, image, now_rfc3339(), log_tail))


# ---------------------------------------------------------------- TaskAdapter
def reconcile_task_adapter(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, namespace: str, spec: kopf.Spec, **_: Any) -> None:
    reader: Reader = memo["reader"]
    image = memo["config"].trainer_image
    _train("TaskAdapter", body, patch, memo,  # the FoundationModel is read inside, so an outage is a retry
           lambda found, log_tail: plan_task_adapter(dict(body), reader.get(FM, namespace, spec["foundationModel"]["name"]),
                                                     found, image, now_rfc3339(), log_tail))


# ---------------------------------------------------------------- Rollout
def reconcile_rollout(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, namespace: str, spec: kopf.Spec, **_: Any) -> None:
    reader: Reader = memo["reader"]

    def decide() -> Verdict:
        model = spec.get("model", {})
        fm = reader.get(FM, namespace, model.get("foundationModel", {}).get("name", ""))
        adapters = {a["name"]: reader.get(TA, namespace, a["name"]) for a in model.get("adapters", [])}
        return assess_rollout(dict(body), fm, adapters)

    _reconcile("Rollout", body, patch, decide)


def register(cfg: Config) -> None:
    """Register the reconcile functions with kopf for create/update/resume and the resync timer."""
    for plural, fn in ((FM, reconcile_foundation_model), (TA, reconcile_task_adapter), (RO, reconcile_rollout)):
        name = fn.__name__
        kopf.on.create(GROUP, VERSION, plural, id=f"{name}.create")(fn)
        kopf.on.update(GROUP, VERSION, plural, id=f"{name}.update")(fn)
        kopf.on.resume(GROUP, VERSION, plural, id=f"{name}.resume")(fn)
        kopf.timer(GROUP, VERSION, plural, id=f"{name}.resync", interval=cfg.resync_seconds, initial_delay=cfg.resync_seconds,
                   idle=None)(fn)


@kopf.on.probe(id="api")
def probe(memo: kopf.Memo, **_: Any) -> str:
    return "ok" if memo.get("reader") is not None else "starting"
