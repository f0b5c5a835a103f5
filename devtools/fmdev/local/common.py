"""Paths, process supervision and small helpers shared by the local runtime's parts."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("FMOP_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fm-operator"))
BIN = CACHE / "bin"
THIRD_PARTY_CRDS = CACHE / "crds"
KSERVE_CONFIG = CACHE / "kserve"
DEFAULT_DIR = CACHE / "cluster"


def _checkout() -> Path:
    """The source checkout fmdev runs from: the developer tooling is never installed elsewhere (setup
    installs it editable), and it reads the checkout's crds/, workflows/, model/ and Dockerfile.
    FMOP_REPO names another checkout."""
    if os.environ.get("FMOP_REPO"):
        return Path(os.environ["FMOP_REPO"]).resolve()
    here = Path(__file__).resolve()
    return next((p for p in here.parents if (p / "devtools").is_dir() and (p / "crds").is_dir()), here.parents[3])


REPO = _checkout()
REPO_CRDS = REPO / "crds"
Log = Callable[[str], Any]


class ClusterError(RuntimeError):
    """The local runtime could not start or stop; the message says what to run or read."""


def binary(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise ClusterError(f"{path} is missing: run `make setup` (hack/build-tools.sh) to build it from Go modules")
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run(argv: list[str], what: str, timeout: float = 600, input: str | None = None,
        env: dict[str, str] | None = None) -> str:
    """Run a command; on failure raise ClusterError with what it was for and the end of its output."""
    try:
        done = subprocess.run(argv, input=input, text=True, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        raise ClusterError(f"{what}: `{' '.join(argv[:4])} ...` did not finish in {timeout:.0f}s") from err
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ClusterError(f"{what}: `{' '.join(argv[:4])} ...` exited {done.returncode}:\n{tail}")
    return done.stdout


def wait_http(url: str, timeout: float, ok: Callable[[bytes], bool], what: str, ca_file: Path | None = None,
              token: str | None = None, alive: Callable[[], None] | None = None) -> None:
    """Poll url until ok(body); alive() raises if the process behind it died."""
    ctx = ssl.create_default_context(cafile=str(ca_file)) if url.startswith("https") else None
    if ctx is not None and ca_file is None:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if alive:
            alive()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5, context=ctx) as resp:
                body = resp.read()
                if ok(body):
                    return
                last = body.decode(errors="replace")[:300]
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        time.sleep(0.3)
    raise ClusterError(f"{what} not ready after {timeout:.0f}s at {url} ({last})")


@dataclass
class Supervisor:
    """Starts the runtime's processes, each logging to <workdir>/<name>.log, and stops them in reverse.

    attached=True (tests): children die with this Python process (PR_SET_PDEATHSIG) and on stop_all().
    attached=False (CLI): they run on in their own session; the pids are in <workdir>/state.json.
    """

    workdir: Path
    attached: bool = True
    pids: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        preexec = _die_with_parent if self.attached else None
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=not self.attached, preexec_fn=preexec)
        log.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid

    def check_alive(self, *names: str) -> None:
        for name, proc in self._procs.items():
            if (not names or name in names) and proc.poll() is not None:
                raise ClusterError(f"{name} exited with code {proc.returncode}; last lines of "
                                   f"{self.workdir / (name + '.log')}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    def stop(self, name: str) -> None:
        pid = self.pids.pop(name, None)
        if pid is not None:
            terminate(pid, name)
        proc = self._procs.pop(name, None)
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def stop_all(self) -> None:
        for name in reversed(list(self.pids)):
            self.stop(name)

    def save(self, **extra: object) -> None:
        (self.workdir / "state.json").write_text(json.dumps({"pids": self.pids, **extra}, indent=1))


def _die_with_parent() -> None:
    """Child-side: receive SIGTERM when the parent dies, so a killed test run leaves no orphans."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def terminate(pid: int, name: str, grace: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    print(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f}s; killing it", file=sys.stderr)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# One user's v2 request in the served model's raw-ID contract: what `fmdev.local load` and the demo send.
INFER_REQUEST: dict[str, Any] = {"inputs": [
    {"name": "ITEMS", "datatype": "BYTES", "shape": [1, 3], "data": ["50", "172", "133"]},
    {"name": "TIMESTAMPS", "datatype": "INT64", "shape": [1, 3], "data": [881250949, 881251000, 881251200]},
    {"name": "ACTIONS", "datatype": "BYTES", "shape": [1, 3], "data": ["5", "4", "3"]},
    {"name": "K", "datatype": "INT32", "shape": [1, 1], "data": [5]}]}
