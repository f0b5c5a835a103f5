"""An A/B experiment's traffic on real parts: the providers' bucket routes are accepted by the real CRDs and read
back as the range asked for after the API server's defaulting (control plane), and a real Traefik sends every
request whose x-fmops-bucket is in the range to the canary's pods and every other one, header or not, to the
stable's, through an HTTPRoute on its Gateway and through an IngressRoute (node)."""

from __future__ import annotations

import http.client
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from fmdev.local import images, traefik
from fmop.api.rollout import TrafficRouting
from fmop.rollout import naming
from fmop.rollout.providers import PROVIDERS, RolloutRef
from fmop.rollout.types import ObservedTraffic, SetTraffic

from .helpers import wait_for
from .test_providers import api, rollout, write  # noqa: F401 - the real API server's client and a real Rollout, as fixtures
from .test_traefik import _echo

EXPERIMENT = SetTraffic(1, 2, 0, 0, buckets=(0, 29))


@pytest.mark.parametrize("provider", ["gatewayAPI", "istio", "traefik"])
def test_the_bucket_route_is_accepted_and_read_back_after_defaulting(api: Any, rollout: RolloutRef, provider: str) -> None:
    for t, want in ((SetTraffic(1, 2, 10, 0), ObservedTraffic(10, 0, 2)), (EXPERIMENT, ObservedTraffic(0, 0, 2, buckets=(0, 29))),
                    (SetTraffic(1, 2, 50, 0), ObservedTraffic(50, 0, 2))):  # in, and out again: the header route goes
        assert PROVIDERS[provider].observe(write(api, rollout, provider, t)) == want, t


@pytest.fixture(scope="module")
def predictors(cluster: Any) -> Iterator[str]:
    """Echo pods behind Services named as revisions 1 and 2 of Rollout `reco` would have them."""
    assert cluster.the_node is not None and cluster.traefik_endpoints is not None
    images.ensure(cluster.the_node, ["base"], log=cluster.log)
    ns = f"exp-{uuid.uuid4().hex[:6]}"
    names = [naming.predictor_service("reco", r) for r in (1, 2)]
    cluster.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, *[o for n in names for o in _echo(ns, n)]],
                  "echo pods as the predictors of revisions 1 and 2")
    cluster.kubectl("wait", "-n", ns, *[f"pod/{n}" for n in names], "--for=condition=Ready", "--timeout=120s")
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def _answers(cluster: Any, host: str, buckets: list[str | None]) -> dict[str | None, str]:
    """Who answered a GET with each bucket header (None: no header)."""
    web = urlparse(cluster.traefik_endpoints.web)
    out: dict[str | None, str] = {}
    conn = http.client.HTTPConnection(str(web.hostname), web.port, timeout=10)
    try:
        for b in buckets:
            headers = {"Host": host} | ({naming.BUCKET_HEADER: b} if b is not None else {})
            conn.request("GET", "/", headers=headers)
            resp = conn.getresponse()
            body = resp.read().decode()
            out[b] = body if resp.status == 200 else f"HTTP {resp.status}"
    finally:
        conn.close()
    return out


@pytest.mark.parametrize("provider", ["gatewayAPI", "traefik"])
def test_traefik_sends_the_candidates_buckets_to_the_canary_and_the_rest_to_the_stable(cluster: Any, predictors: str,
                                                                                      provider: str) -> None:
    ns, host = predictors, f"{provider.lower()}.exp.fmop.test"
    routings = {"gatewayAPI": {"provider": "gatewayAPI", "gatewayAPI": {
                    "parentRefs": [{"name": traefik.GATEWAY_NAME, "namespace": traefik.GATEWAY_NAMESPACE}], "hostnames": [host]}},
                "traefik": {"provider": "traefik", "traefik": {"ingressRoute": {"entryPoints": ["web"], "match": f"Host(`{host}`)"}}}}
    p, routing = PROVIDERS[provider], TrafficRouting.model_validate(routings[provider])
    objs = p.render(RolloutRef("reco", ns, str(uuid.uuid4())), routing, EXPERIMENT)
    for o in objs:
        o["metadata"].pop("ownerReferences")  # no Rollout here: the garbage collector would remove them
    cluster.apply(objs, f"{provider} objects of an experiment on buckets 0..29")
    stable, canary = (naming.predictor_service("reco", r) for r in (1, 2))
    asked: list[str | None] = [*map(str, range(100)), None, "", "100", "007", "-1", "abc", "29 "]
    want = {b: canary if b is not None and b in {str(i) for i in range(30)} else stable for b in asked}
    try:
        wait_for(lambda: _answers(cluster, host, ["0", "50"]) == {"0": canary, "50": stable} or None, 60,
                 f"Traefik to route {host} by the bucket header (log: {cluster.log_tail('traefik', 10)})")
        got = _answers(cluster, host, asked)
        assert got == want, {b: (got[b], want[b]) for b in asked if got[b] != want[b]}
        assert Counter(got.values()) == Counter({canary: 30, stable: len(asked) - 30})
    finally:
        for o in objs:
            cluster.kubectl("delete", o["kind"].lower() + "." + o["apiVersion"].split("/")[0], o["metadata"]["name"], "-n", ns,
                            "--ignore-not-found", check=False)
