"""Traefik, the local data plane, splits and mirrors real requests between two real pods.

Two pods answer their own name (and count what they serve) behind two Services. Through Traefik's
web entry point: a TraefikService weighted 80/20, a TraefikService mirroring 30% to the second pod,
and an HTTPRoute weighted 75/25 on the local Gateway. Traefik's weighted round robin and its
mirroring counter are deterministic, so 400 requests give exact counts, both as the pods saw them
and as Traefik's Prometheus metrics count them per backend service.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fmdev.local import images, traefik

from .helpers import wait_for

N = 400
PORT = 8080
# Answers its pod name; GET /count says how many other requests it has served (mirrored ones included).
ECHO = """
import http.server, socket
served = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global served
        if self.path == "/count":
            body = str(served)
        else:
            served += 1
            body = socket.gethostname()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", %d), H).serve_forever()
""" % PORT


@dataclass
class Backends:
    namespace: str
    ips: dict[str, str]  # pod (and Service) name -> pod IP on the node bridge


def _echo(namespace: str, name: str) -> list[dict[str, Any]]:
    labels = {"app": name}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "spec": {"containers": [{
               "name": "echo", "image": images.ref("base"), "imagePullPolicy": "Never",
               "command": ["python3", "-c", ECHO], "ports": [{"containerPort": PORT}],
               "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1}}]}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
           "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": PORT}]}}
    return [pod, svc]


@pytest.fixture(scope="module")
def backends(cluster: Any) -> Iterator[Backends]:
    assert cluster.the_node is not None
    images.ensure(cluster.the_node, ["base"], log=cluster.log)
    ns = f"traefik-{uuid.uuid4().hex[:6]}"
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                   *_echo(ns, "echo-a"), *_echo(ns, "echo-b")], "echo pods and Services")
    cluster.kubectl("wait", "-n", ns, "pod/echo-a", "pod/echo-b", "--for=condition=Ready", "--timeout=120s")
    ips = {name: cluster.kubectl("get", "pod", name, "-n", ns, "-o", "jsonpath={.status.podIP}").stdout
           for name in ("echo-a", "echo-b")}
    yield Backends(ns, ips)
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def served(ip: str) -> int:
    with urllib.request.urlopen(f"http://{ip}:{PORT}/count", timeout=5) as r:
        return int(r.read())


def wait_routed(cluster: Any, host: str) -> str:
    """Wait until Traefik has an enabled router for `Host(host)` and its service; return the service."""
    api = cluster.traefik_endpoints.api

    def probe() -> str | None:
        routers = [r for r in _get_json(f"{api}/api/http/routers") if f"`{host}`" in r.get("rule", "")]
        if not routers or routers[0].get("status") != "enabled":
            return None
        service = str(routers[0]["service"])
        if "@" not in service:
            service = f"{service}@{routers[0]['provider']}"
        services = {s["name"]: s for s in _get_json(f"{api}/api/http/services")}
        return service if services.get(service, {}).get("status") == "enabled" else None
    return wait_for(probe, 60, f"Traefik to route Host {host} (log: {cluster.log_tail('traefik', 10)})")


def send(cluster: Any, host: str, n: int = N) -> Counter[str]:
    """n GETs through Traefik's web entry point; who answered, by pod name."""
    web = urlparse(cluster.traefik_endpoints.web)
    answers: Counter[str] = Counter()
    conn = http.client.HTTPConnection(str(web.hostname), web.port, timeout=10)
    try:
        for _ in range(n):
            conn.request("GET", "/", headers={"Host": host})
            resp = conn.getresponse()
            body = resp.read().decode()
            answers[body if resp.status == 200 else f"HTTP {resp.status}: {body[:80]}"] += 1
    finally:
        conn.close()
    return answers


def service_requests(cluster: Any) -> dict[str, float]:
    """traefik_service_requests_total summed over code/method/protocol, by `service` label."""
    with urllib.request.urlopen(cluster.traefik_endpoints.metrics, timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "traefik_service_requests":  # the parser drops the counter's _total
            for sample in family.samples:
                if sample.name == "traefik_service_requests_total":
                    out[sample.labels["service"]] = out.get(sample.labels["service"], 0.0) + sample.value
    return out


def assert_weighted(answers: Counter[str], weights: dict[str, int], n: int = N) -> None:
    """Traefik's weighted round robin is a deterministic earliest-deadline scheduler: any n consecutive
    picks are within one of the exact share. Where the sequence starts (earlier requests, a reload)
    shifts the phase, so allow one either way, and nothing else."""
    total = sum(weights.values())
    assert sum(answers.values()) == n and set(answers) == set(weights), answers
    for name, w in weights.items():
        assert abs(answers[name] - n * w / total) <= 1, (answers, weights)


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def test_traefikservice_weighted_round_robin_80_20(cluster: Any, backends: Backends) -> None:
    ns, host = backends.namespace, "wrr.fmop.test"
    cluster.apply([
        {"apiVersion": "traefik.io/v1alpha1", "kind": "TraefikService", "metadata": {"name": "wrr", "namespace": ns},
         "spec": {"weighted": {"services": [{"name": "echo-a", "port": 80, "weight": 80},
                                            {"name": "echo-b", "port": 80, "weight": 20}]}}},
        {"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute", "metadata": {"name": "wrr", "namespace": ns},
         "spec": {"entryPoints": ["web"], "routes": [{"match": f"Host(`{host}`)", "kind": "Rule",
                                                      "services": [{"name": "wrr", "kind": "TraefikService"}]}]}},
    ], "weighted TraefikService and its IngressRoute")
    assert wait_routed(cluster, host) == f"{ns}-wrr@kubernetescrd"
    before = service_requests(cluster)
    answers = send(cluster, host)
    assert_weighted(answers, {"echo-a": 80, "echo-b": 20})
    counted = delta(before, service_requests(cluster))
    print("answers:", dict(answers), "traefik_service_requests_total deltas:", counted)
    # Leaves only: Traefik counts a weighted TraefikService's requests at its children, not at the parent.
    assert counted == {f"{ns}-echo-a-80@kubernetescrd": answers["echo-a"], f"{ns}-echo-b-80@kubernetescrd": answers["echo-b"]}


def test_traefikservice_mirrors_30_percent(cluster: Any, backends: Backends) -> None:
    ns, host = backends.namespace, "mirror.fmop.test"
    cluster.apply([
        {"apiVersion": "traefik.io/v1alpha1", "kind": "TraefikService", "metadata": {"name": "mirror", "namespace": ns},
         "spec": {"mirroring": {"name": "echo-a", "port": 80, "mirrors": [{"name": "echo-b", "port": 80, "percent": 30}]}}},
        {"apiVersion": "traefik.io/v1alpha1", "kind": "IngressRoute", "metadata": {"name": "mirror", "namespace": ns},
         "spec": {"entryPoints": ["web"], "routes": [{"match": f"Host(`{host}`)", "kind": "Rule",
                                                      "services": [{"name": "mirror", "kind": "TraefikService"}]}]}},
    ], "mirroring TraefikService and its IngressRoute")
    wait_routed(cluster, host)
    before = service_requests(cluster)
    at_mirror = served(backends.ips["echo-b"])
    assert send(cluster, host) == {"echo-a": N}  # the client only ever sees the main service
    # Mirrored copies are sent after the response, in the background: wait for the 120th to land.
    mirrored = wait_for(lambda: (served(backends.ips["echo-b"]) - at_mirror) >= 120 or None, 30, "120 mirrored requests")
    assert mirrored and served(backends.ips["echo-b"]) - at_mirror == 120
    counted = wait_for(lambda: (c := delta(before, service_requests(cluster))).get(f"{ns}-echo-b-80@kubernetescrd") == 120 and c,
                       30, "Traefik to count 120 mirrored requests")
    print("traefik_service_requests_total deltas:", counted)
    assert counted == {f"{ns}-echo-a-80@kubernetescrd": 400, f"{ns}-echo-b-80@kubernetescrd": 120}


def test_httproute_weights_75_25_through_the_gateway(cluster: Any, backends: Backends) -> None:
    ns, host = backends.namespace, "split.fmop.test"
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "split", "namespace": ns},
             "spec": {"parentRefs": [{"name": traefik.GATEWAY_NAME, "namespace": traefik.GATEWAY_NAMESPACE}],
                      "hostnames": [host],
                      "rules": [{"backendRefs": [{"name": "echo-a", "port": 80, "weight": 75},
                                                 {"name": "echo-b", "port": 80, "weight": 25}]}]}}
    cluster.apply([route], "weighted HTTPRoute")

    def accepted() -> bool:
        obj = json.loads(cluster.kubectl("get", "httproute", "split", "-n", ns, "-o", "json").stdout)
        parents = obj.get("status", {}).get("parents", [])
        return any(c["type"] == "Accepted" and c["status"] == "True" and p["controllerName"] == traefik.CONTROLLER_NAME
                   for p in parents for c in p.get("conditions", []))
    wait_for(accepted, 60, "Traefik to accept the HTTPRoute")
    # Routed once both backends answer (the route's generated service is named by Traefik, so ask the pods).
    wait_for(lambda: set(send(cluster, host, n=8)) == {"echo-a", "echo-b"} or None, 60,
             f"Traefik to route Host {host} to both backends (log: {cluster.log_tail('traefik', 10)})")
    assert_weighted(send(cluster, host), {"echo-a": 75, "echo-b": 25})
