"""`kubectl fmops`: watch a Rollout's story and act on it (promote, abort, retry, pause, resume).

Installed as the console script `kubectl-fmops`, which kubectl finds on PATH as the plugin `kubectl fmops`.
It talks to the API server like kubectl does (--kubeconfig, KUBECONFIG, --context, -n) and only
reads Rollouts and their Events, and writes annotations and spec.paused: the operator does the rest.

    kubectl fmops status recommender -n team-a --watch
    kubectl fmops promote recommender      # past a pause step (sets fmops.dev/promote to a fresh value)
    kubectl fmops abort recommender        # roll the canary back now (fmops.dev/abort)
    kubectl fmops retry recommender        # start a rolled-back or failed revision again (fmops.dev/retry)
    kubectl fmops pause|resume recommender # spec.paused
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from fmop.api import GROUP, VERSION
from fmop.kinds import ROLLOUT
from fmop.rollout.types import ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION

PLURAL = ROLLOUT.plural
TIMEOUT = (5.0, 30.0)  # connect, read (seconds)
EVENTS_SHOWN = 12
REQUESTS = {"promote": (PROMOTE_ANNOTATION, "lastPromoteRequest", "moves past a pause step (untilPromoted or a duration)"),
            "abort": (ABORT_ANNOTATION, "lastAbortRequest", "rolls the canary in flight back: all traffic to the stable"),
            "retry": (RETRY_ANNOTATION, "lastRetryRequest", "starts a RolledBack or Failed revision again")}


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


# ---------------------------------------------------------------- talking to the cluster
class Cluster:
    """The API server of the chosen kubeconfig and context, and the namespace to use."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        try:
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            chosen = active if context is None else next((c for c in contexts if c["name"] == context), None)
            if chosen is None:
                names = ", ".join(sorted(c["name"] for c in contexts))
                raise CliError(f"context {context!r} is not in the kubeconfig (it has: {names})")
            self.api = config.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as e:
            where = kubeconfig or "KUBECONFIG / ~/.kube/config"
            raise CliError(f"cannot load a kubeconfig from {where}: {e}; pass --kubeconfig or set KUBECONFIG") from None
        self.namespace: str = namespace or (chosen.get("context") or {}).get("namespace") or "default"
        self.server: str = self.api.configuration.host
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API call; errors become CliErrors that say what failed and what to check."""
        try:
            return fn(*args, _request_timeout=TIMEOUT, **kwargs)
        except ApiException as e:
            if e.status == 404 and PLURAL in what:
                raise CliError(f"{what}: not found (kubectl get fmro -n {self.namespace} lists the Rollouts; "
                               f"is the fm-operator CRD installed?)") from None
            raise CliError(f"{what}: HTTP {e.status} {e.reason}: {_api_message(e)}") from None
        except (Urllib3Error, OSError) as e:
            raise CliError(f"cannot reach the Kubernetes API server at {self.server}: {e}; check --kubeconfig, --context "
                           "and that the cluster is running") from None

    def rollout(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.call(f"Rollout {self.namespace}/{name} ({PLURAL}.{GROUP})", self.custom.get_namespaced_custom_object,
                                        GROUP, VERSION, self.namespace, PLURAL, name)
        return obj

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.call(f"patch Rollout {self.namespace}/{name} ({PLURAL}.{GROUP})",
                                        self.custom.patch_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name, body)
        return obj

    def events(self, rollout: dict[str, Any]) -> list[dict[str, Any]]:
        meta = rollout["metadata"]
        selector = f"involvedObject.kind=Rollout,involvedObject.name={meta['name']}"
        found = self.call(f"Events of Rollout {self.namespace}/{meta['name']}", self.core.list_namespaced_event, self.namespace,
                          field_selector=selector)
        items: list[dict[str, Any]] = self.api.sanitize_for_serialization(found).get("items") or []  # as kubectl -o json shows them
        mine = [e for e in items if (e.get("involvedObject") or {}).get("uid") in (None, meta.get("uid"))]
        return sorted(mine, key=_event_time)[-EVENTS_SHOWN:]


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.body)
    except ValueError:
        return str(e.body)


# ---------------------------------------------------------------- status: the timeline
def render(rollout: dict[str, Any], events: Sequence[dict[str, Any]], now: datetime) -> str:
    """The Rollout's story as text for a terminal: where it is, what it waits for, what happened."""
    meta, spec, status = rollout["metadata"], rollout.get("spec") or {}, rollout.get("status") or {}
    out: list[str] = []
    provider = (spec.get("trafficRouting") or {}).get("provider", "gatewayAPI")
    phase = status.get("phase", "Pending (not reconciled yet)")
    out.append(f"Rollout {meta['namespace']}/{meta['name']}   revision {status.get('revision', 0)}   {phase}"
               + ("   [spec.paused]" if spec.get("paused") else "") + f"   provider {provider}")
    stable, canary = status.get("stable") or {}, status.get("canary") or {}
    out.append(f"  stable   {_rev(stable)}{status.get('stableVersion') or '-':<34} weight {status.get('stableWeight', 100)}%")
    if canary:
        out.append(f"  canary   {_rev(canary)}{status.get('canaryVersion') or '-':<34} weight {status.get('canaryWeight', 0)}%"
                   f"   mirror {status.get('mirrorPercent', 0)}%")
    previous = status.get("previousStable")
    if previous:
        out.append(f"  warm     {_rev(previous)}kept until {previous.get('keepWarmUntil')}")
    if status.get("message") and status["message"] != status.get("rollbackReason"):
        out.append(f"  now      {status['message']}")
    if status.get("heldSince"):
        out.append(f"  held     since {status['heldSince']} ({_ago(status['heldSince'], now)}; spec.progressDeadline "
                   f"{spec.get('progressDeadline', '30m')})")
    if status.get("rollbackReason"):
        out.append(f"  reason   {status['rollbackReason']}")

    out += ["", "Steps"]
    out += _steps(spec.get("strategy") or {}, status, now)

    analysis = status.get("lastAnalysis") or []
    if analysis:
        out += ["", "Last analysis"]
        for r in analysis:
            value = "-" if r.get("value") is None else f"{r['value']:.4g}"
            counts = (f"{r.get('successes', 0)} ok, {r.get('failures', 0)} failed, {r.get('errors', 0)} errors, "
                      f"{r.get('inconclusive', 0)} no data")
            out.append(f"  {r['metric']:<16} {r['phase']:<12} value {value:<10} {counts}   {r.get('measuredAt') or ''}")
            if r.get("message"):
                out.append(f"  {'':<16} {r['message']}")

    experiment = status.get("experiment")
    if experiment:
        out += ["", "Experiment"] + _experiment(experiment)

    conditions = status.get("conditions") or []
    if conditions:
        out += ["", "Conditions"]
        out += [f"  {c['type']:<12} {c['status']:<8} {c.get('reason', ''):<22} {c.get('message', '')}" for c in conditions]

    alerts = status.get("handledAlerts") or []
    if alerts:
        out += ["", "Alerts handled"]
        out += [f"  {a.get('alertname') or '?':<24} fingerprint {a['fingerprint']:<18} firing since {a['startsAt']}" for a in alerts]

    history = status.get("history") or []
    if history:
        out += ["", "History"]
        for h in reversed(history):
            adapters = "+" + "+".join(h["adapters"]) if h.get("adapters") else ""
            out.append(f"  revision {h['revision']:<4} {h['outcome']:<11} {h['foundationModelVersion']}{adapters:<20} "
                       f"{h.get('startedAt') or '?'} -> {h.get('finishedAt') or '?'}")
            if h.get("reason"):
                out.append(f"  {'':<14} {h['reason']}")

    requests = _requests(meta, status)
    if requests:
        out += ["", "Requests"] + requests

    out += ["", "Events" if events else "Events: none"]
    for e in events:
        count = f" (x{e['count']})" if (e.get("count") or 1) > 1 else ""
        out.append(f"  {_ago(_event_time(e), now):>6} ago  {e.get('type', ''):<8} {e.get('reason', ''):<18} {e.get('message', '')}{count}")
    return "\n".join(out) + "\n"


def _steps(strategy: dict[str, Any], status: dict[str, Any], now: datetime) -> list[str]:
    """One line per step: [x] done, [>] current, [!] where it was rolled back or failed, [ ] to come."""
    idx = status.get("currentStepIndex")
    phase = status.get("phase", "Pending")
    steps = strategy.get("steps") or []
    rows: list[tuple[int, str]] = []
    shadow = strategy.get("shadow")
    if shadow:
        analysis = f", analysis {', '.join(shadow['analysis'])}" if shadow.get("analysis") else ""
        rows.append((-1, f"shadow        mirror {shadow['mirrorPercent']}% for {shadow['duration']}{analysis}"))
    for i, step in enumerate(steps):
        rows.append((i, f"{i:<3} {_step(step)}"))
    lines = []
    for i, text in rows:
        if idx is None:
            mark = "[ ]"
        elif i < idx or (phase == "Promoted" and i <= idx):
            mark = "[x]"
        elif i == idx:
            mark = "[!]" if phase in ("RolledBack", "Failed") else "[>]"
        else:
            mark = "[ ]"
        line = f"  {mark} {text}"
        if mark in ("[>]", "[!]") and status.get("currentStepStartedAt"):
            line += f"   (since {status['currentStepStartedAt']}, {_ago(status['currentStepStartedAt'], now)})"
        lines.append(line)
    if idx is None and phase in ("Pending", "Paused"):
        lines.insert(0, "  [>] before the first step: waiting for the new revision's InferenceService to become Ready")
    elif idx is None and phase in ("RolledBack", "Failed"):
        lines.insert(0, f"  [!] {phase} before the first step")
    if phase == "Promoted":
        lines.append("  [x] promoted")
    return lines


def _experiment(e: dict[str, Any]) -> list[str]:
    """The experiment block: where it runs, each arm's rate, the difference and lift with their intervals, the verdict."""
    action = f" -> {e['action']}" if e.get("action") else ""
    lines = [f"  step {e.get('stepIndex')}   revision {e.get('revision')}   {e.get('candidatePercent')}% of users on the canary   "
             f"success '{e.get('success')}'   {e.get('outcome', 'pending')}{action}   looks {e.get('looks', 0)}"
             f"   since {e.get('startedAt') or '-'}   last {e.get('lastLookAt') or '-'}"]
    for side, key in (("stable", "control"), ("canary", "candidate")):
        arm = e.get(key)
        if arm:
            lines.append(f"  {side:<8} {arm.get('exposures', 0):>10} exposures {arm.get('successes', 0):>10} successes   "
                         f"rate {arm.get('rate', 0.0):.4f}")
    cs, lift, li = e.get("confidenceSequence"), e.get("lift"), e.get("liftInterval")
    if e.get("difference") is not None and cs:
        level = e.get("confidenceLevel")
        lines.append(f"  diff     {e['difference']:+.4f}   {level:.0%} interval [{cs['lower']:+.4f}, {cs['upper']:+.4f}]"
                     + (f"   lift {lift:+.1%}" + (f" [{li['lower']:+.1%}, {li['upper']:+.1%}] (approx.)" if li else "") if lift is not None else ""))
    if e.get("likelihoodRatio") is not None:
        srm = e.get("sampleRatio") or {}
        lines.append(f"  test     likelihood ratio {e['likelihoodRatio']:.4g} (decides at {e.get('threshold', 0):.4g})   canary share "
                     f"{srm.get('observedShare', 0):.2%} of exposures (configured {srm.get('expectedShare', 0):.2%}), sample-ratio "
                     f"Bayes factor {srm.get('bayesFactor', 0):.4g} (mismatch at {srm.get('threshold', 0):.4g})")
    if e.get("countsError"):
        lines.append(f"  error    {e['countsError']}")
    if e.get("reason"):
        lines.append(f"  why      {e['reason']}")
    return lines


def _step(step: dict[str, Any]) -> str:
    if step.get("setWeight") is not None:
        return f"setWeight {step['setWeight']}%"
    experiment = step.get("experiment")
    if experiment is not None:
        return (f"experiment {experiment.get('candidatePercent', 50)}% of users, success '{experiment.get('success', 'played')}', "
                f"at most {experiment.get('maxDuration', '1h')}")
    pause = step.get("pause")
    if pause is not None:
        return "pause until promoted (kubectl fmops promote)" if pause.get("untilPromoted") else f"pause {pause.get('duration')}"
    metrics = (step.get("analysis") or {}).get("metrics") or []
    return f"analysis {', '.join(metrics)}"


def _rev(rev: dict[str, Any]) -> str:
    return f"revision {rev['revision']:<4} " if rev.get("revision") is not None else ""


def _requests(meta: dict[str, Any], status: dict[str, Any]) -> list[str]:
    annotations = meta.get("annotations") or {}
    lines = []
    for verb, (annotation, field, _) in REQUESTS.items():
        asked, acted = annotations.get(annotation), status.get(field)
        if asked is None and acted is None:
            continue
        state = "acted on" if asked is not None and asked == acted else "waiting for the operator" if asked is not None else ""
        lines.append(f"  {verb:<8} {annotation}={asked or '-'}   last acted on: {acted or '-'}   {state}".rstrip())
    return lines


def _event_time(e: dict[str, Any]) -> str:
    return str(e.get("lastTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp") or "")


def _ago(stamp: str, now: datetime) -> str:
    try:
        then = datetime.fromisoformat(stamp)
    except ValueError:
        return "?"
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d"


# ---------------------------------------------------------------- commands
def status(cluster: Cluster, name: str, watch: bool, interval: float, out: TextIO) -> int:
    if not watch:
        rollout = cluster.rollout(name)
        out.write(render(rollout, cluster.events(rollout), datetime.now(UTC)))
        return 0
    shown = ""
    tty = out.isatty()
    while True:
        rollout = cluster.rollout(name)
        text = render(rollout, cluster.events(rollout), datetime.now(UTC))
        if _without_ages(text) != _without_ages(shown):  # redraw on a change, not because a clock ticked
            out.write("\033[H\033[2J" if tty else f"--- {datetime.now(UTC).strftime('%H:%M:%S')} ---\n")
            out.write(text)
            out.flush()
            shown = text
        time.sleep(interval)


def _without_ages(text: str) -> list[str]:
    return [line for line in text.splitlines() if " ago  " not in line and "(since " not in line and not line.startswith("  held ")]


def request(cluster: Cluster, name: str, verb: str, out: TextIO) -> int:
    annotation, field, what = REQUESTS[verb]
    rollout = cluster.rollout(name)
    value = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"  # fresh: the operator acts on a new value once
    cluster.patch(name, {"metadata": {"annotations": {annotation: value}}})
    phase = (rollout.get("status") or {}).get("phase", "Pending")
    out.write(f"rollout.{GROUP}/{name} {verb} requested ({annotation}={value}): {what}\n"
              f"  the Rollout was {phase}; the operator acts on it once and records it in status.{field} "
              f"(kubectl fmops status {name} -n {cluster.namespace})\n")
    return 0


def set_paused(cluster: Cluster, name: str, paused: bool, out: TextIO) -> int:
    rollout = cluster.rollout(name)
    verb = "paused" if paused else "resumed"
    if bool((rollout.get("spec") or {}).get("paused")) == paused:
        out.write(f"rollout.{GROUP}/{name} already {verb} (spec.paused is {str(paused).lower()})\n")
        return 0
    cluster.patch(name, {"spec": {"paused": paused}})
    out.write(f"rollout.{GROUP}/{name} {verb} (spec.paused: {str(paused).lower()})\n")
    return 0


# ---------------------------------------------------------------- arguments
def parser() -> argparse.ArgumentParser:
    def connection(p: argparse.ArgumentParser, default: Any) -> None:
        # On the main parser and on every command, so `kubectl fmops status x -n ns` works as in kubectl; the commands'
        # copies default to SUPPRESS so they do not overwrite a value given before the command.
        p.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: KUBECONFIG, then ~/.kube/config)")
        p.add_argument("--context", default=default, help="kubeconfig context (default: the current context)")
        p.add_argument("-n", "--namespace", default=default, help="namespace of the Rollout (default: the context's, else default)")

    p = argparse.ArgumentParser(prog="kubectl fmops", description="Watch and steer fm-operator Rollouts.")
    connection(p, None)
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"status": "a Rollout's timeline: steps, weights, analysis, alerts, rollbacks, history, Events",
             **{verb: f"{what} (sets {annotation})" for verb, (annotation, _, what) in REQUESTS.items()},
             "pause": "hold the Rollout at its current step (spec.paused: true)",
             "resume": "let a paused Rollout continue (spec.paused: false)"}
    for command, text in helps.items():
        sub = commands.add_parser(command, help=text, description=text)
        sub.add_argument("name", metavar="NAME", help="the Rollout")
        connection(sub, argparse.SUPPRESS)
        if command == "status":
            sub.add_argument("-w", "--watch", action="store_true", help="keep showing it, redrawn when it changes (Ctrl-C ends)")
            sub.add_argument("--interval", type=float, default=2.0, help="seconds between reads with --watch (default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    stdout = out or sys.stdout
    try:
        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
        if args.command == "status":
            return status(cluster, args.name, args.watch, args.interval, stdout)
        if args.command in REQUESTS:
            return request(cluster, args.name, args.command, stdout)
        return set_paused(cluster, args.name, args.command == "pause", stdout)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
