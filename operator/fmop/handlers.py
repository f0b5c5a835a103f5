"""kopf handlers: read what an assessment needs, assess (pure), patch status once, post Events.

FoundationModel and TaskAdapter have one reconcile function, run on create, on spec update, on
operator start (resume) and on a resync timer, so a TaskAdapter notices when the objects it
references appear or gain versions. Rollouts are reconciled by fmop.rollout.controller (see below).
A reconcile that changes nothing writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import kopf

from fmop import __version__, metrics
from fmop.api import GROUP
from fmop.assess import Verdict
from fmop.conditions import merge, now_rfc3339
from fmop.config import Config
from fmop.kinds import FOUNDATION_MODEL, INFERENCE_SERVICE, ROLLOUT, TASK_ADAPTER, WORKFLOW, Kind
from fmop.kube import Kube, KubeError, NotInstalled, api_client
from fmop.rollout import naming, webhook
from fmop.rollout.controller import Controller, PrometheusAnalysis, traffic_for
from fmop.rollout.types import Alert
from fmop.training.planner import Plan, plan, with_log
from fmop.training.render import LABEL_KIND, LABEL_OWNER


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    cfg: Config = memo.get("config") or Config()
    memo["config"] = cfg
    api = api_client()
    kube = Kube(api, field_manager=naming.FIELD_MANAGER)
    memo["kube"] = kube
    memo["rollouts"] = Controller(kube, traffic_for=traffic_for(api),
                                  analysis=PrometheusAnalysis(cfg.prometheus_url) if cfg.prometheus_url else None)
    # Progress and diff-base live in annotations: our status schema is strict and owned by us.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    if not cfg.verbose:  # "Timer ... succeeded" at every resync of every object drowns what matters
        logging.getLogger("kopf.objects").addFilter(_QuietResync())
    metrics.BUILD.labels(__version__).set(1)
    metrics.serve(cfg.metrics_port, cfg.bind_address)
    logger.info(f"fm-operator {__version__} watching {'all namespaces' if cfg.clusterwide else ', '.join(cfg.namespaces)}; "
                f"metrics on :{cfg.metrics_port}, resync every {cfg.resync_seconds}s")


class _QuietResync(logging.Filter):
    """Drops kopf's INFO line for every successful resync timer run (one per object every resync); keeps the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage().startswith("Timer ") and record.getMessage().endswith("succeeded."))


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
    except KubeError as err:
        result = "retry"
        raise kopf.TemporaryError(f"{err}; retrying", delay=10) from err
    finally:
        metrics.RECONCILES.labels(kind, result).inc()
        metrics.DURATION.labels(kind).observe(time.perf_counter() - start)


# ---------------------------------------------------------------- FoundationModel
def _train(kind: Kind, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, plan_for: Callable[[list[dict[str, Any]]], Plan]) -> None:
    """Follow the object's training Workflows: plan (pure) from what is found, then carry the plan out
    (read the failed step's log if it asks, delete, apply), and patch status once."""
    kube: Kube = memo["kube"]
    meta = body.get("metadata", {})
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))

    def decide() -> Verdict:
        try:
            found = kube.list(WORKFLOW, namespace, {LABEL_KIND: kind.kind, LABEL_OWNER: name})
        except NotInstalled:  # no Argo here: none of ours runs (applying one says what to install)
            found = []
        p = plan_for(found)
        if p.read_log is not None:  # the tail of the failed step's own log goes into the message
            step = p.read_log
            p = with_log(p, kube.pod_log_tail(namespace, step.labels, step.annotations, container=step.container, lines=step.lines))
        for stale in p.delete:
            kube.delete(WORKFLOW, namespace, stale)
        if p.create is not None:
            kube.apply(WORKFLOW, p.create)
        return p.verdict

    _reconcile(kind.kind, body, patch, decide)


def reconcile_foundation_model(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    image = memo["config"].trainer_image
    _train(FOUNDATION_MODEL, body, patch, memo, lambda found: plan(dict(body), found, now_rfc3339(), image=image))


# ---------------------------------------------------------------- TaskAdapter
def reconcile_task_adapter(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, namespace: str, spec: kopf.Spec, **_: Any) -> None:
    kube: Kube = memo["kube"]
    image = memo["config"].trainer_image
    _train(TASK_ADAPTER, body, patch, memo,  # the FoundationModel is read inside, so an outage is a retry
           lambda found: plan(dict(body), found, now_rfc3339(), image=image,
                              foundation_model=kube.get(FOUNDATION_MODEL, namespace, spec["foundationModel"]["name"])))


# ---------------------------------------------------------------- Rollout
# The rollout controller (fmop.rollout.controller) does its own reads and writes, because the
# Alertmanager webhook runs the same reconcile outside kopf's handlers. kopf only says when:
# a daemon per Rollout ticks (fast while steps run, slowly otherwise), a spec or annotation edit
# and a change of one of its InferenceServices reconcile at once.
def _controller(memo: kopf.Memo) -> Controller:
    ctl: Controller = memo["rollouts"]
    return ctl


async def rollout_daemon(memo: kopf.Memo, namespace: str, name: str, stopped: kopf.DaemonStopped, logger: logging.Logger, **_: Any) -> None:
    cfg: Config = memo["config"]
    ctl = _controller(memo)
    while not stopped:
        delay = cfg.resync_seconds
        try:
            outcome = await asyncio.to_thread(ctl.reconcile, namespace, name)
            if outcome.result == "gone":
                return
            if outcome.busy:
                delay = cfg.rollout_tick_seconds
        except KubeError as err:
            logger.warning(f"{err}; retrying in {cfg.resync_seconds}s")
        except Exception:  # a bug must not stop the Rollout's daemon for good
            logger.exception("rollout reconcile failed; retrying")
            metrics.RECONCILES.labels("Rollout", "error").inc()
        await stopped.wait(delay)
    ctl.forget(namespace, name)


def reconcile_rollout_now(memo: kopf.Memo, namespace: str, name: str, **_: Any) -> None:
    try:
        _controller(memo).reconcile(namespace, name)
    except KubeError as err:
        raise kopf.TemporaryError(f"{err}; retrying", delay=10) from err


def on_inference_service(memo: kopf.Memo, namespace: str, labels: kopf.Labels, type: str | None, **_: Any) -> None:
    """A Rollout's InferenceService changed (became Ready, say): reconcile its Rollout now."""
    owner = labels.get(naming.LABEL_ROLLOUT)
    if owner and type is not None and "rollouts" in memo:
        try:
            _controller(memo).reconcile(namespace, owner)
        except KubeError as err:
            logging.getLogger("fmop.rollout").warning(f"{err}; the Rollout's daemon will try again")


def remember_rollout(memo: kopf.Memo, body: kopf.Body, namespace: str, name: str, type: str | None, **_: Any) -> None:
    """Keep every watched Rollout's spec at hand, for the webhook to match alerts against without an API call."""
    known: dict[tuple[str, str], dict[str, Any]] = memo.setdefault("rollout_bodies", {})
    if type == "DELETED":
        known.pop((namespace, name), None)
    else:
        known[(namespace, name)] = {"metadata": {"namespace": namespace, "name": name}, "spec": dict(body.get("spec") or {})}


async def start_webhook(memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The Alertmanager webhook receiver (--webhook-port): a matching firing alert rolls back at once,
    in the request, through the same reconcile as everything else (traffic first)."""
    cfg: Config = memo["config"]
    if not cfg.webhook_port:
        return
    ctl = _controller(memo)
    known: dict[tuple[str, str], dict[str, Any]] = memo.setdefault("rollout_bodies", {})

    async def on_alerts(namespace: str, name: str, alerts: tuple[Alert, ...]) -> str:
        outcome = await asyncio.to_thread(ctl.reconcile, namespace, name, alerts)
        if outcome.rolled_back:
            for alert in alerts:
                metrics.ALERT_ROLLBACKS.labels(alert.name).inc()
        return f"{outcome.result}: {outcome.phase}" + (f" ({'; '.join(outcome.actions)})" if outcome.actions else "")

    memo["webhook"] = await webhook.start(lambda: list(known.values()), on_alerts, cfg.webhook_token_file,
                                          host=cfg.bind_address, port=cfg.webhook_port)
    logger.info(f"Alertmanager webhook receiver on {cfg.bind_address}:{cfg.webhook_port}/alertmanager")


async def stop_webhook(memo: kopf.Memo, **_: Any) -> None:
    server = memo.get("webhook")
    if server is not None:
        await server.stop()


def register(cfg: Config) -> None:
    """Register the reconcile functions with kopf: create/update/resume and the resync timer for the
    FoundationModel and TaskAdapter, a daemon, edits and InferenceService events for the Rollout."""
    for k, fn in ((FOUNDATION_MODEL, reconcile_foundation_model), (TASK_ADAPTER, reconcile_task_adapter)):
        name = fn.__name__
        kopf.on.create(k.group, k.version, k.plural, id=f"{name}.create")(fn)
        kopf.on.update(k.group, k.version, k.plural, id=f"{name}.update")(fn)
        kopf.on.resume(k.group, k.version, k.plural, id=f"{name}.resume")(fn)
        kopf.timer(k.group, k.version, k.plural, id=f"{name}.resync", interval=cfg.resync_seconds, initial_delay=cfg.resync_seconds,
                   idle=None)(fn)
    ro, isvc = ROLLOUT, INFERENCE_SERVICE
    kopf.daemon(ro.group, ro.version, ro.plural, id="rollout.daemon", cancellation_timeout=5.0)(rollout_daemon)
    kopf.on.update(ro.group, ro.version, ro.plural, id="rollout.update")(reconcile_rollout_now)
    kopf.on.event(isvc.group, isvc.version, isvc.plural, id="rollout.inferenceservice",
                  labels={naming.LABEL_ROLLOUT: kopf.PRESENT})(on_inference_service)
    kopf.on.event(ro.group, ro.version, ro.plural, id="rollout.remember")(remember_rollout)
    kopf.on.startup(id="webhook.start")(start_webhook)
    kopf.on.cleanup(id="webhook.stop")(stop_webhook)


@kopf.on.probe(id="api")
def probe(memo: kopf.Memo, **_: Any) -> str:
    return "ok" if memo.get("kube") is not None else "starting"
