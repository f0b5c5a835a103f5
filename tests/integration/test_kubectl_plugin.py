"""`kubectl fmops` as a real kubectl plugin against the real API server (control plane, no node).

The plugin is found by kubectl on PATH (a `kubectl-fmops` wrapper running `python -m fmop.cli`, as the
installed console script would). The Rollout's status is what the engine writes, produced by running
`decide` over a short history and stored through the status subresource; its Events are posted as the
operator posts them.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from fmop.api.rollout import RolloutSpec, RolloutStatus
from fmdev.local.common import binary
from fmop.rollout import ABORT_ANNOTATION, PROMOTE_ANNOTATION, RETRY_ANNOTATION, EmitEvent
from tests.conftest import REPO, load_example
from tests.unit.rollout_world import World, stable_world, with_model

GROUP, VERSION, PLURAL, NAME = "fmops.dev", "v1alpha1", "rollouts", "recommender"


@dataclass
class Env:
    api: Any
    namespace: str
    kubeconfig: Path
    bin_dir: Path

    def run(self, *args: str, kubeconfig_env: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([binary("kubectl"), "fmops", *args], env=self.environ(kubeconfig_env), text=True, capture_output=True,
                                timeout=120)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def environ(self, kubeconfig_env: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "operator"), str(REPO / "model"), env.get("PYTHONPATH", "")])
        env["HOME"] = str(self.bin_dir)  # no ~/.kube/config to fall back on
        if kubeconfig_env:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def rollout(self) -> dict[str, Any]:
        obj: dict[str, Any] = client.CustomObjectsApi(self.api).get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, NAME)
        return obj

    def write_status(self, status: RolloutStatus) -> None:
        body = {"status": status.model_dump(mode="json", exclude_none=True)}
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object_status(GROUP, VERSION, self.namespace, PLURAL, NAME, body)

    def post_events(self, events: list[EmitEvent]) -> None:
        """Events on the Rollout, as the operator posts them."""
        rollout = self.rollout()
        core = client.CoreV1Api(self.api)
        for i, e in enumerate(events):
            at = datetime.now(UTC) - timedelta(seconds=10 * (len(events) - i))
            core.create_namespaced_event(self.namespace, client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name=f"{NAME}."),
                involved_object=client.V1ObjectReference(api_version=f"{GROUP}/{VERSION}", kind="Rollout", name=NAME,
                                                         namespace=self.namespace, uid=rollout["metadata"]["uid"]),
                type=e.type, reason=e.reason, message=e.message, first_timestamp=at, last_timestamp=at, count=1,
                source=client.V1EventSource(component="fm-operator")))


def story() -> tuple[RolloutStatus, RolloutStatus, list[EmitEvent]]:
    """The example Rollout's engine status mid-rollout (canary at setWeight 10) and after an alert rolled it back."""
    spec = RolloutSpec.model_validate(load_example("rollout.yaml")["spec"])
    w: World = stable_world(spec)
    w.spec = with_model(spec, "v2")
    for _ in range(200):
        w.tick(0.5)
        if w.status.currentStepIndex == 2 and w.status.canaryWeight == 10:
            break
    assert (w.status.phase, w.status.currentStepIndex) == ("Progressing", 2), w.status.message
    progressing = w.status.model_copy(deep=True)
    w.fire("CanaryErrors", "3f9a2c1b0d4e5f60", w.now - timedelta(seconds=5))
    w.tick(0.5)
    assert w.status.phase == "RolledBack", w.status.message
    return progressing, w.status, w.events


@pytest.fixture(scope="module")
def plane_api(control_plane: Any) -> Any:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))


@pytest.fixture
def env(control_plane: Any, plane_api: Any, tmp_path: Path) -> Iterator[Env]:
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(plane_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "kubectl-fmops"
    plugin.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m fmop.cli "$@"\n')
    plugin.chmod(0o755)
    rollout = load_example("rollout.yaml")
    client.CustomObjectsApi(plane_api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, rollout)
    yield Env(plane_api, namespace, Path(control_plane.kubeconfig_path), bin_dir)
    core.delete_namespace(namespace)


def test_kubectl_finds_the_plugin(env: Env) -> None:
    listed = subprocess.run([binary("kubectl"), "plugin", "list"], env=env.environ(), text=True, capture_output=True)
    assert str(env.bin_dir / "kubectl-fmops") in listed.stdout
    helped = env.run("--help")
    assert "status" in helped.stdout and "promote" in helped.stdout and "resume" in helped.stdout


def test_status_tells_the_story(env: Env) -> None:
    _, rolled_back, events = story()
    env.write_status(rolled_back)
    env.post_events(events)
    out = env.run("status", NAME, "-n", env.namespace).stdout
    lines = out.splitlines()
    assert lines[0].startswith(f"Rollout {env.namespace}/{NAME}   revision 2   RolledBack")
    assert rolled_back.stableVersion and rolled_back.canaryVersion
    assert any(line.startswith("  stable   revision 1") and rolled_back.stableVersion in line and "weight 100%" in line for line in lines)
    assert any(line.startswith("  canary   revision 2") and rolled_back.canaryVersion in line and "weight 0%" in line for line in lines)
    assert any(line.startswith("  reason   alert CanaryErrors (fingerprint 3f9a2c1b0d4e5f60") for line in lines)
    # the steps: shadow and steps 0-1 passed, rolled back at step 2 (setWeight 10), the rest never reached
    assert "  [x] shadow        mirror 100% for 10m, analysis error-rate, p99-latency" in lines
    assert "  [x] 0   setWeight 1%" in lines and "  [x] 1   analysis error-rate, p99-latency" in lines
    assert any(line.startswith("  [!] 2   setWeight 10%   (since ") for line in lines)
    assert "  [ ] 6   pause until promoted (kubectl fmops promote)" in lines
    assert any(line.startswith("  CanaryErrors") and "3f9a2c1b0d4e5f60" in line for line in lines)  # alerts handled
    history = lines[lines.index("History") + 1:]
    assert history[0].startswith("  revision 2    RolledBack  " + rolled_back.canaryVersion.split(":", 1)[1])
    assert any(line.startswith("  revision 1    Promoted") for line in history)
    assert any(" ago  Warning  RolledBack " in line and "all traffic on stable revision 1" in line for line in lines)
    assert any(" ago  Normal   StepStarted " in line for line in lines)
    assert any(line.startswith("  Progressing  False    RolledBack") for line in lines)


def test_status_of_a_rollout_not_reconciled_yet(env: Env) -> None:
    out = env.run("status", NAME, "-n", env.namespace).stdout
    assert "Pending (not reconciled yet)" in out and "Events: none" in out and "  [ ] 0   setWeight 1%" in out


def test_status_last_analysis_values(env: Env) -> None:
    progressing, _, _ = story()
    env.write_status(progressing)
    out = env.run("status", NAME, "-n", env.namespace).stdout
    assert f"Rollout {env.namespace}/{NAME}   revision 2   Progressing" in out
    assert "weight 10%   mirror 0%" in out
    analysis = out.splitlines()[out.splitlines().index("Last analysis") + 1:]
    assert analysis[0].startswith("  error-rate       Successful   value 0.001      4 ok, 0 failed, 0 errors, 0 no data")
    assert analysis[1].strip() == "4 of 4 measurements passed (failureLimit 1); last value 0.001"  # the engine's verdict
    assert analysis[2].startswith("  p99-latency      Successful")
    assert "  [>] 2   setWeight 10%" in out


@pytest.mark.parametrize(("verb", "annotation"), [("promote", PROMOTE_ANNOTATION), ("abort", ABORT_ANNOTATION), ("retry", RETRY_ANNOTATION)])
def test_requests_set_a_fresh_annotation_value_each_time(env: Env, verb: str, annotation: str) -> None:
    first = env.run(verb, NAME, "-n", env.namespace).stdout
    value = env.rollout()["metadata"]["annotations"][annotation]
    assert f"rollout.fmops.dev/{NAME} {verb} requested ({annotation}={value})" in first
    env.run(verb, NAME, "-n", env.namespace)
    again = env.rollout()["metadata"]["annotations"][annotation]
    assert again != value, "a repeated request must be a new value, or the operator ignores it"
    others = {PROMOTE_ANNOTATION, ABORT_ANNOTATION, RETRY_ANNOTATION} - {annotation}
    assert not others & set(env.rollout()["metadata"]["annotations"])
    status = env.run("status", NAME, "-n", env.namespace).stdout
    assert f"{annotation}={again}   last acted on: -   waiting for the operator" in status


def test_pause_and_resume_patch_spec_paused(env: Env) -> None:
    assert "spec.paused" not in env.rollout()["spec"] or env.rollout()["spec"]["paused"] is False
    assert "paused (spec.paused: true)" in env.run("pause", NAME, "-n", env.namespace).stdout
    assert env.rollout()["spec"]["paused"] is True
    assert "already paused" in env.run("pause", NAME, "-n", env.namespace).stdout
    assert "[spec.paused]" in env.run("status", NAME, "-n", env.namespace).stdout.splitlines()[0]
    assert "resumed (spec.paused: false)" in env.run("resume", NAME, "-n", env.namespace).stdout
    assert env.rollout()["spec"]["paused"] is False


def test_no_such_rollout_is_a_clear_error(env: Env) -> None:
    result = env.run("promote", "nope", "-n", env.namespace, check=False)
    assert result.returncode == 1
    assert f"error: Rollout {env.namespace}/nope (rollouts.fmops.dev): not found" in result.stderr
    assert "Traceback" not in result.stderr


def _kubeconfig(env: Env, path: Path, namespace: str | None = None) -> Path:
    """The control plane's kubeconfig with a second, dead, cluster as the current context; 'live' reaches the real one."""
    doc = yaml.safe_load(env.kubeconfig.read_text())
    cluster, user = doc["clusters"][0], doc["users"][0]
    dead = {"name": "dead", "cluster": {**cluster["cluster"], "server": "https://127.0.0.1:1"}}
    live_context: dict[str, Any] = {"cluster": cluster["name"], "user": user["name"]}
    if namespace:
        live_context["namespace"] = namespace
    doc.update(clusters=[cluster, dead], contexts=[{"name": "live", "context": live_context},
                                                   {"name": "dead", "context": {"cluster": "dead", "user": user["name"]}}],
               **{"current-context": "dead"})
    path.write_text(yaml.safe_dump(doc))
    return path


def test_kubeconfig_context_and_namespace_flags(env: Env, tmp_path: Path) -> None:
    kubeconfig = _kubeconfig(env, tmp_path / "two-contexts.yaml", namespace=env.namespace)
    # --kubeconfig and --context, no KUBECONFIG; the namespace comes from the context
    ok = env.run("status", NAME, f"--kubeconfig={kubeconfig}", "--context", "live", kubeconfig_env=False)
    assert ok.stdout.startswith(f"Rollout {env.namespace}/{NAME}")
    # flags before the command work too
    assert env.run(f"--kubeconfig={kubeconfig}", "--context=live", "pause", NAME, kubeconfig_env=False).returncode == 0
    # the current context is the dead cluster: a clear error, quickly
    dead = env.run("status", NAME, "-n", env.namespace, f"--kubeconfig={kubeconfig}", kubeconfig_env=False, check=False)
    assert dead.returncode == 1 and "error: cannot reach the Kubernetes API server at https://127.0.0.1:1" in dead.stderr
    missing = env.run("status", NAME, f"--kubeconfig={kubeconfig}", "--context", "nope", kubeconfig_env=False, check=False)
    assert missing.returncode == 1 and "context 'nope' is not in the kubeconfig (it has: dead, live)" in missing.stderr
    none = env.run("status", NAME, kubeconfig_env=False, check=False)
    assert none.returncode == 1 and "error: cannot load a kubeconfig" in none.stderr


def test_status_watch_redraws_when_the_rollout_changes(env: Env) -> None:
    progressing, rolled_back, _ = story()
    env.write_status(progressing)
    with subprocess.Popen([binary("kubectl"), "fmops", "status", NAME, "-n", env.namespace, "--watch", "--interval", "0.2"],
                          env=env.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True)
        reader.start()

        def wait_for_line(prefix: str) -> str:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=1)
                except queue.Empty:
                    assert proc.poll() is None, f"the watch ended: {proc.stderr.read() if proc.stderr else ''}"
                    continue
                if line.startswith(prefix):
                    return line
            raise AssertionError(f"no line starting with {prefix!r} within 60s")

        try:
            assert "Progressing" in wait_for_line(f"Rollout {env.namespace}/{NAME}")
            env.write_status(rolled_back)
            assert "RolledBack" in wait_for_line(f"Rollout {env.namespace}/{NAME}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            reader.join(timeout=30)
