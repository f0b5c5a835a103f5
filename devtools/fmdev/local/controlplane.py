"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from Go modules.

With a node, the API server binds to the node bridge's address (pods reach it there; there is no
kube-proxy, so in-cluster clients are given KUBERNETES_SERVICE_HOST/PORT explicitly), otherwise to
127.0.0.1. Authentication: static tokens for people and controllers, x509 for the kubelet and for
the API server's calls to the kubelet; authorization Node + RBAC.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fmdev.local import pki
from fmdev.local.common import Supervisor, binary, free_port, wait_http

SERVICE_CIDR = "10.96.0.0/16"


def kubeconfig(server: str, ca_file: Path, token: str, user: str = "admin") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fmop-local", "cluster": {
            "server": server,
            # a path, not -data: the kubernetes Python client writes embedded CA data to a temp file
            # that it removes only at a clean exit, so every killed client left one in /tmp
            "certificate-authority": str(ca_file.resolve()),
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": f"{user}@fmop-local", "context": {"cluster": "fmop-local", "user": user, "namespace": "default"}}],
        "current-context": f"{user}@fmop-local",
    }


@dataclass
class ControlPlane:
    workdir: Path
    address: str = "127.0.0.1"
    apiserver_port: int = 0
    token: str = ""

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def kubeconfig_path(self) -> Path:
        return self.workdir / "kubeconfig"

    def start(self, sup: Supervisor, timeout: float = 120.0) -> None:
        pki.ensure_ca(self.pki)
        ips = tuple(dict.fromkeys(("127.0.0.1", self.address, "10.96.0.1")))
        apiserver_crt, apiserver_key = pki.issue(self.pki, "apiserver", "kube-apiserver", ips=ips,
                                                 dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"))
        kubelet_client_crt, kubelet_client_key = pki.issue(self.pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                                           org="fmop:kubelet-api", client=True)
        etcd_port, peer_port = free_port(), free_port()
        self.apiserver_port = free_port(self.address)
        self.token = secrets.token_hex(24)
        scheduler_token = secrets.token_hex(24)
        (self.pki / "tokens.csv").write_text(
            f'{self.token},admin,admin-uid,"system:masters"\n'
            f"{scheduler_token},system:kube-scheduler,kube-scheduler-uid\n")
        self.kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(self.server, self.ca_file, self.token)))
        scheduler_kubeconfig = self.workdir / "kube-scheduler.kubeconfig"
        scheduler_kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.server, self.ca_file, scheduler_token, "system:kube-scheduler")))

        etcd_data = self.workdir / "etcd"
        shutil.rmtree(etcd_data, ignore_errors=True)
        sup.spawn("etcd", [
            binary("etcd"), "--name=default", f"--data-dir={etcd_data}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=2147483648",
        ])
        wait_http(f"http://127.0.0.1:{etcd_port}/health", timeout, lambda b: b'"health":"true"' in b, "etcd",
                  alive=lambda: sup.check_alive("etcd"))

        sup.spawn("kube-apiserver", [
            binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={self.address}", f"--advertise-address={self.address}", f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={apiserver_crt}", f"--tls-private-key-file={apiserver_key}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={self.pki / 'tokens.csv'}",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={kubelet_client_crt}", f"--kubelet-client-key={kubelet_client_key}",
            f"--kubelet-certificate-authority={self.ca_file}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=false",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--event-ttl=1h",
            "--shutdown-delay-duration=0s", "--shutdown-watch-termination-grace-period=1s",
            "--v=1",
        ])
        wait_http(f"{self.server}/readyz", timeout, lambda b: b.strip() == b"ok", "kube-apiserver",
                  ca_file=self.ca_file, token=self.token, alive=lambda: sup.check_alive("kube-apiserver"))

        sup.spawn("kube-controller-manager", [
            binary("kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig_path}",
            f"--authentication-kubeconfig={self.kubeconfig_path}",
            f"--authorization-kubeconfig={self.kubeconfig_path}",
            # Every default controller, as on a real cluster: deployments, replicasets, endpointslices,
            # node lifecycle (removes the not-ready taint), jobs, GC, namespaces, service accounts,
            # the root-CA publisher (pods mount kube-root-ca.crt), PV binding and protection.
            "--controllers=*",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            "--leader-elect=false", "--secure-port=0", "--concurrent-gc-syncs=5", "--v=1",
        ])
        sup.spawn("kube-scheduler", [
            binary("kube-scheduler"),
            f"--kubeconfig={scheduler_kubeconfig}",
            "--leader-elect=false", "--secure-port=0", "--v=1",
        ])
