"""The operator image (the repository's Dockerfile, built here with BASE=the local base image) installed
by the Helm chart on the real node: two replicas become Ready, exactly one holds the Lease and carries
the leader label, and it reconciles a FoundationModel with the chart's ServiceAccount and
least-privilege RBAC."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fmdev.local import images
from tests.conftest import load_example
from tests.integration.helpers import CHART, wait_condition, wait_for
from tests.integration.test_helm import helm
from tests.integration.test_operator import apply


def test_operator_image_runs_in_cluster_with_the_chart(cluster: Any, api: Any, namespace: str, tmp_path: Path) -> None:
    assert cluster.the_node is not None
    image = images.ensure(cluster.the_node, ["operator"], log=cluster.log)["operator"]
    repository, tag = image.rsplit(":", 1)
    server = urlparse(cluster.server)  # no kube-proxy: the pod reaches the API server at the bridge address
    release_ns = f"fmop-img-{uuid.uuid4().hex[:6]}"
    installed = helm(cluster, "install", "fmop", str(CHART), "--namespace", release_ns, "--create-namespace",
                     "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
                     "--set", "extraEnv[0].name=KUBERNETES_SERVICE_HOST", "--set", f"extraEnv[0].value={server.hostname}",
                     "--set", "extraEnv[1].name=KUBERNETES_SERVICE_PORT", "--set-string", f"extraEnv[1].value={server.port}",
                     "--set", "logFormat=plain")
    assert installed.returncode == 0, installed.stderr
    try:
        def ready() -> bool:
            out = cluster.kubectl("get", "pods", "-n", release_ns, "-o",
                                  "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}", check=False).stdout
            leaders = cluster.kubectl("get", "pods", "-n", release_ns, "-l", "fmops.dev/leader=true", "-o", "name", check=False).stdout
            return out.split() == ["True", "True"] and len(leaders.split()) == 1
        try:
            wait_for(ready, 240, "two operator pods Ready (/readyz), one of them the labelled leader", interval=2)
        except AssertionError:
            pods = cluster.kubectl("get", "pods", "-n", release_ns, "-o", "wide", "--show-labels", check=False).stdout
            logs = cluster.kubectl("logs", "-n", release_ns, "-l", "app.kubernetes.io/name=fm-operator", "--tail=40", check=False)
            raise AssertionError(f"{pods}\n{logs.stdout}{logs.stderr}") from None
        leader_pod = cluster.kubectl("get", "pods", "-n", release_ns, "-l", "fmops.dev/leader=true", "-o", "name").stdout.strip()
        holder = cluster.kubectl("get", "lease", "-n", release_ns, "-o", "jsonpath={.items[*].spec.holderIdentity}").stdout.strip()
        assert holder.startswith(leader_pod.removeprefix("pod/")), (holder, leader_pod)

        apply(api, namespace, load_example("foundationmodel.yaml"))
        wait_condition(api, "foundationmodels", namespace, "movielens", "Accepted", "True", timeout=120)
        log = cluster.kubectl("logs", "-n", release_ns, leader_pod, check=False).stdout
        denials = [line for line in log.splitlines() if "system:serviceaccount" in line and " cannot " in line]
        assert not denials, "\n".join(denials[:5])
    finally:
        helm(cluster, "uninstall", "fmop", "--namespace", release_ns, "--wait")
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)
