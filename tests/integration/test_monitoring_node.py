"""Prometheus discovers a real predictor pod through kubernetes_sd against the local API server and
scrapes its Triton: the series carry the naming labels, and the built-in checks and the observed
split read them. Needs the node (run inside `flock /tmp/fmop-node.lock`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fmop.api.rollout import Analysis, RolloutSpec
from fmdev.local import volumes
from fmdev.local.common import Supervisor
from fmdev.local.monitoring import Monitoring
from fmop.rollout import analysis, naming
from fmop.rollout.types import Measure
from fmrec.data.split import LeaveOneOut
from fmrec.serving.client import RecommenderClient
from fmrec.serving.export import export_triton
from tests.conftest import load_example
from tests.integration.prom import promql, wait_scraped
from tests.integration.test_kserve import events, isvc, ml, trained  # noqa: F401 - fixtures

from .helpers import wait_for

ROLLOUT, REVISION = "ro", 1


@pytest.fixture
def monitoring(cluster: Any, tmp_path: Path) -> Iterator[Monitoring]:
    sup = Supervisor(tmp_path)
    mon = Monitoring(tmp_path, kube=(cluster.server, cluster.ca_file, cluster.token), alertmanager=False)
    try:
        mon.start(sup)
        yield mon
    finally:
        sup.stop_all()


def test_prometheus_discovers_and_scrapes_a_predictor_pod(cluster: Any, namespace: str, trained: Path, ml: LeaveOneOut,  # noqa: F811
                                                         monitoring: Monitoring) -> None:
    name = naming.isvc_name(ROLLOUT, REVISION)
    export_triton(trained, volumes.models_dir(cluster) / namespace / "fm-v1", name="fmrec", k=10)
    volumes.models_volume(cluster, namespace)
    obj = isvc(name, namespace, f"pvc://{volumes.MODELS_CLAIM}/{namespace}/fm-v1")
    obj["metadata"]["labels"] = {naming.LABEL_ROLLOUT: ROLLOUT, naming.LABEL_REVISION: str(REVISION)}
    cluster.apply([obj], f"InferenceService {name}")

    def ready() -> bool:
        got = json.loads(cluster.kubectl("get", "inferenceservice", name, "-n", namespace, "-o", "json").stdout)
        return any(c["type"] == "Ready" and c["status"] == "True" for c in got.get("status", {}).get("conditions", []))
    wait_for(ready, 300, f"InferenceService {name} Ready", interval=2)

    # The recommend model's series (its outcome model, fmrec_outcome, has Triton's request series too)
    sel = f'{naming.PROM_NAMESPACE_LABEL}="{namespace}",{naming.PROM_ISVC_LABEL}="{name}",model="fmrec"'
    wait_scraped(monitoring, f"sum(nv_inference_request_success{{{sel}}})", 0, timeout=60)
    since = datetime.now(UTC) - timedelta(seconds=0.5)
    slices = json.loads(cluster.kubectl("get", "endpointslices", "-n", namespace, "-l",
                                        f"kubernetes.io/service-name={naming.predictor_service(ROLLOUT, REVISION)}", "-o", "json").stdout)
    address = slices["items"][0]["endpoints"][0]["addresses"][0]
    client = RecommenderClient(f"{address}:8080")
    users = [int(u) for u in ml.test_users[:30]]
    for u in users:
        client.recommend(events(ml, u), k=10)
    wait_scraped(monitoring, f"sum(nv_inference_request_success{{{sel}}})", len(users), timeout=30)

    (series,) = promql(monitoring, f"nv_inference_request_success{{{sel}}}")
    labels = series["metric"]
    assert labels[naming.PROM_ROLLOUT_LABEL] == ROLLOUT and labels[naming.PROM_REVISION_LABEL] == str(REVISION)
    assert labels[naming.PROM_POD_LABEL].startswith(f"{name}-predictor")
    assert labels["instance"] == f"{address}:8002", "one target per pod, on Triton's metrics port"
    items = promql(monitoring, f"sum(fmrec_recommended_items_total{{{sel}}})")
    assert float(items[0]["value"][1]) == len(users) * 10, "the served model's custom metrics come through too"
    assert promql(monitoring, f'nv_inference_request_summary_us{{{sel},quantile="0.99"}}'), "summary_latencies is on"

    # The built-in checks and the observed split read exactly these series.
    spec = RolloutSpec.model_validate(load_example("rollout.yaml")["spec"]).model_copy(update={"analysis": Analysis()})
    errors, p99 = analysis.measure(Measure(("error-rate", "p99-latency"), None, REVISION, "test"), spec, namespace, ROLLOUT,
                                   monitoring.prometheus_url, datetime.now(UTC))
    assert (errors.phase, errors.value) == ("Successful", 0.0), errors
    assert p99.phase == "Successful" and p99.value is not None and 0 < p99.value < 1, p99
    split = analysis.observed_split(monitoring.prometheus_url, namespace, ROLLOUT, REVISION + 1, REVISION, since, datetime.now(UTC))
    assert not isinstance(split, analysis.SplitUnknown), split
    assert (split.canary_requests, split.total_requests) == (len(users), len(users))
