"""Restarting the operator: it continues from status and changes nothing that did not change.

In its own module so that no other operator process runs beside the ones started here."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import load_example
from tests.integration.helpers import condition, get, running_operator, wait_condition, wait_for
from tests.integration.test_operator import apply


def test_restart_keeps_transition_times(api: Any, namespace: str, cluster: Any, tmp_path: Any) -> None:
    """A restarted operator resumes from status: no condition flips, no new transition times."""
    with running_operator(cluster.kubeconfig_path, tmp_path / "a.log"):
        apply(api, namespace, load_example("foundationmodel.yaml"))
        first = wait_condition(api, "foundationmodels", namespace, "movielens", "Ready", "False", "NoVersion")
    time.sleep(1.1)  # timestamps have one-second resolution
    with running_operator(cluster.kubeconfig_path, tmp_path / "b.log") as op:
        wait_for(lambda: "reconcile_foundation_model.resume" in op.log(), 30, "resume handler")
        again = condition(get(api, "foundationmodels", namespace, "movielens"), "Ready")
    assert again == first
