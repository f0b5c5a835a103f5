from __future__ import annotations

from pathlib import Path

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


def test_leader_election_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FMOP_LEADER_ELECTION", "FMOP_LEASE_NAME", "FMOP_LEASE_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)
    cfg = from_args([])
    assert (cfg.leader_election, cfg.lease_name, cfg.lease_namespace) == (True, "fm-operator", "")
    cfg = from_args(["--lease-name", "fmop-fm-operator", "--lease-namespace", "fmops"])
    assert (cfg.lease_name, cfg.lease_namespace) == ("fmop-fm-operator", "fmops")


@pytest.mark.parametrize(("env", "argv", "on"), [
    pytest.param(None, ["--no-leader-election"], False, id="flag-off"),
    pytest.param("false", [], False, id="env-off"),
    pytest.param("0", [], False, id="env-0"),
    pytest.param("false", ["--leader-election"], True, id="flag-beats-env"),
    pytest.param("yes", [], True, id="env-yes"),
])
def test_leader_election_flag_and_environment(monkeypatch: pytest.MonkeyPatch, env: str | None, argv: list[str], on: bool) -> None:
    if env is None:
        monkeypatch.delenv("FMOP_LEADER_ELECTION", raising=False)
    else:
        monkeypatch.setenv("FMOP_LEADER_ELECTION", env)
    assert from_args(argv).leader_election is on


@pytest.mark.parametrize(("argv", "env", "says"), [
    pytest.param(["--lease-name", "Fm_Operator"], {}, "--lease-name 'Fm_Operator' is not a valid Kubernetes name", id="bad-lease-name"),
    pytest.param(["--lease-namespace=team_a"], {}, "--lease-namespace 'team_a' is not a valid Kubernetes name", id="bad-lease-namespace"),
    pytest.param(["--lease-name", ""], {}, "--lease-name '' is not a valid Kubernetes name", id="empty-lease-name"),
    pytest.param([], {"FMOP_LEADER_ELECTION": "maybe"}, "FMOP_LEADER_ELECTION='maybe' must be one of", id="bad-environment"),
])
def test_bad_lease_settings_are_clear_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str],
                                             env: dict[str, str], says: str) -> None:
    monkeypatch.delenv("FMOP_LEADER_ELECTION", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit):
        from_args(argv)
    assert says in capsys.readouterr().err


def test_no_leader_election_does_not_check_the_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMOP_LEADER_ELECTION", raising=False)
    assert not from_args(["--no-leader-election", "--lease-name", "Whatever"]).leader_election


def test_idle_rollouts_are_reread_every_30_resyncs_unless_told() -> None:
    assert from_args([]).rollout_idle_seconds == 300.0
    assert from_args(["--resync-seconds=2"]).rollout_idle_seconds == 60.0
    assert from_args(["--rollout-idle-seconds=45"]).rollout_idle_seconds == 45.0


def test_the_daemon_sleeps_as_the_decision_says() -> None:
    """Busy: a tick. Idle: until the engine's next clock-driven change, between a tick and the idle period."""
    from datetime import UTC, datetime, timedelta

    from fmop.handlers import _sleep

    cfg, now = from_args([]), datetime(2026, 1, 1, tzinfo=UTC)
    assert _sleep(cfg, True, now, now) == 1.0
    assert _sleep(cfg, False, None, now) == 300.0
    assert _sleep(cfg, False, now + timedelta(seconds=42), now) == 42.0
    assert _sleep(cfg, False, now - timedelta(seconds=5), now) == 1.0
    assert _sleep(cfg, False, now + timedelta(hours=2), now) == 300.0


@pytest.fixture(scope="module")
def webhook_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A server certificate and key (openssl, fmdev.local.pki), and the key of another certificate."""
    from fmdev.local import pki

    d = tmp_path_factory.mktemp("pki")
    pki.ensure_ca(d)
    crt, key = pki.issue(d, "webhook", "fm-operator-webhook", ips=("127.0.0.1",))
    _, other_key = pki.issue(d, "other", "someone-else", ips=("127.0.0.1",))
    return str(crt), str(key), str(other_key)


def test_webhook_tls_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch, webhook_cert: tuple[str, str, str]) -> None:
    import ssl

    crt, key, _ = webhook_cert
    for var in ("FMOP_WEBHOOK_TLS_CERT", "FMOP_WEBHOOK_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    plain = from_args([])
    assert (plain.webhook_tls_cert, plain.webhook_tls_key, plain.webhook_ssl_context()) == ("", "", None)
    cfg = from_args(["--webhook-tls-cert", crt, "--webhook-tls-key", key])
    assert (cfg.webhook_tls_cert, cfg.webhook_tls_key) == (crt, key)
    assert isinstance(cfg.webhook_ssl_context(), ssl.SSLContext)
    monkeypatch.setenv("FMOP_WEBHOOK_TLS_CERT", crt)
    monkeypatch.setenv("FMOP_WEBHOOK_TLS_KEY", key)
    assert (from_args([]).webhook_tls_cert, from_args([]).webhook_tls_key) == (crt, key)


@pytest.mark.parametrize(("which", "says"), [
    pytest.param("cert-only", "--webhook-tls-cert needs --webhook-tls-key", id="a-cert-without-its-key"),
    pytest.param("key-only", "--webhook-tls-key needs --webhook-tls-cert", id="a-key-without-its-certificate"),
    pytest.param("missing", "No such file or directory", id="an-unreadable-file"),
    pytest.param("wrong-key", "the key unencrypted and belonging to the certificate", id="the-key-of-another-certificate"),
    pytest.param("not-pem", "cannot load the TLS certificate", id="not-a-certificate"),
])
def test_webhook_tls_mistakes_are_clear_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              webhook_cert: tuple[str, str, str], which: str, says: str) -> None:
    crt, key, other_key = webhook_cert
    for var in ("FMOP_WEBHOOK_TLS_CERT", "FMOP_WEBHOOK_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    garbage = tmp_path / "tls.crt"
    garbage.write_text("not a certificate")
    argv = {"cert-only": ["--webhook-tls-cert", crt], "key-only": ["--webhook-tls-key", key],
            "missing": ["--webhook-tls-cert", str(tmp_path / "absent.crt"), "--webhook-tls-key", key],
            "wrong-key": ["--webhook-tls-cert", crt, "--webhook-tls-key", other_key],
            "not-pem": ["--webhook-tls-cert", str(garbage), "--webhook-tls-key", key]}[which]
    with pytest.raises(SystemExit):
        from_args(argv)
    assert says in capsys.readouterr().err


def test_cluster_alert_labels_trust_none_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMOP_CLUSTER_ALERT_LABELS", raising=False)
    assert from_args([]).cluster_alert_labels == ()
    monkeypatch.setenv("FMOP_CLUSTER_ALERT_LABELS", " source=platform, fmops_scope = cluster ,")
    assert from_args([]).cluster_alert_labels == (("fmops_scope", "cluster"), ("source", "platform"))
    assert from_args(["--cluster-alert-labels", "team=sre"]).cluster_alert_labels == (("team", "sre"),)  # the flag beats the env


@pytest.mark.parametrize(("value", "says"), [
    pytest.param("fmops_scope", "'fmops_scope' is not a label name=value pair", id="no-value"),
    pytest.param("fmops_scope=", "'fmops_scope=' is not a label name=value pair", id="empty-value-would-trust-a-missing-label"),
    pytest.param("=cluster", "'=cluster' is not a label name=value pair", id="no-name"),
    pytest.param("fmops-scope=cluster", "'fmops-scope=cluster' is not a label name=value pair", id="not-a-prometheus-label-name"),
    pytest.param("namespace=monitoring", "the namespace label cannot be trusted for every namespace", id="namespace"),
    pytest.param("a=1,a=2", "label 'a' is given twice", id="twice"),
])
def test_bad_cluster_alert_labels_are_clear_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str,
                                                   says: str) -> None:
    monkeypatch.delenv("FMOP_CLUSTER_ALERT_LABELS", raising=False)
    with pytest.raises(SystemExit):
        from_args(["--cluster-alert-labels", value])
    err = capsys.readouterr().err
    assert "--cluster-alert-labels: " in err and says in err, err


def test_prometheus_allow_defaults_to_the_default_url_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMOP_PROMETHEUS_ALLOW", raising=False)
    assert from_args([]).prometheus_allow == ()
    monkeypatch.setenv("FMOP_PROMETHEUS_ALLOW", "https://thanos.monitoring.svc/prometheus, http://prometheus.{namespace}.svc:9090,")
    assert from_args([]).prometheus_allow == ("https://thanos.monitoring.svc/prometheus", "http://prometheus.{namespace}.svc:9090")
    assert from_args(["--prometheus-allow", "http://p:9090"]).prometheus_allow == ("http://p:9090",)


@pytest.mark.parametrize(("entry", "says"), [
    ("prometheus:9090", "is not an http:// or https:// URL"),
    ("http://user:pw@prometheus:9090", "carries user info"),
    ("http://prometheus:9090/?x=1", "carries a query string"),
    ("http://prometheus:9090/#", "carries a fragment"),
    ("http://prometheus:port", "is not a URL"),
])
def test_prometheus_allow_refuses_what_is_not_a_base_url(capsys: pytest.CaptureFixture[str], entry: str, says: str) -> None:
    with pytest.raises(SystemExit):
        from_args(["--prometheus-allow", f"http://ok:9090,{entry}"])
    err = capsys.readouterr().err
    assert "--prometheus-allow" in err and says in err and entry in err
