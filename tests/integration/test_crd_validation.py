"""The API server itself accepts the examples and rejects malformed manifests with a message
that names the field. Every case goes through the real kube-apiserver (OpenAPI schema + CEL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.conftest import load_example

GROUP, VERSION = "fmops.dev", "v1alpha1"
PLURALS = {"FoundationModel": "foundationmodels", "TaskAdapter": "taskadapters", "Rollout": "rollouts"}


def create(api: Any, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[obj["kind"]], obj, field_validation="Strict"
    )


@pytest.mark.parametrize("name", ["foundationmodel.yaml", "taskadapter.yaml", "rollout.yaml", "rollout-experiment.yaml"])
def test_example_is_accepted(api: Any, namespace: str, name: str) -> None:
    obj = load_example(name)
    created = create(api, namespace, obj)
    assert created["metadata"]["uid"]
    assert created["spec"]  # the server stored (and defaulted) the spec
    if obj["kind"] == "FoundationModel":
        # nested defaults come from the schema, applied by the server
        assert created["spec"]["resources"]["gpuResourceName"] == "nvidia.com/gpu"


def test_server_fills_defaults_of_omitted_sections(api: Any, namespace: str) -> None:
    obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel", "metadata": {"name": "minimal"},
           "spec": {"data": {"source": "movielens100k"}}}
    created = create(api, namespace, obj)
    assert created["spec"]["architecture"]["layers"] == 2
    assert created["spec"]["training"]["precision"] == "auto"
    assert created["spec"]["data"]["featureSchema"]["itemField"] == "item_id"


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def apply(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return apply


def _delete(path: str) -> Mutation:
    def apply(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]
    return apply


# (case id, example file, mutation, substrings the server's message must contain)
BAD: list[tuple[str, str, Mutation, list[str]]] = [
    ("fm-layers-wrong-type", "foundationmodel.yaml", _set("spec.architecture.layers", "two"),
     ["spec.architecture.layers", "must be of type integer"]),
    ("fm-missing-data", "foundationmodel.yaml", _delete("spec.data"),
     ["spec.data", "Required value"]),
    ("fm-unknown-source", "foundationmodel.yaml", _set("spec.data.source", "bigquery"),
     ["spec.data.source", "Unsupported value", "bigquery"]),
    ("fm-width-not-divisible-by-heads", "foundationmodel.yaml", _set("spec.architecture.heads", 3),
     ["spec.architecture.width", "divisible by architecture.heads"]),
    ("fm-parquet-without-uri", "foundationmodel.yaml", _set("spec.data.source", "parquet"),
     ["spec.data.uri", "data.uri is required"]),
    ("fm-objectives-without-next-item", "foundationmodel.yaml", _set("spec.objectives", [{"type": "action"}]),
     ["spec.objectives", "must include type nextItem"]),
    ("fm-sampled-softmax-without-negatives", "foundationmodel.yaml", _set("spec.objectives.0.loss", "sampledSoftmax"),
     ["spec.objectives[0].negatives", "negatives is required"]),
    ("fm-sliding-window-without-window", "foundationmodel.yaml", _set("spec.architecture.attention", {"type": "slidingWindow"}),
     ["spec.architecture.attention.window", "attention.window is required"]),
    ("fm-multinode-without-gpus", "foundationmodel.yaml", _set("spec.resources", {"nodes": 4, "gpus": 0}),
     ["spec.resources.nodes", "needs resources.gpus"]),
    ("fm-negative-learning-rate", "foundationmodel.yaml", _set("spec.training.learningRate", -0.1),
     ["spec.training.learningRate", "should be greater than 0"]),
    ("fm-window-stride-beyond-context", "foundationmodel.yaml", _set("spec.training.windowStride", 5000),
     ["spec.training.windowStride", "must not exceed architecture.contextLength"]),
    ("fm-weight-average-of-one", "foundationmodel.yaml", _set("spec.training.weightAverage", 1.0),
     ["spec.training.weightAverage", "should be less than 1"]),
    ("ta-pinned-without-version", "taskadapter.yaml", _set("spec.foundationModel.versionPolicy", "Pinned"),
     ["spec.foundationModel.version", "required when foundationModel.versionPolicy is Pinned"]),
    ("ro-pinned-without-version", "rollout.yaml", _delete("spec.model.foundationModel.version"),
     ["spec.model.foundationModel.version", "required when versionPolicy is Pinned"]),
    ("ro-follow-latest-with-a-version", "rollout.yaml", _set("spec.model.foundationModel.versionPolicy", "FollowLatest"),
     ["spec.model.foundationModel.version", "conflicts with versionPolicy FollowLatest"]),
    ("ta-bad-version-format", "taskadapter.yaml",
     _set("spec.foundationModel", {"name": "movielens", "version": "latest", "versionPolicy": "Pinned"}),
     ["spec.foundationModel.version", "should match"]),
    ("ta-lora-settings-on-bottleneck", "taskadapter.yaml", _set("spec.adapter.lora", {"rank": 8}),
     ["spec.adapter.lora", "only apply to adapter.type lora"]),
    ("ta-empty-slice-values", "taskadapter.yaml", _set("spec.task.slice.values", []),
     ["spec.task.slice.values", "should have at least 1 items"]),
    ("ro-weight-above-100", "rollout.yaml", _set("spec.strategy.steps.0.setWeight", 150),
     ["spec.strategy.steps[0].setWeight", "should be less than or equal to 100"]),
    ("ro-decreasing-weights", "rollout.yaml", _set("spec.strategy.steps.5.setWeight", 5),
     ["spec.strategy.steps", "must not decrease"]),
    ("ro-unknown-provider", "rollout.yaml", _set("spec.trafficRouting.provider", "linkerd"),
     ["spec.trafficRouting.provider", "Unsupported value", "linkerd"]),
    ("ro-bad-duration", "rollout.yaml", _set("spec.strategy.steps.3.pause.duration", "5 minutes"),
     ["spec.strategy.steps[3].pause.duration", "should match"]),
    ("ro-pause-with-duration-and-until-promoted", "rollout.yaml",
     _set("spec.strategy.steps.3.pause", {"duration": "5m", "untilPromoted": True}),
     ["spec.strategy.steps[3].pause", "exactly one of pause.duration or pause.untilPromoted"]),
    ("ro-empty-pause", "rollout.yaml", _set("spec.strategy.steps.3.pause", {}),
     ["spec.strategy.steps[3].pause", "exactly one of pause.duration or pause.untilPromoted"]),
    ("ro-step-with-two-actions", "rollout.yaml", _set("spec.strategy.steps.0", {"setWeight": 1, "pause": {"duration": "1m"}}),
     ["spec.strategy.steps[0]", "exactly one of setWeight, pause, analysis or experiment"]),
    ("ro-shadow-without-mirror-percent", "rollout.yaml", _delete("spec.strategy.shadow.mirrorPercent"),
     ["spec.strategy.shadow.mirrorPercent", "Required value"]),
    ("ro-shadow-with-kserve-provider", "rollout.yaml", _set("spec.trafficRouting", {"provider": "kserve"}),
     ["spec.strategy.shadow", "provider kserve cannot mirror traffic"]),
    ("ro-gateway-provider-without-parent-refs", "rollout.yaml", _set("spec.trafficRouting", {"provider": "gatewayAPI"}),
     ["spec.trafficRouting.gatewayAPI", "is required when provider is gatewayAPI"]),
    ("ro-analysis-undefined-metric", "rollout.yaml", _set("spec.strategy.steps.1.analysis.metrics", ["error-rate", "nope"]),
     ["spec.strategy.steps", "not defined in analysis.metrics"]),
    ("ro-bad-success-condition", "rollout.yaml", _set("spec.analysis.metrics.0.successCondition", "result ~ 3"),
     ["spec.analysis.metrics[0].successCondition", "should match"]),
    ("ro-failure-limit-not-below-count", "rollout.yaml", _set("spec.analysis.metrics.0.failureLimit", 4),
     ["spec.analysis.metrics[0].failureLimit", "smaller than count"]),
    ("ro-metric-without-condition", "rollout.yaml", _delete("spec.analysis.metrics.1.successCondition"),
     ["spec.analysis.metrics[1]", "needs successCondition, failureCondition or both"]),
    ("ro-max-replicas-below-min", "rollout.yaml", _set("spec.serving.minReplicas", 8),
     ["spec.serving.maxReplicas", "at least serving.minReplicas"]),
    ("ro-no-traffic-ever", "rollout.yaml", _set("spec.strategy.steps", [{"pause": {"duration": "1m"}}]),
     ["spec.strategy.steps", "at least one setWeight above 0"]),
    ("ro-bad-alert-label-name", "rollout.yaml", _set("spec.rollback.alerts.matchers.0.name", "bad-label"),
     ["spec.rollback.alerts.matchers[0].name", "should match"]),
    ("ro-unknown-field", "rollout.yaml", _set("spec.strategy.stepz", []),
     ['unknown field "spec.strategy.stepz"']),
    ("ro-fm-version-not-a-version", "rollout.yaml", _set("spec.model.foundationModel.version", "newest"),
     ["spec.model.foundationModel.version", "should match"]),
    # spec.analysis.prometheusAddress is a base URL and nothing more (finding 3: `http://host/any/path#` fetched any path)
    ("ro-prometheus-address-fragment", "rollout.yaml", _set("spec.analysis.prometheusAddress", "http://127.0.0.1:8080/any/path#"),
     ["spec.analysis.prometheusAddress", "must not carry a fragment"]),
    ("ro-prometheus-address-user-info", "rollout.yaml", _set("spec.analysis.prometheusAddress", "http://admin:secret@prometheus:9090"),
     ["spec.analysis.prometheusAddress", "must not carry user info"]),
    ("ro-prometheus-address-query-string", "rollout.yaml",
     _set("spec.analysis.prometheusAddress", "http://prometheus:9090/api/v1/query?query=up"),
     ["spec.analysis.prometheusAddress", "must not carry a query string"]),
    ("ro-prometheus-address-file-scheme", "rollout.yaml", _set("spec.analysis.prometheusAddress", "file:///etc/passwd"),
     ["spec.analysis.prometheusAddress", "must be an http:// or https:// URL"]),
    ("ro-prometheus-address-backslash", "rollout.yaml", _set("spec.analysis.prometheusAddress", "http://prometheus\\@evil:9090"),
     ["spec.analysis.prometheusAddress", "should match", "must not carry user info"]),
]


@pytest.mark.parametrize(("example", "mutate", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_server_rejects_malformed_manifest(api: Any, namespace: str, example: str, mutate: Mutation, expected: list[str]) -> None:
    obj = load_example(example)
    mutate(obj)
    with pytest.raises(ApiException) as info:
        create(api, namespace, obj)
    err = info.value
    assert err.status in (400, 422), err.body
    message = json.loads(err.body)["message"]
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in server message: {message}"


def test_at_least_fifteen_distinct_rejections() -> None:
    assert len({case[0] for case in BAD}) >= 15
