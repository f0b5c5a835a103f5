"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager.

Built from Go modules by `hack/build-tools.sh` into the cache (default ~/.cache/fm-operator).
Used by the integration tests (as a context manager) and by people (`make cluster-up`):

    python -m fmop.localcluster up        # start in the background, print the kubeconfig path
    python -m fmop.localcluster status
    python -m fmop.localcluster down

There is no kubelet or scheduler: objects are stored, validated, admitted, authorised and
garbage-collected exactly as on a real cluster, but Pods never run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CACHE = Path(os.environ.get("FMOP_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fm-operator"))
BIN = CACHE / "bin"
THIRD_PARTY_CRDS = CACHE / "crds"
DEFAULT_DIR = CACHE / "cluster"
REPO_CRDS = Path(__file__).resolve().parents[2] / "crds"
SERVICE_CIDR = "10.96.0.0/16"


class ClusterError(RuntimeError):
    """The local control plane could not start; the message says what to run or read."""


def binary(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise ClusterError(f"{path} is missing: run `make setup` (hack/build-tools.sh) to build it from Go modules")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving certificate (127.0.0.1, localhost) and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "apiserver.crt").exists():
        return
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-subj", "/CN=fm-operator-local-ca", "-days", "3650", cwd=pki)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-subj", "/CN=kube-apiserver", cwd=pki)
    (pki / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes.default.svc\n")
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "apiserver.crt", "-days", "3650", "-extfile", "san.ext", cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, ca_file: Path, token: str, user: str = "admin") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fmop-local", "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(ca_file.read_bytes()).decode(),
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": f"{user}@fmop-local", "context": {"cluster": "fmop-local", "user": user, "namespace": "default"}}],
        "current-context": f"{user}@fmop-local",
    }


@dataclass
class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager in one directory.

    attached=True (tests): the processes die with this Python process (PR_SET_PDEATHSIG) and on stop().
    attached=False (CLI): they run on in their own session; `down` stops them from the state file.
    """

    workdir: Path
    attached: bool = True
    etcd_port: int = 0
    apiserver_port: int = 0
    token: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    @property
    def kubeconfig_path(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    # ------------------------------------------------------------------ start/stop
    def start(self, timeout: float = 120.0) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki = self.workdir / "pki"
        make_pki(pki)
        self.etcd_port, peer_port = free_port(), free_port()
        self.apiserver_port = free_port()
        self.token = secrets.token_hex(24)
        (pki / "tokens.csv").write_text(f'{self.token},admin,admin-uid,"system:masters"\n')
        self.kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(self.server, pki / "ca.crt", self.token)))

        etcd_data = self.workdir / "etcd"
        shutil.rmtree(etcd_data, ignore_errors=True)
        self._spawn("etcd", [
            binary("etcd"), "--name=default", f"--data-dir={etcd_data}",
            f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=2147483648",
        ])
        self._wait("etcd", f"http://127.0.0.1:{self.etcd_port}/health", timeout, ok=lambda b: b'"health":"true"' in b)

        self._spawn("kube-apiserver", [
            binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=false",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--event-ttl=1h",
            "--shutdown-delay-duration=0s", "--shutdown-watch-termination-grace-period=1s",
            "--v=1",
        ])
        self._wait("kube-apiserver", f"{self.server}/readyz", timeout, ok=lambda b: b.strip() == b"ok")

        self._spawn("kube-controller-manager", [
            binary("kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig_path}",
            f"--authentication-kubeconfig={self.kubeconfig_path}",
            f"--authorization-kubeconfig={self.kubeconfig_path}",
            # ownerReferences cascade (garbage collector), namespaces delete their contents,
            # every namespace gets its default ServiceAccount.
            "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--leader-elect=false", "--secure-port=0", "--concurrent-gc-syncs=5", "--v=1",
        ])
        time.sleep(0.5)
        self._check_alive()
        (self.workdir / "state.json").write_text(json.dumps({
            "pids": self.pids, "server": self.server, "kubeconfig": str(self.kubeconfig_path),
        }))
        return self

    def stop(self) -> None:
        for name, pid in reversed(list(self.pids.items())):
            _terminate(pid, name)
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs.clear()
        self.pids.clear()
        (self.workdir / "state.json").unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        preexec = _die_with_parent if self.attached else None
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=not self.attached, preexec_fn=preexec)
        log.close()
        self._procs.append(proc)
        self.pids[name] = proc.pid

    def _check_alive(self) -> None:
        for proc, name in zip(self._procs, self.pids, strict=True):
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {proc.returncode}; last lines of {self.workdir / (name + '.log')}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    def _wait(self, name: str, url: str, timeout: float, ok: Any) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file)) if url.startswith("https") else None
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
            try:
                with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                    body = resp.read()
                    if ok(body):
                        return
                    last = body.decode(errors="replace")[:300]
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            time.sleep(0.3)
        raise ClusterError(f"{name} not ready after {timeout:.0f}s at {url} ({last}); log:\n{self.log_tail(name)}")

    # ------------------------------------------------------------------ CRDs
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary("kubectl"), f"--kubeconfig={self.kubeconfig_path}", *args],
                              input=input, text=True, capture_output=True, check=check)

    def install_crds(self, third_party: bool = True, ours: bool = True) -> list[str]:
        """Server-side apply (some third-party CRDs exceed client-side apply's annotation limit)."""
        files: list[Path] = []
        if third_party:
            found = sorted(THIRD_PARTY_CRDS.glob("*.yaml"))
            if not found:
                raise ClusterError(f"no third-party CRDs in {THIRD_PARTY_CRDS}: run `make setup` (hack/build-tools.sh)")
            files += found
        if ours:
            files += sorted(REPO_CRDS.glob("*.yaml"))
        for path in files:
            result = self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fm-operator-dev", "-f", str(path), check=False)
            if result.returncode:
                raise ClusterError(f"installing {path.name} failed: {result.stderr.strip()}")
        names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in files]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
        return names


def _die_with_parent() -> None:
    """Child-side: receive SIGTERM when the parent dies, so a killed test run leaves no orphans."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _terminate(pid: int, name: str, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if _is_zombie(pid):
                return
        except ProcessLookupError:
            return
        time.sleep(0.1)
    print(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f}s; killing it", file=sys.stderr)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


# ---------------------------------------------------------------------- CLI
def _cli_up(args: argparse.Namespace) -> int:
    workdir: Path = args.dir
    state = workdir / "state.json"
    if state.exists() and _running(json.loads(state.read_text())):
        print(f"already running; export KUBECONFIG={workdir / 'kubeconfig'}")
        return 0
    cluster = LocalCluster(workdir=workdir, attached=False)
    t0 = time.monotonic()
    try:
        cluster.start()
        if not args.no_crds:
            names = cluster.install_crds()
            print(f"installed {len(names)} CRDs")
    except (ClusterError, subprocess.CalledProcessError) as err:
        cluster.stop()
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"control plane up in {time.monotonic() - t0:.1f}s at {cluster.server}")
    print(f"export KUBECONFIG={cluster.kubeconfig_path}")
    return 0


def _running(state: dict[str, Any]) -> bool:
    return any(_alive(pid) for pid in state.get("pids", {}).values())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


def _cli_down(args: argparse.Namespace) -> int:
    state = args.dir / "state.json"
    if not state.exists():
        print("not running")
        return 0
    for name, pid in reversed(list(json.loads(state.read_text())["pids"].items())):
        _terminate(pid, name)
    state.unlink()
    print("stopped")
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    state = args.dir / "state.json"
    if not state.exists():
        print("not running")
        return 1
    data = json.loads(state.read_text())
    for name, pid in data["pids"].items():
        print(f"{name:24} pid {pid:<8} {'running' if _alive(pid) else 'DEAD'}")
    print(f"export KUBECONFIG={data['kubeconfig']}")
    return 0 if all(_alive(p) for p in data["pids"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmop.localcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("FMOP_CLUSTER_DIR", DEFAULT_DIR)),
                        help="state directory (kubeconfig, logs, etcd data); default %(default)s")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start in the background and install CRDs")
    up.add_argument("--no-crds", action="store_true", help="do not install the CRDs")
    up.set_defaults(func=_cli_up)
    sub.add_parser("down", help="stop").set_defaults(func=_cli_down)
    sub.add_parser("status", help="show processes").set_defaults(func=_cli_status)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

