"""`python -m fmdev up/down` as a person runs it: the node starts, survives a crash (a second
`up` starts clean), and `down` leaves no process, container, network namespace, bridge, cgroup or
mount behind.

This module runs first (its name sorts first) because there is one node per machine and the other
integration tests share one for the whole session (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmdev.local import node as nodemod
from fmdev.local.common import alive, binary

from .helpers import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the node needs root (containerd, kubelet, a bridge)")


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fmdev", f"--dir={workdir}", *args],
                          capture_output=True, text=True, timeout=600)


def kubectl(workdir: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("kubectl"), f"--kubeconfig={workdir / 'kubeconfig'}", *args],
                          capture_output=True, text=True, input=input, timeout=120)


def our_netns() -> list[str]:
    return nodemod.netns_of_our_pods()


def our_mounts(workdir: Path) -> list[str]:
    return nodemod.mounts_under(workdir, nodemod.CONTAINERD_ROOT)


def bridge_exists() -> bool:
    return subprocess.run(["ip", "link", "show", nodemod.BRIDGE], capture_output=True).returncode == 0


def run_pod(workdir: Path, name: str) -> str:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"containers": [{"name": "main", "image": f"localhost/fmop/pause:{nodemod.SANDBOX_IMAGE_VERSION}",
                                    "imagePullPolicy": "Never"}]}}
    assert kubectl(workdir, "apply", "-f", "-", input=json.dumps(pod)).returncode == 0

    def ip() -> str | None:
        out = kubectl(workdir, "get", "pod", name, "-o", "jsonpath={.status.phase} {.status.podIP}").stdout.split()
        return out[1] if out[:1] == ["Running"] and len(out) == 2 else None
    return wait_for(ip, 90, f"pod {name} Running")


def test_up_crash_up_down_leaves_nothing_behind(tmp_path: Path) -> None:
    workdir = tmp_path / "c"
    up = cli(workdir, "up", "--no-crds")
    assert up.returncode == 0, up.stderr + up.stdout
    assert "node" in up.stdout and "kube-apiserver" in up.stdout, up.stdout
    nodes = kubectl(workdir, "get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}")
    assert nodes.stdout == "True", nodes
    first_ip = run_pod(workdir, "before-crash")
    assert first_ip.startswith(nodemod.NODE_IP.rsplit(".", 1)[0] + ".")
    assert len(our_netns()) == 1

    # Crash: every process of the runtime dies at once, with a pod running.
    pids = json.loads((workdir / "state.json").read_text())["pids"]
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in pids.values()), 30, "runtime processes gone")

    # A second `up` in the same directory starts clean: the old sandbox is gone, a new pod runs.
    again = cli(workdir, "up", "--no-crds")
    assert again.returncode == 0, again.stderr + again.stdout
    run_pod(workdir, "after-crash")
    assert len(our_netns()) == 1, our_netns()  # only the new pod's namespace
    assert "before-crash" not in kubectl(workdir, "get", "pods", "-o", "name").stdout  # etcd starts empty

    new_pids = json.loads((workdir / "state.json").read_text())["pids"]
    down = cli(workdir, "down")
    assert down.returncode == 0, down.stderr
    time.sleep(0.5)
    assert not [n for n, p in new_pids.items() if alive(p)]
    shims = subprocess.run(["pgrep", "-f", f"containerd-shim.*{workdir}"], capture_output=True, text=True).stdout
    assert shims == ""
    assert our_netns() == []
    assert not bridge_exists()
    assert our_mounts(workdir) == []
    assert not any(d.exists() for d in nodemod.cgroup_dirs())
    assert not nodemod.LOCK.exists()
    # and `down` twice is harmless
    assert cli(workdir, "down").returncode == 0
