"""The Helm chart: lint, server-side dry-run of everything it renders, and proof that the RBAC it
grants is enough: the operator, running as the chart's ServiceAccount, holds the chart's Lease, labels
its own Pod and reconciles the examples. Two replicas, a PodDisruptionBudget and the leader-only Service."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from fmdev.local.common import binary
from fmop.config import from_args
from tests.conftest import REPO, load_example
from tests.integration.helpers import CHART, OperatorProcess, token_kubeconfig, wait_condition, wait_for
from tests.integration.test_operator import apply

ALL_FEATURES = ["--set", "metrics.serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
                "--set", "watchNamespaces={team-a,team-b}", "--set", "verbose=true"]


def helm(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("helm"), f"--kubeconfig={cluster.kubeconfig_path}", *args], text=True, capture_output=True)


def test_helm_lint(cluster: Any) -> None:
    result = helm(cluster, "lint", "--strict", str(CHART), *ALL_FEATURES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_rendered_chart_passes_server_side_dry_run(cluster: Any, namespace: str, mode: str) -> None:
    """Everything the chart renders (TLS, NetworkPolicy and the two RBAC modes included) is accepted by the API server."""
    watch = ["--set", f"watchNamespaces={{{namespace}}}"] if mode == "namespaced" else ["--set", "watchNamespaces=null"]
    rendered = helm(cluster, "template", "fmop", str(CHART), "--namespace", namespace, "--include-crds", *ALL_FEATURES, *watch,
                    "--set", "webhook.existingSecret=fmop-webhook-token", "--set", "webhook.tls.secretName=fmop-webhook-tls")
    assert rendered.returncode == 0, rendered.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d}
    rbac = {"ClusterRole", "ClusterRoleBinding"} if mode == "cluster-wide" else set()
    assert {"CustomResourceDefinition", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "ServiceMonitor",
            "PrometheusRule", "PodDisruptionBudget", "NetworkPolicy", *rbac} <= kinds
    assert not {"ClusterRole", "ClusterRoleBinding"} - rbac & kinds
    applied = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-n", namespace, "-f", "-",
                              input=rendered.stdout, check=False)
    assert applied.returncode == 0, applied.stderr
    assert "deployment.apps/fmop-fm-operator serverside-applied (server dry run)" in applied.stdout
    assert "networkpolicy.networking.k8s.io/fmop-fm-operator serverside-applied (server dry run)" in applied.stdout


def test_deployment_is_hardened(cluster: Any) -> None:
    rendered = helm(cluster, "template", "fmop", str(CHART))
    deploy = next(d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]


def _rendered(cluster: Any, *args: str) -> dict[str, list[dict[str, Any]]]:
    rendered = helm(cluster, "template", "fmop", str(CHART), "--namespace", "fmops", *args)
    assert rendered.returncode == 0, rendered.stderr
    docs: dict[str, list[dict[str, Any]]] = {}
    for d in yaml.safe_load_all(rendered.stdout):
        if d:
            docs.setdefault(d["kind"], []).append(d)
    return docs


def test_two_replicas_one_leader_a_disruption_budget_and_lease_rbac(control_plane: Any) -> None:
    docs = _rendered(control_plane)
    (deploy,) = docs["Deployment"]
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert "--leader-election" in container["args"] and "--lease-name=fmop-fm-operator" in container["args"]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"
    # Readiness is "this replica does its part" (the standby too), so rolling updates and drains can proceed;
    # the Service reaches the leader alone through the label it puts on its own pod.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    (service,) = docs["Service"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == {**selector, "fmops.dev/leader": "true"}
    (pdb,) = docs["PodDisruptionBudget"]
    assert pdb["metadata"]["namespace"] == "fmops"
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == selector
    (role,) = docs["Role"]
    assert role["metadata"]["namespace"] == "fmops"
    rules = [(r["apiGroups"], r["resources"], r.get("resourceNames"), r["verbs"]) for r in role["rules"]]
    assert rules == [(["coordination.k8s.io"], ["leases"], None, ["create"]),
                     (["coordination.k8s.io"], ["leases"], ["fmop-fm-operator"], ["get", "update"]),
                     ([""], ["pods"], None, ["patch"])]
    (binding,) = docs["RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["subjects"][0]["namespace"] == "fmops"


def test_one_replica_without_leader_election(control_plane: Any) -> None:
    docs = _rendered(control_plane, "--set", "replicaCount=1", "--set", "leaderElection.enabled=false")
    (deploy,) = docs["Deployment"]
    assert deploy["spec"]["replicas"] == 1
    assert "--no-leader-election" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "PodDisruptionBudget" not in docs  # a budget over one replica would block every drain
    (role,) = docs["Role"]
    assert [r["resources"] for r in role["rules"]] == [["pods"]]  # the leader label is still how the Service finds it


def test_operator_reconciles_with_the_charts_rbac(cluster: Any, api: Any, namespace: str, tmp_path: Path) -> None:
    release_ns = f"fmops-{uuid.uuid4().hex[:6]}"
    installed = helm(cluster, "install", "fmop", str(CHART), "--namespace", release_ns, "--create-namespace")
    assert installed.returncode == 0, installed.stderr
    try:
        kubeconfig = token_kubeconfig(cluster, release_ns, "fmop-fm-operator", tmp_path / "sa.kubeconfig")
        whoami = subprocess.run([binary("kubectl"), f"--kubeconfig={kubeconfig}", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
                                text=True, capture_output=True, check=True).stdout
        assert whoami == f"system:serviceaccount:{release_ns}:fmop-fm-operator"
        # Sanity check that the identity is really restricted: it cannot read Secrets.
        denied = subprocess.run([binary("kubectl"), f"--kubeconfig={kubeconfig}", "auth", "can-i", "list", "secrets", "-A"],
                                text=True, capture_output=True)
        assert denied.stdout.strip() == "no"

        # A replica as the chart runs it: leader election on the chart's Lease, its own Pod to label (bound
        # to no real node, so nothing runs it).
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fmop-replica"},
               "spec": {"nodeName": "fmop-test-nowhere", "containers": [{"name": "operator", "image": "fm-operator:test"}]}}
        client.CoreV1Api(api).create_namespaced_pod(release_ns, pod)
        op = OperatorProcess(kubeconfig, tmp_path / "operator.log", leader_election=True,
                             env={"POD_NAME": "fmop-replica", "POD_NAMESPACE": release_ns},
                             extra=["--lease-name=fmop-fm-operator"]).start()
        try:
            for name in ("foundationmodel.yaml", "taskadapter.yaml", "rollout.yaml"):
                apply(api, namespace, load_example(name))
            wait_condition(api, "foundationmodels", namespace, "movielens", "Accepted", "True")
            wait_condition(api, "taskadapters", namespace, "west-coast", "ResolvedRefs", "False", "FoundationModelNotReady")
            wait_condition(api, "rollouts", namespace, "recommender", "ResolvedRefs", "False", "VersionNotFound")
            lease = client.CoordinationV1Api(api).read_namespaced_lease("fmop-fm-operator", release_ns)
            assert lease.spec.holder_identity.startswith("fmop-replica-")
            wait_for(lambda: (client.CoreV1Api(api).read_namespaced_pod("fmop-replica", release_ns).metadata.labels or {})
                     .get("fmops.dev/leader") == "true", 30, "the leader label on the replica's Pod")
            assert op.probe("/readyz")[0] == 200 and op.probe("/leaderz")[0] == 200
        finally:
            op.stop()
        log = op.log()
        assert "released the Lease" in log
        # RBAC denials read 'User "system:serviceaccount:..." cannot <verb> resource ...'. (Other 403s,
        # such as Events refused in another test's terminating namespace, are not about RBAC.)
        denials = [line for line in log.splitlines() if "system:serviceaccount" in line and " cannot " in line]
        assert not denials, "\n".join(denials[:5])
    finally:
        helm(cluster, "uninstall", "fmop", "--namespace", release_ns)
        cluster.kubectl("delete", "pod", "fmop-replica", "-n", release_ns, "--grace-period=0", "--force", check=False)
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


def test_webhook_token_is_generated_once_and_kept_across_upgrades(control_plane: Any) -> None:
    """The chart's Secret holds a random bearer token; an upgrade keeps it (helm lookup), so Alertmanager's copy stays valid."""
    release_ns = f"fmops-{uuid.uuid4().hex[:6]}"

    def token() -> str:
        return str(control_plane.kubectl("get", "secret", "fmop-fm-operator-webhook", "-n", release_ns, "-o", "jsonpath={.data.token}").stdout)

    installed = helm(control_plane, "install", "fmop", str(CHART), "--namespace", release_ns, "--create-namespace")
    assert installed.returncode == 0, installed.stderr
    try:
        first = token()
        assert len(first) >= 48
        upgraded = helm(control_plane, "upgrade", "fmop", str(CHART), "--namespace", release_ns, "--set", "verbose=true")
        assert upgraded.returncode == 0, upgraded.stderr
        assert token() == first
        deploy = yaml.safe_load(control_plane.kubectl("get", "deployment", "fmop-fm-operator", "-n", release_ns, "-o", "yaml").stdout)
        pod = deploy["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert "--webhook-port=8081" in container["args"]
        assert "--webhook-token-file=/var/run/secrets/fmops.dev/webhook/token" in container["args"]
        assert {"name": "webhook", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "webhook-token"]
        assert volume["secret"]["secretName"] == "fmop-fm-operator-webhook"
        notes = helm(control_plane, "get", "notes", "fmop", "--namespace", release_ns).stdout
        assert f"http://fmop-fm-operator.{release_ns}.svc:8081/alertmanager" in notes
        assert f"kubectl -n {release_ns} get lease fmop-fm-operator" in notes
    finally:
        helm(control_plane, "uninstall", "fmop", "--namespace", release_ns)
        control_plane.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


def test_webhook_port_0_serves_no_webhook(control_plane: Any) -> None:
    rendered = helm(control_plane, "template", "fmop", str(CHART), "--set", "webhook.port=0")
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert "Secret" not in {d["kind"] for d in docs}
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert "--webhook-port=0" in container["args"] and not [a for a in container["args"] if a.startswith("--webhook-token-file")]
    service = next(d for d in docs if d["kind"] == "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]


def test_chart_crds_are_the_generated_ones() -> None:
    for path in (REPO / "crds").glob("*.yaml"):
        assert (CHART / "crds" / path.name).read_text() == path.read_text(), f"charts/fm-operator/crds/{path.name} differs: run make crds"


# ---------------------------------------------------------------- the webhook's token, TLS and network
def _deployment(docs: dict[str, list[dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (deploy,) = docs["Deployment"]
    pod = deploy["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_webhook_token_is_the_same_at_every_render_without_a_cluster(control_plane: Any) -> None:
    """helm template (Argo CD renders so) cannot read the token back: it renders no Secret rather than a new token at
    each render, which would rotate it at every sync and make every alert a 401. Two renders are the same."""
    first, second = (helm(control_plane, "template", "fmop", str(CHART), "--namespace", "fmops") for _ in range(2))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout, "two renders differ: a generated token rotates at every sync"
    docs = [d for d in yaml.safe_load_all(first.stdout) if d]
    assert "Secret" not in {d["kind"] for d in docs}
    assert "No Secret fmop-fm-operator-webhook rendered" in first.stdout  # and says what to do
    pod, _ = _deployment(_rendered(control_plane))
    (volume,) = [v for v in pod["volumes"] if v["name"] == "webhook-token"]
    assert volume["secret"]["secretName"] == "fmop-fm-operator-webhook"  # the pods wait for it; no optional mount


def test_webhook_existing_secret_is_mounted_and_nothing_is_generated(control_plane: Any) -> None:
    docs = _rendered(control_plane, "--set", "webhook.existingSecret=alertmanager-token")
    assert "Secret" not in docs
    pod, container = _deployment(docs)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "webhook-token"]
    assert volume["secret"] == {"secretName": "alertmanager-token", "items": [{"key": "token", "path": "token"}]}
    assert "--webhook-token-file=/var/run/secrets/fmops.dev/webhook/token" in container["args"]


@pytest.mark.parametrize("values", [
    pytest.param(["--set", "webhook.tls.secretName=fmop-webhook-tls"], id="a-secret-of-your-own"),
    pytest.param(["--set", "webhook.tls.certManager.enabled=true", "--set", "webhook.tls.certManager.issuerRef.name=cluster-ca",
                  "--set", "webhook.tls.certManager.issuerRef.kind=ClusterIssuer"], id="cert-manager"),
])
def test_webhook_tls_from_a_secret(control_plane: Any, values: list[str]) -> None:
    docs = _rendered(control_plane, *values)
    secret = "fmop-webhook-tls" if "webhook.tls.secretName=fmop-webhook-tls" in values else "fmop-fm-operator-webhook-tls"
    pod, container = _deployment(docs)
    assert "--webhook-tls-cert=/var/run/secrets/fmops.dev/webhook-tls/tls.crt" in container["args"]
    assert "--webhook-tls-key=/var/run/secrets/fmops.dev/webhook-tls/tls.key" in container["args"]
    # The Secret's directory, not subPaths: the kubelet swaps in a renewed certificate, and the operator loads it.
    assert {"name": "webhook-tls", "mountPath": "/var/run/secrets/fmops.dev/webhook-tls", "readOnly": True} in container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"] == {"secretName": secret, "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}
    if "webhook.tls.certManager.enabled=true" in values:
        (cert,) = docs["Certificate"]
        assert cert["spec"]["secretName"] == secret
        assert cert["spec"]["dnsNames"] == ["fmop-fm-operator.fmops.svc", "fmop-fm-operator.fmops.svc.cluster.local"]
        assert cert["spec"]["issuerRef"] == {"name": "cluster-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    else:
        assert "Certificate" not in docs


def test_webhook_without_tls_has_no_tls_flags(control_plane: Any) -> None:
    pod, container = _deployment(_rendered(control_plane))
    assert not [a for a in container["args"] if a.startswith("--webhook-tls")]
    assert "webhook-tls" not in {v["name"] for v in pod["volumes"]}


def test_network_policy_admits_only_the_monitoring_namespace(control_plane: Any) -> None:
    docs = _rendered(control_plane)
    (policy,) = docs["NetworkPolicy"]
    (deploy,) = docs["Deployment"]
    assert policy["metadata"]["namespace"] == "fmops"
    assert policy["spec"]["podSelector"] == {"matchLabels": deploy["spec"]["selector"]["matchLabels"]}
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress: the API server, Prometheus, model servers
    assert policy["spec"]["ingress"] == [{
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"protocol": "TCP", "port": 9090}, {"protocol": "TCP", "port": 8081}],  # metrics, webhook; not health (8080)
    }]


def test_network_policy_values(control_plane: Any) -> None:
    docs = _rendered(control_plane, "--set", "networkPolicy.monitoringNamespaceSelector.matchLabels.team=observability",
                     "--set", "networkPolicy.monitoringNamespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=null",
                     "--set", "webhook.port=0")
    (policy,) = docs["NetworkPolicy"]
    assert policy["spec"]["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {"team": "observability"}}}],
                                          "ports": [{"protocol": "TCP", "port": 9090}]}]
    assert "NetworkPolicy" not in _rendered(control_plane, "--set", "networkPolicy.enabled=false")


def test_cluster_alert_labels_and_prometheus_allow_list_reach_the_operator(control_plane: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def env(*args: str) -> dict[str, str]:
        _, container = _deployment(_rendered(control_plane, *args))
        return {e["name"]: e["value"] for e in container["env"] if "value" in e}

    assert "FMOP_CLUSTER_ALERT_LABELS" not in env() and "FMOP_PROMETHEUS_ALLOW" not in env()  # defaults: none, only prometheusUrl
    got = env("--set", "webhook.clusterAlertLabels.source=platform-rules", "--set", "webhook.clusterAlertLabels.cluster=prod",
              "--set", "prometheus.allowedAddresses={http://prometheus.team-a.svc:9090,https://thanos.monitoring.svc}")
    assert got["FMOP_CLUSTER_ALERT_LABELS"] == "cluster=prod,source=platform-rules"
    assert got["FMOP_PROMETHEUS_ALLOW"] == "http://prometheus.team-a.svc:9090,https://thanos.monitoring.svc"
    for name in ("FMOP_CLUSTER_ALERT_LABELS", "FMOP_PROMETHEUS_ALLOW"):  # read as the operator reads its environment
        monkeypatch.setenv(name, got[name])
    cfg = from_args([])
    assert cfg.cluster_alert_labels == (("cluster", "prod"), ("source", "platform-rules"))
    assert cfg.prometheus_allow == ("http://prometheus.team-a.svc:9090", "https://thanos.monitoring.svc")
    bad = helm(control_plane, "template", "fmop", str(CHART), "--set", "webhook.clusterAlertLabels.source=a\\,b")
    assert bad.returncode != 0 and "webhook.clusterAlertLabels.source: give a non-empty value without commas" in bad.stderr
