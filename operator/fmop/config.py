"""Operator configuration: command-line flags, each with an FMOP_* environment default."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass

_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")  # a Lease's name: an RFC 1123 subdomain
_NAMESPACE = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # an RFC 1123 label


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
    webhook_port: int = 0  # the Alertmanager webhook receiver; 0: not served (the chart serves it on 8081)
    webhook_token_file: str = ""
    trainer_image: str = ""  # empty: train nothing, only track versions recorded by others
    leader_election: bool = True  # act only while holding the Lease (see fmop.leader); off: act at once, alone
    lease_name: str = "fm-operator"
    lease_namespace: str = ""  # empty: POD_NAMESPACE, the service account's namespace, the kubeconfig context's, default

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


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
    p.add_argument("--webhook-port", type=int, default=int(_env("WEBHOOK_PORT", str(d.webhook_port))),
                   help="port of the Alertmanager webhook receiver (POST /alertmanager) that rolls Rollouts back on matching "
                        "alerts, 0 disables; needs --webhook-token-file (env FMOP_WEBHOOK_PORT; default %(default)s)")
    p.add_argument("--webhook-token-file", default=_env("WEBHOOK_TOKEN_FILE", d.webhook_token_file),
                   help="file holding the bearer token Alertmanager must send, re-read when it changes "
                        "(env FMOP_WEBHOOK_TOKEN_FILE)")
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


def from_args(argv: list[str] | None = None) -> Config:
    a = parser().parse_args(argv)
    for port_name in ("metrics_port", "health_port", "webhook_port"):
        port = getattr(a, port_name)
        if not 0 <= port <= 65535:
            parser().error(f"--{port_name.replace('_', '-')} must be between 0 and 65535, got {port}")
    if a.webhook_port and not a.webhook_token_file:
        parser().error(f"--webhook-port {a.webhook_port} needs --webhook-token-file: the receiver accepts only requests with "
                       "that bearer token (set --webhook-port 0 to serve no webhook)")
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
        webhook_port=a.webhook_port,
        webhook_token_file=a.webhook_token_file,
        trainer_image=a.trainer_image,
        leader_election=leader_election,
        lease_name=a.lease_name,
        lease_namespace=a.lease_namespace,
    )
