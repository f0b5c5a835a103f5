from __future__ import annotations

import pytest

from fmop.config import from_args


def test_defaults_watch_the_whole_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FMOP_NAMESPACES", "FMOP_METRICS_PORT", "FMOP_RESYNC_SECONDS"):
        monkeypatch.delenv(var, raising=False)
    cfg = from_args([])
    assert cfg.clusterwide and cfg.metrics_port == 9090 and cfg.resync_seconds == 10


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMOP_NAMESPACES", "a, b")
    monkeypatch.setenv("FMOP_METRICS_PORT", "9100")
    cfg = from_args(["--metrics-port", "9200"])
    assert cfg.namespaces == ("a", "b") and not cfg.clusterwide
    assert cfg.metrics_port == 9200


def test_bad_port_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        from_args(["--health-port", "70000"])
    assert "--health-port must be between 0 and 65535" in capsys.readouterr().err


def test_webhook_is_off_unless_a_port_and_a_token_file_are_given(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("FMOP_WEBHOOK_PORT", "FMOP_WEBHOOK_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    assert from_args([]).webhook_port == 0
    monkeypatch.setenv("FMOP_WEBHOOK_TOKEN_FILE", "/var/run/secrets/fmops/webhook/token")
    cfg = from_args(["--webhook-port", "8081"])
    assert (cfg.webhook_port, cfg.webhook_token_file) == (8081, "/var/run/secrets/fmops/webhook/token")
    monkeypatch.delenv("FMOP_WEBHOOK_TOKEN_FILE")
    with pytest.raises(SystemExit):
        from_args(["--webhook-port", "8081"])
    assert "--webhook-port 8081 needs --webhook-token-file" in capsys.readouterr().err
