"""Every traffic provider's objects against the REAL CRDs on the local API server: server-side applied
through providers.kube, read back, observed as the weights asked for, step after step (so a field
that a later step leaves out, like the mirror, is really removed); an invalid object is rejected by
the real schema with a message naming the field; the garbage collector removes them with the Rollout;
an object the Rollout did not create is neither changed nor deleted with it, unless annotated for it.
No node needed (control_plane)."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fmop.api.rollout import TrafficRouting
from fmop.rollout import naming
from fmop.rollout.providers import PROVIDERS, RolloutRef, provider_for
from fmop.rollout.providers import kube as traffic
from fmop.rollout.providers.base import ObjectRef
from fmop.rollout.types import ObservedTraffic, SetTraffic
from tests.conftest import load_example

from .helpers import wait_for

ADOPT = "fmops.dev/adopt"  # providers.base.ADOPT_ANNOTATION

ROUTINGS: dict[str, dict[str, Any]] = {
    "gatewayAPI": {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw", "sectionName": "http"}], "hostnames": ["reco.example.com"]}},
    "istio": {"provider": "istio", "istio": {"hosts": ["reco.example.com"], "gateways": ["gw"]}},
    "kserve": {"provider": "kserve"},
    "traefik": {"provider": "traefik", "traefik": {"ingressRoute": {"entryPoints": ["web"], "match": "PathPrefix(`/`)"}}},
}

# A rollout's life: first revision, a new one shadowed, stepped up, promoted; then a canary rolled back.
STEPS = [
    SetTraffic(1, None, 0, 0),
    SetTraffic(1, 2, 0, 20),
    SetTraffic(1, 2, 5, 0),
    SetTraffic(1, 2, 50, 10),
    SetTraffic(1, 2, 100, 0),
    SetTraffic(2, None, 0, 0),
    SetTraffic(2, 3, 25, 0),
    SetTraffic(2, 3, 0, 0),
]


def expected(t: SetTraffic) -> ObservedTraffic:
    return ObservedTraffic(t.canary_weight, t.mirror_percent, t.canary_revision)


@pytest.fixture(scope="module")
def api(control_plane: Any) -> Any:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))


@pytest.fixture
def rollout(api: Any) -> Iterator[RolloutRef]:
    """A real Rollout (the owner of everything written) in a fresh namespace."""
    ns = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    obj = load_example("rollout.yaml")
    obj["metadata"]["name"] = "reco"
    created = client.CustomObjectsApi(api).create_namespaced_custom_object("fmops.dev", "v1alpha1", ns, "rollouts", obj)
    yield RolloutRef(name="reco", namespace=ns, uid=created["metadata"]["uid"])
    core.delete_namespace(ns)


def serving_isvc(rollout: RolloutRef) -> dict[str, Any]:
    """The one InferenceService provider kserve splits inside, as the serving side writes it (handing it to the Rollout)."""
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": rollout.name, "namespace": rollout.namespace, "annotations": {ADOPT: rollout.name}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "triton"}, "protocolVersion": "v2",
                                             "storageUri": "pvc://models/reco/r2"}}}}


def write(api: Any, rollout: RolloutRef, provider: str, t: SetTraffic) -> list[dict[str, Any] | None]:
    p, routing = PROVIDERS[provider], TrafficRouting.model_validate(ROUTINGS[provider])
    refs = p.objects(rollout, routing)
    traffic.apply(api, p, refs, p.render(rollout, routing, t))
    return traffic.read(api, p, rollout.namespace, refs)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_applied_objects_read_back_as_the_weights_asked_for(api: Any, rollout: RolloutRef, provider: str) -> None:
    if provider == "kserve":
        client.CustomObjectsApi(api).create_namespaced_custom_object("serving.kserve.io", "v1beta1", rollout.namespace,
                                                                     "inferenceservices", serving_isvc(rollout))
    p = PROVIDERS[provider]
    for t in STEPS:
        if provider == "kserve" and t.mirror_percent:
            continue  # kserve cannot mirror (the Rollout CRD refuses shadow with it)
        found = write(api, rollout, provider, t)
        assert all(o is not None for o in found)
        assert p.observe(found) == expected(t), f"{provider} after {t}"
        for obj in found:
            assert obj is not None
            owner = obj["metadata"]["ownerReferences"]
            assert [(o["uid"], o["controller"]) for o in owner] == [(rollout.uid, True)]
    if provider == "kserve":  # the serving side's fields survive: the provider applies with a field manager of its own
        assert found[0] is not None
        assert found[0]["spec"]["predictor"]["model"]["storageUri"] == "pvc://models/reco/r2"
        managers = {m["manager"] for m in found[0]["metadata"]["managedFields"]}
        assert p.field_manager in managers


def test_nothing_is_observed_before_anything_is_written(api: Any, rollout: RolloutRef) -> None:
    for name, p in PROVIDERS.items():
        routing = TrafficRouting.model_validate(ROUTINGS[name])
        found = traffic.read(api, p, rollout.namespace, p.objects(rollout, routing))
        assert found == [None] * len(found)
        assert p.observe(found) == "unknown"


def test_kserve_does_not_create_the_inferenceservice(api: Any, rollout: RolloutRef) -> None:
    with pytest.raises(traffic.TrafficError, match=rf"apply InferenceService {rollout.namespace}/reco: not found"):
        write(api, rollout, "kserve", SetTraffic(1, 2, 10, 0))


# (provider, how to break the rendered objects, a word the server's message must contain)
INVALID = [
    ("gatewayAPI", lambda o: o[0]["spec"]["rules"][0]["filters"][0]["requestMirror"].update(percent=101), "percent"),
    ("gatewayAPI", lambda o: o[0]["spec"]["rules"][0]["backendRefs"][0].pop("port"), "Must have port for Service reference"),
    ("istio", lambda o: o[0]["spec"]["http"][0]["mirror"].pop("host"), "host"),
    ("istio", lambda o: o[0]["spec"]["http"][0].update(timeout="1us"), "must be a valid duration greater than 1ms"),
    ("traefik", lambda o: o[0]["spec"]["weighted"]["services"][0].update(kind="Pod"), "kind"),
    ("traefik", lambda o: o[1]["spec"]["mirroring"]["mirrors"][0].update(percent="twenty"), "percent"),
    ("kserve", lambda o: o[0]["spec"]["predictor"].update(canaryTrafficPercent="twenty"), "canaryTrafficPercent"),
]


@pytest.mark.parametrize(("provider", "breaks", "word"), INVALID, ids=[f"{p}-{w.split()[0]}" for p, _, w in INVALID])
def test_an_invalid_object_is_rejected_by_the_real_schema(api: Any, rollout: RolloutRef, provider: str, breaks: Any, word: str) -> None:
    if provider == "kserve":
        client.CustomObjectsApi(api).create_namespaced_custom_object("serving.kserve.io", "v1beta1", rollout.namespace,
                                                                     "inferenceservices", serving_isvc(rollout))
    p, routing = PROVIDERS[provider], TrafficRouting.model_validate(ROUTINGS[provider])
    objs = copy.deepcopy(p.render(rollout, routing, SetTraffic(1, 2, 0, 0) if provider == "kserve" else SetTraffic(1, 2, 10, 20)))
    breaks(objs)
    with pytest.raises(traffic.TrafficError, match="rejected by the schema") as err:
        traffic.apply(api, p, p.objects(rollout, routing), objs)
    assert word in str(err.value)
    assert f"{rollout.namespace}/" in str(err.value)
    assert not err.value.retry


def test_a_kind_the_server_does_not_know_says_what_to_install(api: Any, rollout: RolloutRef) -> None:
    p, routing = PROVIDERS["gatewayAPI"], TrafficRouting.model_validate(ROUTINGS["gatewayAPI"])
    objs = p.render(rollout, routing, SetTraffic(1, None, 0, 0))
    objs[0]["apiVersion"] = "gateway.networking.k8s.io/v9"
    refs = [ObjectRef("gateway.networking.k8s.io/v9", "HTTPRoute", "httproutes", objs[0]["metadata"]["name"])]
    with pytest.raises(traffic.TrafficError, match="install the Gateway API CRDs"):
        traffic.apply(api, p, refs, objs)
    with pytest.raises(traffic.TrafficError, match="install the Gateway API CRDs"):
        traffic.read(api, p, rollout.namespace, refs)


def test_the_garbage_collector_removes_traffic_objects_with_the_rollout(api: Any, rollout: RolloutRef) -> None:
    write(api, rollout, "traefik", SetTraffic(1, 2, 25, 0))
    write(api, rollout, "gatewayAPI", SetTraffic(1, 2, 25, 0))
    client.CustomObjectsApi(api).delete_namespaced_custom_object("fmops.dev", "v1alpha1", rollout.namespace, "rollouts", rollout.name)
    refs = [(p, r) for name in ("traefik", "gatewayAPI")
            for p in [PROVIDERS[name]] for r in p.objects(rollout, TrafficRouting.model_validate(ROUTINGS[name]))]
    wait_for(lambda: all(o is None for p, r in refs for o in traffic.read(api, p, rollout.namespace, [r])), 60,
             "the garbage collector to delete the HTTPRoute, TraefikServices and IngressRoute")


@pytest.mark.parametrize(("routing", "shadow", "word"), [
    ({"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw"}]}, "traefik": {}}, False,
     "trafficRouting.traefik is set but provider is not traefik"),
    ({"provider": "kserve"}, True, "provider kserve cannot mirror traffic"),
    ({"provider": "traefik"}, True, None),
    ({"provider": "traefik", "traefik": {"traefikServiceName": "front", "ingressRoute": {"match": "Host(`reco`)"}}}, False, None),
    ({"provider": "traefik", "traefik": {"ingressRoute": {"entryPoints": ["web"]}}}, False, "match"),
], ids=["traefik-section-with-gatewayAPI", "kserve-shadow", "traefik-shadow", "traefik-ingressroute", "ingressroute-without-match"])
def test_the_rollout_crd_checks_traffic_routing(api: Any, rollout: RolloutRef, routing: dict[str, Any], shadow: bool, word: str | None) -> None:
    obj = load_example("rollout.yaml")
    obj["metadata"]["name"] = "other"
    obj["spec"]["trafficRouting"] = routing
    if not shadow:
        obj["spec"]["strategy"].pop("shadow")
    custom = client.CustomObjectsApi(api)
    if word is None:
        created = custom.create_namespaced_custom_object("fmops.dev", "v1alpha1", rollout.namespace, "rollouts", obj)
        assert provider_for(TrafficRouting.model_validate(created["spec"]["trafficRouting"])).name == routing["provider"]
        return
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object("fmops.dev", "v1alpha1", rollout.namespace, "rollouts", obj)
    assert err.value.status == 422 and word in str(err.value.body)


def test_backends_are_the_predictor_services(api: Any, rollout: RolloutRef) -> None:
    (route,) = write(api, rollout, "gatewayAPI", SetTraffic(4, 5, 30, 0))
    assert route is not None
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["port"], r["kind"], r["weight"]) for r in refs] == [
        (naming.predictor_service("reco", 4), naming.PREDICTOR_PORT, "Service", 70),
        (naming.predictor_service("reco", 5), naming.PREDICTOR_PORT, "Service", 30)]


# ---------------------------------------------------------------- no takeover of objects the Rollout did not create
def team_b_object(provider: str, rollout: RolloutRef, **meta: Any) -> dict[str, Any]:
    """Another team's object, of the kind and with the name the Rollout's traffic object would have."""
    spec = {"gatewayAPI": {"parentRefs": [{"name": "team-b-gw"}], "rules": [{"backendRefs": [{"name": "team-b-web", "port": 8080}]}]},
            "istio": {"hosts": ["web.team-b.example.com"], "http": [{"route": [{"destination": {"host": "team-b-web"}}]}]},
            "kserve": serving_isvc(rollout)["spec"]}[provider]
    ref = PROVIDERS[provider].objects(rollout, TrafficRouting.model_validate(ROUTINGS[provider]))[0]
    return {"apiVersion": ref.api_version, "kind": ref.kind, "metadata": {"name": ref.name, "namespace": rollout.namespace, **meta}, "spec": spec}


def create_as(api: Any, obj: dict[str, Any], manager: str) -> dict[str, Any]:
    group, version = obj["apiVersion"].split("/")
    plural = {"HTTPRoute": "httproutes", "VirtualService": "virtualservices", "InferenceService": "inferenceservices"}[obj["kind"]]
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        group, version, obj["metadata"]["namespace"], plural, obj, field_manager=manager)
    return created


def found_now(api: Any, provider: str, rollout: RolloutRef) -> dict[str, Any] | None:
    """The object as the API server has it, read past the providers' ownership check."""
    ref = PROVIDERS[provider].objects(rollout, TrafficRouting.model_validate(ROUTINGS[provider]))[0]
    return traffic.read(api, PROVIDERS[provider], rollout.namespace, [ObjectRef(ref.api_version, ref.kind, ref.plural, ref.name)])[0]


def delete_rollout_and_wait_for_the_garbage_collector(api: Any, rollout: RolloutRef) -> None:
    """Delete the Rollout, and wait until the garbage collector removed an object the Rollout did own (its TraefikServices)."""
    write(api, rollout, "traefik", SetTraffic(1, 2, 25, 0))
    client.CustomObjectsApi(api).delete_namespaced_custom_object("fmops.dev", "v1alpha1", rollout.namespace, "rollouts", rollout.name)
    p = PROVIDERS["traefik"]
    refs = p.objects(rollout, TrafficRouting.model_validate(ROUTINGS["traefik"]))
    wait_for(lambda: all(o is None for o in traffic.read(api, p, rollout.namespace, refs)), 60,
             "the garbage collector to delete the Rollout's own TraefikServices")


FOREIGN = [
    pytest.param("gatewayAPI", {}, "it was not created by this operator (written by team-b-kubectl)", id="httproute"),
    pytest.param("istio", {}, "it was not created by this operator (written by team-b-kubectl)", id="virtualservice"),
    pytest.param("kserve", {"annotations": {}}, "it was not created by this operator (written by team-b-kubectl)", id="inferenceservice"),
    pytest.param("gatewayAPI", {"annotations": {ADOPT: "another-rollout"}}, "annotation names Rollout 'another-rollout', not reco",
                 id="httproute-annotated-for-another-rollout"),
    pytest.param("istio", {"annotations": {ADOPT: "reco"}, "ownerReferences": "other-rollout"},
                 "controlled by Rollout other (its controller ownerReference)", id="virtualservice-another-controller-owns-annotated"),
]


@pytest.mark.parametrize(("provider", "meta", "says"), FOREIGN)
def test_another_teams_object_is_neither_changed_nor_deleted(api: Any, rollout: RolloutRef, provider: str, meta: dict[str, Any],
                                                             says: str) -> None:
    """Finding 4: the traffic object a Rollout names was force-applied with its ownerReference, whatever owned it, so
    deleting the Rollout garbage-collected another team's HTTPRoute or VirtualService."""
    if meta.get("ownerReferences") == "other-rollout":
        other = load_example("rollout.yaml")
        other["metadata"]["name"] = "other"
        uid = client.CustomObjectsApi(api).create_namespaced_custom_object("fmops.dev", "v1alpha1", rollout.namespace, "rollouts", other)[
            "metadata"]["uid"]
        meta = {**meta, "ownerReferences": [{"apiVersion": "fmops.dev/v1alpha1", "kind": "Rollout", "name": "other", "uid": uid,
                                             "controller": True}]}
    before = create_as(api, team_b_object(provider, rollout, **meta), "team-b-kubectl")
    kind, name = before["kind"], before["metadata"]["name"]
    for attempt in (lambda: write(api, rollout, provider, SetTraffic(1, 2, 25, 0)),
                    lambda: traffic.read(api, PROVIDERS[provider], rollout.namespace,
                                         PROVIDERS[provider].objects(rollout, TrafficRouting.model_validate(ROUTINGS[provider])))):
        with pytest.raises(traffic.TrafficError, match=f"{kind} {rollout.namespace}/{name} is not Rollout reco's to manage") as err:
            attempt()
        assert says in str(err.value) and not err.value.retry
    assert found_now(api, provider, rollout) == before  # not one field written: the resourceVersion is the same
    delete_rollout_and_wait_for_the_garbage_collector(api, rollout)
    assert found_now(api, provider, rollout) == before


@pytest.mark.parametrize("provider", ["gatewayAPI", "istio"])
def test_an_object_annotated_for_the_rollout_is_adopted_and_goes_with_it(api: Any, rollout: RolloutRef, provider: str) -> None:
    create_as(api, team_b_object(provider, rollout, annotations={ADOPT: rollout.name}), "team-b-kubectl")
    (found,) = write(api, rollout, provider, SetTraffic(1, 2, 25, 0))
    assert found is not None and PROVIDERS[provider].observe([found]) == ObservedTraffic(25, 0, 2)
    assert [(o["uid"], o["controller"]) for o in found["metadata"]["ownerReferences"]] == [(rollout.uid, True)]
    ref = PROVIDERS[provider].objects(rollout, TrafficRouting.model_validate(ROUTINGS[provider]))[0]
    client.CustomObjectsApi(api).patch_namespaced_custom_object(ref.group, ref.version, rollout.namespace, ref.plural, ref.name,
                                                                {"metadata": {"annotations": {ADOPT: None}}})
    write(api, rollout, provider, SetTraffic(1, 2, 50, 0))  # the Rollout's now (its ownerReference), annotation or not
    delete_rollout_and_wait_for_the_garbage_collector(api, rollout)
    wait_for(lambda: found_now(api, provider, rollout) is None, 60, f"the garbage collector to delete the adopted {found['kind']}")


def test_an_adoption_is_written_against_the_object_as_read(api: Any, rollout: RolloutRef, monkeypatch: pytest.MonkeyPatch) -> None:
    """The annotation taken away between the operator's read and its write: the write is a conflict, nothing is taken."""
    from fmop.kube import Kube

    stale = create_as(api, team_b_object("gatewayAPI", rollout, annotations={ADOPT: rollout.name}), "team-b-kubectl")
    custom = client.CustomObjectsApi(api)
    now = custom.patch_namespaced_custom_object("gateway.networking.k8s.io", "v1", rollout.namespace, "httproutes", "reco",
                                                {"metadata": {"annotations": {ADOPT: None}}})
    monkeypatch.setattr(Kube, "get", lambda self, kind, namespace, name: stale)
    with pytest.raises(traffic.TrafficError, match="conflict") as err:
        write(api, rollout, "gatewayAPI", SetTraffic(1, 2, 25, 0))
    assert err.value.retry
    monkeypatch.undo()
    assert found_now(api, "gatewayAPI", rollout) == now


@pytest.mark.parametrize("provider", ["gatewayAPI", "istio"])
def test_an_object_created_between_the_read_and_the_write_is_not_taken_over(api: Any, rollout: RolloutRef, provider: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 26: another team creates the object in the instant between the operator's read (nothing there) and its
    write. The write was a forced apply, which took their object over (its fields, the Rollout's ownerReference, so
    the garbage collector deleted it with the Rollout); it is a create now, which fails, and the object is refused."""
    from fmop.kube import Kube

    read, theirs = Kube.get, dict[str, Any]()

    def get_then_another_team_creates_it(self: Kube, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
        found = read(self, kind, namespace, name)
        if found is None and not theirs:
            theirs.update(create_as(api, team_b_object(provider, rollout), "team-b-kubectl"))
        return found

    monkeypatch.setattr(Kube, "get", get_then_another_team_creates_it)
    with pytest.raises(traffic.ForeignObject, match=f"{rollout.namespace}/reco is not Rollout reco's to manage: "
                                                    r"it was not created by this operator \(written by team-b-kubectl\)"):
        write(api, rollout, provider, SetTraffic(1, 2, 25, 0))
    monkeypatch.undo()
    assert theirs, "the other team's object was created in between"
    now = found_now(api, provider, rollout)
    assert now == theirs  # not one field written: the resourceVersion is the same
    assert "ownerReferences" not in now["metadata"]
    assert [(m["manager"], m["operation"]) for m in now["metadata"]["managedFields"]] == [("team-b-kubectl", "Update")]
    delete_rollout_and_wait_for_the_garbage_collector(api, rollout)
    assert found_now(api, provider, rollout) == theirs


def test_a_created_object_is_the_providers_as_if_applied(api: Any, rollout: RolloutRef) -> None:
    """The create records an Update; its fields are handed to the provider's server-side apply, so a later apply by the
    same field manager changes them without a conflict and removes what it leaves out (here: the hostnames)."""
    p = PROVIDERS["gatewayAPI"]
    with_hosts = TrafficRouting.model_validate(ROUTINGS["gatewayAPI"])
    without = TrafficRouting.model_validate({**ROUTINGS["gatewayAPI"], "gatewayAPI": {"parentRefs": [{"name": "gw", "sectionName": "http"}]}})
    refs = p.objects(rollout, with_hosts)
    traffic.apply(api, p, refs, p.render(rollout, with_hosts, SetTraffic(1, None, 0, 0)))
    (created,) = traffic.read(api, p, rollout.namespace, refs)
    assert created is not None and created["spec"]["hostnames"] == ["reco.example.com"]
    assert [(m["manager"], m["operation"]) for m in created["metadata"]["managedFields"]] == [(p.field_manager, "Apply")]
    assert [(o["uid"], o["controller"]) for o in created["metadata"]["ownerReferences"]] == [(rollout.uid, True)]
    rendered = p.render(rollout, without, SetTraffic(1, 2, 25, 0))
    ref = refs[0]
    unforced: dict[str, Any] = client.CustomObjectsApi(api).patch_namespaced_custom_object(  # a conflict: HTTP 409
        ref.group, ref.version, rollout.namespace, ref.plural, ref.name, rendered[0], field_manager=p.field_manager, force=False,
        _content_type="application/apply-patch+yaml")
    assert "hostnames" not in unforced["spec"]
    (found,) = write(api, rollout, "gatewayAPI", SetTraffic(1, 2, 50, 0))
    assert found is not None and p.observe([found]) == ObservedTraffic(50, 0, 2)
    assert [(m["manager"], m["operation"]) for m in found["metadata"]["managedFields"]] == [(p.field_manager, "Apply")]
