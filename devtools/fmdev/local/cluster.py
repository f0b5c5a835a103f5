"""LocalCluster: the control plane, and optionally the node, the KServe and Argo controllers and Traefik.

    with LocalCluster(workdir, node=True, kserve=True, argo=True, traefik=True) as c:   # tests
        c.kubectl("get", "nodes")

`python -m fmdev up` runs the same thing detached (see __main__.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fmdev.local import node as nodemod
from fmdev.local.common import REPO_CRDS, THIRD_PARTY_CRDS, ClusterError, Log, Supervisor, alive, binary
from fmdev.local.controlplane import ControlPlane

if TYPE_CHECKING:
    from fmdev.local.traefik import Endpoints as TraefikEndpoints


@dataclass
class LocalCluster:
    workdir: Path
    attached: bool = True
    node: bool = False
    kserve: bool = False
    argo: bool = False
    traefik: bool = False
    monitoring: bool = False  # Prometheus + Alertmanager (fmdev.local.monitoring)
    scrape: dict[str, list[str]] = field(default_factory=dict)  # extra Prometheus jobs: name -> host:port targets
    webhook_url: str | None = None  # where Alertmanager posts; default the operator's receiver on 127.0.0.1:8081
    log: Log = print
    plane: ControlPlane = field(init=False)
    sup: Supervisor = field(init=False)
    the_node: nodemod.Node | None = field(default=None, init=False)
    the_monitoring: Any = field(default=None, init=False)  # fmdev.local.monitoring.Monitoring once started
    _claimed: bool = field(default=False, init=False)
    endpoints: dict[str, str] = field(default_factory=dict, init=False)
    traefik_endpoints: TraefikEndpoints | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if (self.kserve or self.argo) and not self.node:
            raise ClusterError("KServe and Argo run their pods on the node: start with node=True")
        self.plane = ControlPlane(self.workdir, address=nodemod.NODE_IP if self.node else "127.0.0.1")
        self.sup = Supervisor(self.workdir, attached=self.attached)

    # what tests and the CLI use
    @property
    def kubeconfig_path(self) -> Path:
        return self.plane.kubeconfig_path

    @property
    def server(self) -> str:
        return self.plane.server

    @property
    def token(self) -> str:
        return self.plane.token

    @property
    def ca_file(self) -> Path:
        return self.plane.ca_file

    @property
    def address(self) -> str:
        return self.plane.address

    @property
    def pki(self) -> Path:
        return self.plane.pki

    @property
    def pids(self) -> dict[str, int]:
        return self.sup.pids

    def log_tail(self, name: str, lines: int = 30) -> str:
        return self.sup.log_tail(name, lines)

    # ------------------------------------------------------------------ start/stop
    def start(self) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.node:
            self._claim_node()
            nodemod.cleanup(self.workdir, log=self.log)  # whatever a crashed run in this directory left
            nodemod.bridge_up()
        t0 = time.monotonic()
        self.plane.start(self.sup)
        self.endpoints["kube-apiserver"] = self.plane.server
        self._save()
        if self.node:
            from fmdev.local import images

            # The kubelet authorises the API server's calls (logs, exec, port-forward) like anyone
            # else's: by SubjectAccessReview for the API server's client certificate.
            self.apply([{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                         "metadata": {"name": "fmop:kube-apiserver-kubelet-client"},
                         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
                         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kube-apiserver-kubelet-client"}]}],
                       "RBAC for the API server's calls to the kubelet")
            n = self.the_node = nodemod.Node(self.workdir, self.plane)
            n.start_containerd(self.sup)
            self._save()
            images.ensure(n, ["pause"], log=self.log)
            n.start_kubelet(self.sup)
            self._save()
            n.wait_ready()
            self.endpoints["node"] = f"{nodemod.NODE_NAME} ({nodemod.NODE_IP}, kubelet :{n.kubelet_port}, pods {nodemod.POD_SUBNET})"
        self.log(f"control plane{' and node' if self.node else ''} up in {time.monotonic() - t0:.1f}s")
        return self

    def install_extras(self) -> None:
        """CRDs, then KServe, Argo and Traefik (they need their CRDs before they start)."""
        self.install_crds()
        if self.kserve:
            from fmdev.local import kserve

            assert self.the_node is not None
            self.endpoints["kserve"] = kserve.start(self, self.the_node)
            self._save()
        if self.argo:
            from fmdev.local import argo

            assert self.the_node is not None
            self.endpoints["argo"] = argo.start(self, self.the_node)
            self._save()
        if self.traefik:
            from fmdev.local import traefik

            ends = self.traefik_endpoints = traefik.start(self)
            self.endpoints["traefik"] = ends.web
            self.endpoints["traefik-metrics"] = ends.metrics
            self.endpoints["traefik-gateway"] = f"{traefik.GATEWAY_NAMESPACE}/{traefik.GATEWAY_NAME} (port {ends.port})"
            self._save()
        if self.monitoring:
            from fmdev.local import monitoring

            scrape = dict(self.scrape)
            if self.traefik_endpoints is not None:  # Traefik's per-backend counters, for the split and dashboards
                scrape.setdefault("traefik", []).append(self.traefik_endpoints.api.split("//", 1)[1])
            mon = self.the_monitoring = monitoring.Monitoring(
                self.workdir, static=scrape, kube=(self.server, self.ca_file, self.token),
                webhook_url=self.webhook_url or monitoring.DEFAULT_WEBHOOK_URL)
            self.endpoints.update(mon.start(self.sup))
            self._save()

    def stop(self) -> None:
        if self._claimed:  # the bridge and cgroups are shared: only the node's owner cleans them up
            nodemod.cleanup(self.workdir, log=self.log)
            self._release_node()
        self.sup.stop_all()
        (self.workdir / "state.json").unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
            self.install_extras()
            return self
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _save(self) -> None:
        self.sup.save(server=self.plane.server, kubeconfig=str(self.kubeconfig_path), node=self.node,
                      endpoints=self.endpoints)

    # One node per machine: the bridge and the cache's containerd root are shared.
    def _claim_node(self) -> None:
        lock = nodemod.LOCK
        if lock.exists():
            other = json.loads(lock.read_text())
            state = Path(other["workdir"]) / "state.json"
            pids = json.loads(state.read_text()).get("pids", {}) if state.exists() else {}
            if Path(other["workdir"]) != self.workdir and any(alive(p) for p in pids.values()):
                raise ClusterError(f"a local node is already running from {other['workdir']}: stop it first "
                                   f"(`make cluster-down`, or `python -m fmdev down --dir {other['workdir']}`)")
            if Path(other["workdir"]) != self.workdir:
                self.log(f"cleaning up a node left behind by {other['workdir']}")
                nodemod.cleanup(Path(other["workdir"]), log=self.log)
        lock.write_text(json.dumps({"workdir": str(self.workdir)}))
        self._claimed = True

    def _release_node(self) -> None:
        lock = nodemod.LOCK
        if lock.exists() and json.loads(lock.read_text()).get("workdir") == str(self.workdir):
            lock.unlink()
        self._claimed = False

    # ------------------------------------------------------------------ API helpers
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary("kubectl"), f"--kubeconfig={self.kubeconfig_path}", *args],
                              input=input, text=True, capture_output=True, check=check)

    def apply(self, objects: list[dict[str, Any]], what: str) -> None:
        """Server-side apply of a list of objects, with a clear error naming what failed."""
        doc = yaml.safe_dump_all(objects)
        out = self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=fm-operator-local", "-f", "-",
                           input=doc, check=False)
        if out.returncode:
            raise ClusterError(f"{what}: {out.stderr.strip()}")

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
        args = ["apply", "--server-side", "--force-conflicts", "--field-manager=fm-operator-dev"]
        for path in files:
            args += ["-f", str(path)]
        result = self.kubectl(*args, check=False)
        if result.returncode:
            raise ClusterError(f"installing CRDs failed: {result.stderr.strip()}")
        names = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in files]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in names])
        return names
