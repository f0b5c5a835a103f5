"""`make demo`: the whole product on the local node, from manifests to an alert rollback.

    python -m fmdev demo [--namespace demo]      # after `make cluster-up`

Every step is the real thing: the operator (a process here) renders Argo Workflows that the real
workflow-controller runs as pods in the locally built fmrec image; versions land on the models
volume; the Rollout's revisions are real KServe InferenceServices (Triton pods); Traefik carries a
steady client load; Prometheus scrapes Triton and fires the chart's alert rules; Alertmanager posts
them to the operator's webhook. The story:

1. the example FoundationModel (made small: 1 layer, width 32, 2 epochs) trains v1 through Argo;
2. the example TaskAdapter (FollowLatest) fine-tunes on v1;
3. the example local Rollout serves v1 (a first revision is promoted once Ready); client load starts;
4. a spec edit (more epochs) trains v2, which must pass the quality gate; the adapter retrains on v2;
5. the Rollout moves to v2: shadow (20% mirrored) -> 5% -> 25% -> 50% -> 100% with analysis -> Promoted;
6. a v3 with a fault (the served model's test-only 1.5 s latency, recorded as a version by hand, as
   `python -m fmdev publish --fault-latency-ms` does) -> canary -> p99 alert -> webhook -> RolledBack.

It prints a timeline (what changed, when, why) and ends with `kubectl get fmops`. The objects stay in
the namespace afterwards; a second run starts by deleting it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fmdev.local.common import INFER_REQUEST, ClusterError, alive, free_port

GROUP, VERSION = "fmops.dev", "v1alpha1"
REPO = Path(__file__).resolve().parents[3]
ROLLOUT_HOST = "recommender.local"  # examples/local/rollout.yaml routes this Host
WEBHOOK_PORT, METRICS_PORT = 8081, 9090  # where `make cluster-up`'s Alertmanager posts and Prometheus scrapes the operator


class DemoError(RuntimeError):
    """A step of the story did not happen; the message says which and where to look."""


class Timeline:
    """Prints one line per change of what `kubectl get fmops` would show, with the time since start."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.last: dict[str, str] = {}

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {text}", flush=True)

    def observe(self, key: str, line: str) -> None:
        if line and self.last.get(key) != line:
            self.last[key] = line
            self.say(f"{key}: {line}")


def _summary(kind: str, obj: dict[str, Any]) -> str:
    s = obj.get("status") or {}
    if not s:
        return ""
    if kind == "FoundationModel":
        parts = [s.get("phase", ""), f"latest {s.get('latestVersion') or '-'}"]
        if s.get("phase") == "Training":
            parts.append(f"workflow {s.get('workflowName')} {s.get('progress') or ''}".strip())
    elif kind == "TaskAdapter":
        parts = [s.get("phase", ""), f"base {s.get('baseVersion') or '-'}", f"latest {s.get('latestVersion') or '-'}"]
        if s.get("phase") == "Training":
            parts.append(f"workflow {s.get('workflowName')} {s.get('progress') or ''}".strip())
    else:
        parts = [s.get("phase", ""), f"stable {s.get('stableVersion') or '-'}"]
        if s.get("canaryVersion"):
            parts.append(f"canary {s['canaryVersion']} at {s.get('canaryWeight', 0)}%")
        if s.get("mirrorPercent"):
            parts.append(f"mirror {s['mirrorPercent']}%")
        if s.get("currentStepIndex") is not None:
            parts.append(f"step {s['currentStepIndex']}")
    message = str(s.get("message") or "")
    return " | ".join(p for p in parts if p) + (f" -- {message[:240]}" if message else "")


class Load:
    """Steady v2 requests through Traefik, counted by answer; runs until stopped."""

    def __init__(self, url: str, rate: float = 10.0) -> None:
        self.url, self.rate = url, rate
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-load", daemon=True)

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        body = json.dumps(INFER_REQUEST).encode()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self._stop.is_set():
            start = time.monotonic()
            req = urllib.request.Request(f"{self.url}/v2/models/fmrec/infer", data=body,
                                         headers={"Content-Type": "application/json", "Host": ROLLOUT_HOST})
            try:
                with opener.open(req, timeout=10) as r:
                    r.read()
                    self.counts[str(r.status)] += 1
            except urllib.error.HTTPError as err:
                self.counts[str(err.code)] += 1
            except OSError:
                self.counts["no answer"] += 1
            self._stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - start)))

    def line(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items())) or "no answers yet"


class Demo:
    def __init__(self, workdir: Path, namespace: str) -> None:
        from kubernetes import client, config

        from fmdev.local.cluster import LocalCluster

        state = workdir / "state.json"
        if not state.exists() or not all(alive(p) for p in json.loads(state.read_text()).get("pids", {}).values()):
            raise DemoError(f"no local cluster runs in {workdir}: run `make cluster-up` first")
        self.state = json.loads(state.read_text())
        for part in ("node", "kserve", "argo", "traefik", "prometheus"):
            if part not in self.state.get("endpoints", {}):
                raise DemoError(f"the local cluster runs without {part}: `make cluster-down`, then `make cluster-up` with everything")
        self.workdir, self.ns = workdir, namespace
        self.cluster = LocalCluster(workdir=workdir, attached=False)
        api = config.new_client_from_config(config_file=str(self.cluster.kubeconfig_path))  # type: ignore[no-untyped-call]
        self.custom, self.core = client.CustomObjectsApi(api), client.CoreV1Api(api)
        self.client = client
        self.tl = Timeline()
        self.op: subprocess.Popen[bytes] | None = None
        self.op_log = workdir / "demo-operator.log"
        self.load: Load | None = None

    # ---------------------------------------------------------------- Kubernetes
    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)
        return dict(obj)

    def watch_until(self, what: str, done: Callable[[], bool], timeout: float) -> None:
        """Poll every second, printing each change of the three objects, until done() or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.op is not None and self.op.poll() is not None:
                raise DemoError(f"the operator exited with {self.op.returncode}; its log: {self.op_log}")
            for kind, plural, name in (("FoundationModel", "foundationmodels", "movielens"), ("TaskAdapter", "taskadapters", "west-coast"),
                                       ("Rollout", "rollouts", "recommender")):
                try:
                    self.tl.observe(f"{kind} {name}", _summary(kind, self.get(plural, name)))
                except self.client.ApiException as err:
                    if err.status != 404:
                        raise
            for plural, name in (("foundationmodels", "movielens"), ("taskadapters", "west-coast")):
                try:
                    s = self.get(plural, name).get("status") or {}
                except self.client.ApiException:
                    continue
                if s.get("phase") == "Failed":
                    raise DemoError(f"{plural}/{name} Failed: {s.get('message')}")
            if done():
                return
            time.sleep(1.0)
        raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}; operator log: {self.op_log}; "
                        f"kubectl --kubeconfig {self.cluster.kubeconfig_path} -n {self.ns} describe fmops")

    def fresh_namespace(self) -> None:
        from fmdev.local import argo, volumes

        self.delete_leftovers()
        try:
            self.core.delete_namespace(self.ns)
            self.tl.say(f"namespace {self.ns}: deleting what an earlier run left")
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    self.core.read_namespace(self.ns)
                except self.client.ApiException as err:
                    if err.status == 404:
                        break
                time.sleep(1)
        except self.client.ApiException as err:
            if err.status != 404:
                raise
        shutil.rmtree(volumes.models_dir(self.cluster) / self.ns, ignore_errors=True)
        self.core.create_namespace(self.client.V1Namespace(metadata=self.client.V1ObjectMeta(name=self.ns)))
        templates = argo.install_training(self.cluster, self.ns)
        self.tl.say(f"namespace {self.ns}: WorkflowTemplates {', '.join(templates)}, "
                    f"models volume (pvc://{volumes.MODELS_CLAIM}/...)")

    def delete_leftovers(self) -> None:
        """Our objects of an earlier run, deleted while the operator runs so that it lets go of them.

        An object that still carries the operator's finalizer after a minute (an earlier run's
        namespace deleted while no operator ran) has it removed here: it belongs to this demo."""
        kinds = ("rollouts", "taskadapters", "foundationmodels")

        def items(plural: str) -> list[dict[str, Any]]:
            found: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, plural)
            return list(found["items"])

        for plural in kinds:
            for obj in items(plural):
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, plural, obj["metadata"]["name"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = [(p, o) for p in kinds for o in items(p)]
            if not left:
                return
            time.sleep(1)
        for plural, obj in left:
            finalizers = [f for f in obj["metadata"].get("finalizers") or [] if f != f"{GROUP}/finalizer"]
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, plural, obj["metadata"]["name"],
                                                       {"metadata": {"finalizers": finalizers or None}})
        self.tl.say(f"namespace {self.ns}: removed the operator's finalizer from {len(left)} objects an earlier run left")

    def _webhook_tls_args(self) -> list[str]:
        """The certificate the cluster's Alertmanager trusts (fmdev.local.monitoring), when it posts over TLS."""
        from fmdev.local import monitoring

        tls = monitoring.made_webhook_tls(self.workdir, self.state["endpoints"])
        return [f"--webhook-tls-cert={tls[0]}", f"--webhook-tls-key={tls[1]}"] if tls else []

    def start_operator(self, train: bool = True) -> None:
        """The operator as a process; `train` gives it the fmrec image to run training Workflows with."""
        from fmdev.local import images

        for port in (WEBHOOK_PORT, METRICS_PORT):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                    pass
                taken = True
            except urllib.error.HTTPError:
                taken = True
            except OSError:
                taken = False
            if taken:
                raise DemoError(f"port {port} on 127.0.0.1 is in use (is `make run` running?): stop that operator first")
        ends = self.state["endpoints"]
        token = self.workdir / "monitoring" / "webhook-token"
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig_path), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "fmop", "--log-format=plain", f"--namespaces={self.ns}", "--bind-address=127.0.0.1",
                f"--metrics-port={METRICS_PORT}", f"--health-port={free_port()}", f"--webhook-port={WEBHOOK_PORT}",
                f"--webhook-token-file={token}", *self._webhook_tls_args(), f"--prometheus-url={ends['prometheus']}",
                "--rollout-tick-seconds=0.5",
                "--resync-seconds=2", *([f"--trainer-image={images.ref('fmrec')}"] if train else [])]
        with open(self.op_log, "wb") as out:
            self.op = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        trains = f"trains with {images.ref('fmrec')}" if train else "trains nothing"
        self.tl.say(f"operator started (pid {self.op.pid}, log {self.op_log}): {trains}, "
                    f"analysis against {ends['prometheus']}, Alertmanager webhook on :{WEBHOOK_PORT}")

    def create(self, plural: str, body: dict[str, Any]) -> None:
        body["metadata"]["namespace"] = self.ns
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, plural, body)

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name, body)

    # ---------------------------------------------------------------- the story
    def run(self) -> None:
        self.tl.say(f"local cluster: API server {self.state['endpoints']['kube-apiserver']}, gateway {self.state['endpoints']['traefik']}")
        self.start_operator()  # first: it removes its finalizers from what an earlier run left
        self.fresh_namespace()

        fm = yaml.safe_load((REPO / "examples" / "foundationmodel.yaml").read_text())
        fm["spec"]["architecture"].update(layers=1, width=32, heads=2, contextLength=50)
        fm["spec"]["training"].update(epochs=2, batchSize=256)
        fm["spec"]["resources"].update(cpu="1", memory="3Gi")
        fm["spec"]["export"] = {"formats": ["tritonPython"], "topK": 10}
        self.create("foundationmodels", fm)
        self.tl.say("applied examples/foundationmodel.yaml (made small for 2 cores: 1 layer, width 32, 2 epochs)")
        self.watch_until("FoundationModel v1", lambda: self.fm_latest() == "v1", 1200)
        v1 = self.version("v1")
        self.tl.say(f"v1 recorded: NDCG@10 {v1['metrics'].get('NDCG@10', 0):.4f}, HR@10 {v1['metrics'].get('HR@10', 0):.4f}, "
                    f"data {v1.get('dataFingerprint', '')[:12]}, artifact {v1['artifactUri']}")

        ta = yaml.safe_load((REPO / "examples" / "taskadapter.yaml").read_text())
        ta["spec"]["training"] = {"epochs": 1}
        ta["spec"]["resources"] = {"cpu": "1", "memory": "3Gi"}
        self.create("taskadapters", ta)
        self.tl.say("applied examples/taskadapter.yaml (FollowLatest; 1 epoch)")
        self.watch_until("TaskAdapter on v1", lambda: self.ta_base() == ("Ready", "v1"), 900)

        ro = yaml.safe_load((REPO / "examples" / "local" / "rollout.yaml").read_text())
        self.create("rollouts", ro)
        self.tl.say("applied examples/local/rollout.yaml: serves v1 (a first revision has no stable to compare with)")
        self.watch_until("the Rollout to serve v1", lambda: self.serves("v1"), 600)
        self.load = Load(self.state["endpoints"]["traefik"]).start()
        self.tl.say(f"client load: 10 requests/s through Traefik (Host {ROLLOUT_HOST})")

        self.patch("foundationmodels", "movielens", {"spec": {"training": {"epochs": 4}}})
        self.tl.say("edited the FoundationModel (training.epochs 2 -> 4): a new spec generation trains v2")
        self.watch_until("FoundationModel v2", lambda: any(v["version"] == "v2" for v in self.fm_versions()), 1200)
        v2 = self.version("v2")
        self.tl.say(f"v2 recorded: NDCG@10 {v2['metrics'].get('NDCG@10', 0):.4f} (v1 {v1['metrics'].get('NDCG@10', 0):.4f}), "
                    f"quality gate: {v2.get('gate')}")
        if v2.get("gate") != "Passed":
            gate: dict[str, Any] = next((c for c in self.get("foundationmodels", "movielens")["status"]["conditions"] if c["type"] == "QualityGate"), {})
            raise DemoError(f"v2 was held back by the quality gate ({gate.get('message')}); the demo rolls out a gated version only")
        self.watch_until("the TaskAdapter to retrain on v2", lambda: self.ta_base() == ("Ready", "v2"), 900)

        self.patch("rollouts", "recommender", {"spec": {"model": {"foundationModel": {"version": "v2"}}}})
        self.tl.say(f"Rollout -> v2: shadow, then 5% -> 25% -> 50% -> 100% with analysis (load so far: {self.load.line()})")
        self.watch_until("v2 promoted", lambda: self.serves("v2"), 900)
        self.tl.say(f"v2 promoted; load so far: {self.load.line()}")

        uri = self.faulty_version("v3", v2)
        self.tl.say(f"v3 recorded by hand: v2's export with the served model's TEST-ONLY fault (+1500 ms per answer): {uri}")
        self.patch("rollouts", "recommender", {"spec": {"model": {"foundationModel": {"version": "v3"}}}})
        self.tl.say("Rollout -> v3: Prometheus should see its p99 and Alertmanager post FmRolloutLatencyP99 to the operator")
        self.watch_until("v3 rolled back", lambda: self.ro("phase") == "RolledBack", 900)
        self.tl.say(f"rolled back: {self.ro('rollbackReason')}")
        self.tl.say(f"client load in all: {self.load.line()}")

    def fm_versions(self) -> list[dict[str, Any]]:
        return list((self.get("foundationmodels", "movielens").get("status") or {}).get("versions") or [])

    def fm_latest(self) -> str | None:
        return (self.get("foundationmodels", "movielens").get("status") or {}).get("latestVersion")

    def version(self, name: str) -> dict[str, Any]:
        return next(v for v in self.fm_versions() if v["version"] == name)

    def ta_base(self) -> tuple[str, str]:
        s = self.get("taskadapters", "west-coast").get("status") or {}
        return str(s.get("phase")), str(s.get("baseVersion"))

    def ro(self, field: str) -> Any:
        return (self.get("rollouts", "recommender").get("status") or {}).get(field)

    def serves(self, version: str) -> bool:
        """Promoted, with `version` of the FoundationModel as the stable (status.stableVersion reads movielens:v1)."""
        return bool(self.ro("phase") == "Promoted" and self.ro("stableVersion") == f"movielens:{version}")

    def faulty_version(self, name: str, good: dict[str, Any]) -> str:
        """A copy of a good version's Triton repository with the served model's test-only latency on,
        listed in the FoundationModel's status as `name` (as `python -m fmdev publish --fault-latency-ms` does)."""
        from fmdev.local import volumes
        from fmrec.serving.export import set_faults

        models = volumes.models_dir(self.cluster)
        prefix = f"pvc://{volumes.MODELS_CLAIM}/"
        if not str(good["artifactUri"]).startswith(prefix):
            raise DemoError(f"{good['version']}'s artifactUri {good['artifactUri']} is not on the local models volume")
        src = models / str(good["artifactUri"])[len(prefix):]
        rel = f"{self.ns}/faults/movielens/{name}"
        shutil.rmtree(models / rel, ignore_errors=True)
        shutil.copytree(src, models / rel)
        set_faults(models / rel / "fmrec", latency_ms=1500.0)
        for _ in range(5):  # the operator writes status.versions too: make sure the entry stays
            if not any(v["version"] == name for v in self.fm_versions()):
                versions = [*self.fm_versions(), {"version": name, "artifactUri": prefix + rel}]
                self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.ns, "foundationmodels", "movielens",
                                                                  {"status": {"versions": versions}})
            time.sleep(3)
            if any(v["version"] == name for v in self.fm_versions()):
                return prefix + rel
        raise DemoError(f"version {name} did not stay in FoundationModel movielens' status.versions")

    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
        if self.op is not None and self.op.poll() is None:
            self.op.terminate()
            try:
                self.op.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.op.kill()
        print(self.cluster.kubectl("get", "fmops", "-n", self.ns, check=False).stdout, flush=True)


def main(argv: list[str] | None = None, workdir: Path | None = None) -> int:
    from fmdev.local.common import DEFAULT_DIR

    p = argparse.ArgumentParser(prog="python -m fmdev demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--namespace", default="demo")
    p.add_argument("--dir", type=Path, default=workdir or Path(os.environ.get("FMOP_CLUSTER_DIR", DEFAULT_DIR)))
    a = p.parse_args(argv)
    demo: Demo | None = None
    try:
        demo = Demo(a.dir.resolve(), a.namespace)
        demo.run()
        print(f"\ndemo done in {time.monotonic() - demo.tl.t0:.0f}s; the objects stay in namespace {a.namespace}:", flush=True)
        return 0
    except (DemoError, ClusterError) as err:
        print(f"demo failed: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        if demo is not None:
            demo.close()


if __name__ == "__main__":
    sys.exit(main())
