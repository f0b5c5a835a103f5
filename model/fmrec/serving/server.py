"""Start the real Triton Inference Server bundled in the nvidia-pytriton wheel on a repository.

What the bundled server needs, found the hard way: this virtualenv's bin/ first on PATH (that is
how the python backend's embedded interpreter finds our packages), the wheel's
nvidia_pytriton.libs on LD_LIBRARY_PATH, a backend directory holding libtriton_python.so,
triton_python_backend_utils.py and the stub for this Python version, Debian's libpython3.11,
and every listener bound to 127.0.0.1. It forwards the bucket header of A/B experiments to the
models as a request parameter (fmrec.serving.protocol.FORWARD_ARGS), as a KServe runtime must.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fmrec.serving.protocol import FORWARD_ARGS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A private mount namespace (Linux, needs root) in which the repository is a read-only bind mount of
# itself; the shell then becomes tritonserver (same pid), so stop() still reaches it.
READ_ONLY = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"', "sh"]


def pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent


@dataclass
class TritonServer:
    repository: Path
    workdir: Path
    http_port: int = field(default_factory=_free_port)
    grpc_port: int = field(default_factory=_free_port)
    metrics_port: int = field(default_factory=_free_port)
    read_only: bool = False  # serve the repository through a read-only bind mount, as KServe mounts /mnt/models
    proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _backend_dir(self) -> Path:
        root = pytriton_root() / "tritonserver"
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / py / "triton_python_backend_stub"
        if not stub.exists():
            raise FileNotFoundError(f"{stub}: nvidia-pytriton has no python-backend stub for Python {py}")
        backend = self.workdir / "backends" / "python"
        backend.mkdir(parents=True, exist_ok=True)
        for src in (root / "backends" / "python" / "libtriton_python.so", root / "backends" / "python" / "triton_python_backend_utils.py", stub):
            link = backend / src.name
            if not link.exists():
                link.symlink_to(src)
        return backend.parent

    def start(self, timeout: float = 120.0) -> TritonServer:
        root = pytriton_root()
        libs = root.parent / "nvidia_pytriton.libs"
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p)
        argv = [str(root / "tritonserver" / "bin" / "tritonserver"),
                f"--model-repository={self.repository}", f"--backend-directory={self._backend_dir()}",
                "--http-address=127.0.0.1", f"--http-port={self.http_port}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}",
                "--metrics-address=127.0.0.1", f"--metrics-port={self.metrics_port}",
                "--allow-gpu-metrics=false", "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
                *FORWARD_ARGS]  # x-fmops-bucket reaches the models: experiment exposures and outcomes are counted
        if self.read_only:
            argv = [*READ_ONLY, str(self.repository.resolve()), *argv]
        log = open(self.workdir / "tritonserver.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        path = self.workdir / "tritonserver.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
