"""Prometheus and Alertmanager, supervised like the other local parts. Alertmanager is Debian's
(`prometheus-alertmanager`). Prometheus is the one hack/build-tools.sh builds from its Go module
when the predictor pods are to be discovered: Debian's `prometheus` is built without the Kubernetes
service discovery (its binary has no kubernetes_sd_configs), and is used only for static targets.

- Prometheus scrapes and evaluates every second. It discovers the predictor pods through
  `kubernetes_sd_configs` (role pod) against the local API server and scrapes Triton's metrics port
  on each (8002, KServe's `prometheus.kserve.io/port`), relabelling pod metadata to the target labels
  of `fmop.rollout.naming` (namespace, pod, inferenceservice, rollout, revision). Static targets
  (Traefik, the operator) are passed in by the caller, which owns their ports.
- The alert rules are the chart's PrometheusRule (charts/fm-operator/templates/prometheusrule.yaml),
  rendered by helm: one copy of the rules, in the chart.
- Alertmanager routes every alert to the operator's webhook with a bearer token read from a file,
  grouping for 1 s, so an alert reaches the operator about a second after it fires. To an https://
  webhook URL (the default) it speaks TLS: the webhook's own CA (<workdir>/monitoring/webhook-pki)
  signs a server certificate for 127.0.0.1, Alertmanager trusts that CA (tls_config.ca_file) and the
  operator serves the certificate (`operator_tls_args()`: --webhook-tls-cert/--webhook-tls-key).

Ports are free ephemeral ports, never Prometheus' default 9090 (the operator's metrics default).
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fmdev.local import pki
from fmdev.local.common import BIN, REPO, ClusterError, Supervisor, binary, free_port, run, wait_http
from fmop.rollout import naming

DEBIAN_PROMETHEUS = "/usr/bin/prometheus"  # no kubernetes_sd_configs in Debian's build
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
TRITON_METRICS_PORT = 8002  # tritonserver's default --metrics-port; KServe's runtime annotates it as prometheus.kserve.io/port
PREDICTOR_CONTAINER = "kserve-container"
OPERATOR_JOB = "fm-operator"  # the chart's fullname for release fm-operator: its FmOperatorDown rule asks for up{job="fm-operator"}
DEFAULT_WEBHOOK_URL = "https://127.0.0.1:8081/alertmanager"  # the chart's webhook port and the receiver's path, over TLS
CHART = REPO / "charts" / "fm-operator"


def prometheus_binary(kubernetes_sd: bool) -> str:
    """The Go-module build (with kubernetes_sd) when there is one, else Debian's for static targets only."""
    built = BIN / "prometheus"
    if built.exists():
        return str(built)
    if kubernetes_sd:
        raise ClusterError(f"{built} is missing and Debian's {DEBIAN_PROMETHEUS} has no kubernetes_sd_configs: "
                           "run `make setup` (hack/build-tools.sh builds Prometheus from its Go module)")
    if not Path(DEBIAN_PROMETHEUS).exists():
        raise ClusterError(f"neither {built} nor {DEBIAN_PROMETHEUS} exists: run `make setup`")
    return DEBIAN_PROMETHEUS


def _meta_label(label: str) -> str:
    """Pod label -> the name kubernetes_sd gives it: serving.kserve.io/inferenceservice -> __meta_..._serving_kserve_io_inferenceservice."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in label)


def predictor_scrape_config(api_server: str, ca_file: Path, token_file: Path) -> dict[str, Any]:
    """The scrape job for Triton on every predictor pod, found through the API server."""
    port_annotation = "__meta_kubernetes_pod_annotation_prometheus_kserve_io_port"
    return {
        "job_name": "kserve-predictors",
        "kubernetes_sd_configs": [{"role": "pod", "api_server": api_server, "tls_config": {"ca_file": str(ca_file)},
                                   "authorization": {"credentials_file": str(token_file)}}],
        "relabel_configs": [
            {"action": "keep", "source_labels": [_meta_label(naming.ISVC_POD_LABEL)], "regex": ".+"},
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_name"], "regex": PREDICTOR_CONTAINER},
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_ip"], "regex": ".+"},
            # One target per pod on Triton's metrics port (several declared container ports collapse into one).
            {"source_labels": ["__meta_kubernetes_pod_ip"], "target_label": "__address__", "replacement": f"$1:{TRITON_METRICS_PORT}"},
            {"source_labels": ["__meta_kubernetes_pod_ip", port_annotation], "regex": "(.+);([0-9]+)",
             "target_label": "__address__", "replacement": "$1:$2"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": naming.PROM_NAMESPACE_LABEL},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": naming.PROM_POD_LABEL},
            {"source_labels": [_meta_label(naming.ISVC_POD_LABEL)], "target_label": naming.PROM_ISVC_LABEL},
            {"source_labels": [_meta_label(naming.LABEL_ROLLOUT)], "target_label": naming.PROM_ROLLOUT_LABEL},
            {"source_labels": [_meta_label(naming.LABEL_REVISION)], "target_label": naming.PROM_REVISION_LABEL},
        ],
    }


def prometheus_config(static: dict[str, list[str]], rule_files: list[Path], alertmanager: str | None = None,
                      predictors: dict[str, Any] | None = None) -> dict[str, Any]:
    """prometheus.yml: 1 s scrape and evaluation; `static` maps a job name to host:port targets."""
    jobs: list[dict[str, Any]] = [{"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in static.items()]
    if predictors is not None:
        jobs.append(predictors)
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": jobs,
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def webhook_tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """(certificate, key, CA) of the operator's webhook, signed by the webhook's own CA: made once, then kept."""
    d = workdir / "monitoring" / "webhook-pki"
    pki.ensure_ca(d, cn="fm-operator-webhook-local-ca", service_account_key=False)
    crt, key = pki.issue(d, "webhook", "fm-operator-webhook", ips=("127.0.0.1",), dns=("localhost",))
    return crt, key, d / "ca.crt"


def made_webhook_tls(workdir: Path, endpoints: dict[str, str]) -> tuple[Path, Path] | None:
    """The webhook's (certificate, key) for an operator beside `make cluster-up`'s Alertmanager, if that
    posts over TLS (its endpoint, from state.json, says `... -> https://...`); else None."""
    if "-> https://" not in endpoints.get("alertmanager", ""):
        return None
    crt, key, _ = webhook_tls_files(workdir)
    return crt, key


def alertmanager_config(webhook_url: str, token_file: Path, ca_file: Path | None = None) -> dict[str, Any]:
    """Every alert to the operator's webhook, bearer token from a file, grouped per Rollout for 1 s;
    with `ca_file`, the webhook's certificate must be signed by that CA."""
    http_config: dict[str, Any] = {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}
    if ca_file is not None:
        http_config["tls_config"] = {"ca_file": str(ca_file)}
    return {
        "route": {"receiver": "fm-operator", "group_by": ["alertname", naming.PROM_NAMESPACE_LABEL, naming.PROM_ROLLOUT_LABEL],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"},
        "receivers": [{"name": "fm-operator", "webhook_configs": [{
            "url": webhook_url, "send_resolved": True, "max_alerts": 0, "http_config": http_config}]}],
    }


def chart_rules(rollout_for: str = "5s") -> dict[str, Any]:
    """The chart's PrometheusRule groups as a Prometheus rule file (helm renders the template).

    rollout_for: how long a served revision's alert must hold before firing (the chart's
    prometheusRule.rolloutFor); seconds locally, so an injected fault fires quickly.
    """
    out = run([binary("helm"), "template", OPERATOR_JOB, str(CHART), "--set", "prometheusRule.enabled=true",
               "--set", f"prometheusRule.rolloutFor={rollout_for}", "--show-only", "templates/prometheusrule.yaml"],
              "rendering the chart's PrometheusRule")
    doc = yaml.safe_load(out)
    return {"groups": doc["spec"]["groups"]}


@dataclass
class Monitoring:
    """Prometheus (and optionally Alertmanager) in <workdir>/monitoring, processes under `sup`."""

    workdir: Path
    static: dict[str, list[str]] = field(default_factory=dict)
    kube: tuple[str, Path, str] | None = None  # (API server URL, CA file, token): discover predictor pods
    alertmanager: bool = True
    webhook_url: str = DEFAULT_WEBHOOK_URL
    webhook_token_file: Path | None = None  # created with a random token when None
    webhook_tls: tuple[Path, Path, Path] | None = None  # (cert, key, CA) for an https:// webhook_url; made when None
    rules: bool = True
    rollout_for: str = "5s"
    prometheus_port: int = 0
    alertmanager_port: int = 0

    @property
    def dir(self) -> Path:
        return self.workdir / "monitoring"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    def start(self, sup: Supervisor, timeout: float = 60.0) -> dict[str, str]:
        """Start both, wait until Prometheus is ready and has loaded its rules; returns endpoints by name."""
        if self.alertmanager and not Path(ALERTMANAGER).exists():
            raise ClusterError(f"{ALERTMANAGER} is missing: run `make setup` (or apt-get install prometheus-alertmanager)")
        prometheus = prometheus_binary(kubernetes_sd=self.kube is not None)
        self.dir.mkdir(parents=True, exist_ok=True)
        endpoints: dict[str, str] = {}
        if self.alertmanager:
            self._start_alertmanager(sup, timeout)
            endpoints["alertmanager"] = f"{self.alertmanager_url} -> {self.webhook_url}"
        self._start_prometheus(sup, prometheus, timeout)
        endpoints["prometheus"] = self.prometheus_url
        return endpoints

    def stop(self, sup: Supervisor) -> None:
        sup.stop("prometheus")
        sup.stop("alertmanager")

    def operator_tls_args(self) -> list[str]:
        """The operator's flags for the certificate Alertmanager trusts; none for an http:// webhook_url."""
        if not self.webhook_url.startswith("https://"):
            return []
        self.webhook_tls = self.webhook_tls or webhook_tls_files(self.workdir)
        crt, key, _ = self.webhook_tls
        return [f"--webhook-tls-cert={crt}", f"--webhook-tls-key={key}"]

    def _start_alertmanager(self, sup: Supervisor, timeout: float) -> None:
        token_file = self.webhook_token_file or self.dir / "webhook-token"
        if self.webhook_token_file is None and not token_file.exists():
            token_file.write_text(secrets.token_hex(24))
            token_file.chmod(0o600)
        self.webhook_token_file = token_file
        config = self.dir / "alertmanager.yml"
        ca_file = None
        if self.webhook_url.startswith("https://"):
            self.webhook_tls = self.webhook_tls or webhook_tls_files(self.workdir)
            ca_file = self.webhook_tls[2]
        config.write_text(yaml.safe_dump(alertmanager_config(self.webhook_url, token_file, ca_file)))
        data = self.dir / "alertmanager-data"
        shutil.rmtree(data, ignore_errors=True)
        self.alertmanager_port = self.alertmanager_port or free_port()
        sup.spawn("alertmanager", [ALERTMANAGER, f"--config.file={config}", f"--storage.path={data}",
                                   f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                                   "--cluster.listen-address=", "--log.level=warn"])
        wait_http(f"{self.alertmanager_url}/-/ready", timeout, lambda b: True, "Alertmanager",
                  alive=lambda: sup.check_alive("alertmanager"))

    def _start_prometheus(self, sup: Supervisor, prometheus: str, timeout: float) -> None:
        rule_files = []
        if self.rules:
            rules = self.dir / "rules.yml"
            rules.write_text(yaml.safe_dump(chart_rules(self.rollout_for)))
            rule_files.append(rules)
        predictors = None
        if self.kube is not None:
            server, ca_file, token = self.kube
            token_file = self.dir / "kube-token"
            token_file.write_text(token)
            token_file.chmod(0o600)
            predictors = predictor_scrape_config(server, ca_file, token_file)
        config = self.dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(
            self.static, rule_files, f"127.0.0.1:{self.alertmanager_port}" if self.alertmanager else None, predictors)))
        data = self.dir / "prometheus-data"
        shutil.rmtree(data, ignore_errors=True)
        self.prometheus_port = self.prometheus_port or free_port()
        sup.spawn("prometheus", [prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}",
                                 f"--web.listen-address=127.0.0.1:{self.prometheus_port}", "--storage.tsdb.retention.time=1d",
                                 "--rules.alert.resend-delay=1s", "--web.enable-lifecycle", "--log.level=warn"])
        wait_http(f"{self.prometheus_url}/-/ready", timeout, lambda b: True, "Prometheus", alive=lambda: sup.check_alive("prometheus"))
