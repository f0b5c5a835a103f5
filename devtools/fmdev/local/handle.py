"""What a component of the embedded cluster (KServe, Argo, Traefik, the models volume) needs from the
cluster that starts it: a small handle, so components never call back into LocalCluster itself and
can be started, and tested, on anything that offers these few things."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Protocol

from fmdev.local.common import Log, Supervisor


class Handle(Protocol):
    @property
    def workdir(self) -> Path: ...  # the cluster's state, logs and models directory live here

    @property
    def sup(self) -> Supervisor: ...  # starts, watches and stops the component's processes

    @property
    def log(self) -> Log: ...

    @property
    def server(self) -> str: ...  # the API server's URL

    @property
    def address(self) -> str: ...  # the API server's listen address, which the node's pods reach

    @property
    def kubeconfig_path(self) -> Path: ...

    @property
    def ca_file(self) -> Path: ...

    @property
    def pki(self) -> Path: ...  # the cluster CA's folder, to issue serving certificates (pki.issue)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]: ...

    def apply(self, objects: list[dict[str, Any]], what: str) -> None: ...

    def log_tail(self, name: str, lines: int = 30) -> str: ...
