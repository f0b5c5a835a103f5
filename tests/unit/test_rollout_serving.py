"""The InferenceService of a revision: names, labels, ownership, storage, and readiness read back."""

from __future__ import annotations

from typing import Any

import pytest

from fmop.api.rollout import Serving, ServeTarget
from fmop.rollout import naming
from fmop.rollout.providers.base import RolloutRef
from fmop.rollout.serving import StorageError, observe_isvc, render_isvc, revision_uri, storage_uri
from fmop.rollout.types import ModelRef

REF = RolloutRef(name="recommender", namespace="shop", uid="uid-1")
TARGET = ServeTarget.model_validate({"foundationModel": {"name": "movielens", "version": "v2"}})


def fm(*versions: tuple[str, str]) -> dict[str, Any]:
    return {"status": {"versions": [{"version": v, "artifactUri": uri} for v, uri in versions]}}


def test_the_isvc_is_named_by_revision_labelled_and_owned_by_the_rollout() -> None:
    obj = render_isvc(REF, 3, Serving(minReplicas=1, maxReplicas=2, resources={"requests": {"cpu": "1"}}), "pvc://m/shop/v2")
    meta, predictor = obj["metadata"], obj["spec"]["predictor"]
    assert meta["name"] == "recommender-r3" == naming.isvc_name("recommender", 3)
    assert meta["labels"][naming.LABEL_ROLLOUT] == "recommender" and meta["labels"][naming.LABEL_REVISION] == "3"
    assert meta["ownerReferences"] == [{"apiVersion": "fmops.dev/v1alpha1", "kind": "Rollout", "name": "recommender",
                                        "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
    assert predictor["model"] == {"modelFormat": {"name": "triton"}, "protocolVersion": "v2", "storageUri": "pvc://m/shop/v2",
                                  "resources": {"requests": {"cpu": "1"}}}
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (1, 2)
    assert predictor["labels"][naming.LABEL_REVISION] == "3"  # the pods carry it too
    assert "annotations" not in meta  # 1..2 replicas: KServe's autoscaler decides
    fixed = render_isvc(REF, 3, Serving(minReplicas=2, maxReplicas=2), "pvc://m/shop/v2")
    assert fixed["metadata"]["annotations"] == {"serving.kserve.io/autoscalerClass": "none"}


def test_storage_comes_from_the_version_unless_the_spec_overrides_it() -> None:
    assert storage_uri(TARGET, Serving(), fm(("v1", "pvc://a/v1"), ("v2", "pvc://a/v2"))) == "pvc://a/v2"
    assert storage_uri(TARGET, Serving(storageUri="s3://b/x"), None) == "s3://b/x"
    with pytest.raises(StorageError, match=r"FoundationModel movielens has no artifactUri for version v2.*spec.serving.storageUri"):
        storage_uri(TARGET, Serving(), fm(("v1", "pvc://a/v1")))


def test_each_revision_serves_its_own_artifact_and_an_existing_one_keeps_it() -> None:
    versions = fm(("v1", "pvc://a/v1"), ("v2", "pvc://a/v2"))
    stable, canary = ModelRef("movielens", "v1"), ModelRef.of(TARGET)
    # While v2 is the canary, the stable revision keeps v1's artifact: never the spec's current one.
    assert revision_uri(stable, TARGET, "pvc://a/v2", versions, None) == "pvc://a/v1"
    assert revision_uri(canary, TARGET, "pvc://a/v2", versions, None) == "pvc://a/v2"
    # spec.serving.storageUri (already in current_uri) applies to the revision the spec names only.
    assert revision_uri(canary, TARGET, "s3://b/x", versions, None) == "s3://b/x"
    assert revision_uri(stable, TARGET, "s3://b/x", versions, None) == "pvc://a/v1"
    # An InferenceService that exists keeps what it was created with, even if its version was pruned since.
    found = render_isvc(REF, 1, Serving(), "pvc://a/v1-old")
    assert revision_uri(stable, TARGET, "pvc://a/v2", fm(("v2", "pvc://a/v2")), found) == "pvc://a/v1-old"
    # Unknown: a pruned version with no object, or another FoundationModel: leave it alone.
    assert revision_uri(stable, TARGET, "pvc://a/v2", fm(("v2", "pvc://a/v2")), None) is None
    assert revision_uri(ModelRef("other", "v1"), TARGET, "pvc://a/v2", versions, None) is None
    assert revision_uri(canary, TARGET, "", versions, None) is None  # the spec's artifact is not known yet


@pytest.mark.parametrize(("status", "ready", "message"), [
    ({}, False, "no Ready condition yet"),
    ({"conditions": [{"type": "Ready", "status": "True"}]}, True, ""),
    ({"conditions": [{"type": "Ready", "status": "False", "message": "pod crashloop"}]}, False, "pod crashloop"),
    ({"conditions": [{"type": "Ready", "status": "Unknown", "reason": "Starting"}]}, False, "Starting"),
])
def test_readiness_is_read_from_the_ready_condition(status: dict[str, Any], ready: bool, message: str) -> None:
    obj = {"metadata": {"labels": {naming.LABEL_REVISION: "4"}}, "status": status}
    state = observe_isvc(obj)
    assert state is not None and state.revision == 4 and state.ready is ready and message in state.message


def test_objects_without_a_revision_label_are_not_ours() -> None:
    assert observe_isvc({"metadata": {"labels": {}}}) is None
    assert observe_isvc({"metadata": {"labels": {naming.LABEL_REVISION: "x"}}}) is None
    deleting = observe_isvc({"metadata": {"labels": {naming.LABEL_REVISION: "2"}, "deletionTimestamp": "now"},
                             "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert deleting is not None and not deleting.ready


def test_long_rollout_names_still_fit_kserve_names() -> None:
    name = naming.predictor_service("r" * 80, 123)
    assert len(name) <= 63 and name.endswith("-r123-predictor")
    assert naming.isvc_name("r" * 80, 1) != naming.isvc_name("r" * 79 + "s", 1)
