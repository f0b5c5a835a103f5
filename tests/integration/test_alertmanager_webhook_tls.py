"""Debian's Alertmanager, configured as the local cluster configures it (fmdev.local.monitoring: an https://
webhook URL, the webhook's own CA in tls_config.ca_file), delivers an alert to the operator's real
receiver serving the certificate that CA signed (--webhook-tls-cert/--webhook-tls-key, as `make demo`
and `make run` pass them). No node, no API server: Alertmanager, Prometheus and the receiver."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import yaml

from fmdev.local.common import Supervisor, free_port
from fmdev.local.monitoring import Monitoring
from fmop.config import from_args
from fmop.rollout import webhook
from fmop.rollout.types import Alert

ROLLOUTS = [{"metadata": {"namespace": "team-a", "name": "reco"},
             "spec": {"rollback": {"alerts": {"matchers": [{"name": "severity", "value": "critical"}]}}}}]


def test_alertmanager_posts_to_the_operator_over_tls(tmp_path: Path) -> None:
    port = free_port()
    sup = Supervisor(tmp_path)
    mon = Monitoring(tmp_path, webhook_url=f"https://127.0.0.1:{port}/alertmanager", rules=False)
    received: queue.Queue[str] = queue.Queue()

    async def on_alerts(namespace: str, name: str, alerts: tuple[Alert, ...]) -> str:
        received.put(f"{namespace}/{name}: {', '.join(a.name for a in alerts)}")
        return "rolled back"

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = None
    try:
        mon.start(sup)  # makes the webhook's CA and certificate, and points Alertmanager at them
        am_config = yaml.safe_load((mon.dir / "alertmanager.yml").read_text())
        http_config = am_config["receivers"][0]["webhook_configs"][0]["http_config"]
        assert mon.webhook_tls is not None and http_config["tls_config"] == {"ca_file": str(mon.webhook_tls[2])}
        assert mon.webhook_token_file is not None
        cfg = from_args([f"--webhook-port={port}", f"--webhook-token-file={mon.webhook_token_file}", *mon.operator_tls_args()])
        server = asyncio.run_coroutine_threadsafe(
            webhook.start(lambda: ROLLOUTS, on_alerts, cfg.webhook_token_file, host="127.0.0.1", port=port,
                          ssl_context=cfg.webhook_ssl_context()), loop).result(10)
        alert = [{"labels": {"alertname": "CanaryErrors", "severity": "critical", "namespace": "team-a"},
                  "startsAt": datetime.now(UTC).isoformat()}]
        request = urllib.request.Request(f"{mon.alertmanager_url}/api/v2/alerts", data=json.dumps(alert).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 200
        try:
            got = received.get(timeout=30)
        except queue.Empty:
            raise AssertionError(f"no alert reached the receiver over TLS in 30s; Alertmanager log:\n{sup.log_tail('alertmanager')}") from None
        assert got == "team-a/reco: CanaryErrors"
    finally:
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        sup.stop_all()
