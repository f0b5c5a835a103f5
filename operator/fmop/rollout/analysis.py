"""Analysis I/O: one measurement of each metric a Measure action names, from Prometheus' HTTP API.

    measurements = measure(action, spec, namespace, rollout, default_prometheus, now)
    split = observed_split(address, namespace, rollout, stable_revision, canary_revision, since, now)
    counts = experiment_counts(address, namespace, rollout, stable_revision, canary_revision, success, since, now)

Failures are data, never exceptions (see `Measurement`):
- Successful / Failed: the query returned one finite number and the conditions judged it.
- Inconclusive: no data. An empty vector, NaN or Inf, more than one series, fewer samples than
  minSampleSize, or a query needing a stable revision when there is none. The message names the
  query, so the Rollout's condition says which query returned nothing.
- Error: Prometheus could not answer: unreachable, timed out, an HTTP error, or a PromQL error. The
  message names the address and the cause. Also Error, with no query sent: an address the operator may
  not query (`AllowList`: the platform's --prometheus-allow).
The verdict over many measurements (count, failureLimit, inconclusiveLimit) is `verdicts.record`.

What a Rollout's status can carry of an answer (a tenant reads it): the address, the HTTP status, the
size and what is wrong with its shape, never bytes of the body, and not the Location of a redirect
(redirects are not followed). Of a Prometheus error answer ({"status": "error", "errorType", "error"})
its errorType when it is one of Prometheus' own words, and its error text cut to 300 printable
characters: the PromQL parser's and engine's messages are what a person needs to fix a query, and
they come only from an address on the allow-list, which the platform runs (a query can read there
whatever the error text could show).

Placeholders: {{namespace}} is the Rollout's own namespace, {{canary}} and {{stable}} its
InferenceServices' names, all Kubernetes names (checked again before they go into a query), so a
query the operator templates (the built-in checks, the observed split) selects the Rollout's own
namespace's series and nothing else. A query a person writes is PromQL: it can name any label value
(see README, Security).

Conditions are the CRD's small language, `result <op> number` (CONDITION_PATTERN), evaluated
without eval(). A measurement is Failed when its failureCondition holds or its successCondition does
not; otherwise it is Successful. (No data is Inconclusive before any condition is looked at.)
"""

from __future__ import annotations

import json
import math
import operator
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from fmop.api.rollout import CONDITION_PATTERN, Metric, RolloutSpec
from fmop.rollout import checks, naming
from fmop.rollout.sequential import Arm
from fmop.rollout.types import ExperimentCounts, ExperimentUnknown, Measure, Measurement, MeasurementPhase, SplitSample, SplitUnknown

TIMEOUT_SECONDS = 5.0
MAX_ANSWER_BYTES = 4 << 20  # one number is a few hundred bytes; a bigger answer is refused, never read whole
_ERROR_TYPES = frozenset({"bad_data", "execution", "timeout", "canceled", "internal", "unavailable", "not_found",
                          "not_acceptable"})  # Prometheus' own errorType words (web/api/v1/api.go)
_CONDITION = re.compile(CONDITION_PATTERN)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_PLACEHOLDER = re.compile(r"\{\{\s*(canary|stable|namespace)\s*\}\}")
_LABEL_VALUE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a Kubernetes name: nothing that can end a PromQL string


# ---------------------------------------------------------------- pure parts
def condition_holds(condition: str, result: float) -> bool:
    """'result < 0.01' on 0.004 -> True. Raises ValueError naming the condition when it is not the CRD's language."""
    found = _CONDITION.match(condition.strip())
    if found is None:
        raise ValueError(f"condition {condition!r} is not of the form 'result <op> number' (<, <=, >, >=, ==, !=), e.g. 'result < 0.01'")
    threshold = float(condition.strip()[found.end(1):])
    return _OPS[found.group(1)](result, threshold)


def judge(metric: Metric, value: float) -> tuple[MeasurementPhase, str]:
    """Successful or Failed for one finite value, with a message saying which condition decided."""
    if metric.failureCondition and condition_holds(metric.failureCondition, value):
        return "Failed", f"{value:g} meets failureCondition {metric.failureCondition}"
    if metric.successCondition and not condition_holds(metric.successCondition, value):
        return "Failed", f"{value:g} does not meet successCondition {metric.successCondition}"
    return "Successful", f"{value:g} passes " + " and ".join(
        f"{kind} {cond}" for kind, cond in (("successCondition", metric.successCondition), ("not failureCondition", metric.failureCondition)) if cond)


def substitute(query: str, namespace: str, canary: str, stable: str | None) -> str:
    """Replace {{canary}}, {{stable}} and {{namespace}} (spaces inside the braces allowed).

    Raises LookupError when the query needs {{stable}} and there is none (a first rollout), and ValueError
    when a value is not a Kubernetes name (it could not stay inside the label matcher's quotes).
    """
    values = {"canary": canary, "stable": stable, "namespace": namespace}

    def one(m: re.Match[str]) -> str:
        value = values[m.group(1)]
        if value is None:
            raise LookupError(f"the query uses {{{{{m.group(1)}}}}} but there is no {m.group(1)} revision yet")
        if not _LABEL_VALUE.match(value):  # never happens with Kubernetes names; a guard, so no value can leave its quotes
            raise ValueError(f"{{{{{m.group(1)}}}}} would be {value!r}, which is not a Kubernetes name")
        return value

    return _PLACEHOLDER.sub(one, query)


def psi(canary_shares: list[float], stable_shares: list[float], floor: float = 1e-4) -> float:
    """Population stability index of two distributions over the same buckets, shares floored like the built-in query."""
    if len(canary_shares) != len(stable_shares):
        raise ValueError(f"psi needs the same buckets on both sides, got {len(canary_shares)} and {len(stable_shares)}")
    total = 0.0
    for p, q in zip(canary_shares, stable_shares, strict=True):
        p, q = max(p, floor), max(q, floor)
        total += (p - q) * math.log(p / q)
    return total


# ---------------------------------------------------------------- which Prometheus servers
ALLOW_FLAG = "--prometheus-allow"
ALLOW_CHART_VALUE = "prometheusAllowedUrls"
NAMESPACE_TEMPLATE = "{namespace}"


def base_url(address: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a Prometheus base URL, compared case-insensitively where URLs are
    (scheme, host) and with the default port and without a trailing '/'. ValueError says what is wrong:
    another scheme, user info, a query string, a fragment, no host, a port that is not a number."""
    try:
        url = urllib.parse.urlsplit(address)
        port = url.port
    except ValueError as err:
        raise ValueError(f"{address!r} is not a URL ({err})") from None
    if url.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{address!r} is not an http:// or https:// URL")
    if "@" in url.netloc:
        raise ValueError(f"{address!r} carries user info (user:password@)")
    if url.query or "?" in address:
        raise ValueError(f"{address!r} carries a query string")
    if url.fragment or "#" in address:
        raise ValueError(f"{address!r} carries a fragment")
    if not url.hostname or "\\" in address or any(c.isspace() for c in address):
        raise ValueError(f"{address!r} has no host, or characters a URL does not have")
    scheme = url.scheme.lower()
    return scheme, url.hostname.lower(), port or (443 if scheme == "https" else 80), url.path.rstrip("/")


@dataclass(frozen=True)
class AllowList:
    """The Prometheus servers the operator sends queries to: its default (--prometheus-url) and the
    platform's --prometheus-allow. An entry may hold {namespace}, which stands for the Rollout's own
    namespace (one Prometheus per team: http://prometheus.{namespace}.svc:9090). An address matches an
    entry when scheme, host, port and path are the same (see `base_url`); a path below it does not."""

    default: str
    extra: tuple[str, ...] = ()

    def entries(self, namespace: str) -> list[str]:
        return [e.replace(NAMESPACE_TEMPLATE, namespace) for e in (self.default, *self.extra) if e]

    def refusal(self, address: str, namespace: str) -> str | None:
        """None when the operator may query `address` for a Rollout in `namespace`; else the condition's message."""
        field = "spec.analysis.prometheusAddress"
        if address == self.default:
            return None  # the operator's own --prometheus-url, as configured
        try:
            wanted = base_url(address)
        except ValueError as err:
            return f"{field}: {err}; no query was sent. Name the base URL of a Prometheus server, or leave the field out"
        allowed = self.entries(namespace)
        for entry in allowed:
            try:
                if base_url(entry) == wanted:
                    return None
            except ValueError:
                continue  # the flag's check refuses such entries at start; never a match
        shown = ", ".join(allowed[:5]) + (f" and {len(allowed) - 5} more" if len(allowed) > 5 else "")
        return (f"{field} {address} is not a Prometheus this operator may query (it may query: {shown}); no query was sent. "
                f"Leave the field out to use the operator's default, or ask the platform team to add the address to the chart's "
                f"value {ALLOW_CHART_VALUE} (operator flag {ALLOW_FLAG})")


# ---------------------------------------------------------------- Prometheus
class PrometheusError(Exception):
    """Prometheus could not answer (unreachable, HTTP error, PromQL error): becomes an Error measurement."""


class NoData(Exception):
    """Prometheus answered without one usable number: becomes an Inconclusive measurement."""


@dataclass(frozen=True)
class Prometheus:
    """The few calls analysis needs from Prometheus' HTTP API (GET /api/v1/query)."""

    address: str
    timeout: float = TIMEOUT_SECONDS

    def query(self, promql: str, at: datetime) -> list[tuple[dict[str, str], float]]:
        """Instant query: [(labels, value)], one per series (a scalar result is one series without labels).

        Redirects are not followed (an answer comes from this address or not at all), the answer is read up
        to MAX_ANSWER_BYTES, and Prometheus is asked to give up evaluating after the timeout too."""
        url = f"{self.address.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql, "time": f"{at.timestamp():.3f}", "timeout": f"{self.timeout:g}s"})
        try:
            with _OPENER.open(url, timeout=self.timeout) as resp:
                status, body = resp.status, resp.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as err:  # Prometheus says why in JSON (bad_data, execution, timeout)
            if 300 <= err.code < 400:
                raise PrometheusError(f"Prometheus at {self.address} answered HTTP {err.code}, a redirect, which is not followed: "
                                      "is spec.analysis.prometheusAddress the base URL of a Prometheus server?") from err
            raise PrometheusError(f"Prometheus at {self.address} answered HTTP {err.code}: {_error_text(err.read(MAX_ANSWER_BYTES + 1))}") from err
        except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise PrometheusError(f"Prometheus at {self.address} is unreachable: {reason}") from err
        if len(body) > MAX_ANSWER_BYTES:
            raise PrometheusError(f"Prometheus at {self.address} answered HTTP {status} with more than {MAX_ANSWER_BYTES >> 20} MiB, which "
                                  "is not read: the query must give one number (aggregate it, e.g. sum(...))")
        return self._series(status, body)

    def _series(self, status: int, body: bytes) -> list[tuple[dict[str, str], float]]:
        """The answer's series, or a PrometheusError that names the address, the status and what is wrong
        with the answer, never its content: whatever answers at the address (maybe not Prometheus at all,
        maybe another team's service) must not be readable through a Rollout's status."""
        where = f"Prometheus at {self.address} answered HTTP {status}"
        try:
            doc = json.loads(body)
        except ValueError as err:
            msg = f"{err.msg} at byte {err.pos}" if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
            raise PrometheusError(f"{where} with a body that is not JSON ({msg}, {len(body)} bytes): "
                                  "is spec.analysis.prometheusAddress the base URL of a Prometheus server?") from err
        if not isinstance(doc, dict):
            raise PrometheusError(f"{where} with JSON that is not an object (a {type(doc).__name__}): "
                                  "is spec.analysis.prometheusAddress the base URL of a Prometheus server?")
        if doc.get("status") != "success":
            raise PrometheusError(f"Prometheus at {self.address} rejected the query: {_prometheus_error(doc)}")
        data = doc["data"] if isinstance(doc.get("data"), dict) else {}
        kind = data.get("resultType")
        try:
            if kind == "scalar":
                return [({}, _value(data["result"]))]
            if kind == "vector":
                return [(_metric(s["metric"]), _value(s["value"])) for s in data["result"]]
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise PrometheusError(f"{where} with a {kind} not shaped like a query result "
                                  "(each series needs a metric object and a [time, \"number\"] value)") from err
        if kind in ("matrix", "string"):
            raise PrometheusError(f"Prometheus at {self.address} returned a {kind}, not a vector: "
                                  "write the query so it gives one number (e.g. wrap it in sum(...))")
        raise PrometheusError(f"{where} without data.resultType scalar or vector: "
                              "is spec.analysis.prometheusAddress the base URL of a Prometheus server?")

    def number(self, promql: str, at: datetime) -> float:
        """The one finite number a query returns; NoData when it returns none, several, NaN or Inf."""
        series = self.query(promql, at)
        if not series:
            raise NoData("returned an empty vector")
        if len(series) > 1:
            raise NoData(f"returned {len(series)} series, not one (e.g. {_labels(series[0][0])}): aggregate it, e.g. sum(...)")
        value = series[0][1]
        if not math.isfinite(value):
            raise NoData(f"returned {value}")
        return value


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx stays an HTTPError: the operator asks the address it was given and nothing it is sent to."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _error_text(body: bytes) -> str:
    """Prometheus' own error (errorType: error) from an error answer; of anything else only its size."""
    if len(body) > MAX_ANSWER_BYTES:
        return f"a body of more than {MAX_ANSWER_BYTES >> 20} MiB"
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and ("errorType" in doc or "error" in doc):
        return _prometheus_error(doc)
    return f"a body that is not a Prometheus error ({len(body)} bytes)"


def _prometheus_error(doc: dict[str, object]) -> str:
    """errorType and error of a Prometheus error answer: the type only when it is one of Prometheus' words, the
    text cut to 300 printable characters (see the module's docstring for why it is quoted at all)."""
    kind, text = doc.get("errorType"), doc.get("error")
    kind = kind if isinstance(kind, str) and kind in _ERROR_TYPES else "an errorType that is not Prometheus'"
    if not isinstance(text, str):
        return f"{kind} (no error text)"
    clean = "".join(c if c.isprintable() else " " for c in text[:300])
    return f"{kind}: {clean}" + (f" ... ({len(text)} characters)" if len(text) > 300 else "")


def _value(sample: object) -> float:
    """A sample's value: [time, "number"] as Prometheus writes it."""
    if not isinstance(sample, list) or len(sample) != 2 or not isinstance(sample[1], str | int | float):
        raise ValueError("not a [time, value] pair")
    return float(sample[1])


def _metric(labels: object) -> dict[str, str]:
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise TypeError("labels are not an object of strings")
    return labels


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


# ---------------------------------------------------------------- entry points
def measure(action: Measure, spec: RolloutSpec, namespace: str, rollout: str, default_prometheus: str, now: datetime,
            timeout: float = TIMEOUT_SECONDS, allow: AllowList | None = None) -> tuple[Measurement, ...]:
    """One measurement of each metric the action names, at `now`, in the action's order.

    Metrics resolve through `checks.resolve` (the spec's, else a built-in); a name that is neither
    comes back as an Error measurement (the API server's CEL rule normally prevents it). With `allow`
    (the operator always passes it), an address not on it is an Error measurement of every metric, and no
    query is sent; without, the caller vouches for the address.
    """
    address = spec.analysis.prometheusAddress or default_prometheus
    refused = allow.refusal(address, namespace) if allow is not None else None
    if refused is not None:
        return tuple(Measurement(name, "Error", now, message=refused[:1024], address=address) for name in action.metrics)
    prom = Prometheus(address, timeout)
    canary = naming.isvc_name(rollout, action.canary_revision)
    stable = naming.isvc_name(rollout, action.stable_revision) if action.stable_revision is not None else None
    out = []
    for name in action.metrics:
        metric = checks.resolve(spec, name)
        if metric is None:
            out.append(Measurement(name, "Error", now, message=f"metric {name} is neither built in ({', '.join(checks.BUILTIN)}) "
                                   f"nor defined in spec.analysis.metrics", address=address))
            continue
        out.append(measure_one(prom, metric, namespace, canary, stable, now))
    return tuple(out)


def measure_one(prom: Prometheus, metric: Metric, namespace: str, canary: str, stable: str | None, now: datetime) -> Measurement:
    """The minSampleSize guard first (too few samples is Inconclusive), then the query and its verdict."""
    def result(phase: MeasurementPhase, message: str, query: str = "", value: float | None = None) -> Measurement:
        return Measurement(metric.name, phase, now, value=value, message=message[:1024], query=query, address=prom.address)

    query = metric.query
    try:
        query = substitute(metric.query, namespace, canary, stable)
        if metric.minSampleSize is not None:
            sample_query = substitute(metric.minSampleSize.query, namespace, canary, stable)
            try:
                samples = prom.number(sample_query, now)
            except NoData as err:
                return result("Inconclusive", f"minSampleSize query {err}", sample_query)
            if samples < metric.minSampleSize.minimum:
                return result("Inconclusive", f"{samples:g} samples, fewer than minSampleSize {metric.minSampleSize.minimum}", sample_query)
        value = prom.number(query, now)
    except LookupError as err:
        return result("Inconclusive", str(err), query)
    except ValueError as err:
        return result("Error", str(err), query)
    except NoData as err:
        return result("Inconclusive", f"query {err}", query)
    except PrometheusError as err:
        return result("Error", str(err), query)
    phase, message = judge(metric, value)
    return result(phase, message, query, value)


def split_query(namespace: str, isvc: str, window_seconds: int | None = None) -> str:
    """Inference requests one revision's Triton has counted (all pods, its recommend models: not the outcome
    reports), as one number; with a window, the increase over it instead of the running total."""
    sel = f'{naming.PROM_NAMESPACE_LABEL}="{namespace}",{naming.PROM_ISVC_LABEL}="{isvc}",{checks.NOT_OUTCOMES}'
    series = [f"{counter}{{{sel}}}" for counter in checks.REQUESTS_COUNTER]
    if window_seconds is not None:
        series = [f"increase({s}[{window_seconds}s])" for s in series]
    return " + ".join(f"sum({s})" for s in series)


def observed_split(address: str, namespace: str, rollout: str, stable_revision: int, canary_revision: int,
                   since: datetime, now: datetime, timeout: float = TIMEOUT_SECONDS, allow: AllowList | None = None) -> SplitSample | SplitUnknown:
    """Requests each backend answered between `since` and `now`, from Triton's own counters at the backends.

    Counted where the requests land (not at the proxy), so it proves the split whatever the traffic
    provider. Each side is the counter's value at `now` minus its value at `since` (a revision whose
    pods did not exist yet at `since` counts from 0); a counter that went down (a pod restarted) falls
    back to increase(), which handles resets. An address not on `allow` is SplitUnknown, no query sent.
    """
    refused = allow.refusal(address, namespace) if allow is not None else None
    if refused is not None:
        return SplitUnknown(refused)
    prom = Prometheus(address, timeout)
    counts = []
    for revision in (canary_revision, stable_revision):
        isvc = naming.isvc_name(rollout, revision)
        query = split_query(namespace, isvc)
        try:
            after = _number_or_zero(prom, query, now)
            before = _number_or_zero(prom, query, since)
            if after < before:
                query = split_query(namespace, isvc, max(1, math.ceil((now - since).total_seconds())))
                before, after = 0.0, _number_or_zero(prom, query, now)
        except (PrometheusError, NoData) as err:
            return SplitUnknown(f"cannot read the observed split from {query}: {err}")
        counts.append(round(after - before))
    canary, stable = counts
    return SplitSample(canary_requests=canary, total_requests=canary + stable, since=since)


def experiment_query(namespace: str, isvc: str, success: str | None = None) -> str:
    """An experiment arm's exposures (success None) or `success` outcome reports counted so far, as one number: the
    served model's counters summed over the revision's pods."""
    if not _LABEL_VALUE.match(namespace) or not _LABEL_VALUE.match(isvc):  # Kubernetes names: a guard, no value can leave its quotes
        raise ValueError(f"namespace {namespace!r} or InferenceService {isvc!r} is not a Kubernetes name")
    sel = f'{naming.PROM_NAMESPACE_LABEL}="{namespace}",{naming.PROM_ISVC_LABEL}="{isvc}"'
    if success is None:
        return f"sum({checks.EXPERIMENT_REQUESTS_COUNTER}{{{sel}}})"
    if success not in checks.EXPERIMENT_OUTCOMES:
        raise ValueError(f"outcome {success!r} is not one of {', '.join(checks.EXPERIMENT_OUTCOMES)}")
    return f'sum({checks.EXPERIMENT_OUTCOMES_COUNTER}{{{sel},{checks.EXPERIMENT_OUTCOME_LABEL}="{success}"}})'


def experiment_counts(address: str, namespace: str, rollout: str, stable_revision: int, canary_revision: int, success: str,
                      since: datetime, now: datetime, timeout: float = TIMEOUT_SECONDS,
                      allow: AllowList | None = None) -> ExperimentCounts | ExperimentUnknown:
    """Each arm's exposures and `success` outcomes between `since` and `now`: the served model's counters evaluated at
    `now` minus the same at `since` (0 where they did not exist yet). Exact counts, unlike increase(), which extrapolates
    to the window's edges (by 10-15% over a few scrapes: more exposures than there were would make the sequential test
    too sure of itself). A predictor pod that restarted loses what it had counted (its new series starts again), which
    only ever undercounts. Rounded, never negative, successes clamped to the exposures. Failures come back as
    ExperimentUnknown naming the query and the cause (never the body of an answer); an address not on `allow` is
    refused, no query sent."""
    refused = allow.refusal(address, namespace) if allow is not None else None
    if refused is not None:
        return ExperimentUnknown(refused, now, since)
    prom = Prometheus(address, timeout)
    arms = []
    for revision in (stable_revision, canary_revision):
        isvc = naming.isvc_name(rollout, revision)
        counted: list[int] = []
        query = ""
        try:
            for outcome in (None, success):
                query = experiment_query(namespace, isvc, outcome)
                counted.append(max(0, round(_number_or_zero(prom, query, now) - _number_or_zero(prom, query, since))))
        except (PrometheusError, NoData, ValueError) as err:
            return ExperimentUnknown(f"cannot read the experiment's counts from {query or 'a query'}: {err}"[:1024], now, since)
        exposures, successes = counted
        arms.append(Arm(exposures, min(exposures, successes)))
    control, candidate = arms
    return ExperimentCounts(control, candidate, since, now)


def _number_or_zero(prom: Prometheus, query: str, at: datetime) -> float:
    try:
        return prom.number(query, at)
    except NoData as err:
        if "empty vector" in str(err):
            return 0.0
        raise
