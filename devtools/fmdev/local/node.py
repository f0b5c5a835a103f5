"""The node: a bridge, containerd (Debian's, with a config and directories of its own) and kubelet.

Facts this module is built on, measured on the project's machines:
- cgroup v1: kubelet needs failCgroupV1=false and the cgroupfs driver; pods live under /fmop so
  cleanup can find every process they started.
- Processes here lack CAP_SYS_RESOURCE, so runc cannot lower oom_score_adj: containerd's
  restrict_oom_score_adj=true, or every sandbox fails with "can't get final child's PID from pipe".
- No registry is reachable: the sandbox image is built here and every image is imported into
  containerd's k8s.io namespace; pods use imagePullPolicy Never/IfNotPresent.
- The eviction manager cannot read the overlay snapshotter's filesystem stats: disk thresholds are 0.
- Images live in a containerd root under the cache (so they survive clusters); everything else
  (state, sockets, kubelet's root, CNI leases) under the cluster's directory. One node per machine:
  the bridge and the cache's containerd root are shared, so a second `up` is refused while one runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fmdev.local import pki
from fmdev.local.common import CACHE, ClusterError, Supervisor, alive, binary, free_port, run, terminate, wait_http
from fmdev.local.controlplane import ControlPlane

BRIDGE = os.environ.get("FMOP_BRIDGE", "fmop0")
POD_SUBNET = os.environ.get("FMOP_POD_SUBNET", "10.88.0.0/24")
NODE_IP = os.environ.get("FMOP_NODE_IP", "10.88.0.1")
NODE_NAME = "fmop-node"
CGROUP_PARENT = "fmop"
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINERD_ROOT = CACHE / "containerd"  # images and snapshots: kept between clusters
LOCK = Path("/run/fmop-node.json")
SANDBOX_IMAGE_VERSION = "v1.36.3"


def bridge_up() -> None:
    """Create the node bridge with the node's address (the API server binds to it, so it comes first)."""
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"], f"creating bridge {BRIDGE}")
    prefix = POD_SUBNET.split("/")[1]
    addrs = run(["ip", "-j", "addr", "show", BRIDGE], f"reading bridge {BRIDGE}")
    if NODE_IP not in addrs:
        run(["ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE], f"addressing bridge {BRIDGE}")
    run(["ip", "link", "set", BRIDGE, "up"], f"bringing bridge {BRIDGE} up")


def bridge_down() -> None:
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True).returncode == 0:
        run(["ip", "link", "delete", BRIDGE], f"deleting bridge {BRIDGE}")


def cgroup_dirs() -> list[Path]:
    """Our cgroup in every mounted v1 hierarchy (cpu, memory, pids, ..., name=systemd)."""
    return [d / CGROUP_PARENT for d in sorted(CGROUP_ROOT.iterdir()) if d.is_dir() and d.name != "unified" and not d.is_symlink()]


def cgroups_up() -> None:
    for d in cgroup_dirs():
        d.mkdir(exist_ok=True)
        if d.parent.name == "cpuset":  # a new cpuset starts empty: copy the parent's cpus and mems
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((d.parent / f).read_text())


def cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs():
        if d.exists():
            for procs in d.rglob("cgroup.procs"):
                try:
                    pids.update(int(p) for p in procs.read_text().split())
                except OSError:
                    pass
    return pids


def cgroups_down() -> None:
    for d in cgroup_dirs():
        if d.exists():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            try:
                d.rmdir()
            except OSError:
                pass


@dataclass
class Node:
    workdir: Path
    plane: ControlPlane
    kubelet_port: int = 0

    @property
    def dir(self) -> Path:
        return self.workdir / "node"

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def sandbox_image(self) -> str:
        return f"localhost/fmop/pause:{SANDBOX_IMAGE_VERSION}"

    # ------------------------------------------------------------------ containerd
    def _containerd_config(self) -> str:
        state = self.dir / "containerd-state"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return f"""version = 2
root = "{CONTAINERD_ROOT}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.dir / 'opt'}"

[{cri}]
  sandbox_image = "{self.sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{self.dir / 'cni'}"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "/usr/sbin/runc"
  Root = "{self.dir / 'runc'}"
"""

    def _cni_config(self) -> dict[str, Any]:
        gateway = NODE_IP
        base = POD_SUBNET.split("/")[0].rsplit(".", 1)[0]
        return {
            "cniVersion": "1.0.0", "name": "fmop", "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni-leases"),
                          "ranges": [[{"subnet": POD_SUBNET, "gateway": gateway, "rangeStart": f"{base}.10"}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"},
            ],
        }

    def start_containerd(self, sup: Supervisor, timeout: float = 60.0) -> None:
        for d in (self.dir / "cni", CONTAINERD_ROOT):
            d.mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "10-fmop.conflist").write_text(json.dumps(self._cni_config(), indent=1))
        (self.dir / "containerd.toml").write_text(self._containerd_config())
        sup.spawn("containerd", ["containerd", f"--config={self.dir / 'containerd.toml'}", "--log-level=warn"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sup.check_alive("containerd")
            if self.socket.exists() and subprocess.run(self.ctr("version"), capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise ClusterError(f"containerd did not answer on {self.socket} within {timeout:.0f}s:\n{sup.log_tail('containerd')}")

    def ctr(self, *args: str) -> list[str]:
        return ["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args]

    def images(self) -> set[str]:
        return set(run(self.ctr("images", "ls", "-q"), "listing the node's images").split())

    def import_image(self, archive: Path, ref: str) -> None:
        """Import a docker-archive into the node's containerd (k8s.io namespace), unless it has it."""
        if ref in self.images():
            return
        run(self.ctr("images", "import", "--no-unpack=false", str(archive)), f"importing {ref} into the node", timeout=1800)
        if ref not in self.images():
            raise ClusterError(f"importing {archive} did not produce {ref}; the node has: {sorted(self.images())}")

    def remove_images(self, repo: str, keep: str) -> list[str]:
        """Drop the node's other tags of repo (superseded builds); containers still running keep
        their snapshots, and containerd's garbage collector frees the rest."""
        old = [r for r in self.images() if r.rsplit(":", 1)[0] == repo and r != keep]
        for r in old:
            subprocess.run(self.ctr("images", "rm", r), capture_output=True)
        return old

    # ------------------------------------------------------------------ kubelet
    def start_kubelet(self, sup: Supervisor, timeout: float = 120.0) -> None:
        kdir = self.dir / "kubelet"
        kdir.mkdir(parents=True, exist_ok=True)
        crt, key = pki.issue(self.plane.pki, "kubelet-serving", NODE_NAME, ips=(NODE_IP, "127.0.0.1"), dns=(NODE_NAME,))
        ccrt, ckey = pki.issue(self.plane.pki, "kubelet-client", f"system:node:{NODE_NAME}", org="system:nodes", client=True)
        kubeconfig = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fmop-local", "cluster": {"server": self.plane.server, "certificate-authority": str(self.plane.ca_file)}}],
            "users": [{"name": "kubelet", "user": {"client-certificate": str(ccrt), "client-key": str(ckey)}}],
            "contexts": [{"name": "kubelet", "context": {"cluster": "fmop-local", "user": "kubelet"}}],
            "current-context": "kubelet",
        }
        (kdir / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))
        self.kubelet_port = free_port(NODE_IP)
        healthz = free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            # Serve only on the node's bridge address; authenticate callers with the CA or a token
            # (TokenReview) and authorise them with SubjectAccessReview: no anonymous, no AlwaysAllow.
            "address": NODE_IP, "port": self.kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz,
            "tlsCertFile": str(crt), "tlsPrivateKeyFile": str(key),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(self.plane.ca_file)}},
            "authorization": {"mode": "Webhook"},
            "containerRuntimeEndpoint": self.endpoint,
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "cgroupRoot": f"/{CGROUP_PARENT}",
            "failSwapOn": False,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "imagefs.available": "0%",
                             "nodefs.inodesFree": "0%", "imagefs.inodesFree": "0%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "localStorageCapacityIsolation": False,
            "resolvConf": "/etc/resolv.conf", "clusterDomain": "cluster.local",
            "serializeImagePulls": False, "maxPods": 110,
            "nodeStatusUpdateFrequency": "5s", "syncFrequency": "10s", "fileCheckFrequency": "20s",
            "shutdownGracePeriod": "0s", "rotateCertificates": False, "serverTLSBootstrap": False,
            "volumePluginDir": str(kdir / "volume-plugins"),
        }
        (kdir / "config.yaml").write_text(yaml.safe_dump(config))
        cgroups_up()
        sup.spawn("kubelet", [
            binary("kubelet"), f"--config={kdir / 'config.yaml'}", f"--kubeconfig={kdir / 'kubeconfig'}",
            f"--root-dir={kdir / 'root'}", f"--cert-dir={kdir / 'pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
        ])
        wait_http(f"http://127.0.0.1:{healthz}/healthz", timeout, lambda b: b.strip() == b"ok", "kubelet",
                  alive=lambda: sup.check_alive("kubelet"))

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            out = subprocess.run([binary("kubectl"), f"--kubeconfig={self.plane.kubeconfig_path}", "get", "node", NODE_NAME, "-o", "json"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                node = json.loads(out.stdout)
                conds = {c["type"]: c for c in node["status"].get("conditions", [])}
                ready = conds.get("Ready", {})
                taints = [t["key"] for t in node["spec"].get("taints", [])]
                if ready.get("status") == "True" and not taints:
                    return
                last = f"Ready={ready.get('status')} ({ready.get('message', '')}), taints={taints}"
            else:
                last = out.stderr.strip()
            time.sleep(0.5)
        raise ClusterError(f"node {NODE_NAME} not Ready after {timeout:.0f}s: {last}")


# ---------------------------------------------------------------------- cleanup
def mounts_under(*roots: Path) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == str(r) or point.startswith(str(r) + "/") for r in roots):
            found.append(point)
    return found


def netns_of_our_pods() -> list[str]:
    """Network namespaces holding an address in our pod subnet (containerd names them cni-<uuid>)."""
    names: list[str] = []
    netns_dir = Path("/run/netns")
    if not netns_dir.exists():
        return names
    for ns in netns_dir.iterdir():
        if not ns.name.startswith("cni-"):
            continue
        out = subprocess.run(["ip", "-n", ns.name, "-j", "addr"], capture_output=True, text=True)
        if out.returncode == 0 and f'"{POD_SUBNET.split("/")[0].rsplit(".", 1)[0]}.' in out.stdout:
            names.append(ns.name)
    return names


def cleanup(workdir: Path, log: Any = print) -> None:
    """Remove everything a node in workdir made: pods (through CRI, so CNI tears their network down),
    processes, shims, mounts, network namespaces, the bridge and our cgroups. Safe to run twice and
    after a crash: what is already gone is skipped."""
    node_dir = workdir / "node"
    sock = node_dir / "containerd.sock"
    state_file = workdir / "state.json"
    pids: dict[str, int] = json.loads(state_file.read_text()).get("pids", {}) if state_file.exists() else {}
    if "kubelet" in pids:
        terminate(pids["kubelet"], "kubelet")
    started: subprocess.Popen[bytes] | None = None
    if node_dir.joinpath("containerd.toml").exists():
        if not (pids.get("containerd") and alive(pids["containerd"])):
            # After a crash: bring containerd back on the same state so CRI can stop the sandboxes.
            started = subprocess.Popen(["containerd", f"--config={node_dir / 'containerd.toml'}", "--log-level=error"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(100):
                if sock.exists():
                    break
                time.sleep(0.1)
        if sock.exists():
            out = subprocess.run([binary("fmop-cri"), f"--endpoint=unix://{sock}", "rm-pods"], capture_output=True, text=True, timeout=180)
            removed = out.stdout.count("removed ")
            if removed:
                log(f"removed {removed} pod sandbox(es)")
            if out.returncode:
                log(f"fmop-cri rm-pods: {out.stderr.strip()[-500:]}")
    for name, pid in reversed(list(pids.items())):
        terminate(pid, name)
    if started is not None:
        terminate(started.pid, "containerd (cleanup)")
        started.wait()
    # Whatever is still in our cgroups (a container whose shim died) is killed, then the shims.
    for pid in cgroup_pids():
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    shim = subprocess.run(["pgrep", "-f", f"containerd-shim.*-address {sock}"], capture_output=True, text=True)
    for shim_pid in shim.stdout.split():
        terminate(int(shim_pid), "containerd-shim", grace=3)
    for ns in netns_of_our_pods():
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        log(f"deleted leftover network namespace {ns}")
    for point in sorted(mounts_under(node_dir, CONTAINERD_ROOT), key=lambda p: -len(p)):
        subprocess.run(["umount", "-l", point], capture_output=True)
    cgroups_down()
    bridge_down()
    shutil.rmtree(node_dir / "cni-leases", ignore_errors=True)
    left = mounts_under(node_dir)
    if left:  # never delete through a mount (a subPath bind mount would take host data with it)
        log(f"still mounted, left in place: {left}")
        return
    shutil.rmtree(node_dir / "containerd-state", ignore_errors=True)
    shutil.rmtree(node_dir / "kubelet" / "root", ignore_errors=True)
