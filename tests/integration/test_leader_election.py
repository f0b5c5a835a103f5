"""Two replicas of the operator, one Lease, on the real API server (no node): exactly one acts; a
SIGKILLed leader is replaced within 15 s; alerts sent to the new leader during the hand-over are
answered 503 (or not at all) until they are acted on, never 200 "unmatched"; a graceful stop hands
over at once; a leader cut off from the API server stops acting before anyone may take over.

Each replica is a real `python -m fmop` process with POD_NAME/POD_NAMESPACE as the chart's downward
API sets them, and a Pod object of that name (Pending forever: there is no node) on which the leader
puts the label the chart's Service selects on."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from fmdev.local.common import free_port
from tests.conftest import load_example
from tests.integration.helpers import GROUP, VERSION, OperatorProcess, wait_condition, wait_for

LEASE = "fm-operator"
LEADER_LABEL = "fmops.dev/leader"  # what the chart's Service selects on (fmop.leader.LEADER_LABEL)
TOKEN = "leader-election-test-token"
HANDOVER_LIMIT_S = 15.0


@pytest.fixture(scope="module")
def plane_api(control_plane: Any) -> Any:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))


@pytest.fixture
def ns(plane_api: Any) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(plane_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return path


@dataclass
class Replica:
    """One operator replica: its process, its Pod's name and its webhook port."""

    name: str
    op: OperatorProcess
    webhook_port: int
    identities: list[str] = field(default_factory=list)

    def leaderz(self) -> int:
        return self.op.probe("/leaderz")[0]

    def readyz(self) -> int:
        return self.op.probe("/readyz")[0]

    def identity(self) -> str:
        return str(self.op.probe("/readyz")[1].get("identity", ""))

    def post(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, JSON); (0, {}) when nothing listens (Alertmanager retries that too)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.webhook_port}/alertmanager", data=json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        except OSError:
            return 0, {}


def replica(name: str, kubeconfig: Path, ns: str, tmp_path: Path, token_file: Path) -> Replica:
    port = free_port()
    op = OperatorProcess(kubeconfig, tmp_path / f"{name}.log", resync=2.0, leader_election=True,
                         env={"POD_NAME": name, "POD_NAMESPACE": ns},
                         extra=["--log-format=full", f"--namespaces={ns}", f"--lease-namespace={ns}", f"--lease-name={LEASE}", f"--webhook-port={port}",
                                f"--webhook-token-file={token_file}"])
    return Replica(name, op, port)


def create_pod(api: Any, ns: str, name: str) -> None:
    """The Pod a replica would run in (no node: it stays Pending), for the leader label."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "operator", "image": "fm-operator:test"}]}}

    def created() -> bool:
        try:
            client.CoreV1Api(api).create_namespaced_pod(ns, pod)
        except client.ApiException as e:
            if e.status == 403 and "serviceaccount" in str(e.body):  # the namespace's default ServiceAccount is not there yet
                return False
            raise
        return True
    wait_for(created, 30, f"Pod {ns}/{name} created")


def pod_labels(api: Any, ns: str, name: str) -> dict[str, str]:
    return dict(client.CoreV1Api(api).read_namespaced_pod(name, ns).metadata.labels or {})


def lease_holder(api: Any, ns: str) -> str:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, ns)
    except client.ApiException as e:
        if e.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "")


def apply(api: Any, ns: str, obj: dict[str, Any]) -> None:
    plural = {"FoundationModel": "foundationmodels", "Rollout": "rollouts"}[obj["kind"]]
    obj = {**obj, "metadata": {**obj["metadata"], "namespace": ns}}
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, plural, obj)


def events_by_reason(api: Any, ns: str, name: str) -> Counter[str]:
    items = client.CoreV1Api(api).list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return Counter(e.reason for e in items for _ in range(e.count or 1))


def fm(name: str) -> dict[str, Any]:
    obj = load_example("foundationmodel.yaml")
    obj["metadata"]["name"] = name
    return obj


def alert_payload(ns: str, rollout: str, fingerprint: str) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "fm-operator", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "groupKey": "{}", "truncatedAlerts": 0,
            "alerts": [{"status": "firing", "labels": {"alertname": "CanaryErrors", "severity": "critical", "rollout": rollout,
                                                       "namespace": ns},
                        "annotations": {"summary": "errors above 1%"}, "startsAt": "2026-01-01T00:08:00Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint}]}


class Poster:
    """Posts the same alert to one replica's webhook over and over, as Alertmanager retries, until one
    answer is a 200 that acted on it; keeps every answer."""

    def __init__(self, target: Replica, body: dict[str, Any]) -> None:
        self.target, self.body = target, body
        self.answers: list[tuple[float, int, dict[str, Any]]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Poster:
        self.thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        while not self.done.is_set() and time.monotonic() - start < 60:
            status, answer = self.target.post(self.body)
            self.answers.append((time.monotonic(), status, answer))
            if status == 200:
                self.done.set()
                return
            time.sleep(0.05)

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)
        self.done.set()

    def check(self, rollout: str) -> dict[str, Any]:
        """Every answer was nothing (refused), 503, or the one final 200 that matched the Rollout."""
        statuses = Counter(s for _, s, _ in self.answers)
        assert self.answers and self.answers[-1][1] == 200, f"no 200 in {len(self.answers)} posts: {statuses}"
        for _, status, answer in self.answers[:-1]:
            assert status in (0, 503), (status, answer)
            if status == 503:
                assert "has not listed the Rollouts" in answer["error"], answer
        final = self.answers[-1][2]
        assert final["unmatched"] == [] and [m["rollout"] for m in final["matched"]] == [rollout], final
        return final


def test_one_replica_leads_and_a_killed_leader_is_replaced_within_15s(control_plane: Any, plane_api: Any, ns: str, tmp_path: Path,
                                                                       token_file: Path) -> None:
    for name in ("op-a", "op-b"):
        create_pod(plane_api, ns, name)
    a = replica("op-a", control_plane.kubeconfig_path, ns, tmp_path, token_file)
    b = replica("op-b", control_plane.kubeconfig_path, ns, tmp_path, token_file)
    replicas = [a, b]
    try:
        a.op.start()
        b.op.start()
        holder = wait_for(lambda: lease_holder(plane_api, ns), 30, "a Lease holder")
        lead, standby = (a, b) if holder.startswith("op-a-") else (b, a)
        assert holder.startswith(f"{lead.name}-") and holder == lead.identity()
        wait_for(lambda: lead.leaderz() == 200, 30, f"{lead.name} /leaderz")
        assert standby.leaderz() == 503 and standby.readyz() == 200 and lead.readyz() == 200
        wait_for(lambda: pod_labels(plane_api, ns, lead.name).get(LEADER_LABEL) == "true", 30, "the leader's Pod label")
        assert LEADER_LABEL not in pod_labels(plane_api, ns, standby.name)
        assert standby.post(alert_payload(ns, "x", "fp0"))[0] == 0  # the standby's webhook does not listen

        # One reconcile, one set of Events: the standby does nothing.
        apply(plane_api, ns, fm("movielens"))
        target = load_example("rollout.yaml")
        target["metadata"]["name"] = "recommender"
        apply(plane_api, ns, target)
        wait_condition(plane_api, "foundationmodels", ns, "movielens", "Accepted", "True", timeout=60)
        time.sleep(5)  # a few resyncs (every 2 s) by both, were both acting
        once = events_by_reason(plane_api, ns, "movielens")
        assert once and max(once.values()) == 1, once
        assert "reconcile_foundation_model" not in standby.op.log()
        assert lead.post(alert_payload(ns, "recommender", "fp1"))[0] == 200

        # SIGKILL the leader in the middle of work; alerts go to the standby from that moment.
        for i in range(10):
            apply(plane_api, ns, fm(f"busy-{i}"))
        time.sleep(0.3)
        killed_at = time.monotonic()
        lead.op.kill()
        poster = Poster(standby, alert_payload(ns, "recommender", "fp2")).start()
        new_holder = wait_for(lambda: (h := lease_holder(plane_api, ns)) and not h.startswith(f"{lead.name}-") and h, 30,
                              "the standby to hold the Lease")
        took = time.monotonic() - killed_at
        wait_for(lambda: standby.leaderz() == 200, 30, f"{standby.name} /leaderz")
        judging = time.monotonic() - killed_at
        print(f"\nSIGKILL hand-over: the Lease changed hands after {took:.1f}s, the new leader judged alerts after {judging:.1f}s")
        assert new_holder == standby.identity()
        assert took <= HANDOVER_LIMIT_S, took
        poster.wait(30)
        poster.check(f"{ns}/recommender")
        print(f"alerts posted during the hand-over: {Counter(s for _, s, _ in poster.answers)} (0: not listening)")
        for i in range(10):  # the work the old leader left is finished by the new one, no Event twice
            wait_condition(plane_api, "foundationmodels", ns, f"busy-{i}", "Accepted", "True", timeout=60)
        for name in ["movielens", *(f"busy-{i}" for i in range(10))]:
            counts = events_by_reason(plane_api, ns, name)
            assert max(counts.values(), default=0) <= 1, (name, counts)
        wait_for(lambda: pod_labels(plane_api, ns, standby.name).get(LEADER_LABEL) == "true", 30, "the new leader's Pod label")

        # Kubernetes restarts the killed container in the same Pod: a standby, which takes its old label off.
        assert pod_labels(plane_api, ns, lead.name).get(LEADER_LABEL) == "true"
        lead.op.start()
        wait_for(lambda: LEADER_LABEL not in pod_labels(plane_api, ns, lead.name), 30, "the restarted replica's stale label removed")
        assert lead.readyz() == 200 and lead.leaderz() == 503

        # A graceful stop releases the Lease: the standby takes over at its next try.
        stopped_at = time.monotonic()
        standby.op.proc.terminate()  # type: ignore[union-attr]
        wait_for(lambda: lease_holder(plane_api, ns).startswith(f"{lead.name}-"), 15, "the restarted replica to take over")
        graceful = time.monotonic() - stopped_at
        assert standby.op.proc.wait(30) == 0  # type: ignore[union-attr]
        print(f"graceful hand-over (SIGTERM) after {graceful:.1f}s")
        assert graceful < 5, graceful
        assert "released the Lease" in standby.op.log()
        assert LEADER_LABEL not in pod_labels(plane_api, ns, standby.name)
        wait_for(lambda: lead.leaderz() == 200, 30, f"{lead.name} /leaderz")
    finally:
        for r in replicas:
            r.op.stop()


class Proxy:
    """A TCP relay to the API server that can be cut: from then on nothing gets through and nothing is
    answered (no reset, no refusal), as across a network partition, so every call hangs until it times out."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.cut_off = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(down)
            if self.cut_off.is_set():  # accepted, never answered
                threading.Thread(target=self._pipe, args=(down, None), daemon=True).start()
                continue
            up = socket.create_connection(self.upstream)
            self.sockets.append(up)
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket | None) -> None:
        try:
            while data := src.recv(65536):
                if dst is not None and not self.cut_off.is_set():
                    dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        self.cut_off.set()

    def close(self) -> None:
        self.cut_off.set()
        self.listener.close()
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


def test_a_leader_cut_off_from_the_api_server_exits_before_the_standby_takes_over(control_plane: Any, plane_api: Any, ns: str,
                                                                                   tmp_path: Path, token_file: Path) -> None:
    kubeconfig = yaml.safe_load(control_plane.kubeconfig_path.read_text())
    server = kubeconfig["clusters"][0]["cluster"]["server"]
    host, port = server.split("//")[1].rsplit(":", 1)
    proxy = Proxy((host, int(port)))
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://{host}:{proxy.port}"
    via_proxy = tmp_path / "via-proxy.kubeconfig"
    via_proxy.write_text(yaml.safe_dump(kubeconfig))
    for name in ("op-a", "op-b"):
        create_pod(plane_api, ns, name)
    a = replica("op-a", via_proxy, ns, tmp_path, token_file)
    b = replica("op-b", control_plane.kubeconfig_path, ns, tmp_path, token_file)
    try:
        a.op.start()
        wait_for(lambda: a.leaderz() == 200, 30, "op-a leading")
        b.op.start()
        assert lease_holder(plane_api, ns) == a.identity() and b.leaderz() == 503
        time.sleep(2)  # b has seen a renew
        cut_at = time.monotonic()
        proxy.cut()
        exited_at: float | None = None
        taken_at: float | None = None
        while time.monotonic() - cut_at < 30 and (exited_at is None or taken_at is None):
            if exited_at is None and a.op.proc is not None and a.op.proc.poll() is not None:
                exited_at = time.monotonic() - cut_at
            if taken_at is None and lease_holder(plane_api, ns).startswith("op-b-"):
                taken_at = time.monotonic() - cut_at
            time.sleep(0.05)
        print(f"\npartition: the cut-off leader exited after {exited_at}s, the standby took over after {taken_at}s")
        assert exited_at is not None and taken_at is not None, a.op.log()[-3000:]
        assert a.op.proc is not None and a.op.proc.returncode == 1
        assert "could not renew the Lease" in a.op.log()
        assert exited_at < 7.5 and exited_at < taken_at <= HANDOVER_LIMIT_S, (exited_at, taken_at)
    finally:
        for r in (a, b):
            r.op.stop()
        proxy.close()
