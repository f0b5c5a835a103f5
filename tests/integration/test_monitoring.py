"""The local monitoring stack without a node: Debian's Prometheus evaluating the chart's alert rules
every second, Debian's Alertmanager posting to a webhook receiver (an HTTP server in this test) with
the bearer token from its file."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from fmdev.local.common import Supervisor, free_port
from fmdev.local.monitoring import Monitoring
from fmop.rollout import naming
from tests.integration.prom import wait_scraped


class Receiver:
    """Records each POST: (path, Authorization header, JSON body)."""

    def __init__(self) -> None:
        self.posts: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                posts.put((self.path, self.headers.get("Authorization", ""), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alertmanager"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_error_rate_alert_reaches_the_webhook_with_the_token(tmp_path: Path, receiver: Receiver) -> None:
    registry = CollectorRegistry()
    labels = [naming.PROM_NAMESPACE_LABEL, naming.PROM_ROLLOUT_LABEL, naming.PROM_REVISION_LABEL, naming.PROM_ISVC_LABEL]
    success = Gauge("nv_inference_request_success", "ok", labels, registry=registry)
    failure = Gauge("nv_inference_request_failure", "failed", labels, registry=registry)
    canary = ("team-a", "ro", "2", naming.isvc_name("ro", 2))
    stable = ("team-a", "ro", "1", naming.isvc_name("ro", 1))
    # A failing series without a namespace (a scrape that lost the label): it must raise no alert, since an
    # alert without a namespace belongs to no tenant (the chart's rules select namespace!="").
    unscoped = ("", "ro", "3", naming.isvc_name("ro", 3))
    for side in (canary, stable, unscoped):
        success.labels(*side)
        failure.labels(*side)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    sup = Supervisor(tmp_path)
    mon = Monitoring(tmp_path, static={"triton": [f"127.0.0.1:{port}"]}, webhook_url=receiver.url, webhook_token_file=token,
                     rollout_for="1s")
    try:
        endpoints = mon.start(sup)
        assert endpoints["prometheus"] == mon.prometheus_url and mon.prometheus_port != 9090
        wait_scraped(mon, 'sum(nv_inference_request_failure{rollout="ro"})', 0)  # at 0 first, so rate() sees the step below
        success.labels(*canary).inc(90)
        failure.labels(*canary).inc(10)  # 10% of the canary's requests fail
        failure.labels(*unscoped).inc(50)
        success.labels(*stable).inc(100)  # the stable is healthy
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                path, auth, body = receiver.posts.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            firing = [a for a in body["alerts"] if a["status"] == "firing" and a["labels"]["alertname"] == "FmRolloutErrorRate"]
            if firing:
                break
        else:
            firing = []
        assert firing, f"no FmRolloutErrorRate alert reached the webhook in 60s; Prometheus log:\n{sup.log_tail('prometheus')}"
        assert path == "/alertmanager" and auth == "Bearer s3cret-token"
        (alert,) = firing  # the stable's error rate is 0: only the canary's revision fires
        assert {k: alert["labels"][k] for k in labels} == dict(zip(labels, canary, strict=True))
        assert "team-a/ro" in alert["annotations"]["summary"]
        # Both would fire in the same evaluation: whatever else arrives in the next seconds has a namespace.
        later = [body]
        until = time.monotonic() + 5
        while time.monotonic() < until:
            try:
                later.append(receiver.posts.get(timeout=until - time.monotonic())[2])
            except queue.Empty:
                break
        unscoped_alerts = [a["labels"] for b in later for a in b["alerts"] if not a["labels"].get("namespace")]
        assert unscoped_alerts == [], f"alerts without a namespace label: {unscoped_alerts}"
    finally:
        sup.stop_all()
        server.shutdown()
        server.server_close()
