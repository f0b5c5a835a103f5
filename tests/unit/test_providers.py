"""Traffic providers, pure: render and observe for every provider, table-driven.

The same objects are applied to the real CRDs in tests/integration/test_providers.py.
"""

from __future__ import annotations

import copy
import json
from typing import Any, get_args

import pytest

from fmop.api.rollout import TrafficRouting
from fmop.rollout import naming
from fmop.rollout.providers import PROVIDERS, RolloutRef, base, provider_for
from fmop.rollout.providers import kube as traffic
from fmop.rollout.providers.base import revision_of
from fmop.rollout.types import ObservedTraffic, SetTraffic

ROLLOUT = RolloutRef(name="reco", namespace="team-a", uid="2f1c0a52-0000-4000-8000-000000000001")

ROUTINGS: dict[str, dict[str, Any]] = {
    "gatewayAPI": {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw", "namespace": "infra"}], "hostnames": ["reco.example.com"]}},
    "istio": {"provider": "istio", "istio": {"hosts": ["reco"], "gateways": ["infra/gw"]}},
    "kserve": {"provider": "kserve"},
    "traefik": {"provider": "traefik", "traefik": {"ingressRoute": {"entryPoints": ["web"], "match": "PathPrefix(`/`)"}}},
}

# (id, SetTraffic, what observe must give back)
CASES = [
    ("stable-only", SetTraffic(1, None, 0, 0), ObservedTraffic(0, 0, None)),
    ("shadow-20", SetTraffic(1, 2, 0, 20), ObservedTraffic(0, 20, 2)),
    ("canary-5", SetTraffic(1, 2, 5, 0), ObservedTraffic(5, 0, 2)),
    ("canary-50-mirror-10", SetTraffic(3, 7, 50, 10), ObservedTraffic(50, 10, 7)),
    ("canary-100", SetTraffic(1, 2, 100, 0), ObservedTraffic(100, 0, 2)),
    ("rolled-back", SetTraffic(4, 6, 0, 0), ObservedTraffic(0, 0, 6)),
]
MIRROR_KEYS = {"requestMirror", "mirror", "mirrorPercentage", "mirrors"}


def routing(name: str) -> TrafficRouting:
    return TrafficRouting.model_validate(ROUTINGS[name])


def cases_for(provider: str) -> list[Any]:
    return [pytest.param(provider, t, want, id=f"{provider}-{cid}") for cid, t, want in CASES if not (provider == "kserve" and t.mirror_percent)]


ALL = [c for p in PROVIDERS for c in cases_for(p)]


def keys(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in keys(v)}
    return set()


def backend_weights(provider: str, objs: list[dict[str, Any]]) -> dict[str, int]:
    """service -> weight, read straight from the rendered objects."""
    if provider == "gatewayAPI":
        return {r["name"]: r["weight"] for r in objs[0]["spec"]["rules"][0]["backendRefs"]}
    if provider == "istio":
        return {r["destination"]["host"]: r["weight"] for r in objs[0]["spec"]["http"][0]["route"]}
    if provider == "traefik":
        return {s["name"]: s["weight"] for s in objs[0]["spec"]["weighted"]["services"]}
    percent = objs[0]["spec"]["predictor"]["canaryTrafficPercent"]
    return {"latest": percent, "previous": 100 - percent}


def test_every_provider_in_the_api_has_an_implementation() -> None:
    literal = TrafficRouting.model_fields["provider"].annotation
    assert set(get_args(literal)) == set(PROVIDERS)
    for name in PROVIDERS:
        assert provider_for(routing(name)).name == name


@pytest.mark.parametrize(("provider", "t", "want"), ALL)
def test_render_then_observe_gives_back_what_was_asked(provider: str, t: SetTraffic, want: ObservedTraffic) -> None:
    p, r = PROVIDERS[provider], routing(provider)
    found: list[dict[str, Any] | None] = list(p.render(ROLLOUT, r, t))
    assert p.observe(found) == want


@pytest.mark.parametrize(("provider", "t", "want"), ALL)
def test_weights_sum_to_100_on_the_predictor_services(provider: str, t: SetTraffic, want: ObservedTraffic) -> None:
    weights = backend_weights(provider, PROVIDERS[provider].render(ROLLOUT, routing(provider), t))
    assert sum(weights.values()) == 100
    if provider != "kserve":
        expected = {naming.predictor_service("reco", t.stable_revision): 100 - t.canary_weight}
        if t.canary_revision is not None:
            expected[naming.predictor_service("reco", t.canary_revision)] = t.canary_weight
        assert weights == expected


@pytest.mark.parametrize(("provider", "t", "want"), ALL)
def test_mirror_only_when_asked(provider: str, t: SetTraffic, want: ObservedTraffic) -> None:
    rendered = keys(PROVIDERS[provider].render(ROLLOUT, routing(provider), t))
    assert bool(rendered & MIRROR_KEYS) == (t.mirror_percent > 0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_objects_are_owned_by_the_rollout_and_named_as_objects_says(provider: str) -> None:
    p, r = PROVIDERS[provider], routing(provider)
    objs = p.render(ROLLOUT, r, SetTraffic(1, 2, 25, 0))
    assert [(o.api_version, o.kind, o.name) for o in p.objects(ROLLOUT, r)] == [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objs]
    for obj in objs:
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["labels"] == {naming.LABEL_ROLLOUT: "reco"}
        assert meta["ownerReferences"] == [{"apiVersion": "fmops.dev/v1alpha1", "kind": "Rollout", "name": "reco",
                                            "uid": ROLLOUT.uid, "controller": True, "blockOwnerDeletion": True}]


@pytest.mark.parametrize(("provider", "override", "names"), [
    ("gatewayAPI", {"gatewayAPI": {"httpRouteName": "front", "parentRefs": [{"name": "gw"}]}}, ["front"]),
    ("istio", {"istio": {"virtualServiceName": "front", "hosts": ["reco"]}}, ["front"]),
    ("traefik", {"traefik": {"traefikServiceName": "front"}}, ["front-split", "front"]),
    ("traefik", {}, ["reco-split", "reco"]),
    ("kserve", {}, ["reco"]),
])
def test_object_names_follow_the_overrides(provider: str, override: dict[str, Any], names: list[str]) -> None:
    r = TrafficRouting.model_validate({"provider": provider, **override})
    assert [o.name for o in PROVIDERS[provider].objects(ROLLOUT, r)] == names


def test_gateway_api_route_carries_parent_refs_hostnames_and_the_mirror_filter() -> None:
    (route,) = PROVIDERS["gatewayAPI"].render(ROLLOUT, routing("gatewayAPI"), SetTraffic(1, 2, 0, 20))
    assert route["spec"]["parentRefs"] == [{"name": "gw", "namespace": "infra"}]
    assert route["spec"]["hostnames"] == ["reco.example.com"]
    assert route["spec"]["rules"][0]["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": "reco-r2-predictor", "port": 80}, "percent": 20}}]


def test_istio_mirrors_with_mirror_percentage() -> None:
    (vs,) = PROVIDERS["istio"].render(ROLLOUT, routing("istio"), SetTraffic(1, 2, 0, 30))
    http = vs["spec"]["http"][0]
    assert http["mirror"] == {"host": "reco-r2-predictor", "port": {"number": 80}}
    assert http["mirrorPercentage"] == {"value": 30.0}
    assert vs["spec"]["gateways"] == ["infra/gw"]


def test_traefik_mirroring_wraps_the_weighted_service_and_the_route_points_at_it() -> None:
    split, main, route = PROVIDERS["traefik"].render(ROLLOUT, routing("traefik"), SetTraffic(1, 2, 0, 20))
    assert main["spec"]["mirroring"] == {"name": "reco-split", "kind": "TraefikService",
                                         "mirrors": [{"name": "reco-r2-predictor", "port": 80, "percent": 20}]}
    assert route["spec"] == {"entryPoints": ["web"], "routes": [
        {"match": "PathPrefix(`/`)", "kind": "Rule", "services": [{"name": "reco", "kind": "TraefikService"}]}]}
    assert split["spec"]["weighted"]["services"][1] == {"name": "reco-r2-predictor", "port": 80, "weight": 0}


def test_kserve_cannot_mirror() -> None:
    with pytest.raises(ValueError, match="cannot mirror"):
        PROVIDERS["kserve"].render(ROLLOUT, routing("kserve"), SetTraffic(1, 2, 0, 20))


@pytest.mark.parametrize(("t", "message"), [
    (SetTraffic(1, None, 10, 0), "without a canary revision"),
    (SetTraffic(1, None, 0, 5), "without a canary revision"),
    (SetTraffic(1, 2, 101, 0), "canary_weight must be within 0..100"),
    (SetTraffic(1, 2, 10, -1), "mirror_percent must be within 0..100"),
    (SetTraffic(2, 2, 10, 0), "both stable and canary"),
], ids=["weight-without-canary", "mirror-without-canary", "weight-over-100", "negative-mirror", "same-revision"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_nonsense_traffic_is_refused(provider: str, t: SetTraffic, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PROVIDERS[provider].render(ROLLOUT, routing(provider), t)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_objects_are_unknown(provider: str) -> None:
    p = PROVIDERS[provider]
    assert p.observe([None] * len(p.objects(ROLLOUT, routing(provider)))) == "unknown"
    assert p.observe([]) == "unknown"


@pytest.mark.parametrize("provider", ["gatewayAPI", "istio", "traefik"])
def test_a_backend_that_is_no_predictor_service_is_unknown(provider: str) -> None:
    p = PROVIDERS[provider]
    objs = p.render(ROLLOUT, routing(provider), SetTraffic(1, 2, 25, 0))
    text = json.dumps(objs).replace("reco-r2-predictor", "somebody-elses-service")
    assert p.observe(json.loads(text)) == "unknown"


def test_observe_reads_the_canary_by_revision_not_by_position() -> None:
    (route,) = PROVIDERS["gatewayAPI"].render(ROLLOUT, routing("gatewayAPI"), SetTraffic(1, 2, 25, 0))
    route["spec"]["rules"][0]["backendRefs"].reverse()
    assert PROVIDERS["gatewayAPI"].observe([route]) == ObservedTraffic(25, 0, 2)


def test_server_defaults_are_understood() -> None:
    """What the API server hands back: Gateway API defaults weight to 1, Istio allows a lone unweighted route."""
    gw = {"spec": {"rules": [{"backendRefs": [{"name": "reco-r1-predictor", "port": 80, "group": "", "kind": "Service"}],
                              "matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]}}
    assert PROVIDERS["gatewayAPI"].observe([gw]) == ObservedTraffic(0, 0, None)
    vs = {"spec": {"http": [{"route": [{"destination": {"host": "reco-r1-predictor"}}]}]}}
    assert PROVIDERS["istio"].observe([vs]) == ObservedTraffic(0, 0, None)


def test_kserve_without_a_canary_must_send_everything_to_the_newest() -> None:
    isvc = {"metadata": {"name": "reco"}, "spec": {"predictor": {"canaryTrafficPercent": 40}}}
    assert PROVIDERS["kserve"].observe([isvc]) == "unknown"


@pytest.mark.parametrize("name", ["reco", "a" * 63, "team-" * 12])
def test_revision_is_read_back_from_long_hashed_names(name: str) -> None:
    assert revision_of(naming.predictor_service(name, 12)) == 12
    ref = RolloutRef(name=name, namespace="ns", uid="u")
    assert PROVIDERS["istio"].observe(PROVIDERS["istio"].render(ref, routing("istio"), SetTraffic(11, 12, 5, 0))) == ObservedTraffic(5, 0, 12)


# ---------------------------------------------------------------- no takeover of objects the Rollout did not create
# The holder verdict is pure (base.holder); providers.kube refuses to read or write an object that is not the Rollout's,
# with the kubernetes client faked at its edge. The same against the real API server: tests/integration/test_providers.py.
ADOPT = "fmops.dev/adopt"  # the annotation that hands an existing object to a Rollout (base.ADOPT_ANNOTATION)


def _found(owners: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None, managers: tuple[str, ...] = ("kubectl-edit",),
           labels: dict[str, str] | None = None) -> dict[str, Any]:
    """An object as the API server hands it back."""
    meta: dict[str, Any] = {"name": "reco", "namespace": "team-a", "resourceVersion": "41",
                            "managedFields": [{"manager": m, "operation": "Apply" if m == naming.FIELD_MANAGER else "Update"} for m in managers]}
    for key, value in (("ownerReferences", owners), ("annotations", annotations), ("labels", labels)):
        if value is not None:
            meta[key] = value
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": meta, "spec": {"rules": [{"backendRefs": [
        {"name": "team-b-web", "port": 8080}]}]}}


OURS = {"apiVersion": "fmops.dev/v1alpha1", "kind": "Rollout", "name": "reco", "uid": ROLLOUT.uid, "controller": True}
OTHER_ROLLOUT = {"apiVersion": "fmops.dev/v1alpha1", "kind": "Rollout", "name": "other", "uid": "2f1c0a52-0000-4000-8000-00000000beef",
                 "controller": True}
HOLDERS = [
    ("created-by-this-rollout", _found([OURS], managers=(naming.FIELD_MANAGER,)), None),
    ("adopted-before", _found([OURS], {ADOPT: "reco"}), None),
    ("adopt-annotation", _found(annotations={ADOPT: "reco"}), None),
    ("adopt-annotation-beside-a-plain-owner", _found([{**OTHER_ROLLOUT, "controller": False}], {ADOPT: "reco"}), None),
    ("orphaned-by-this-operator", _found(managers=(naming.FIELD_MANAGER,), labels={naming.LABEL_ROLLOUT: "reco"}), None),
    ("another-teams", _found(), "not created by this operator (written by kubectl-edit)"),
    ("nobody-recorded", _found(managers=()), "no owner recorded"),
    ("adopt-for-another-rollout", _found(annotations={ADOPT: "other"}), "annotation names Rollout 'other', not reco"),
    ("another-rollouts", _found([OTHER_ROLLOUT], managers=(naming.FIELD_MANAGER,), labels={naming.LABEL_ROLLOUT: "other"}),
     "controlled by Rollout other"),
    ("another-controller-even-with-the-annotation", _found([{**OTHER_ROLLOUT, "kind": "Gateway", "name": "gw"}], {ADOPT: "reco"}),
     "controlled by Gateway gw"),
    ("our-label-without-our-field-manager", _found(labels={naming.LABEL_ROLLOUT: "reco"}), "not created by this operator"),
    ("our-field-manager-for-another-rollout", _found(managers=(naming.FIELD_MANAGER,), labels={naming.LABEL_ROLLOUT: "other"}),
     "not created by this operator"),
    ("a-deleted-rollout-of-the-same-name", _found([{**OURS, "uid": "2f1c0a52-0000-4000-8000-0000000000de"}], managers=(naming.FIELD_MANAGER,),
                                                  labels={naming.LABEL_ROLLOUT: "reco"}), "controlled by Rollout reco"),
]


@pytest.mark.parametrize(("found", "says"), [h[1:] for h in HOLDERS], ids=[h[0] for h in HOLDERS])
def test_holder_says_whether_the_rollout_may_manage_an_object(found: dict[str, Any], says: str | None) -> None:
    held = base.holder(found, ROLLOUT, naming.FIELD_MANAGER)
    if says is None:
        assert held is None
        return
    assert held is not None and says in held.by, held
    assert held.adoptable is ("controlled by" not in says)


def test_every_provider_names_the_rollout_its_objects_are_for() -> None:
    for name, p in PROVIDERS.items():
        assert {ref.owner for ref in p.objects(ROLLOUT, routing(name))} == {ROLLOUT}, name


class FakeApi:
    """The kubernetes CustomObjectsApi calls providers.kube makes, on one object per (plural, name) or none; writes recorded
    (and kept: a create or an apply leaves the object written). `between` runs after each read, as another writer would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, objects: dict[tuple[str, str], dict[str, Any]]) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        self.objects = objects
        self.patches: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.creates: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.between: Any = lambda: None

        def get(_: Any, group: str, version: str, namespace: str, plural: str, name: str, **__: Any) -> dict[str, Any]:
            try:
                if (plural, name) not in self.objects:
                    body = {"kind": "Status", "message": f'{plural}.{group} "{name}" not found', "reason": "NotFound",
                            "details": {"name": name, "kind": plural}, "code": 404}
                    raise ApiException(status=404, reason="Not Found", body=json.dumps(body))
                return copy.deepcopy(self.objects[(plural, name)])
            finally:
                self.between()

        def patch(_: Any, group: str, version: str, namespace: str, plural: str, name: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
            self.patches.append((name, body, kw))
            self.objects[(plural, name)] = copy.deepcopy(body)
            return body

        def create(_: Any, group: str, version: str, namespace: str, plural: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
            name = body["metadata"]["name"]
            if (plural, name) in self.objects:
                status = {"kind": "Status", "message": f'{plural}.{group} "{name}" already exists', "reason": "AlreadyExists",
                          "details": {"name": name, "kind": plural}, "code": 409}
                raise ApiException(status=409, reason="Conflict", body=json.dumps(status))
            self.creates.append((name, body, kw))
            self.objects[(plural, name)] = copy.deepcopy(body)
            return body

        monkeypatch.setattr(client.CustomObjectsApi, "get_namespaced_custom_object", get)
        monkeypatch.setattr(client.CustomObjectsApi, "patch_namespaced_custom_object", patch)
        monkeypatch.setattr(client.CustomObjectsApi, "create_namespaced_custom_object", create)
        monkeypatch.setattr(client.CustomObjectsApi, "delete_namespaced_custom_object", lambda *a, **kw: pytest.fail("nothing is deleted"))


def _write(provider: str, t: SetTraffic = SetTraffic(1, 2, 25, 0)) -> None:
    from kubernetes import client

    p, r = PROVIDERS[provider], routing(provider)
    traffic.apply(client.ApiClient(), p, p.objects(ROLLOUT, r), p.render(ROLLOUT, r, t))


def _read(provider: str) -> list[Any]:
    from kubernetes import client

    p = PROVIDERS[provider]
    return traffic.read(client.ApiClient(), p, ROLLOUT.namespace, p.objects(ROLLOUT, routing(provider)))


def _foreign(provider: str, **meta: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """Another team's object of the provider's first kind, named as the Rollout's would be: {(plural, name): object}."""
    ref = PROVIDERS[provider].objects(ROLLOUT, routing(provider))[0]
    obj = _found(**meta)
    return {(ref.plural, ref.name): {**obj, "apiVersion": ref.api_version, "kind": ref.kind, "metadata": {**obj["metadata"], "name": ref.name}}}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_another_teams_object_is_neither_read_as_ours_nor_written(monkeypatch: pytest.MonkeyPatch, provider: str) -> None:
    objects = _foreign(provider)
    ((_, name), foreign), = objects.items()
    api = FakeApi(monkeypatch, objects)
    for attempt in (lambda: _write(provider), lambda: _read(provider)):
        with pytest.raises(traffic.TrafficError, match=f"{foreign['kind']} team-a/{name} is not Rollout reco's to manage: "
                                                       "it was not created by this operator") as err:
            attempt()
        assert not err.value.retry
        assert f"kubectl annotate -n team-a {PROVIDERS[provider].objects(ROLLOUT, routing(provider))[0].plural}" in str(err.value)
        assert f"{ADOPT}=reco" in str(err.value)
        assert PROVIDERS[provider].name_field in str(err.value)
    assert api.patches == []


@pytest.mark.parametrize("provider", ["gatewayAPI", "istio"])
def test_an_object_another_controller_owns_is_not_written_even_with_the_annotation(monkeypatch: pytest.MonkeyPatch, provider: str) -> None:
    api = FakeApi(monkeypatch, _foreign(provider, owners=[{**OTHER_ROLLOUT, "kind": "Gateway", "name": "gw"}], annotations={ADOPT: "reco"}))
    with pytest.raises(traffic.TrafficError, match="controlled by Gateway gw") as err:
        _write(provider)
    assert "kubectl annotate" not in str(err.value) and PROVIDERS[provider].name_field in str(err.value)
    assert api.patches == []


@pytest.mark.parametrize("provider", ["gatewayAPI", "istio", "kserve"])
def test_an_object_annotated_for_the_rollout_is_adopted_as_read(monkeypatch: pytest.MonkeyPatch, provider: str) -> None:
    """The first write carries the resourceVersion read: an annotation taken away in between makes it a conflict."""
    objects = _foreign(provider, annotations={ADOPT: "reco"})
    ((_, name), foreign), = objects.items()
    api = FakeApi(monkeypatch, objects)
    assert _read(provider) == [foreign]
    _write(provider, SetTraffic(1, 2, 25, 0))
    ((patched, body, kw),) = api.patches
    assert patched == name and kw["force"] is True
    assert body["metadata"]["resourceVersion"] == "41"
    assert body["metadata"]["ownerReferences"][0]["uid"] == ROLLOUT.uid


@pytest.mark.parametrize("provider", ["gatewayAPI", "traefik"])
def test_the_rollouts_own_objects_are_written_without_a_precondition(monkeypatch: pytest.MonkeyPatch, provider: str) -> None:
    p, r = PROVIDERS[provider], routing(provider)
    ours = {(ref.plural, ref.name): {**o, "metadata": {**o["metadata"], "resourceVersion": "7"}}
            for ref, o in zip(p.objects(ROLLOUT, r), p.render(ROLLOUT, r, SetTraffic(1, None, 0, 0)), strict=True)}
    api = FakeApi(monkeypatch, dict(ours))
    assert _read(provider) == list(ours.values())
    _write(provider)
    assert [n for n, _, _ in api.patches] == [n for _, n in ours] and all("resourceVersion" not in b["metadata"] for _, b, _ in api.patches)
    assert all(kw["force"] is True for _, _, kw in api.patches) and api.creates == []
    api.objects.clear()  # not there yet: created, with a create that fails if the name is taken (never an apply)
    _write(provider)
    assert len(api.patches) == len(ours) and [n for n, _, _ in api.creates] == [n for _, n in ours]
    assert all(kw == {"field_manager": p.field_manager} for _, _, kw in api.creates)
    _write(provider, SetTraffic(1, 2, 25, 0))  # from then on: applied
    assert len(api.patches) == 2 * len(ours) and len(api.creates) == len(ours)


@pytest.mark.parametrize("provider", ["gatewayAPI", "istio", "traefik"])
def test_an_object_created_by_another_writer_between_the_read_and_the_write_is_not_taken_over(
        monkeypatch: pytest.MonkeyPatch, provider: str) -> None:
    """Issue 26: the read found nothing, then another team created the object before the operator wrote it. The
    write was a forced apply, which took their object over (their fields, the Rollout's ownerReference); it is a
    create now, which fails, and the object is read again and refused like any other that is not the Rollout's."""
    theirs = _foreign(provider)
    ((key, foreign),) = theirs.items()
    api = FakeApi(monkeypatch, {})

    def another_writer_creates_it() -> None:
        if key not in api.objects:
            api.objects.update(copy.deepcopy(theirs))

    api.between = another_writer_creates_it
    with pytest.raises(traffic.ForeignObject, match=f"{foreign['kind']} team-a/{key[1]} is not Rollout reco's to manage: "
                                                    "it was not created by this operator") as err:
        _write(provider)
    assert not err.value.retry
    assert api.objects[key] == foreign, "their object as they created it: no ownerReference, no field of the Rollout's"
    assert "ownerReferences" not in api.objects[key]["metadata"]
    assert api.patches == [] and api.creates == []
