"""Operator metrics (prometheus-client), served on --metrics-port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("fmop_reconcile_total", "Reconciles by kind and result (changed, unchanged, retry, error).",
                     ["kind", "result"], registry=REGISTRY)
DURATION = Histogram("fmop_reconcile_duration_seconds", "Time spent in one reconcile, by kind.", ["kind"], registry=REGISTRY,
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
TRANSITIONS = Counter("fmop_condition_transitions_total", "Condition status changes, by kind, type and new status.",
                      ["kind", "type", "status"], registry=REGISTRY)
ROLLOUT_OUTCOMES = Counter("fmop_rollout_revisions_total", "Rollout revisions finished, by outcome (Promoted, RolledBack, Failed, Superseded).",
                           ["outcome"], registry=REGISTRY)
ALERT_ROLLBACKS = Counter("fmop_rollout_alert_rollbacks_total", "Rollbacks caused by an Alertmanager alert, by alert name.",
                          ["alertname"], registry=REGISTRY)
BUILD = Gauge("fmop_build_info", "Operator version.", ["version"], registry=REGISTRY)


def serve(port: int, address: str) -> None:
    if port:
        start_http_server(port, addr=address, registry=REGISTRY)
