"""Helpers for integration tests: waiting, and running the operator as a real process."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client

from fmdev.local.common import binary, free_port

GROUP, VERSION = "fmops.dev", "v1alpha1"
CHART = Path(__file__).resolve().parents[2] / "charts" / "fm-operator"
RBAC_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 60.0, what: str = "condition", interval: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def get(api: Any, plural: str, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    return obj


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def wait_condition(api: Any, plural: str, namespace: str, name: str, type_: str, status: str,
                   reason: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        c = condition(get(api, plural, namespace, name), type_)
        if c and c["status"] == status and (reason is None or c["reason"] == reason):
            return c
        return None
    return wait_for(probe, timeout, f"{plural}/{name} condition {type_}={status} ({reason})")


class OperatorProcess:
    """`python -m fmop` as a subprocess, logged to a file, with its metrics and health ports.

    Leader election is off unless asked for (`leader_election=True`, with its Lease in `extra` or the
    kubeconfig's namespace): each test's operator acts alone, at once, as before. `env` adds to the
    process' environment (POD_NAME, POD_NAMESPACE: what the chart's downward API gives a replica)."""

    def __init__(self, kubeconfig: Path, log: Path, resync: float = 1.0, metrics_port: int | None = None,
                 extra: list[str] | None = None, env: dict[str, str] | None = None, leader_election: bool = False) -> None:
        self.kubeconfig, self.log_path = kubeconfig, log
        self.metrics_port, self.health_port = metrics_port or free_port(), free_port()
        self.resync = resync
        self.extra = list(extra or [])
        self.env = dict(env or {})
        self.leader_election = leader_election
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> OperatorProcess:
        """Start it and (wait) return once /healthz answers and, where the operator has /readyz, it is ready:
        acting alone, its startup done; a standby, able to read its Lease."""
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1",
               "FMOP_LEADER_ELECTION": "true" if self.leader_election else "false", **self.env}
        argv = [sys.executable, "-m", "fmop", "--log-format=plain", f"--resync-seconds={self.resync}",
                f"--metrics-port={self.metrics_port}", f"--health-port={self.health_port}", "--bind-address=127.0.0.1", *self.extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_for(self._healthy, 60, f"operator /healthz (log: {self.log_path})")
            wait_for(lambda: self._healthy() and self.probe("/readyz")[0] in (200, 404), 60, f"operator /readyz (log: {self.log_path})")
        return self

    def probe(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET a health endpoint: (status, JSON body or {}); (0, {}) when nothing listens."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=2) as r:
                return r.status, _json_or_empty(r.read())
        except urllib.error.HTTPError as e:
            return e.code, _json_or_empty(e.read())
        except OSError:
            return 0, {}

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers, no last status write; what a node failure or the OOM killer does."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _json_or_empty(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


@dataclass(frozen=True)
class ChartIdentity:
    """The chart's ServiceAccount as the operator runs in namespaced mode: `kubeconfig` logs in with a token of it."""
    kubeconfig: Path
    release_namespace: str
    lease_name: str  # the one Lease its Role lets it hold (the chart's fullname for release fmop)
    rbac: list[dict[str, Any]]  # what the chart rendered and was applied

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.release_namespace}:{self.lease_name}"


def token_kubeconfig(cluster: Any, sa_namespace: str, sa: str, path: Path, duration: str = "1h") -> Path:
    """A kubeconfig for the cluster that logs in as ServiceAccount `sa` (a bound token, kubectl create token)."""
    token = cluster.kubectl("create", "token", sa, "-n", sa_namespace, f"--duration={duration}").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig_path.read_text())
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": admin["clusters"][0]["name"], "user": sa}}],
        "current-context": sa,
    }))
    return path


@contextmanager
def chart_identity(cluster: Any, release_namespace: str, watched: list[str], workdir: Path,
                   duration: str = "3h") -> Iterator[ChartIdentity]:
    """The chart rendered for release `fmop` with watchNamespaces=`watched` (helm template), only its RBAC applied
    (ServiceAccount, Roles and RoleBindings in the watched and the release namespace; nothing cluster-wide), and a
    kubeconfig of its ServiceAccount: the least privilege a platform team installs the operator with. The release
    namespace must exist; the watched ones too. Deletes what is cluster-wide afterwards (namespaced objects go with
    their namespaces)."""
    rendered = subprocess.run([binary("helm"), f"--kubeconfig={cluster.kubeconfig_path}", "template", "fmop", str(CHART),
                               "--namespace", release_namespace, "--set", f"watchNamespaces={{{','.join(watched)}}}"],
                              text=True, capture_output=True)
    assert rendered.returncode == 0, rendered.stderr
    rbac = [d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] in RBAC_KINDS]
    applied = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac), check=False)
    assert applied.returncode == 0, applied.stderr
    sa = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
    try:
        yield ChartIdentity(token_kubeconfig(cluster, release_namespace, sa, workdir / f"{sa}.kubeconfig", duration),
                            release_namespace, sa, rbac)
    finally:
        for d in rbac:
            if d["kind"].startswith("Cluster"):
                cluster.kubectl("delete", d["kind"].lower(), d["metadata"]["name"], "--ignore-not-found", check=False)


def rbac_denials(log: str) -> list[str]:
    """The lines of an operator log that report an RBAC denial: 'User "system:serviceaccount:..." cannot <verb>
    resource ...', which the API server answers with 403 Forbidden."""
    return [line for line in log.splitlines() if (" cannot " in line and "system:serviceaccount" in line) or "Forbidden" in line]


@contextmanager
def running_operator(kubeconfig: Path, log: Path, resync: float = 1.0, extra: list[str] | None = None) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, log, resync, extra=extra).start()
    try:
        yield op
    finally:
        op.stop()


def post_together(port: int, model: str, bodies: list[bytes],
                  headers: list[list[tuple[str, str | bytes]]] | None = None) -> list[tuple[int, dict[str, Any]]]:
    """POST each body to Triton's /v2/models/`model`/infer on 127.0.0.1:`port`, every request on its own connection
    and all written before any answer is read, so that those reaching the model share one dynamic batch; the
    (status, JSON answer) of each, in order. `headers[i]`: request i's extra header lines, sent as they are
    (repeated names, any bytes); Content-Type is application/json unless one of them says otherwise."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in bodies]
    try:
        for conn in conns:
            conn.connect()
        for conn, body, extra in zip(conns, bodies, headers or [[] for _ in bodies], strict=True):
            conn.putrequest("POST", f"/v2/models/{model}/infer")
            typed = any(name.lower() == "content-type" for name, _ in extra)
            for name, value in [*([] if typed else [("Content-Type", "application/json")]), ("Content-Length", str(len(body))), *extra]:
                conn.putheader(name, value)
            conn.endheaders(body)
        out = []
        for conn in conns:
            answer = conn.getresponse()
            out.append((answer.status, json.loads(answer.read() or b"{}")))
        return out
    finally:
        for conn in conns:
            conn.close()
