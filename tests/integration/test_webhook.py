"""The Alertmanager webhook receiver as a real HTTP server on a free port, hit with real requests.

The server runs in its own asyncio loop on a thread (as it runs in kopf's loop in the operator); the
requests come from urllib / http.client, as Alertmanager's would over the network. The last test runs
the whole operator against the real API server, to see what a starting operator answers.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fmop.rollout.types import Alert
from fmop.rollout.webhook import WebhookServer, start
from tests.unit.test_webhook import alert, payload, rollout

TOKEN = "s3cret-token"
ROLLOUTS = [
    rollout("team-a", "recommender", {"name": "severity", "value": "critical"}, {"name": "app", "value": "recommender"}),
    rollout("team-b", "search", {"name": "app", "value": "search"}),
]


class Receiver:
    """The webhook served on 127.0.0.1 by a loop on a thread; on_alerts records its calls."""

    def __init__(self, token_file: Path, max_body_bytes: int = 64 * 1024) -> None:
        self.calls: list[tuple[str, str, tuple[Alert, ...]]] = []
        self.failures = 0  # the next N calls of on_alerts raise
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: WebhookServer = self._run(start(lambda: ROLLOUTS, self.on_alerts, token_file, host="127.0.0.1", port=0,
                                                     max_body_bytes=max_body_bytes))
        self.url = f"http://127.0.0.1:{self.server.port}"

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def on_alerts(self, namespace: str, name: str, alerts: tuple[Alert, ...]) -> str:
        self.calls.append((namespace, name, alerts))
        await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("the traffic object could not be patched")
        return f"rolled back {namespace}/{name}"

    def close(self) -> None:
        self._run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()

    def post(self, body: bytes | dict[str, Any], token: str | None = TOKEN, scheme: str = "Bearer") -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"{scheme} {token}"
        request = urllib.request.Request(f"{self.url}/alertmanager", data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")  # a trailing newline, as `kubectl create secret --from-file` keeps it
    return path


@pytest.fixture
def receiver(token_file: Path) -> Iterator[Receiver]:
    r = Receiver(token_file)
    yield r
    r.close()


FIRING = payload(alert(fingerprint="fp1", starts="2026-01-01T00:08:00Z", severity="critical", app="recommender", namespace="team-a"))


def test_healthz_needs_no_token(receiver: Receiver) -> None:
    with urllib.request.urlopen(f"{receiver.url}/healthz", timeout=10) as r:
        assert r.status == 200 and r.read() == b"ok"


@pytest.mark.parametrize(("token", "scheme"), [
    pytest.param(None, "Bearer", id="no-token"),
    pytest.param("wrong", "Bearer", id="wrong-token"),
    pytest.param(TOKEN + "x", "Bearer", id="token-with-a-suffix"),
    pytest.param(TOKEN, "Basic", id="wrong-scheme"),
])
def test_unauthorised_requests_get_401_and_change_nothing(receiver: Receiver, token: str | None, scheme: str) -> None:
    status, body = receiver.post(FIRING, token=token, scheme=scheme)
    assert status == 401 and "bearer token" in body["error"]
    assert receiver.calls == []
    assert receiver.post(FIRING)[0] == 200 and len(receiver.calls) == 1  # the alert was not marked handled by the refused request


@pytest.mark.parametrize(("body", "says"), [
    pytest.param(b"{not json", "the body is not JSON", id="malformed-json"),
    pytest.param(b"\xff\xfe", "the body is not", id="not-utf8"),
    pytest.param(json.dumps({"version": "4"}).encode(), "field 'alerts' is missing", id="no-alerts"),
    pytest.param(json.dumps(payload({"status": "firing", "labels": {}, "startsAt": "2026-01-01T00:00:00Z"})).encode(),
                 "field 'alerts[0].fingerprint' is missing", id="alert-without-fingerprint"),
])
def test_malformed_payloads_get_400_naming_the_field(receiver: Receiver, body: bytes, says: str) -> None:
    status, answer = receiver.post(body)
    assert status == 400 and says in answer["error"]
    assert receiver.calls == []


def test_bodies_above_the_limit_get_413(receiver: Receiver) -> None:
    big = payload(*[alert(fingerprint=f"fp{i}", app="recommender", severity="critical", padding="x" * 512) for i in range(200)])
    status, answer = receiver.post(big)
    assert status == 413 and "larger than 65536 bytes" in answer["error"]
    # The same without Content-Length (chunked), so the limit is enforced while reading, not only from the header.
    conn = http.client.HTTPConnection("127.0.0.1", receiver.server.port, timeout=30)
    conn.putrequest("POST", "/alertmanager")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    data = json.dumps(big).encode()
    for i in range(0, len(data), 8192):
        chunk = data[i:i + 8192]
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 413
    conn.close()
    assert receiver.calls == []


def test_a_firing_alert_reaches_its_rollout_once(receiver: Receiver) -> None:
    status, answer = receiver.post(FIRING)
    assert status == 200
    assert answer["matched"] == [{"rollout": "team-a/recommender", "result": "rolled back team-a/recommender",
                                  "alerts": [{"alertname": "CanaryErrors", "fingerprint": "fp1", "startsAt": "2026-01-01T00:08:00Z"}]}]
    ((namespace, name, alerts),) = receiver.calls
    assert (namespace, name) == ("team-a", "recommender")
    assert [(a.name, a.fingerprint, a.summary) for a in alerts] == [("CanaryErrors", "fp1", "errors above 1%")]
    assert ("severity", "critical") in alerts[0].labels

    duplicate = receiver.post(FIRING)  # Alertmanager's repeat_interval resend
    older = receiver.post(payload(alert(fingerprint="fp1", starts="2026-01-01T00:07:00Z", severity="critical", app="recommender",
                                        namespace="team-a")))
    for status, answer in (duplicate, older):
        assert status == 200 and answer["matched"] == [] and answer["duplicates"][0]["fingerprint"] == "fp1"
    assert len(receiver.calls) == 1

    again = receiver.post(payload(alert(fingerprint="fp1", starts="2026-01-01T00:20:00Z", severity="critical", app="recommender",
                                        namespace="team-a")))
    assert again[0] == 200 and len(again[1]["matched"]) == 1 and len(receiver.calls) == 2  # it fired again, later


def test_concurrent_resends_call_back_once(receiver: Receiver) -> None:
    receiver.delay = 0.5  # the first call is still patching traffic when the resends arrive
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: receiver.post(FIRING), range(4)))
    assert [s for s, _ in results] == [200] * 4
    assert len(receiver.calls) == 1
    assert sum(len(a["matched"]) for _, a in results) == 1 and sum(len(a["duplicates"]) for _, a in results) == 3


def test_non_matching_and_resolved_alerts_are_ignored(receiver: Receiver) -> None:
    status, answer = receiver.post(payload(
        alert(fingerprint="warn", severity="warning", app="recommender", namespace="team-a"),  # a matcher does not hold
        alert(fingerprint="other-ns", severity="critical", app="recommender", namespace="team-b"),  # another namespace
        alert(fingerprint="no-ns", severity="critical", app="recommender"),  # no namespace: no Rollout at all
        alert(status="resolved", fingerprint="resolved", severity="critical", app="recommender", namespace="team-a"),
    ))
    assert status == 200 and receiver.calls == []
    assert answer["received"] == 4 and answer["firing"] == 3 and answer["matched"] == []
    assert sorted(a["fingerprint"] for a in answer["unmatched"]) == ["no-ns", "other-ns", "warn"]
    assert [a["fingerprint"] for a in answer["unscoped"]] == ["no-ns"]


def test_a_failed_callback_is_500_and_the_resend_acts(receiver: Receiver) -> None:
    receiver.failures = 1
    status, answer = receiver.post(FIRING)
    assert status == 500 and "could not be patched" in answer["matched"][0]["error"]
    status, answer = receiver.post(FIRING)  # Alertmanager retries a failed notification
    assert status == 200 and answer["matched"][0]["result"] == "rolled back team-a/recommender"
    assert len(receiver.calls) == 2


def test_the_token_file_is_reread_when_the_secret_changes(receiver: Receiver, token_file: Path) -> None:
    token_file.write_text("rotated-token-that-is-longer")
    assert receiver.post(FIRING)[0] == 401
    assert receiver.post(FIRING, token="rotated-token-that-is-longer")[0] == 200


def test_an_empty_token_file_refuses_to_start(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")

    async def nothing(namespace: str, name: str, alerts: tuple[Alert, ...]) -> str:
        return ""

    with pytest.raises(ValueError, match="webhook token file .* is empty"):
        asyncio.run(start(lambda: [], nothing, empty, host="127.0.0.1", port=0))
    with pytest.raises(FileNotFoundError):
        asyncio.run(start(lambda: [], nothing, tmp_path / "missing", host="127.0.0.1", port=0))


# ---------------------------------------------------------------- the operator's receiver, while it starts
ROLLOUTS_AT_START = 200


def test_a_starting_operator_answers_503_until_it_has_listed_the_rollouts(control_plane: Any, tmp_path: Path, token_file: Path) -> None:
    """Rollouts that exist when the operator starts (a restart, a new leader): an alert for one of them,
    posted from the moment the webhook's port opens, is answered 503 (Alertmanager retries) until the
    operator can judge it, then acted on; never a 200 "unmatched", which Alertmanager would never resend."""
    from kubernetes import client, config

    from fmdev.local.common import free_port
    from tests.conftest import load_example
    from tests.integration.helpers import GROUP, VERSION, OperatorProcess

    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    names = [f"r-{i:03d}" for i in range(ROLLOUTS_AT_START - 1)] + ["zz-target"]  # listed last
    template = load_example("rollout.yaml")
    with ThreadPoolExecutor(8) as pool:
        def create(name: str) -> None:
            body = {**template, "metadata": {"name": name, "namespace": ns},
                    "spec": {**template["spec"], "rollback": {"alerts": {"matchers": [{"name": "severity", "value": "critical"},
                                                                                       {"name": "rollout", "value": name}]}}}}
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, "rollouts", body)
        list(pool.map(create, names))
    port = free_port()
    op = OperatorProcess(control_plane.kubeconfig_path, tmp_path / "operator.log", resync=30.0,
                         extra=[f"--namespaces={ns}", f"--webhook-port={port}", f"--webhook-token-file={token_file}"])
    body = json.dumps(payload(alert(fingerprint="fp-start", starts="2026-01-01T00:08:00Z", severity="critical", rollout="zz-target",
                                    namespace=ns))).encode()
    answers: list[tuple[int, dict[str, Any]]] = []
    try:
        op.start(wait=False)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert op.proc is not None and op.proc.poll() is None, op.log()[-3000:]
            request = urllib.request.Request(f"http://127.0.0.1:{port}/alertmanager", data=body, method="POST",
                                             headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as r:
                    answers.append((r.status, json.loads(r.read())))
            except urllib.error.HTTPError as e:
                answers.append((e.code, json.loads(e.read())))
            except OSError:
                time.sleep(0.01)  # the port is not open yet
                continue
            if answers[-1][0] == 200:
                break
    finally:
        op.stop()
        core.delete_namespace(ns)
    statuses = Counter(s for s, _ in answers)
    print(f"\nanswers from the moment the port opened: {dict(statuses)}")
    assert answers and answers[-1][0] == 200, statuses
    for status, answer in answers[:-1]:
        assert status == 503 and "has not listed the Rollouts" in answer["error"], (status, answer)
    final = answers[-1][1]
    assert final["unmatched"] == [] and [m["rollout"] for m in final["matched"]] == [f"{ns}/zz-target"], final


# ---------------------------------------------------------------- tenant isolation, with the operator and the API server
def test_an_alert_acts_only_in_its_own_namespace(control_plane: Any, tmp_path: Path, token_file: Path) -> None:
    """Issue 26, finding 1: one firing alert without a namespace label rolled back the Rollouts of three namespaces.
    Three teams, each with a Rollout whose canary holds 50% (KServe's part played here: every InferenceService is
    marked Ready), all with the same matchers. The real operator process (FMOP_CLUSTER_ALERT_LABELS from the
    environment, as the chart sets it) must act on an alert in its namespace only: an unlabelled alert touches no
    Rollout, one labelled with team A's namespace touches team A's alone, and only an alert carrying the labels the
    cluster admin trusts may act in every namespace."""
    from kubernetes import client, config

    from fmdev.local.common import free_port
    from tests.conftest import load_example
    from tests.integration.helpers import GROUP, VERSION, OperatorProcess, wait_for

    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    run = uuid.uuid4().hex[:6]
    teams = [f"team-{t}-{run}" for t in "abc"]
    fm_spec = load_example("foundationmodel.yaml")["spec"]

    def spec(version: str) -> dict[str, Any]:
        return {"model": {"foundationModel": {"name": "movielens", "version": version}},
                "trafficRouting": {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
                "strategy": {"steps": [{"setWeight": 50}, {"pause": {"untilPromoted": True}}, {"setWeight": 100}]},
                "rollback": {"alerts": {"matchers": [{"name": "alertname", "value": "FmRolloutErrorRate"},
                                                     {"name": "severity", "value": "critical"}]}},
                "progressDeadline": "1h"}

    def apply(ns: str, version: str) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollout", "metadata": {"name": "reco", "namespace": ns}, "spec": spec(version)}
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "rollouts", "reco", body, field_manager="test", force=True,
                                              _content_type="application/apply-patch+yaml")

    def status(ns: str) -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, ns, "rollouts", "reco").get("status") or {})

    stop = threading.Event()

    def mark_ready() -> None:  # KServe's part: every InferenceService becomes Ready once it exists
        while not stop.is_set():
            for ns in teams:
                try:
                    found: Any = custom.list_namespaced_custom_object("serving.kserve.io", "v1beta1", ns, "inferenceservices")
                    for obj in found["items"]:
                        if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in (obj.get("status") or {}).get("conditions") or []):
                            custom.patch_namespaced_custom_object_status(
                                "serving.kserve.io", "v1beta1", ns, "inferenceservices", obj["metadata"]["name"],
                                {"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
                except client.ApiException:
                    pass
            stop.wait(0.2)

    port = free_port()
    op = OperatorProcess(control_plane.kubeconfig_path, tmp_path / "operator.log", resync=2.0,
                         extra=[f"--namespaces={','.join(teams)}", f"--webhook-port={port}", f"--webhook-token-file={token_file}",
                                "--rollout-tick-seconds=0.5"],
                         env={"FMOP_CLUSTER_ALERT_LABELS": "fmops_scope=cluster"})
    marker = threading.Thread(target=mark_ready, daemon=True)

    def post(fingerprint: str, **labels: str) -> dict[str, Any]:
        # startsAt with its fraction of a second: an alert firing since before the revision started is not about it
        body = payload(alert(fingerprint=fingerprint, starts=datetime.now(UTC).isoformat(),
                             alertname="FmRolloutErrorRate", severity="critical", **labels))
        request = urllib.request.Request(f"http://127.0.0.1:{port}/alertmanager", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 200
            answer: dict[str, Any] = json.loads(r.read())
            return answer

    def phases() -> dict[str, str]:
        return {ns: str(status(ns).get("phase")) for ns in teams}

    try:
        for ns in teams:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, "foundationmodels", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel", "metadata": {"name": "movielens"}, "spec": fm_spec})
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, "foundationmodels", "movielens", {"status": {
                "phase": "Ready", "latestVersion": "v2",
                "versions": [{"version": v, "artifactUri": f"pvc://fmop-models/{ns}/movielens/{v}"} for v in ("v1", "v2")]}})
            apply(ns, "v1")
        marker.start()
        op.start()
        wait_for(lambda: all(status(ns).get("phase") == "Promoted" for ns in teams), 120, "revision 1 promoted in every namespace")
        for ns in teams:
            apply(ns, "v2")
        wait_for(lambda: all((s := status(ns)).get("revision") == 2 and s.get("phase") == "Paused" and s.get("canaryWeight") == 50
                             for ns in teams), 120, "every canary paused at 50%")

        unlabelled = post("fp-unlabelled")  # e.g. a rule that aggregates the namespace away, or sets none
        assert unlabelled["matched"] == [] and [a["fingerprint"] for a in unlabelled["unscoped"]] == ["fp-unlabelled"], unlabelled
        team_a = post("fp-team-a", namespace=teams[0])  # team A's alert, the same matchers hold in every namespace
        assert [m["rollout"] for m in team_a["matched"]] == [f"{teams[0]}/reco"], team_a
        wait_for(lambda: phases()[teams[0]] == "RolledBack", 30, f"team A's Rollout rolled back (the answer: {team_a})")
        time.sleep(2)  # a few ticks: nothing else may move
        assert phases() == {teams[0]: "RolledBack", teams[1]: "Paused", teams[2]: "Paused"}
        for ns in teams[1:]:
            s = status(ns)
            assert s.get("canaryWeight") == 50 and not s.get("handledAlerts"), s
        assert "fmop_webhook_unscoped_alerts_total 1.0" in op.metrics()
        assert "1 firing alert(s) without a 'namespace' label match no Rollout" in op.log()

        cluster = post("fp-cluster", fmops_scope="cluster")  # an alert the cluster admin's rules label as trusted
        assert sorted(m["rollout"] for m in cluster["matched"]) == [f"{ns}/reco" for ns in teams], cluster
        wait_for(lambda: set(phases().values()) == {"RolledBack"}, 30, "every Rollout rolled back by the trusted cluster alert")
    finally:
        stop.set()
        op.stop()
        for ns in teams:
            try:
                core.delete_namespace(ns)
            except client.ApiException:
                pass


@pytest.mark.parametrize(("pattern", "accepted"), [
    pytest.param("FmRollout.*", True, id="regex"),
    pytest.param("(x+x+)+y", True, id="pathological-for-backtracking-linear-in-re2"),
    pytest.param("(", False, id="unbalanced"),
    pytest.param("(?!stable).*", False, id="lookahead"),
    pytest.param(r"(a)\1", False, id="backreference"),
])
def test_the_api_server_refuses_a_matcher_regex_that_is_not_re2(control_plane: Any, pattern: str, accepted: bool) -> None:
    """Admission: the CRD's CEL rule compiles the pattern with RE2 (CEL's matches(), Go's regexp, as Alertmanager's);
    an invalid one is refused at kubectl apply, the message naming the matcher and why, e.g.
    `spec.rollback.alerts.matchers[1]: Invalid value: "object": error parsing regexp: invalid escape sequence: `\\1`
    evaluating rule: a matcher with op =~ or !~ needs an RE2 regular expression in value (...)`."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from tests.conftest import load_example
    from tests.integration.helpers import GROUP, VERSION

    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))
    obj = load_example("rollout.yaml")
    obj["metadata"] = {"name": f"re-{uuid.uuid4().hex[:8]}"}
    obj["spec"]["rollback"]["alerts"]["matchers"] = [{"name": "severity", "value": "critical"},
                                                     {"name": "alertname", "op": "=~", "value": pattern}]
    custom = client.CustomObjectsApi(api)
    if accepted:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", "rollouts", obj)
        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", "rollouts", obj["metadata"]["name"])
        return
    with pytest.raises(ApiException) as e:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", "rollouts", obj)
    message = json.loads(e.value.body)["message"]
    print(f"\n{message}")
    # An evaluation error is reported at the matcher (the rule's fieldPath is for a false result), with Go's reason.
    assert e.value.status == 422 and "spec.rollback.alerts.matchers[1]: Invalid value" in message, message
    assert "error parsing regexp" in message and "needs an RE2 regular expression" in message, message
