"""What the end-to-end rollout tests share: model versions on the models volume, a FoundationModel that
lists them, steady client load through Traefik, and small readers of a Rollout's story.

Nothing here stands in for a real part: versions are real Triton exports of a really trained (tiny)
model, faults are the served model's own test-only fault injection, and the load goes through the
real Traefik to real predictor pods.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from fmdev.local import volumes
from fmrec import checkpoint
from fmrec.data.movielens import load_ml100k
from fmrec.data.split import leave_one_out
from fmrec.serving.export import export_triton, set_faults
from fmrec.train.loop import TrainSettings
from fmrec.train.pretrain import build_model, pretrain
from fmrec.vocab import Vocabulary

GROUP, VERSION = "fmops.dev", "v1alpha1"
REQUEST = {"inputs": [
    {"name": "ITEMS", "datatype": "BYTES", "shape": [1, 4], "data": ["50", "172", "133", "181"]},
    {"name": "TIMESTAMPS", "datatype": "INT64", "shape": [1, 4], "data": [881250949, 881251000, 881251200, 881252000]},
    {"name": "ACTIONS", "datatype": "BYTES", "shape": [1, 4], "data": ["5", "4", "3", "5"]},
    {"name": "K", "datatype": "INT32", "shape": [1, 1], "data": [5]},
]}

# Versions of one FoundationModel: (version, error share, added latency in ms). Bad ones are the same
# model with the served model's test-only faults switched on in their config.
VERSIONS = (("v1", 0.0, 0.0), ("v2", 0.0, 0.0), ("v3", 0.6, 0.0), ("v4", 0.0, 1500.0), ("v5", 0.0, 0.0), ("v6", 0.0, 0.0))


def train_tiny_fm(out: Path) -> Path:
    """A small ML-100K FM (1 epoch, width 32): enough to serve real rankings quickly."""
    ml = leave_one_out(load_ml100k())
    model = build_model(ml.log, d_model=32, n_layers=1, n_heads=2, context_len=32, event_fields=("item", "action", "timeGap"))
    pretrain(model, ml, TrainSettings(epochs=1, batch_size=256, stride=32), log=lambda m: None)
    checkpoint.save(model, out, {"data": "movielens100k"}, Vocabulary.from_log(ml.log, ml.train_mask()))
    return out


def publish_versions(cluster: Any, api: client.ApiClient, namespace: str, trained: Path, name: str = "movielens") -> dict[str, str]:
    """Export every version onto the models volume and record them in a FoundationModel's status,
    as a training Workflow would. Returns version -> storageUri."""
    models = volumes.models_dir(cluster)
    volumes.models_volume(cluster, namespace)
    uris: dict[str, str] = {}
    for version, errors, latency in VERSIONS:
        repo = models / namespace / name / version
        model = export_triton(trained, repo, name="fmrec", k=10)
        if errors or latency:
            set_faults(model, error_share=errors, latency_ms=latency)
        uris[version] = f"pvc://{volumes.MODELS_CLAIM}/{namespace}/{name}/{version}"
    fm = yaml_example("foundationmodel.yaml")
    fm["metadata"] = {"name": name, "namespace": namespace}
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "foundationmodels", fm)
    status = {"status": {"phase": "Ready", "latestVersion": VERSIONS[-1][0],
                         "versions": [{"version": v, "artifactUri": uris[v]} for v, _, _ in VERSIONS]}}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "foundationmodels", name, status)
    return uris


def yaml_example(name: str) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / name).read_text()))


@dataclass
class Load:
    """Steady client load: `rate` requests per second to url with a Host header, from one thread.

    Every answer is recorded with the time it came back, so a test can count failures in a window
    (e.g. after a rollback completed)."""

    url: str
    host: str
    rate: float = 20.0
    results: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), HTTP status; 0 = no answer)
    errors: list[tuple[float, float, str]] = field(default_factory=list)  # (when, seconds taken, what) for answers other than 200
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name=f"load-{self.host}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        body = json.dumps(REQUEST).encode()
        period = 1.0 / self.rate
        # No proxy from the environment: the gateway is on the node's bridge, never behind a proxy.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self._stop.is_set():
            start = time.monotonic()
            req = urllib.request.Request(f"{self.url}/v2/models/fmrec/infer", data=body,
                                         headers={"Content-Type": "application/json", "Host": self.host})
            what = ""
            try:
                with opener.open(req, timeout=10) as r:
                    r.read()
                    code = r.status
            except urllib.error.HTTPError as err:
                code, what = err.code, err.read()[:200].decode(errors="replace")
            except Exception as err:  # no answer (refused, reset, timed out, cut short): counted, and the load goes on
                code, what = 0, repr(err)[:200]
            now = time.monotonic()
            self.results.append((now, code))
            if code != 200:
                self.errors.append((now, now - start, f"{code} {what}"))
            self._stop.wait(max(0.0, period - (time.monotonic() - start)))

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def describe(self, since: float = 0.0) -> str:
        """For failure messages: counts since `since`, the thread's state and the last errors."""
        last = self.results[-1][0] - since if self.results else None
        errs = [(round(t - since, 2), round(d, 2), w) for t, d, w in self.errors[-5:]]
        return (f"answers since: {dict(self.codes(since))}, total {len(self.results)}, last answer at {last}s, "
                f"thread alive: {self.alive()}, last errors (t, seconds, what): {errs}")

    def codes(self, since: float = 0.0, until: float = float("inf")) -> Counter[int]:
        return Counter(code for t, code in list(self.results) if since <= t <= until)

    def failed(self, since: float = 0.0, until: float = float("inf")) -> int:
        return sum(n for code, n in self.codes(since, until).items() if code != 200)


def rollout(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj: Any = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, "rollouts", name)
    return dict(obj)


def events(api: client.ApiClient, namespace: str, name: str) -> list[client.CoreV1Event]:
    found = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    return sorted(found.items, key=lambda e: (e.first_timestamp or e.event_time or 0, e.metadata.name))


def reasons(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    return [e.reason for e in events(api, namespace, name)]
