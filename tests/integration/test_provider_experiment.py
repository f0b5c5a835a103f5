"""An A/B experiment's traffic on real parts, control plane only (no node): the providers' bucket routes are
accepted by the real CRDs and read back as the range asked for after the API server's defaulting; and a real
Traefik (its Gateway API and its CRD provider) sends every request whose x-fmops-bucket is in the range to the
canary's backend and every other one, another bucket, a malformed value or no header, to the stable's, until
the experiment ends and every request goes by the weights again.

The backends are two HTTP servers in this process, on an address of this machine that is not loopback (an
EndpointSlice may not point at 127.0.0.0/8), behind Services without selectors named as revisions 1 and 2 of
Rollout `reco` would have them, with EndpointSlices written here: Traefik reads EndpointSlices and sends
requests straight to their addresses, as it does to pods on the node."""

from __future__ import annotations

import http.client
import http.server
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from kubernetes import client

from fmdev.local import node, traefik
from fmop.api.rollout import TrafficRouting
from fmop.rollout import naming
from fmop.rollout.providers import PROVIDERS, RolloutRef
from fmop.rollout.providers import kube as traffic
from fmop.rollout.types import ObservedTraffic, SetTraffic

from .helpers import wait_for
from .test_providers import api, rollout, write  # noqa: F401 - the real API server's client and a real Rollout, as fixtures

EXPERIMENT = SetTraffic(1, 2, 0, 0, buckets=(0, 29))
CANARY_BUCKETS = {str(b) for b in range(30)}
# Every bucket, no header, and values that are no bucket of the range (Go's HTTP server trims a value's surrounding
# whitespace, as HTTP says, so " 7" is 7 and not asked here).
ASKED: list[str | None] = [*map(str, range(100)), None, "", "100", "007", "-1", "abc", "1e1", "29,30", "0x1"]


@pytest.mark.parametrize("provider", ["gatewayAPI", "istio", "traefik"])
def test_the_bucket_route_is_accepted_and_read_back_after_defaulting(api: Any, rollout: RolloutRef, provider: str) -> None:
    for t, want in ((SetTraffic(1, 2, 10, 0), ObservedTraffic(10, 0, 2)), (EXPERIMENT, ObservedTraffic(0, 0, 2, buckets=(0, 29))),
                    (SetTraffic(1, 2, 50, 0, buckets=(99, 99)), ObservedTraffic(50, 0, 2, buckets=(99, 99))),
                    (SetTraffic(1, 2, 50, 0), ObservedTraffic(50, 0, 2))):  # in, changed, and out again: the header route goes
        assert PROVIDERS[provider].observe(write(api, rollout, provider, t)) == want, t


# ---------------------------------------------------------------- a real Traefik routes by the header
def _host_address() -> str:
    """An IPv4 address of this machine that is not loopback; the node's bridge last (it goes with the node)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, check=False).stdout
    found = [(fields[1], fields[3].split("/")[0]) for fields in (line.split() for line in out.splitlines()) if len(fields) > 3]
    found.sort(key=lambda f: f[0] == node.BRIDGE)
    if not found:
        pytest.skip("no IPv4 address other than loopback here for the backends' EndpointSlices")
    return found[0][1]


class _Named(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = str(getattr(self.server, "answer", "")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, tuple[str, int]]]:
    """Two HTTP servers answering the predictor Service name of revision 1 and 2: name -> (address, port)."""
    address = _host_address()
    servers: list[http.server.ThreadingHTTPServer] = []
    out: dict[str, tuple[str, int]] = {}
    for revision in (1, 2):
        name = naming.predictor_service("reco", revision)
        server = http.server.ThreadingHTTPServer((address, 0), _Named)
        server.answer = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True, name=f"backend-{name}").start()
        servers.append(server)
        out[name] = (address, server.server_address[1])
    yield out
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def traefik_running(control_plane: Any) -> Any:
    if control_plane.traefik_endpoints is None:
        control_plane.traefik_endpoints = traefik.start(control_plane)
    return control_plane


def _services(namespace: str, backends: dict[str, tuple[str, int]]) -> list[dict[str, Any]]:
    """The predictor Services without selectors, and their EndpointSlices on the local servers."""
    objs: list[dict[str, Any]] = []
    for name, (address, port) in backends.items():
        objs += [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
             "spec": {"ports": [{"name": "http", "port": naming.PREDICTOR_PORT, "targetPort": port}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-local", "namespace": namespace,
                          "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "tests.fmops.dev"}},
             "addressType": "IPv4", "endpoints": [{"addresses": [address], "conditions": {"ready": True, "serving": True}}],
             "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
        ]
    return objs


def _answers(cluster: Any, host: str, buckets: list[str | None]) -> dict[str | None, str]:
    """Who answered a GET with each bucket header (None: no header)."""
    web = urlparse(cluster.traefik_endpoints.web)
    out: dict[str | None, str] = {}
    conn = http.client.HTTPConnection(str(web.hostname), web.port, timeout=10)
    try:
        for b in buckets:
            conn.request("GET", "/", headers={"Host": host} | ({naming.BUCKET_HEADER: b} if b is not None else {}))
            resp = conn.getresponse()
            body = resp.read().decode()
            out[b] = body if resp.status == 200 else f"HTTP {resp.status}"
    finally:
        conn.close()
    return out


def _route_conditions(api: Any, namespace: str, name: str) -> dict[str, str]:
    route = client.CustomObjectsApi(api).get_namespaced_custom_object("gateway.networking.k8s.io", "v1", namespace, "httproutes", name)
    return {c["type"]: c["status"] for parent in (route.get("status") or {}).get("parents", []) for c in parent.get("conditions", [])}


@pytest.mark.parametrize("provider", ["gatewayAPI", "traefik"])
def test_traefik_sends_the_candidates_buckets_to_the_canary_and_the_rest_to_the_stable(
        api: Any, rollout: RolloutRef, traefik_running: Any, backends: dict[str, tuple[str, int]], provider: str) -> None:
    cluster, ns = traefik_running, rollout.namespace
    host = f"{provider.lower()}.{ns}.exp.fmop.test"
    routings = {"gatewayAPI": {"provider": "gatewayAPI", "gatewayAPI": {
                    "parentRefs": [{"name": traefik.GATEWAY_NAME, "namespace": traefik.GATEWAY_NAMESPACE}], "hostnames": [host]}},
                "traefik": {"provider": "traefik", "traefik": {"ingressRoute": {"entryPoints": ["web"], "match": f"Host(`{host}`)"}}}}
    p, routing = PROVIDERS[provider], TrafficRouting.model_validate(routings[provider])
    cluster.apply(_services(ns, backends), "predictor Services of revisions 1 and 2 on local servers")
    stable, canary = (naming.predictor_service("reco", r) for r in (1, 2))
    refs = p.objects(rollout, routing)

    def set_traffic(t: SetTraffic, want: ObservedTraffic) -> None:
        traffic.apply(api, p, refs, p.render(rollout, routing, t))  # as the operator writes it, owned by the Rollout
        assert p.observe(traffic.read(api, p, ns, refs)) == want

    set_traffic(EXPERIMENT, ObservedTraffic(0, 0, 2, buckets=(0, 29)))
    wait_for(lambda: _answers(cluster, host, ["0", "50", None]) == {"0": canary, "50": stable, None: stable} or None, 60,
             f"Traefik to route {host} by the bucket header (log: {cluster.log_tail('traefik', 10)})")
    if provider == "gatewayAPI":  # Traefik accepted the rule with its regular-expression header match
        wait_for(lambda: _route_conditions(api, ns, refs[0].name).get("Accepted") == "True" or None, 30,
                 "Traefik to report the HTTPRoute Accepted")
    got = _answers(cluster, host, ASKED)
    want = {b: canary if b in CANARY_BUCKETS else stable for b in ASKED}
    assert got == want, {b: (got[b], want[b]) for b in ASKED if got[b] != want[b]}
    assert Counter(got.values()) == Counter({canary: 30, stable: len(ASKED) - 30})

    # The experiment ends (the engine goes back to weights): the header route goes, bucket 0 is the stable's again.
    set_traffic(SetTraffic(1, 2, 0, 0), ObservedTraffic(0, 0, 2))
    wait_for(lambda: _answers(cluster, host, ["0"]) == {"0": stable} or None, 60,
             f"Traefik to drop the bucket route of {host} (log: {cluster.log_tail('traefik', 10)})")
    assert set(_answers(cluster, host, ASKED).values()) == {stable}
