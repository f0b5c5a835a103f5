"""The Alertmanager webhook's pure parts: the payload, label matchers, Rollout matching and the duplicate record;
then the readiness gate, through aiohttp's in-memory test client."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from fmop.rollout.webhook import (
    NOT_READY,
    PATH,
    Gate,
    Handled,
    Matcher,
    PayloadError,
    ReceivedAlert,
    TokenFile,
    alert_matches_rollout,
    match_rollouts,
    make_app,
    matches,
    parse_payload,
    rollout_matchers,
)

STARTS = "2026-01-01T00:07:30.123456789+02:00"  # Go writes nanoseconds and local offsets


def alert(status: str = "firing", fingerprint: str = "fp1", starts: str = STARTS, **labels: str) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": "CanaryErrors", **labels}, "annotations": {"summary": "errors above 1%"},
            "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint}


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    """An Alertmanager webhook payload, version 4, as alertmanager/notify/webhook sends it."""
    return {"version": "4", "groupKey": "{}:{alertname=\"CanaryErrors\"}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "fm-operator", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


def received(fingerprint: str = "fp1", starts: str = STARTS, status: str = "firing", **labels: str) -> ReceivedAlert:
    (a,) = parse_payload(payload(alert(status, fingerprint, starts, **labels)))
    return a


def rollout(namespace: str, name: str, *matchers: dict[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"rollback": {"alerts": {"matchers": list(matchers)}}} if matchers else {}
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec}


# ---------------------------------------------------------------- the payload
def test_payload_is_parsed_into_engine_alerts() -> None:
    a = received(severity="critical")
    assert a.starts_at == datetime(2025, 12, 31, 22, 7, 30, 123456, tzinfo=UTC)  # UTC, nanoseconds cut to microseconds
    engine = a.to_alert()
    assert (engine.name, engine.fingerprint, engine.summary) == ("CanaryErrors", "fp1", "errors above 1%")
    assert engine.labels == (("alertname", "CanaryErrors"), ("severity", "critical"))


def _without(path: str) -> dict[str, Any]:
    doc = payload(alert())
    node: Any = doc
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    del node[leaf]
    return doc


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = payload(alert())
    node: Any = doc
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[leaf] = value
    return doc


@pytest.mark.parametrize(("doc", "says"), [
    pytest.param([], "the body must be a JSON object", id="not-an-object"),
    pytest.param(_without("version"), "field 'version' is missing", id="no-version"),
    pytest.param(_with("version", "3"), "field 'version' is '3'", id="old-version"),
    pytest.param(_without("alerts"), "field 'alerts' is missing", id="no-alerts"),
    pytest.param(_with("alerts", {}), "field 'alerts' must be a list", id="alerts-not-a-list"),
    pytest.param(_without("alerts.0.status"), "field 'alerts[0].status' is missing", id="no-status"),
    pytest.param(_with("alerts.0.status", "pending"), "field 'alerts[0].status' must be \"firing\" or \"resolved\"", id="bad-status"),
    pytest.param(_without("alerts.0.labels"), "field 'alerts[0].labels' is missing", id="no-labels"),
    pytest.param(_with("alerts.0.labels", {"severity": 1}), "field 'alerts[0].labels.severity' must be a string", id="label-not-a-string"),
    pytest.param(_without("alerts.0.startsAt"), "field 'alerts[0].startsAt' is missing", id="no-startsAt"),
    pytest.param(_with("alerts.0.startsAt", "yesterday"), "field 'alerts[0].startsAt' is not an RFC 3339 timestamp", id="bad-startsAt"),
    pytest.param(_with("alerts.0.startsAt", "2026-01-01T00:00:00"), "with a time zone", id="naive-startsAt"),
    pytest.param(_without("alerts.0.fingerprint"), "field 'alerts[0].fingerprint' is missing", id="no-fingerprint"),
    pytest.param(_with("alerts.0.fingerprint", 7), "field 'alerts[0].fingerprint' must be a string, got a number", id="fingerprint-not-a-string"),
])
def test_bad_payloads_name_the_field(doc: Any, says: str) -> None:
    with pytest.raises(PayloadError) as e:
        parse_payload(doc)
    assert says in str(e.value)


def test_annotations_are_optional() -> None:
    doc = _without("alerts.0.annotations")
    (a,) = parse_payload(doc)
    assert a.to_alert().summary == ""


# ---------------------------------------------------------------- label matchers
@pytest.mark.parametrize(("matcher", "labels", "hit"), [
    pytest.param(Matcher("severity", "=", "critical"), {"severity": "critical"}, True, id="equal"),
    pytest.param(Matcher("severity", "=", "critical"), {"severity": "warning"}, False, id="equal-other-value"),
    pytest.param(Matcher("severity", "=", ""), {}, True, id="equal-empty-matches-a-missing-label"),
    pytest.param(Matcher("severity", "!=", "critical"), {"severity": "warning"}, True, id="not-equal"),
    pytest.param(Matcher("severity", "!=", "critical"), {}, True, id="not-equal-missing-label"),
    pytest.param(Matcher("severity", "!=", ""), {}, False, id="not-equal-empty-needs-the-label"),
    pytest.param(Matcher("severity", "=~", "crit.*"), {"severity": "critical"}, True, id="regex"),
    pytest.param(Matcher("severity", "=~", "crit"), {"severity": "critical"}, False, id="regex-is-anchored-at-the-end"),
    pytest.param(Matcher("severity", "=~", "ritical"), {"severity": "critical"}, False, id="regex-is-anchored-at-the-start"),
    pytest.param(Matcher("severity", "=~", "warning|critical"), {"severity": "critical"}, True, id="regex-alternation-is-grouped"),
    pytest.param(Matcher("severity", "=~", "a|crit"), {"severity": "critical"}, False, id="alternation-anchored-as-a-whole"),
    pytest.param(Matcher("severity", "=~", ".*"), {}, True, id="regex-dot-star-matches-a-missing-label"),
    pytest.param(Matcher("severity", "!~", "warn.*"), {"severity": "critical"}, True, id="not-regex"),
    pytest.param(Matcher("severity", "!~", "crit.*"), {"severity": "critical"}, False, id="not-regex-hit"),
])
def test_label_matchers_follow_prometheus(matcher: Matcher, labels: dict[str, str], hit: bool) -> None:
    assert matches(matcher, received(**labels)) is hit


def test_all_matchers_must_hold_and_the_namespace_label_must_agree() -> None:
    ms = (Matcher("severity", "=", "critical"), Matcher("rollout", "=", "recommender"))
    assert alert_matches_rollout(received(severity="critical", rollout="recommender", namespace="team-a"), "team-a", ms)
    assert not alert_matches_rollout(received(severity="critical", rollout="recommender", namespace="team-b"), "team-a", ms)
    assert alert_matches_rollout(received(severity="critical", rollout="recommender"), "team-a", ms)  # no namespace label: any namespace
    assert not alert_matches_rollout(received(severity="critical"), "team-a", ms)
    assert not alert_matches_rollout(received(status="resolved", severity="critical", rollout="recommender"), "team-a", ms)
    assert not alert_matches_rollout(received(severity="critical"), "team-a", ())  # no matchers: never


def test_rollout_matchers_are_read_from_the_object() -> None:
    r = rollout("ns", "r", {"name": "severity", "value": "critical"}, {"name": "job", "op": "=~", "value": "triton.*"})
    assert rollout_matchers(r) == (Matcher("severity", "=", "critical"), Matcher("job", "=~", "triton.*"))
    assert rollout_matchers(rollout("ns", "r")) == ()
    with pytest.raises(ValueError, match=r"spec.rollback.alerts.matchers\[0\].value '\(' is not a valid regular expression"):
        rollout_matchers(rollout("ns", "r", {"name": "job", "op": "=~", "value": "("}))


# ---------------------------------------------------------------- matching a payload against Rollouts
def test_match_rollouts() -> None:
    rollouts = [
        rollout("team-b", "search", {"name": "severity", "value": "critical"}),
        rollout("team-a", "recommender", {"name": "severity", "value": "critical"}, {"name": "app", "value": "recommender"}),
        rollout("team-a", "no-alerts"),
        rollout("team-a", "broken", {"name": "app", "op": "=~", "value": "["}),
    ]
    alerts = parse_payload(payload(
        alert(fingerprint="late", starts="2026-01-01T00:09:00Z", severity="critical", app="recommender", namespace="team-a"),
        alert(fingerprint="early", starts="2026-01-01T00:08:00Z", severity="critical", app="recommender"),
        alert(fingerprint="other-team", severity="critical", namespace="team-c"),
        alert(status="resolved", fingerprint="resolved", severity="critical"),
    ))
    m = match_rollouts(alerts, rollouts)
    assert [(x.namespace, x.name, [a.fingerprint for a in x.alerts]) for x in m.matches] == [
        ("team-a", "recommender", ["early", "late"]),  # oldest first
        ("team-b", "search", ["early"]),  # no namespace label: matched by the matchers alone
    ]
    assert [a.fingerprint for a in m.unmatched] == ["other-team"]
    assert [r for r, _ in m.invalid] == ["team-a/broken"]


def test_rollouts_are_not_modified() -> None:
    rollouts = [rollout("ns", "r", {"name": "severity", "value": "critical"})]
    before = copy.deepcopy(rollouts)
    match_rollouts(parse_payload(payload(alert(severity="critical"))), rollouts)
    assert rollouts == before


# ---------------------------------------------------------------- duplicates
def test_handled_ignores_duplicates_and_older_resends() -> None:
    h = Handled()
    first = received("fp", "2026-01-01T00:08:00Z")
    assert h.is_new("ns", "r", first)
    h.remember("ns", "r", first)
    assert not h.is_new("ns", "r", received("fp", "2026-01-01T00:08:00Z"))  # a duplicate
    assert not h.is_new("ns", "r", received("fp", "2026-01-01T00:07:00Z"))  # an older firing, resent late
    assert h.is_new("ns", "r", received("fp", "2026-01-01T00:09:00Z"))  # fired again later
    assert h.is_new("ns", "other", first)  # per Rollout
    h.remember("ns", "r", received("fp", "2026-01-01T00:07:00Z"))  # remembering an older one does not go back in time
    assert not h.is_new("ns", "r", first)


def test_handled_restore_undoes_a_failed_attempt() -> None:
    h = Handled()
    old, new = received("fp", "2026-01-01T00:08:00Z"), received("fp", "2026-01-01T00:09:00Z")
    h.remember("ns", "r", old)
    before = h.remember("ns", "r", new)
    h.restore("ns", "r", new, before)
    assert h.is_new("ns", "r", new) and not h.is_new("ns", "r", old)
    h.restore("ns", "r", old, None)
    assert h.is_new("ns", "r", old) and len(h) == 0


def test_handled_is_bounded() -> None:
    h = Handled(limit=3)
    for i in range(5):
        h.remember("ns", "r", received(f"fp{i}"))
    assert len(h) == 3
    assert h.is_new("ns", "r", received("fp0")) and not h.is_new("ns", "r", received("fp4"))


# ---------------------------------------------------------------- the readiness gate (the app, in memory)
def _ask(gate: Gate | None, *bodies: dict[str, Any] | bytes, token: str = "t0ken") -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """POST each body to make_app(ready=gate) through aiohttp's in-memory test client; returns the answers
    and the Rollouts on_alerts was called for."""
    import asyncio
    import json
    import tempfile
    from pathlib import Path

    from aiohttp.test_utils import TestClient, TestServer

    from fmop.rollout.types import Alert

    calls: list[str] = []

    async def on_alerts(namespace: str, name: str, alerts: tuple[Alert, ...]) -> str:
        calls.append(f"{namespace}/{name}")
        return "rolled back"

    async def run(token_file: Path) -> list[tuple[int, dict[str, Any]]]:
        rollouts = [rollout("team-a", "reco", {"name": "severity", "value": "critical"})]
        app = (make_app(lambda: rollouts, on_alerts, TokenFile(token_file)) if gate is None
               else make_app(lambda: rollouts, on_alerts, TokenFile(token_file), ready=gate))
        answers = []
        async with TestClient(TestServer(app)) as http:
            for body in bodies:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                r = await http.post(PATH, data=data, headers={"Authorization": f"Bearer {token}"})
                answers.append((r.status, await r.json()))
        return answers

    with tempfile.TemporaryDirectory() as tmp:
        token_file = Path(tmp) / "token"
        token_file.write_text("t0ken")
        return asyncio.run(run(token_file)), calls


FIRING_FOR_RECO = payload(alert(fingerprint="fp-gate", starts="2026-01-01T00:08:00Z", severity="critical", namespace="team-a"))


def test_a_closed_gate_answers_503_and_remembers_nothing() -> None:
    gate = Gate()
    answers, calls = _ask(gate, FIRING_FOR_RECO, FIRING_FOR_RECO)
    assert [s for s, _ in answers] == [503, 503] and calls == []
    assert answers[0][1] == {"error": NOT_READY} and "Alertmanager retries" in NOT_READY
    gate.open()  # listed: the same alert is acted on now, not taken for a duplicate of the refused ones
    answers, calls = _ask(gate, FIRING_FOR_RECO)
    assert answers[0][0] == 200 and [m["rollout"] for m in answers[0][1]["matched"]] == ["team-a/reco"] and calls == ["team-a/reco"]


@pytest.mark.parametrize(("body", "token", "status"), [
    pytest.param(FIRING_FOR_RECO, "wrong", 401, id="a-wrong-token-is-still-401"),
    pytest.param(b"{not json", "t0ken", 400, id="a-malformed-body-is-still-400-retrying-cannot-help"),
])
def test_a_closed_gate_keeps_the_final_answers(body: dict[str, Any] | bytes, token: str, status: int) -> None:
    answers, calls = _ask(Gate(), body, token=token)
    assert answers[0][0] == status and calls == []


def test_without_a_gate_the_app_judges_at_once() -> None:
    """A caller that knows its Rollouts up front (the tests' receiver) leaves the gate out."""
    answers, calls = _ask(None, FIRING_FOR_RECO)
    assert answers[0][0] == 200 and calls == ["team-a/reco"]
    gate = Gate(is_open=True)
    gate.close()  # the operator closes it when the webhook stops
    assert not gate()
