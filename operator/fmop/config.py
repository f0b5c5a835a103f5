"""Operator configuration: command-line flags, each with an FMOP_* environment default."""

from __future__ import annotations

import argparse
import os
import re
import ssl
from dataclasses import dataclass

from fmop import tls
from fmop.rollout.analysis import NAMESPACE_TEMPLATE, base_url

_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # a Lease's name: an RFC 1123 subdomain
_NAMESPACE = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # an RFC 1123 label
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")  # a Prometheus label name


@dataclass(frozen=True)
class Config:
    namespaces: tuple[str, ...] = ()
    metrics_port: int = 9090
    health_port: int = 8080
    bind_address: str = "0.0.0.0"
    resync_seconds: float = 10.0
    rollout_tick_seconds: float = 1.0
    rollout_idle_seconds: float = 0.0  # 0: 30 resyncs (5 min at the default resync)
    log_format: str = "json"
    verbose: bool = False
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    prometheus_allow: tuple[str, ...] = ()  # base URLs a Rollout's spec.analysis.prometheusAddress may name, besides prometheus_url
    webhook_port: int = 0  # the Alertmanager webhook receiver; 0: not served (the chart serves it on 8081)
    webhook_token_file: str = ""
    cluster_alert_labels: tuple[tuple[str, str], ...] = ()  # alerts without a namespace label carrying all of these may match any namespace
    webhook_tls_cert: str = ""  # PEM certificate (chain) the receiver serves, with webhook_tls_key; both empty: plain HTTP
    webhook_tls_key: str = ""
    trainer_image: str = ""  # empty: train nothing, only track versions recorded by others
    leader_election: bool = True  # act only while holding the Lease (see fmop.leader); off: act at once, alone
    lease_name: str = "fm-operator"
    lease_namespace: str = ""  # empty: POD_NAMESPACE, the service account's namespace, the kubeconfig context's, default

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    def webhook_ssl_context(self) -> ssl.SSLContext | None:
        """The webhook receiver's TLS, reloaded when the files change (fmop.tls); None: plain HTTP."""
        return tls.server_context(self.webhook_tls_cert, self.webhook_tls_key)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FMOP_{name}", default)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env_bool(name: str, default: bool) -> bool:
    value = _env(name, "").strip().lower()
    if not value:
        return default
    if value not in _TRUE + _FALSE:
        parser().error(f"environment variable FMOP_{name}={value!r} must be one of {', '.join(_TRUE + _FALSE)}")
    return value in _TRUE


def parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(prog="fm-operator", description="Reconciles FoundationModel, TaskAdapter and Rollout objects.")
    p.add_argument("--namespaces", default=_env("NAMESPACES", ""),
                   help="comma-separated namespaces to watch; empty watches the whole cluster (env FMOP_NAMESPACES)")
    p.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", str(d.metrics_port))),
                   help="Prometheus metrics port, 0 disables (env FMOP_METRICS_PORT; default %(default)s)")
    p.add_argument("--health-port", type=int, default=int(_env("HEALTH_PORT", str(d.health_port))),
                   help="liveness endpoint /healthz port, 0 disables (env FMOP_HEALTH_PORT; default %(default)s)")
    p.add_argument("--bind-address", default=_env("BIND_ADDRESS", d.bind_address),
                   help="address the metrics and health servers listen on (env FMOP_BIND_ADDRESS; default %(default)s)")
    p.add_argument("--resync-seconds", type=float, default=float(_env("RESYNC_SECONDS", str(d.resync_seconds))),
                   help="how often references are re-checked (env FMOP_RESYNC_SECONDS; default %(default)s)")
    p.add_argument("--rollout-tick-seconds", type=float, default=float(_env("ROLLOUT_TICK_SECONDS", str(d.rollout_tick_seconds))),
                   help="how often a Rollout in flight (shadow, steps, analysis) is reconciled (env FMOP_ROLLOUT_TICK_SECONDS; default %(default)s)")
    p.add_argument("--rollout-idle-seconds", type=float, default=float(_env("ROLLOUT_IDLE_SECONDS", str(d.rollout_idle_seconds))),
                   help="how often an idle Rollout (promoted, rolled back, waiting on an InferenceService) is re-read when no event "
                        "comes; its own events, its InferenceServices' and its FoundationModel's and adapters' reconcile it at once, "
                        "and the engine wakes it for a kept-warm revision or a progress deadline. 0: 30 resyncs "
                        "(env FMOP_ROLLOUT_IDLE_SECONDS; default %(default)s)")
    p.add_argument("--log-format", choices=["json", "plain", "full"], default=_env("LOG_FORMAT", d.log_format),
                   help="log format (env FMOP_LOG_FORMAT; default %(default)s)")
    p.add_argument("--verbose", action="store_true", default=_env("VERBOSE", "") not in ("", "0", "false"),
                   help="debug logging (env FMOP_VERBOSE)")
    p.add_argument("--prometheus-url", default=_env("PROMETHEUS_URL", d.prometheus_url),
                   help="default Prometheus for Rollout analysis (env FMOP_PROMETHEUS_URL; default %(default)s)")
    p.add_argument("--prometheus-allow", default=_env("PROMETHEUS_ALLOW", ""),
                   help="comma-separated base URLs of the other Prometheus servers a Rollout's spec.analysis.prometheusAddress "
                        "may name (http(s)://host[:port][/path]; {namespace} stands for the Rollout's namespace); any other "
                        "address gets no query. Empty: only --prometheus-url (env FMOP_PROMETHEUS_ALLOW)")
    p.add_argument("--webhook-port", type=int, default=int(_env("WEBHOOK_PORT", str(d.webhook_port))),
                   help="port of the Alertmanager webhook receiver (POST /alertmanager) that rolls Rollouts back on matching "
                        "alerts, 0 disables; needs --webhook-token-file (env FMOP_WEBHOOK_PORT; default %(default)s)")
    p.add_argument("--webhook-token-file", default=_env("WEBHOOK_TOKEN_FILE", d.webhook_token_file),
                   help="file holding the bearer token Alertmanager must send, re-read when it changes "
                        "(env FMOP_WEBHOOK_TOKEN_FILE)")
    p.add_argument("--webhook-tls-cert", default=_env("WEBHOOK_TLS_CERT", d.webhook_tls_cert),
                   help="PEM certificate (chain) the webhook receiver serves HTTPS with, e.g. a cert-manager Secret's tls.crt; "
                        "needs --webhook-tls-key; picked up again when the file changes; empty: plain HTTP (env FMOP_WEBHOOK_TLS_CERT)")
    p.add_argument("--webhook-tls-key", default=_env("WEBHOOK_TLS_KEY", d.webhook_tls_key),
                   help="its unencrypted PEM private key, e.g. tls.key (env FMOP_WEBHOOK_TLS_KEY)")
    p.add_argument("--cluster-alert-labels", default=_env("CLUSTER_ALERT_LABELS", ""),
                   help="k=v,k=v: the labels a cluster admin trusts; a firing alert without a namespace label matches Rollouts "
                        "in every namespace (by their matchers) only if it carries all of them, e.g. a label that only rules "
                        "exempt from Prometheus Operator's enforcedNamespaceLabel add. Empty: trust none, an alert without a "
                        "namespace label matches no Rollout (env FMOP_CLUSTER_ALERT_LABELS)")
    p.add_argument("--trainer-image", default=_env("TRAINER_IMAGE", d.trainer_image),
                   help="image the training Workflows run (torch + fmrec); empty trains nothing (env FMOP_TRAINER_IMAGE)")
    p.add_argument("--leader-election", action=argparse.BooleanOptionalAction, default=None,
                   help="act only while holding the Lease --lease-namespace/--lease-name, so that of several copies (replicas, "
                        "`make run` beside the chart) exactly one acts and the others wait as standbys; --no-leader-election acts "
                        "at once, alone (env FMOP_LEADER_ELECTION; default on)")
    p.add_argument("--lease-name", default=_env("LEASE_NAME", d.lease_name),
                   help="the coordination.k8s.io Lease the copies hold in turn (env FMOP_LEASE_NAME; default %(default)s)")
    p.add_argument("--lease-namespace", default=_env("LEASE_NAMESPACE", d.lease_namespace),
                   help="its namespace; empty: POD_NAMESPACE, else the pod's service account namespace, else the kubeconfig "
                        "context's namespace, else default (env FMOP_LEASE_NAMESPACE)")
    return p


def _prometheus_allow(value: str) -> tuple[str, ...]:
    """--prometheus-allow's base URLs, each checked as the operator compares them (fmop.rollout.analysis.base_url)."""
    entries = tuple(e.strip() for e in value.split(",") if e.strip())
    for entry in entries:
        try:
            base_url(entry.replace(NAMESPACE_TEMPLATE, "ns"))
        except ValueError as err:
            parser().error(f"--prometheus-allow: {err}: each entry is the base URL of a Prometheus server, "
                           "http(s)://host[:port][/path], without user info, query string or fragment")
    return entries


def _label_set(flag: str, text: str) -> tuple[tuple[str, str], ...]:
    """"k=v,k=v" as sorted (name, value) pairs; exits with a message naming the bad item."""
    found: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not _LABEL_NAME.match(name) or not value:
            parser().error(f"{flag}: {item!r} is not a label name=value pair (a name of letters, digits and '_' not starting "
                           "with a digit, '=', a non-empty value), e.g. fmops_scope=cluster,source=platform")
        if name == "namespace":
            parser().error(f"{flag}: {item!r}: the namespace label cannot be trusted for every namespace; an alert with a "
                           "namespace label always matches only Rollouts in that namespace")
        if name in found:
            parser().error(f"{flag}: label {name!r} is given twice")
        found[name] = value
    return tuple(sorted(found.items()))


def from_args(argv: list[str] | None = None) -> Config:
    a = parser().parse_args(argv)
    for port_name in ("metrics_port", "health_port", "webhook_port"):
        port = getattr(a, port_name)
        if not 0 <= port <= 65535:
            parser().error(f"--{port_name.replace('_', '-')} must be between 0 and 65535, got {port}")
    if a.webhook_port and not a.webhook_token_file:
        parser().error(f"--webhook-port {a.webhook_port} needs --webhook-token-file: the receiver accepts only requests with "
                       "that bearer token (set --webhook-port 0 to serve no webhook)")
    if bool(a.webhook_tls_cert) != bool(a.webhook_tls_key):
        given, missing = ("--webhook-tls-cert", "--webhook-tls-key") if a.webhook_tls_cert else ("--webhook-tls-key", "--webhook-tls-cert")
        parser().error(f"{given} needs {missing}: HTTPS takes the certificate and its key (a cert-manager Secret's tls.crt and "
                       "tls.key); give both, or neither for plain HTTP")
    if a.webhook_tls_cert:
        try:
            tls.load(a.webhook_tls_cert, a.webhook_tls_key)
        except ValueError as e:
            parser().error(f"--webhook-tls-cert/--webhook-tls-key: {e}")
    cluster_alert_labels = _label_set("--cluster-alert-labels", a.cluster_alert_labels)
    if a.resync_seconds <= 0:
        parser().error(f"--resync-seconds must be positive, got {a.resync_seconds}")
    if a.rollout_tick_seconds <= 0:
        parser().error(f"--rollout-tick-seconds must be positive, got {a.rollout_tick_seconds}")
    if a.rollout_idle_seconds < 0:
        parser().error(f"--rollout-idle-seconds must be 0 (30 resyncs) or positive, got {a.rollout_idle_seconds}")
    leader_election = a.leader_election if a.leader_election is not None else _env_bool("LEADER_ELECTION", Config.leader_election)
    if leader_election and not _NAME.match(a.lease_name):
        parser().error(f"--lease-name {a.lease_name!r} is not a valid Kubernetes name (lowercase letters, digits, '-' and '.', "
                       "starting and ending with a letter or digit, at most 253 characters)")
    if leader_election and a.lease_namespace and not _NAMESPACE.match(a.lease_namespace):
        parser().error(f"--lease-namespace {a.lease_namespace!r} is not a valid Kubernetes name (lowercase letters, digits and '-', "
                       "starting and ending with a letter or digit, at most 63 characters)")
    return Config(
        namespaces=tuple(n.strip() for n in a.namespaces.split(",") if n.strip()),
        metrics_port=a.metrics_port,
        health_port=a.health_port,
        bind_address=a.bind_address,
        resync_seconds=a.resync_seconds,
        rollout_tick_seconds=a.rollout_tick_seconds,
        rollout_idle_seconds=a.rollout_idle_seconds or 30 * a.resync_seconds,
        log_format=a.log_format,
        verbose=a.verbose,
        prometheus_url=a.prometheus_url,
        prometheus_allow=_prometheus_allow(a.prometheus_allow),
        webhook_port=a.webhook_port,
        webhook_token_file=a.webhook_token_file,
        cluster_alert_labels=cluster_alert_labels,
        webhook_tls_cert=a.webhook_tls_cert,
        webhook_tls_key=a.webhook_tls_key,
        trainer_image=a.trainer_image,
        leader_election=leader_election,
        lease_name=a.lease_name,
        lease_namespace=a.lease_namespace,
    )
