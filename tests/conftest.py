"""Shared fixtures. Integration fixtures start the real control plane once per test session."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def load_example(name: str) -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load((EXAMPLES / name).read_text()))


@pytest.fixture
def examples() -> dict[str, dict[str, Any]]:
    return {p.name: load_example(p.name) for p in sorted(EXAMPLES.glob("*.yaml"))}


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real API server (etcd, kube-apiserver, controller-manager, scheduler) with every CRD, ours and
    third-party, but no node: for tests that only need objects accepted or rejected by real schemas.
    Several can run on one machine at once (free ports, 127.0.0.1), unlike the node."""
    from fmdev.local.cluster import LocalCluster

    with LocalCluster(workdir=tmp_path_factory.mktemp("control-plane"), node=False) as c:
        yield c


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real single-node Kubernetes (control plane, kubelet + containerd, the KServe and Argo
    controllers, Traefik) with every CRD installed, once per test session."""
    from fmdev.local.cluster import LocalCluster

    if os.environ.get("FMOP_TEST_NO_NODE"):  # development only: API-level tests without claiming the machine's node
        with LocalCluster(workdir=tmp_path_factory.mktemp("cluster"), node=False) as c:
            yield c
        return
    with LocalCluster(workdir=tmp_path_factory.mktemp("cluster"), node=True, kserve=True, argo=True, traefik=True) as c:
        yield c
