"""kopf handlers: read what an assessment needs, assess (pure), write status once, post Events.

FoundationModel and TaskAdapter have one reconcile function, run on create, on spec update, on
operator start (resume) and on a resync timer, so a TaskAdapter notices when the objects it
references appear or gain versions. Rollouts are reconciled by fmop.rollout.controller (see below).
A reconcile that changes nothing writes nothing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import kopf
from kubernetes import client

from fmop import __version__, metrics
from fmop.api import GROUP
from fmop.cache import WatchCache
from fmop.conditions import now_rfc3339
from fmop.config import Config
from fmop.kinds import FOUNDATION_MODEL, INFERENCE_SERVICE, ROLLOUT, TASK_ADAPTER, WORKFLOW, Kind
from fmop.kube import Conflict, Kube, KubeError, NotInstalled, api_client
from fmop.rollout import naming, webhook
from fmop.rollout.controller import Controller, Outcome, PrometheusAnalysis, traffic_for
from fmop.rollout.types import Alert
from fmop.training.planner import Plan, StepLog, plan
from fmop.training.render import LABEL_KIND, LABEL_OWNER
from fmop.training.versions import Contended, Synced, sync


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    cfg: Config = memo.get("config") or Config()
    memo["config"] = cfg
    api = api_client()
    kube = Kube(api, field_manager=naming.FIELD_MANAGER)
    memo["kube"] = kube
    # Shared by every object's handlers: kopf gives each object a shallow copy of this memo, so a key added later
    # (by one Rollout's handler) would be seen by that object alone.
    memo["rollout_bodies"] = {}
    memo["wakes"] = {}  # (namespace, name) -> (loop, event): a reconcile outside the daemon wakes it when time-driven work began
    cache = WatchCache(CACHED)
    for kind in CACHED:
        if kind in (ROLLOUT, FOUNDATION_MODEL, TASK_ADAPTER) or _serves(api, kind):  # our CRDs must be there; KServe's may not be
            cache.serve(kind)
    memo["cache"] = cache
    memo["rollouts"] = Controller(kube, traffic_for=traffic_for(api), cache=cache,
                                  analysis=PrometheusAnalysis(cfg.prometheus_url, cfg.prometheus_allow) if cfg.prometheus_url else None)
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


# The kinds the Rollout controller reads from kopf's watches instead of the API server (fmop.cache).
CACHED = (ROLLOUT, FOUNDATION_MODEL, TASK_ADAPTER, INFERENCE_SERVICE)


def _serves(api: client.ApiClient, kind: Kind) -> bool:
    """Does the API server serve `kind` (API discovery, open to every identity)? kopf watches it only if so."""
    try:
        found = client.CustomObjectsApi(api).get_api_resources(kind.group, kind.version, _request_timeout=10)
    except Exception:  # not served (404), or unknown: read it from the API server, as without a cache
        return False
    return any(r.name == kind.plural for r in found.resources or [])


def cache_object(memo: kopf.Memo, body: kopf.Body, resource: kopf.Resource, **_: Any) -> None:
    """kopf index handler: every watch event of a cached kind, before any other handler sees it (and before any handler
    runs at all, for the first listing: kopf's index readiness), so the cache is as new as the events handlers get."""
    cache: WatchCache | None = memo.get("cache")
    if cache is not None:
        cache.seen(_CACHED_BY_PLURAL[resource.plural], body)


def _forget_cached(memo: kopf.Memo, resource: kopf.Resource, namespace: str | None, name: str | None, type: str | None) -> None:
    """A handler of a cached kind runs: kopf has indexed every kind, so the cache may serve; a deletion leaves it."""
    cache: WatchCache | None = memo.get("cache")
    if cache is None:
        return
    cache.open()
    if type == "DELETED" and name:
        cache.gone(_CACHED_BY_PLURAL[resource.plural], namespace or "", name)


_CACHED_BY_PLURAL = {k.plural: k for k in CACHED}


class _QuietResync(logging.Filter):
    """Drops kopf's INFO line for every successful resync timer run (one per object every resync); keeps the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage().startswith("Timer ") and record.getMessage().endswith("succeeded."))


def _apply(kind: str, body: kopf.Body, synced: Synced) -> str:
    """What a sync did (its status is written already), as metrics and an Event per condition whose status changed."""
    for t in synced.transitions:
        metrics.TRANSITIONS.labels(kind, t.cond.type, t.cond.status).inc()
        if t.cond.status == "True":
            kopf.info(body, reason=t.cond.reason, message=f"{t.cond.type}: {t.cond.message}")
        else:
            kopf.warn(body, reason=t.cond.reason, message=f"{t.cond.type}: {t.cond.message}")
    return "unchanged" if synced.result == "gone" else synced.result


def _reconcile(kind: str, body: kopf.Body, run: Callable[[], Synced]) -> None:
    start = time.perf_counter()
    result = "error"
    try:
        result = _apply(kind, body, run())
    except (KubeError, Contended) as err:
        result = "retry"
        raise kopf.TemporaryError(f"{err}; retrying", delay=10) from err
    finally:
        metrics.RECONCILES.labels(kind, result).inc()
        metrics.DURATION.labels(kind).observe(time.perf_counter() - start)


# ---------------------------------------------------------------- FoundationModel
class _Training:
    """fmop.training.versions' Store for one FoundationModel or TaskAdapter and its Workflows, through fmop.kube."""

    def __init__(self, kube: Kube, kind: Kind, namespace: str, name: str) -> None:
        self.kube, self.kind, self.namespace, self.name = kube, kind, namespace, name

    def read(self) -> dict[str, Any] | None:
        return self.kube.get(self.kind, self.namespace, self.name)

    def workflows(self) -> list[dict[str, Any]]:
        try:
            return self.kube.list(WORKFLOW, self.namespace, {LABEL_KIND: self.kind.kind, LABEL_OWNER: self.name})
        except NotInstalled:  # no Argo here: none of ours runs (applying one says what to install)
            return []

    def log_tail(self, step: StepLog) -> str:
        return self.kube.pod_log_tail(self.namespace, step.labels, step.annotations, container=step.container, lines=step.lines)

    def write_status(self, obj: dict[str, Any], status: dict[str, Any]) -> bool:
        try:
            self.kube.replace_status(self.kind, obj, status)
        except Conflict:
            return False
        return True

    def create(self, workflow: dict[str, Any]) -> None:
        self.kube.apply(WORKFLOW, workflow)

    def delete(self, workflow: str) -> None:
        self.kube.delete(WORKFLOW, self.namespace, workflow)


def _train(kind: Kind, body: kopf.Body, memo: kopf.Memo, plan_for: Callable[[dict[str, Any], list[dict[str, Any]]], Plan]) -> None:
    """Follow the object's training Workflows: plan (pure) from the object and what is found, write the status
    with the resourceVersion read (a lost race plans again from a fresh read), then create and delete."""
    meta = body.get("metadata", {})
    store = _Training(memo["kube"], kind, str(meta.get("namespace")), str(meta.get("name")))
    _reconcile(kind.kind, body, lambda: sync(store, dict(body), plan_for, now_rfc3339()))


def reconcile_foundation_model(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    image = memo["config"].trainer_image
    _train(FOUNDATION_MODEL, body, memo, lambda obj, found: plan(obj, found, now_rfc3339(), image=image))


# ---------------------------------------------------------------- TaskAdapter
def reconcile_task_adapter(body: kopf.Body, memo: kopf.Memo, namespace: str, **_: Any) -> None:
    kube: Kube = memo["kube"]
    image = memo["config"].trainer_image
    _train(TASK_ADAPTER, body, memo,  # the FoundationModel is read inside, at every plan, so an outage is a retry
           lambda obj, found: plan(obj, found, now_rfc3339(), image=image,
                                   foundation_model=kube.get(FOUNDATION_MODEL, namespace, obj["spec"]["foundationModel"]["name"])))


@kopf.on.startup(id="namespaces.as-listed")
def serve_listed_namespaces(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """With --namespaces, serve exactly those namespaces, Terminating ones included, so none is stranded.

    kopf puts its finalizer (fmops.dev/finalizer) on every object that has a daemon or a timer (the Rollout
    daemon, the resync timers), whatever their options (kopf/on.py; making it optional was declined
    upstream, nolar/kopf#896, #1183). Left to observe namespaces itself, kopf leaves out one that is
    Terminating when it starts (kopf/_core/reactor/observation.py, revise_namespaces), so a namespace
    deleted while the operator was down kept its objects, and so itself, forever. Served as listed, kopf
    sees those objects being deleted and releases them. Clusterwide, kopf watches every namespace anyway.
    Also: the chart's identity, which may not list namespaces, no longer retries that list (about 1.5 min)
    before it serves anything. Cost: CRDs installed after start are served after a restart (kopf scans once)."""
    cfg: Config = memo.get("config") or Config()
    settings.scanning.disabled = not cfg.clusterwide


# ---------------------------------------------------------------- Rollout
# The rollout controller (fmop.rollout.controller) does its own reads and writes, because the
# Alertmanager webhook runs the same reconcile outside kopf's handlers. kopf only says when:
# a daemon per Rollout ticks (fast while steps run, slowly otherwise), a spec or annotation edit
# and a change of one of its InferenceServices reconcile at once.
def _controller(memo: kopf.Memo) -> Controller:
    ctl: Controller = memo["rollouts"]
    return ctl


async def rollout_daemon(memo: kopf.Memo, namespace: str, name: str, stopped: kopf.DaemonStopped, logger: logging.Logger, **_: Any) -> None:
    """Reconcile one Rollout, then sleep as its decision says: a tick while steps run, until the next clock-driven
    change (Decision.next_look) otherwise, and at most --rollout-idle-seconds; events reconcile it meanwhile."""
    cfg: Config = memo["config"]
    ctl = _controller(memo)
    cache: WatchCache | None = memo.get("cache")
    if cache is not None:
        cache.open()  # kopf starts a daemon only once its index handlers have seen every object of every kind
    wake = asyncio.Event()
    wakes: dict[tuple[str, str], tuple[asyncio.AbstractEventLoop, asyncio.Event]] = memo.setdefault("wakes", {})
    wakes[(namespace, name)] = (asyncio.get_running_loop(), wake)
    fresh = False
    while not stopped:
        delay = cfg.resync_seconds
        wake.clear()  # a reconcile that ends after this one began wakes the next nap
        try:
            outcome = await asyncio.to_thread(ctl.reconcile, namespace, name, (), 3, fresh)
            if outcome.result == "gone":
                return
            delay = _sleep(cfg, outcome.busy, outcome.next_look, ctl.clock())
        except KubeError as err:
            logger.warning(f"{err}; retrying in {cfg.resync_seconds}s")
        except Exception:  # a bug must not stop the Rollout's daemon for good
            logger.exception("rollout reconcile failed; retrying")
            metrics.RECONCILES.labels("Rollout", "error").inc()
        fresh = cfg.rollout_idle_seconds > 0 and delay >= cfg.rollout_idle_seconds  # the idle resync reads the API server: it heals what a watch missed
        await _nap(stopped, wake, delay)
        fresh = fresh and not wake.is_set()
    wakes.pop((namespace, name), None)
    ctl.forget(namespace, name)


async def _nap(stopped: kopf.DaemonStopped, wake: asyncio.Event, delay: float) -> None:
    """Sleep `delay` seconds, or less: until the Rollout is stopped, or another reconcile of it (an event's, the webhook's)
    started time-driven work that this daemon, asleep on an older decision, would otherwise only see at its next wake."""
    waits = [asyncio.ensure_future(stopped.wait(delay)), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _woken(memo: kopf.Memo, namespace: str, name: str, outcome: Outcome) -> Outcome:
    """After a reconcile outside the daemon: wake the daemon if the Rollout now needs looking at by a time (a step's tick,
    a measurement, a deadline); it may be asleep for --rollout-idle-seconds on what it decided before the event."""
    if outcome.busy or outcome.next_look is not None:
        found = (memo.get("wakes") or {}).get((namespace, name))
        if found is not None:
            loop, event = found
            loop.call_soon_threadsafe(event.set)
    return outcome


def _sleep(cfg: Config, busy: bool, next_look: datetime | None, now: datetime) -> float:
    if busy:
        return cfg.rollout_tick_seconds
    if next_look is None:
        return cfg.rollout_idle_seconds
    return min(cfg.rollout_idle_seconds, max(cfg.rollout_tick_seconds, (next_look - now).total_seconds()))


def reconcile_rollout_now(memo: kopf.Memo, namespace: str, name: str, **_: Any) -> None:
    try:
        _woken(memo, namespace, name, _controller(memo).reconcile(namespace, name))
    except KubeError as err:
        raise kopf.TemporaryError(f"{err}; retrying", delay=10) from err


def on_inference_service(memo: kopf.Memo, namespace: str, name: str, labels: kopf.Labels, type: str | None, resource: kopf.Resource,
                         **_: Any) -> None:
    """A Rollout's InferenceService changed (became Ready, say): reconcile its Rollout now."""
    _forget_cached(memo, resource, namespace, name, type)
    owner = labels.get(naming.LABEL_ROLLOUT)
    if owner and type is not None and "rollouts" in memo:
        try:
            _woken(memo, namespace, owner, _controller(memo).reconcile(namespace, owner))
        except KubeError as err:
            logging.getLogger("fmop.rollout").warning(f"{err}; the Rollout's daemon will try again")


def on_model_event(memo: kopf.Memo, namespace: str, name: str, type: str | None, resource: kopf.Resource, **_: Any) -> None:
    """A FoundationModel or TaskAdapter changed (a version recorded, gated, deleted): reconcile, now, the Rollouts in its
    namespace that name it, so an idle Rollout needs no polling to see a new version (FollowLatest) or a resolved reference."""
    _forget_cached(memo, resource, namespace, name, type)
    if type is None or "rollouts" not in memo:
        return
    known: dict[tuple[str, str], dict[str, Any]] = memo.get("rollout_bodies", {})
    for (ns, rollout), body in list(known.items()):
        model = (body.get("spec") or {}).get("model") or {}
        names = {(model.get("foundationModel") or {}).get("name")} if resource.plural == FOUNDATION_MODEL.plural else {
            a.get("name") for a in model.get("adapters") or []}
        if ns == namespace and name in names:
            try:
                _woken(memo, ns, rollout, _controller(memo).reconcile(ns, rollout))
            except KubeError as err:
                logging.getLogger("fmop.rollout").warning(f"{err}; the Rollout's daemon will try again")


def remember_rollout(memo: kopf.Memo, body: kopf.Body, namespace: str, name: str, type: str | None, resource: kopf.Resource,
                     **_: Any) -> None:
    """Keep every watched Rollout's spec at hand, for the webhook to match alerts against without an API call."""
    _forget_cached(memo, resource, namespace, name, type)
    known: dict[tuple[str, str], dict[str, Any]] = memo.setdefault("rollout_bodies", {})
    if type == "DELETED":
        known.pop((namespace, name), None)
    else:
        known[(namespace, name)] = {"metadata": {"namespace": namespace, "name": name}, "spec": dict(body.get("spec") or {})}


async def start_webhook(memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The Alertmanager webhook receiver (--webhook-port): a matching firing alert rolls back at once,
    in the request, through the same reconcile as everything else (traffic first).

    It listens at once but answers 503 (Alertmanager retries) until every watched Rollout has been listed
    here: kopf's watch, which `remember_rollout` follows, starts only after the startup handlers, and an
    alert judged against part of the Rollouts could be answered "unmatched", a 200 never resent."""
    cfg: Config = memo["config"]
    if not cfg.webhook_port:
        return
    ctl = _controller(memo)
    kube: Kube = memo["kube"]
    known: dict[tuple[str, str], dict[str, Any]] = memo.setdefault("rollout_bodies", {})
    gate: webhook.Gate = memo.setdefault("webhook_gate", webhook.Gate())

    async def on_alerts(namespace: str, name: str, alerts: tuple[Alert, ...]) -> str:
        outcome = _woken(memo, namespace, name, await asyncio.to_thread(ctl.reconcile, namespace, name, alerts))
        if outcome.rolled_back:
            for alert in alerts:
                metrics.ALERT_ROLLBACKS.labels(alert.name).inc()
        return f"{outcome.result}: {outcome.phase}" + (f" ({'; '.join(outcome.actions)})" if outcome.actions else "")

    if memo.get("webhook") is None:  # a retried startup handler must not bind the port twice
        memo["webhook"] = await webhook.start(lambda: list(known.values()), on_alerts, cfg.webhook_token_file,
                                              host=cfg.bind_address, port=cfg.webhook_port, ready=gate,
                                              ssl_context=cfg.webhook_ssl_context(), cluster_labels=cfg.cluster_alert_labels)
        logger.info(f"Alertmanager webhook receiver on {cfg.bind_address}:{cfg.webhook_port}/alertmanager; "
                    "answering 503 until the Rollouts are listed")

    def list_rollouts() -> list[dict[str, Any]]:
        if cfg.namespaces and not any(_is_glob(n) for n in cfg.namespaces):
            return [obj for ns in cfg.namespaces for obj in kube.list(ROLLOUT, ns, {})]
        return [o for o in kube.list_all(ROLLOUT) if cfg.clusterwide or _watched(cfg, str(o.get("metadata", {}).get("namespace", "")))]

    while True:
        try:
            found = await asyncio.to_thread(list_rollouts)
            break
        except KubeError as err:
            logger.warning(f"{err}; the Alertmanager webhook answers 503 until the Rollouts are listed; retrying in 2s")
            await asyncio.sleep(2)
    for obj in found:  # the shape remember_rollout keeps; a watch event that came first is newer
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        known.setdefault((namespace, name), {"metadata": {"namespace": namespace, "name": name}, "spec": dict(obj.get("spec") or {})})
    gate.open()
    logger.info(f"Alertmanager webhook judges alerts against {len(found)} Rollout(s)")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[!")


def _watched(cfg: Config, namespace: str) -> bool:
    """Is `namespace` one kopf serves for --namespaces (its globs; a leading '!' excludes)?"""
    include = [p for p in cfg.namespaces if not p.startswith("!")]
    return (any(fnmatch.fnmatchcase(namespace, p) for p in include)
            and not any(fnmatch.fnmatchcase(namespace, p[1:]) for p in cfg.namespaces if p.startswith("!")))


async def stop_webhook(memo: kopf.Memo, **_: Any) -> None:
    gate = memo.get("webhook_gate")
    if gate is not None:
        gate.close()
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
    for k in CACHED:  # index handlers: kopf calls them first, and runs no handler before they have seen every object
        kopf.index(k.group, k.version, k.plural, id=f"cache.{k.plural}",
                   **({"labels": {naming.LABEL_ROLLOUT: kopf.PRESENT}} if k == INFERENCE_SERVICE else {}))(cache_object)
    for k in (FOUNDATION_MODEL, TASK_ADAPTER):
        kopf.on.event(k.group, k.version, k.plural, id=f"rollout.references.{k.plural}")(on_model_event)
    kopf.on.startup(id="webhook.start")(start_webhook)
    kopf.on.cleanup(id="webhook.stop")(stop_webhook)

