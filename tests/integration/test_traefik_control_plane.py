"""Traefik against the control plane alone: it claims its GatewayClass, programs the Gateway, and
does so with its own ServiceAccount, which holds Traefik's documented read rights and nothing more."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fmdev.local import traefik


@pytest.fixture(scope="module")
def running(control_plane: Any) -> Any:
    if control_plane.traefik_endpoints is None:
        control_plane.traefik_endpoints = traefik.start(control_plane)
    return control_plane


def test_gateway_is_programmed_on_the_web_entry_point(running: Any) -> None:
    ends = running.traefik_endpoints
    gc = json.loads(running.kubectl("get", "gatewayclass", traefik.GATEWAY_CLASS, "-o", "json").stdout)
    assert {"type": "Accepted", "status": "True"}.items() <= next(
        c for c in gc["status"]["conditions"] if c["type"] == "Accepted").items()
    gw = json.loads(running.kubectl("get", "gateway", traefik.GATEWAY_NAME, "-n", traefik.GATEWAY_NAMESPACE, "-o", "json").stdout)
    assert gw["spec"]["listeners"][0]["port"] == ends.port
    assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": running.plane.address}]
    listener = gw["status"]["listeners"][0]
    assert {c["type"]: c["status"] for c in listener["conditions"]}["Programmed"] == "True"


@pytest.mark.parametrize(("verb", "resource", "allowed"), [
    ("list", "traefikservices.traefik.io", True),
    ("watch", "httproutes.gateway.networking.k8s.io", True),
    ("update", "gateways.gateway.networking.k8s.io/status", True),
    ("list", "endpointslices.discovery.k8s.io", True),
    ("create", "pods", False),
    ("update", "services", False),
    ("patch", "traefikservices.traefik.io", False),
    ("delete", "httproutes.gateway.networking.k8s.io", False),
], ids=lambda v: str(v))
def test_traefik_runs_with_its_documented_rights_only(running: Any, verb: str, resource: str, allowed: bool) -> None:
    sa = f"system:serviceaccount:{traefik.NAMESPACE}:{traefik.SERVICE_ACCOUNT}"
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, "--all-namespaces", f"--as={sa}"] + ([f"--subresource={sub}"] if sub else [])
    out = running.kubectl(*args, check=False).stdout.strip()
    assert out == ("yes" if allowed else "no")
