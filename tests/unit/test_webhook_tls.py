"""The Alertmanager webhook receiver over TLS, for real: `webhook.start` on a local port with the context
the operator builds from --webhook-tls-cert/--webhook-tls-key, certificates made by openssl with a CA of
the test's own (fmdev.local.pki, what the local cluster uses). HTTPS with the token is answered; plain
HTTP and a client that does not trust the CA get nothing; a renewed certificate (cert-manager rewriting
tls.crt/tls.key) is served from the next connection on, without a restart; a broken renewal keeps the
last good one."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fmdev.local import pki
from fmop.config import Config, from_args
from fmop.rollout import webhook
from fmop.rollout.types import Alert

TOKEN = "s3cret-t0ken"
FIRING = {"version": "4", "status": "firing", "receiver": "fm-operator", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
          "externalURL": "http://alertmanager", "groupKey": "{}", "truncatedAlerts": 0,
          "alerts": [{"status": "firing", "labels": {"alertname": "CanaryErrors", "severity": "critical", "namespace": "team-a"},
                      "annotations": {}, "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                      "generatorURL": "http://prometheus", "fingerprint": "fp-tls"}]}
ROLLOUTS = [{"metadata": {"namespace": "team-a", "name": "reco"},
             "spec": {"rollback": {"alerts": {"matchers": [{"name": "severity", "value": "critical"}]}}}}]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and two server certificates for 127.0.0.1 it signed: the first one and its renewal."""
    d = tmp_path_factory.mktemp("pki")
    pki.ensure_ca(d)
    pki.issue(d, "webhook", "fm-operator-webhook", ips=("127.0.0.1",))
    pki.issue(d, "renewed", "fm-operator-webhook-renewed", ips=("127.0.0.1",))
    return d


def _mount(ca: Path, name: str, secret: Path) -> None:
    """What the kubelet does with a Secret's update: the new tls.crt and tls.key replace the old at once."""
    secret.mkdir(exist_ok=True)
    for src, dst in ((f"{name}.crt", "tls.crt"), (f"{name}.key", "tls.key")):
        shutil.copyfile(ca / src, secret / f".{dst}.new")
        os.replace(secret / f".{dst}.new", secret / dst)


def _config(secret: Path, token: Path) -> Config:
    return from_args(["--webhook-port=8081", f"--webhook-token-file={token}",
                      f"--webhook-tls-cert={secret / 'tls.crt'}", f"--webhook-tls-key={secret / 'tls.key'}"])


def _serve(cfg: Config, scenario: Callable[[int, list[str]], Awaitable[None]]) -> list[str]:
    """Run the real receiver (as handlers.start_webhook starts it) on a free port around `scenario(port, calls)`."""
    calls: list[str] = []

    async def on_alerts(namespace: str, name: str, alerts: tuple[Alert, ...]) -> str:
        calls.append(f"{namespace}/{name}: {', '.join(a.name for a in alerts)}")
        return "rolled back"

    async def main() -> None:
        server = await webhook.start(lambda: ROLLOUTS, on_alerts, cfg.webhook_token_file, host="127.0.0.1", port=0,
                                     ssl_context=cfg.webhook_ssl_context())
        try:
            await scenario(server.port, calls)
        finally:
            await server.stop()

    asyncio.run(main())
    return calls


async def _peer_subject(port: int, ca: Path) -> str:
    """The CN of the certificate the receiver presents to a client that trusts the CA."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context(cafile=str(ca / "ca.crt")))
    try:
        cert: Any = writer.get_extra_info("peercert")
        return str(dict(x[0] for x in cert["subject"])["commonName"])
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    return path


def test_https_with_the_token_is_answered_and_plain_http_is_refused(ca: Path, tmp_path: Path, token: Path) -> None:
    _mount(ca, "webhook", tmp_path / "secret")
    answers: dict[str, Any] = {}

    async def scenario(port: int, calls: list[str]) -> None:
        trusted = ssl.create_default_context(cafile=str(ca / "ca.crt"))
        async with aiohttp.ClientSession() as http:
            async with http.post(f"https://127.0.0.1:{port}{webhook.PATH}", json=FIRING, ssl=trusted,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                answers["https"] = (r.status, await r.json())
            async with http.post(f"https://127.0.0.1:{port}{webhook.PATH}", json=FIRING, ssl=trusted,
                                 headers={"Authorization": "Bearer wrong"}) as r:
                answers["wrong token"] = r.status
            with pytest.raises(aiohttp.ClientError):  # the TLS server reads an HTTP request as a bad handshake
                async with http.post(f"http://127.0.0.1:{port}{webhook.PATH}", json=FIRING,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    answers["plain http"] = r.status
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # a client that does not trust the CA
                async with http.post(f"https://127.0.0.1:{port}{webhook.PATH}", json=FIRING, ssl=ssl.create_default_context(),
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    answers["untrusted"] = r.status

    calls = _serve(_config(tmp_path / "secret", token), scenario)
    status, body = answers["https"]
    assert status == 200 and [m["rollout"] for m in body["matched"]] == ["team-a/reco"]
    assert answers["wrong token"] == 401
    assert "plain http" not in answers and "untrusted" not in answers
    assert calls == ["team-a/reco: CanaryErrors"]  # once: the refused requests reached nothing


def test_a_renewed_certificate_is_served_from_the_next_connection(ca: Path, tmp_path: Path, token: Path) -> None:
    secret = tmp_path / "secret"
    _mount(ca, "webhook", secret)
    seen: list[str] = []

    async def scenario(port: int, _: list[str]) -> None:
        seen.append(await _peer_subject(port, ca))
        _mount(ca, "renewed", secret)  # cert-manager renewed it; the kubelet updated the mounted Secret
        seen.append(await _peer_subject(port, ca))
        (secret / "tls.key").write_text("not a key")  # a broken renewal: the last good pair stays
        (secret / "tls.crt").write_text("not a certificate")
        seen.append(await _peer_subject(port, ca))
        _mount(ca, "webhook", secret)  # fixed: served again
        seen.append(await _peer_subject(port, ca))

    _serve(_config(secret, token), scenario)
    assert seen == ["fm-operator-webhook", "fm-operator-webhook-renewed", "fm-operator-webhook-renewed", "fm-operator-webhook"]


def test_without_tls_flags_the_receiver_speaks_plain_http(token: Path) -> None:
    cfg = from_args(["--webhook-port=8081", f"--webhook-token-file={token}"])
    assert cfg.webhook_ssl_context() is None
    statuses: list[int] = []

    async def scenario(port: int, _: list[str]) -> None:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{webhook.HEALTH_PATH}") as r:
            statuses.append(r.status)

    _serve(cfg, scenario)
    assert statuses == [200]
