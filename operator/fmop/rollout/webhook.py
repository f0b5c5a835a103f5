"""The Alertmanager webhook receiver: a firing alert that matches a Rollout's spec.rollback.alerts rolls it back now.

Alertmanager POSTs its webhook payload (version 4) to `/alertmanager` with a bearer token; the receiver
matches each firing alert against every Rollout's `spec.rollback.alerts.matchers` and hands the matches
to an injected `on_alerts(namespace, name, alerts)`, which restores 100% stable traffic at once (the
handler wiring lives with the controller). Everything between the HTTP request and that callback is
pure and tested case by case: `parse_body`, `parse_payload`, `alert_scope`, `matches`, `match_rollouts`, `Handled`.

Matching rules (the same as Alertmanager's and Prometheus' label matchers):
- `=`, `!=`, `=~`, `!~`; a label the alert lacks has the value "" (so `team=""` matches an alert without
  `team`); regexes are RE2 (Alertmanager's syntax; linear time, so no pattern can stall the receiver) and
  fully anchored, `^(?:value)$`, as Alertmanager anchors them (fmop.api.rollout.label_regex).
- Tenants are namespaces: an alert only matches Rollouts in the namespace its `namespace` label names, so
  one team's alerts cannot roll back another team's Rollouts. An alert without a `namespace` label matches
  nothing (it is counted in fmop_webhook_unscoped_alerts_total, logged, and listed as "unscoped" in the
  answer), unless it carries every label of the operator's --cluster-alert-labels, the label set a cluster
  admin trusts (e.g. one added by a rule that tenants cannot write): such an alert is matched by the
  matchers alone, in every namespace. Prometheus must set the `namespace` label on tenants' alerts
  (Prometheus Operator's enforcedNamespaceLabel), or a team's rule can name another team's namespace.
- Only `status: firing` alerts count; resolved alerts are ignored.
- Parsing and matching run on a small pool of worker threads, never on the event loop (kopf's), so many
  Rollouts or a large payload delay neither the operator's handlers nor /healthz.

Idempotent: an alert acts once per Rollout and (fingerprint, startsAt). Alertmanager resends a firing
alert every repeat_interval with the same startsAt, and retries a failed delivery; a resend with the
same or an older startsAt (arriving out of order) is a duplicate. The record here is in memory and
bounded; the engine keeps its own in status.handledAlerts, so a restarted operator does not act twice
either.

Wiring, in kopf's loop (when Config.webhook_port is not 0)::

    gate = webhook.Gate()
    server = await webhook.start(list_rollouts, on_alerts, cfg.webhook_token_file, host=cfg.bind_address, port=cfg.webhook_port,
                                 ready=gate, cluster_labels=cfg.cluster_alert_labels)
    ...                                        # list every watched Rollout, so list_rollouts knows them all
    gate.open()
    ...
    await server.stop()

Until the gate opens, an authorised, well-formed request is answered 503 (NOT_READY): with only part of
the Rollouts known, "no Rollout matches" could be wrong, and a 200 would be final (Alertmanager never
resends a delivered notification), while a 5xx is retried.
A failing `on_alerts` is answered 500 and its alerts are forgotten here, so Alertmanager's retry acts.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from prometheus_client import Counter

from fmop.api.rollout import label_regex
from fmop.metrics import REGISTRY
from fmop.rollout.clock import ts, utc
from fmop.rollout.types import Alert

log = logging.getLogger(__name__)

PATH = "/alertmanager"
HEALTH_PATH = "/healthz"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: Alertmanager sends one alert group per request (truncated at max_alerts)
MAX_REMEMBERED = 4096  # (Rollout, fingerprint) pairs kept in memory; the oldest are forgotten first
NAMESPACE_LABEL = "namespace"
MAX_FINGERPRINT = 256  # Alertmanager's are 16 hex digits; a longer one is not Alertmanager's, and would be kept in memory (Handled)
MATCH_WORKERS = 2  # threads that parse and match, off the event loop; more requests at once wait their turn
NOT_READY = ("the operator cannot judge alerts yet: it has not listed the Rollouts (it is starting, or has just become the "
             "leader); Alertmanager retries this 503")

ListRollouts = Callable[[], Iterable[Mapping[str, Any]]]
"""The Rollouts to match against, as the API server returns them (a kopf index's bodies will do)."""
OnAlerts = Callable[[str, str, tuple[Alert, ...]], Awaitable[str]]
"""`await on_alerts(namespace, name, alerts)`: act on new matching alerts; returns what it did, for the response."""
ClusterLabels = tuple[tuple[str, str], ...]
"""--cluster-alert-labels: an alert without a namespace label that carries all of these may match Rollouts anywhere."""

UNSCOPED = Counter("fmop_webhook_unscoped_alerts_total",
                   "Firing alerts received without a namespace label (and without every --cluster-alert-labels label): "
                   "they match no Rollout.", registry=REGISTRY)


# ---------------------------------------------------------------- the payload
class PayloadError(ValueError):
    """The request body is not an Alertmanager webhook payload; the message names the field."""


@dataclass(frozen=True)
class ReceivedAlert:
    """One alert of the payload, as Alertmanager sent it."""

    status: Literal["firing", "resolved"]
    labels: tuple[tuple[str, str], ...]  # sorted (name, value) pairs
    annotations: tuple[tuple[str, str], ...]
    starts_at: datetime
    fingerprint: str
    _by_name: dict[str, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", dict(self.labels))

    @property
    def name(self) -> str:
        return self._by_name.get("alertname", "")

    def label(self, name: str) -> str:
        """The label's value; "" when the alert has no such label (Prometheus' rule)."""
        return self._by_name.get(name, "")

    def to_alert(self) -> Alert:
        annotations = dict(self.annotations)
        summary = annotations.get("summary") or annotations.get("description") or ""
        return Alert(self.name, self.fingerprint, self.starts_at, summary=summary, labels=self.labels)


def parse_body(body: bytes) -> tuple[ReceivedAlert, ...]:
    """The alerts of a request body: UTF-8 JSON, then parse_payload. Raises PayloadError, naming what is wrong, for
    every body that is not a payload (never another exception: deep nesting, huge numbers and bad bytes included)."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise PayloadError(f"the body is not UTF-8 JSON: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise PayloadError("the body nests arrays or objects too deeply to be an Alertmanager webhook payload") from None
    except ValueError as e:  # JSONDecodeError, and integers longer than Python's limit on digits
        raise PayloadError(f"the body is not JSON: {_clip(str(e), 200)}") from None
    return parse_payload(doc)


def parse_payload(doc: object) -> tuple[ReceivedAlert, ...]:
    """The alerts of an Alertmanager webhook payload (version 4); PayloadError names the first bad field.

    Required: `version` "4", `alerts` (a list); per alert `status`, `labels`, `startsAt`, `fingerprint`.
    Optional: `annotations`. The group fields (groupKey, commonLabels, ...) are not needed and not checked.
    """
    if not isinstance(doc, dict):
        raise PayloadError(f"the body must be a JSON object (an Alertmanager webhook payload), got {_json_type(doc)}")
    version = doc.get("version")
    if version is None:
        raise PayloadError("field 'version' is missing: expected an Alertmanager webhook payload with version \"4\"")
    if version != "4":
        raise PayloadError(f"field 'version' is {_show(version)}: only Alertmanager webhook payload version \"4\" is understood")
    alerts = doc.get("alerts")
    if alerts is None:
        raise PayloadError("field 'alerts' is missing")
    if not isinstance(alerts, list):
        raise PayloadError(f"field 'alerts' must be a list, got {_json_type(alerts)}")
    return tuple(_parse_alert(a, f"alerts[{i}]") for i, a in enumerate(alerts))


def _parse_alert(doc: object, where: str) -> ReceivedAlert:
    if not isinstance(doc, dict):
        raise PayloadError(f"field '{where}' must be an object, got {_json_type(doc)}")
    given = _required(doc, where, "status")
    if given not in ("firing", "resolved"):
        raise PayloadError(f"field '{where}.status' must be \"firing\" or \"resolved\", got {_show(given)}")
    status: Literal["firing", "resolved"] = "firing" if given == "firing" else "resolved"
    labels = _string_map(doc.get("labels"), f"{where}.labels", required=True)
    annotations = _string_map(doc.get("annotations", {}), f"{where}.annotations", required=False)
    starts = _required(doc, where, "startsAt")
    try:
        starts_at = utc(datetime.fromisoformat(_truncate_nanoseconds(starts)))
    except (ValueError, OverflowError):  # OverflowError: e.g. year 9999 with a negative offset is past year 9999 in UTC
        raise PayloadError(f"field '{where}.startsAt' is not an RFC 3339 timestamp with a time zone (years 1 to 9999 in UTC): "
                           f"{_show(starts)}") from None
    fingerprint = _required(doc, where, "fingerprint")
    if not fingerprint:
        raise PayloadError(f"field '{where}.fingerprint' is empty")
    if len(fingerprint) > MAX_FINGERPRINT:
        raise PayloadError(f"field '{where}.fingerprint' is longer than {MAX_FINGERPRINT} characters (Alertmanager's are 16 hex digits)")
    return ReceivedAlert(status, labels, annotations, starts_at, fingerprint)


def _required(doc: dict[str, Any], where: str, key: str) -> str:
    if key not in doc:
        raise PayloadError(f"field '{where}.{key}' is missing")
    value = doc[key]
    if not isinstance(value, str):
        raise PayloadError(f"field '{where}.{key}' must be a string, got {_json_type(value)}")
    return _text(value)


def _string_map(value: object, where: str, required: bool) -> tuple[tuple[str, str], ...]:
    if value is None and required:
        raise PayloadError(f"field '{where}' is missing")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise PayloadError(f"field '{where}' must be an object of strings, got {_json_type(value)}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise PayloadError(f"field '{where}.{_clip(k, 64)}' must be a string, got {_json_type(v)}")
    return tuple(sorted({_text(k): _text(v) for k, v in value.items()}.items()))


_FRACTION = re.compile(r"(\.\d{6})\d+")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: str) -> str:
    """A JSON string as Go (Alertmanager) reads it: an unpaired UTF-16 surrogate escape (\\ud800) becomes U+FFFD, so
    every string here can be encoded as UTF-8 (for RE2, the logs and the Kubernetes API)."""
    return value if value.isascii() else _SURROGATE.sub("\ufffd", value)


def _show(value: object) -> str:
    """A payload value for an error message: a string quoted and cut short, other types by name (never nested reprs)."""
    if isinstance(value, str):
        return json.dumps(_clip(value, 64))
    if isinstance(value, (dict, list)):
        return _json_type(value)
    return _clip(repr(value), 64)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _truncate_nanoseconds(text: str) -> str:
    """Go writes nanoseconds (…26.739266876+02:00); Python reads at most microseconds."""
    return _FRACTION.sub(r"\1", text, count=1)


def _json_type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


# ---------------------------------------------------------------- matching (pure)
@dataclass(frozen=True)
class Matcher:
    """One of spec.rollback.alerts.matchers."""

    name: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"


def matches(matcher: Matcher, alert: ReceivedAlert) -> bool:
    """Alertmanager's label matcher semantics (RE2, anchored); an invalid regex raises ValueError (see rollout_matchers)."""
    value = alert.label(matcher.name)
    if matcher.op == "=":
        return value == matcher.value
    if matcher.op == "!=":
        return value != matcher.value
    hit = label_regex(matcher.value).fullmatch(value) is not None
    return hit if matcher.op == "=~" else not hit


def rollout_matchers(rollout: Mapping[str, Any]) -> tuple[Matcher, ...]:
    """spec.rollback.alerts.matchers of a Rollout object; () when it has none. ValueError names a bad one."""
    spec = rollout.get("spec")
    rollback = spec.get("rollback") if isinstance(spec, dict) else None
    section = rollback.get("alerts") if isinstance(rollback, dict) else None
    docs = (section.get("matchers") if isinstance(section, dict) else None) or []
    if not isinstance(docs, list):
        raise ValueError(f"spec.rollback.alerts.matchers must be a list, got {_json_type(docs)}")
    found: list[Matcher] = []
    for i, m in enumerate(docs):
        where = f"spec.rollback.alerts.matchers[{i}]"
        name, op, value = (m.get("name"), m.get("op", "="), m.get("value")) if isinstance(m, dict) else (None, None, None)
        if not isinstance(name, str) or not isinstance(value, str) or op not in ("=", "!=", "=~", "!~"):
            raise ValueError(f"{where} needs a name, an op (=, !=, =~, !~) and a value, got {_clip(repr(m), 200)}")
        if op in ("=~", "!~"):
            try:
                label_regex(value)
            except ValueError as e:
                raise ValueError(f"{where} {name}{op}{json.dumps(value)} {e}") from None
        found.append(Matcher(name, op, value))
    return tuple(found)


@dataclass(frozen=True)
class Scope:
    """The Rollouts an alert may match: those of `namespace`; None: of every namespace (a trusted cluster alert)."""

    namespace: str | None


def alert_scope(alert: ReceivedAlert, cluster_labels: ClusterLabels = ()) -> Scope | None:
    """Its namespace label's namespace; every namespace for an alert without one that carries every trusted cluster
    label (--cluster-alert-labels, never empty here); None, no Rollout at all, for any other alert without one."""
    namespace = alert.label(NAMESPACE_LABEL)
    if namespace:
        return Scope(namespace)
    if cluster_labels and all(alert.label(k) == v for k, v in cluster_labels):
        return Scope(None)
    return None


def alert_matches_rollout(alert: ReceivedAlert, namespace: str, matchers: tuple[Matcher, ...],
                          cluster_labels: ClusterLabels = ()) -> bool:
    """Firing, in the Rollout's namespace (alert_scope), and every matcher holds. No matchers: no match."""
    if alert.status != "firing" or not matchers:
        return False
    scope = alert_scope(alert, cluster_labels)
    if scope is None or scope.namespace not in (None, namespace):
        return False
    return all(matches(m, alert) for m in matchers)


@dataclass(frozen=True)
class Match:
    """The alerts of one payload that match one Rollout."""

    namespace: str
    name: str
    alerts: tuple[ReceivedAlert, ...]


@dataclass(frozen=True)
class Matching:
    matches: tuple[Match, ...]
    unmatched: tuple[ReceivedAlert, ...]  # firing alerts no Rollout matched (the unscoped ones included)
    invalid: tuple[tuple[str, str], ...]  # (namespace/name, why its matchers cannot be used), of Rollouts an alert could reach
    unscoped: tuple[ReceivedAlert, ...] = ()  # firing alerts that may match no Rollout: no namespace label (alert_scope)


def match_rollouts(alerts: Iterable[ReceivedAlert], rollouts: Iterable[Mapping[str, Any]],
                   cluster_labels: ClusterLabels = ()) -> Matching:
    """Which firing alerts match which Rollouts, in a stable order (by namespace/name, then startsAt).

    Each alert is only tried on the Rollouts of its scope (alert_scope), so the work grows with the Rollouts of the
    namespaces the alerts name, and a Rollout elsewhere costs a dictionary lookup."""
    firing = [a for a in alerts if a.status == "firing"]
    in_namespace: dict[str, list[tuple[int, ReceivedAlert]]] = {}
    anywhere: list[tuple[int, ReceivedAlert]] = []
    unscoped: list[ReceivedAlert] = []
    for i, a in enumerate(firing):
        scope = alert_scope(a, cluster_labels)
        if scope is None:
            unscoped.append(a)
        elif scope.namespace is None:
            anywhere.append((i, a))
        else:
            in_namespace.setdefault(scope.namespace, []).append((i, a))
    found: list[Match] = []
    invalid: list[tuple[str, str]] = []
    matched: set[int] = set()
    for rollout in sorted(rollouts, key=_key):
        namespace, name = _key(rollout)
        candidates = in_namespace.get(namespace, []) + anywhere
        if not candidates:
            continue
        try:
            matchers = rollout_matchers(rollout)
        except ValueError as e:
            invalid.append((f"{namespace}/{name}", str(e)))
            continue
        hits = [(i, a) for i, a in candidates if matchers and all(matches(m, a) for m in matchers)]
        if hits:
            matched.update(i for i, _ in hits)
            ordered = sorted((a for _, a in hits), key=lambda a: (a.starts_at, a.fingerprint))
            found.append(Match(namespace, name, tuple(ordered)))
    unmatched = tuple(a for i, a in enumerate(firing) if i not in matched)
    return Matching(tuple(found), unmatched, tuple(invalid), tuple(unscoped))


def _key(rollout: Mapping[str, Any]) -> tuple[str, str]:
    meta = rollout.get("metadata")
    if not isinstance(meta, dict):
        return "", ""
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


class Handled:
    """Which (Rollout, fingerprint) already acted, and at which startsAt; bounded, least recently used forgotten first."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._seen: OrderedDict[tuple[str, str, str], datetime] = OrderedDict()
        self._limit = limit

    def is_new(self, namespace: str, name: str, alert: ReceivedAlert) -> bool:
        """New unless this fingerprint already acted on this Rollout at the same or a later startsAt."""
        seen = self._seen.get((namespace, name, alert.fingerprint))
        return seen is None or alert.starts_at > seen

    def remember(self, namespace: str, name: str, alert: ReceivedAlert) -> datetime | None:
        """Record the alert; returns what was recorded before, so `restore` can undo a failed attempt."""
        key = (namespace, name, alert.fingerprint)
        before = self._seen.pop(key, None)
        self._seen[key] = max(alert.starts_at, before) if before else alert.starts_at
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)
        return before

    def restore(self, namespace: str, name: str, alert: ReceivedAlert, before: datetime | None) -> None:
        key = (namespace, name, alert.fingerprint)
        if before is None:
            self._seen.pop(key, None)
        else:
            self._seen[key] = before

    def __len__(self) -> int:
        return len(self._seen)


# ---------------------------------------------------------------- the token
class TokenFile:
    """The bearer token, read from a file (a mounted Secret) and re-read when the file changes (rotation)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None
        self._token = b""

    def read(self) -> bytes:
        """The current token. OSError or ValueError (empty file) when it cannot be used."""
        st = os.stat(self.path)  # follows the ..data symlink the kubelet swaps on a Secret update
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            token = self.path.read_bytes().strip()
            if not token:
                raise ValueError(f"webhook token file {self.path} is empty: put the bearer token Alertmanager sends in it")
            self._token, self._stamp = token, stamp
        return self._token


def _authorised(header: str | None, token: bytes) -> bool:
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


# ---------------------------------------------------------------- the HTTP app
class Gate:
    """Whether the receiver can judge alerts: closed until every watched Rollout has been listed."""

    def __init__(self, is_open: bool = False) -> None:
        self._open = is_open

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        self._open = False

    def __call__(self) -> bool:
        return self._open


def _always() -> bool:
    return True


def make_app(list_rollouts: ListRollouts, on_alerts: OnAlerts, token: TokenFile, *,
             max_body_bytes: int = MAX_BODY_BYTES, handled: Handled | None = None, ready: Callable[[], bool] = _always,
             cluster_labels: Iterable[tuple[str, str]] = ()) -> web.Application:
    """The aiohttp app: POST /alertmanager (bearer token), GET /healthz. `ready()` false: 503 NOT_READY,
    and nothing is matched or remembered (a caller whose Rollouts are all known up front leaves it out).
    `cluster_labels` (--cluster-alert-labels): see alert_scope.

    Every answer is 200, or 400/401/413 (final: Alertmanager does not retry them) or 503/500 (retried) with a JSON
    {"error": ...} saying why; the body is parsed and matched on MATCH_WORKERS threads, not on the event loop."""
    record = handled if handled is not None else Handled()
    trusted: ClusterLabels = tuple(sorted(cluster_labels))
    for k, v in trusted:
        if not k or not v or k == NAMESPACE_LABEL:
            raise ValueError(f"cluster label {k}={v!r}: a trusted cluster label needs a name other than {NAMESPACE_LABEL!r} and "
                             "a non-empty value (an empty one would trust every alert without the label)")
    workers = ThreadPoolExecutor(MATCH_WORKERS, thread_name_prefix="fmop-webhook")

    async def receive(request: web.Request) -> web.Response:
        try:
            secret = token.read()
        except (OSError, ValueError) as e:
            log.error("Alertmanager webhook refused: cannot read the token: %s", e)
            return _error(500, f"the operator cannot read its webhook token: {e}")
        if not _authorised(request.headers.get("Authorization"), secret):
            return _error(401, "missing or wrong bearer token: set http_config.authorization.credentials_file in the Alertmanager "
                               "receiver to the token in the chart's Secret", headers={"WWW-Authenticate": 'Bearer realm="fm-operator"'})
        if request.content_length is not None and request.content_length > max_body_bytes:
            return _too_large(max_body_bytes)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(max_body_bytes)
        except web.RequestPayloadError as e:  # e.g. Content-Encoding: gzip with bytes that are not gzip
            return _error(400, f"the body cannot be read: {_clip(str(e).replace(chr(10), ' '), 200)}")
        loop = asyncio.get_running_loop()
        try:
            alerts = await loop.run_in_executor(workers, parse_body, body)
        except PayloadError as e:
            return _error(400, str(e))
        if not ready():
            log.info("Alertmanager webhook: %d alert(s) answered 503: the Rollouts are not listed yet", len(alerts))
            return _error(503, NOT_READY, headers={"Retry-After": "1"})
        rollouts = list(list_rollouts())  # here, on the loop, where the operator's handlers change what it lists
        matching = await loop.run_in_executor(workers, match_rollouts, alerts, rollouts, trusted)
        summary, status = await _act(alerts, matching, on_alerts, record)
        return web.json_response(summary, status=status)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stop_workers(_: web.Application) -> None:
        workers.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_post(PATH, receive)
    app.router.add_get(HEALTH_PATH, healthz)
    app.on_cleanup.append(stop_workers)
    return app


async def _act(alerts: tuple[ReceivedAlert, ...], matching: Matching, on_alerts: OnAlerts,
               record: Handled) -> tuple[dict[str, Any], int]:
    """Call on_alerts once per Rollout with its new alerts (concurrently); 500 when a call failed, so Alertmanager retries."""
    if matching.unscoped:
        UNSCOPED.inc(len(matching.unscoped))
        names = sorted({_show(a.name) for a in matching.unscoped})  # quoted: an alert name cannot forge a log line
        log.warning("Alertmanager webhook: %d firing alert(s) without a %r label match no Rollout (tenants are namespaces; "
                    "see --cluster-alert-labels for alerts a cluster admin trusts): %s", len(matching.unscoped), NAMESPACE_LABEL,
                    ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else ""))
    calls: list[tuple[Match, tuple[ReceivedAlert, ...], list[datetime | None]]] = []
    duplicates: list[dict[str, str]] = []
    for m in matching.matches:
        fresh: list[ReceivedAlert] = []
        before: list[datetime | None] = []
        for a in m.alerts:  # remembered before the first await: a concurrent resend of the same alert is a duplicate
            if record.is_new(m.namespace, m.name, a):
                fresh.append(a)
                before.append(record.remember(m.namespace, m.name, a))
            else:
                duplicates.append({"rollout": f"{m.namespace}/{m.name}", **_brief(a)})
        if fresh:
            calls.append((m, tuple(fresh), before))
    results = await asyncio.gather(*(on_alerts(m.namespace, m.name, tuple(a.to_alert() for a in new)) for m, new, _ in calls),
                                   return_exceptions=True)
    matched: list[dict[str, Any]] = []
    failed = False
    for (m, new, before), result in zip(calls, results, strict=True):
        entry: dict[str, Any] = {"rollout": f"{m.namespace}/{m.name}", "alerts": [_brief(a) for a in new]}
        if isinstance(result, BaseException):
            failed = True
            for a, b in reversed(list(zip(new, before, strict=True))):  # newest first, back to what was there
                record.restore(m.namespace, m.name, a, b)
            entry["error"] = f"{type(result).__name__}: {result}"
            log.error("Alertmanager webhook: acting on %s for Rollout %s/%s failed: %s", ", ".join(_show(a.name) for a in new),
                      m.namespace, m.name, entry["error"])
        else:
            entry["result"] = result
            log.info("Alertmanager webhook: %s matched Rollout %s/%s: %s", ", ".join(_show(a.name) for a in new), m.namespace, m.name,
                     result)
        matched.append(entry)
    summary = {
        "received": len(alerts),
        "firing": sum(1 for a in alerts if a.status == "firing"),
        "matched": matched,
        "duplicates": duplicates,
        "unmatched": [_brief(a) for a in matching.unmatched],
        "unscoped": [_brief(a) for a in matching.unscoped],
        "invalidMatchers": [{"rollout": r, "error": e} for r, e in matching.invalid],
    }
    return summary, 500 if failed else 200


def _brief(a: ReceivedAlert) -> dict[str, str]:
    return {"alertname": a.name, "fingerprint": a.fingerprint, "startsAt": ts(a.starts_at)}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _too_large(limit: int) -> web.Response:
    return _error(413, f"the body is larger than {limit} bytes; lower max_alerts in the Alertmanager webhook_config")


# ---------------------------------------------------------------- running it in the operator's loop
class WebhookServer:
    """The receiver listening on a port of the running asyncio loop (kopf's)."""

    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @property
    def port(self) -> int:
        """The port it listens on (useful when started on port 0)."""
        address = self._runner.addresses[0]
        return int(address[1])

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start(list_rollouts: ListRollouts, on_alerts: OnAlerts, token_file: Path | str, *, host: str = "0.0.0.0", port: int,
                max_body_bytes: int = MAX_BODY_BYTES, handled: Handled | None = None, ready: Callable[[], bool] = _always,
                ssl_context: ssl.SSLContext | None = None, cluster_labels: Iterable[tuple[str, str]] = ()) -> WebhookServer:
    """Serve the receiver on host:port in the current loop; `await server.stop()` ends it. Until
    `ready()` it answers 503 (see Gate). With `ssl_context` (fmop.tls) it speaks HTTPS only. `cluster_labels`
    (--cluster-alert-labels): an alert without a namespace label that carries them all may match any namespace's Rollouts.

    Refuses to start (ValueError/OSError naming the file) when the token file is missing or empty:
    a receiver that cannot authenticate anyone must not listen.
    """
    token = TokenFile(token_file)
    token.read()
    app = make_app(list_rollouts, on_alerts, token, max_body_bytes=max_body_bytes, handled=handled, ready=ready,
                   cluster_labels=cluster_labels)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    server = WebhookServer(runner)
    log.info("Alertmanager webhook receiver listening on %s:%d%s", host, server.port, PATH)
    return server
