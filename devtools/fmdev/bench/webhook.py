"""Benchmark: Alertmanager webhook received -> traffic object patched (issue #7, section 9).

    python -m fmdev.bench.webhook --trials 20      # make bench-webhook

Starts the real local control plane (no node), one FoundationModel with a version per trial, one
Rollout (gatewayAPI provider: an HTTPRoute; steps setWeight 50, pause until promoted) and the
operator as a subprocess with its webhook receiver. Nothing serves here, so this script plays
KServe's one part the operator waits for: it marks each InferenceService Ready as soon as it
appears (the real KServe path is the end-to-end tests'). Each trial starts a new canary revision,
waits until it holds 50% of the route, then POSTs one firing alert to the webhook, as Alertmanager
does, and measures, from the moment the POST is sent:
- answered: the webhook's 200 (the handler restores traffic before it answers);
- patched: a watch on the HTTPRoute sees the canary's backend without weight;
- status: the Rollout's status says RolledBack.
Prints each trial and p50/p99 over all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from fmdev.local.cluster import LocalCluster
from fmdev.local.common import REPO, free_port
from fmop.rollout import naming

NS, NAME, GROUP, VERSION = "bench", "reco", "fmops.dev", "v1alpha1"
KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
ROUTE = ("gateway.networking.k8s.io", "v1", "httproutes")


def _spec(version: str) -> dict[str, Any]:
    return {"model": {"foundationModel": {"name": "movielens", "version": version}},
            "trafficRouting": {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
            "strategy": {"steps": [{"setWeight": 50}, {"pause": {"untilPromoted": True}}, {"setWeight": 100}]},
            "rollback": {"alerts": {"matchers": [{"name": "alertname", "value": "BenchAlert"}, {"name": "rollout", "value": NAME}]}},
            "progressDeadline": "1h"}


def _apply_rollout(custom: client.CustomObjectsApi, version: str) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Rollout", "metadata": {"name": NAME, "namespace": NS}, "spec": _spec(version)}
    custom.patch_namespaced_custom_object(GROUP, VERSION, NS, "rollouts", NAME, body, field_manager="bench", force=True,
                                          _content_type="application/apply-patch+yaml")


def _status(custom: client.CustomObjectsApi) -> dict[str, Any]:
    obj: Any = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "rollouts", NAME)
    return dict(obj.get("status") or {})


def _wait(what: str, probe: Any, timeout: float = 120.0, op: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if op is not None and op.poll() is not None:
            raise SystemExit(f"the operator exited with {op.returncode}:\n{log.read_text()[-3000:] if log else ''}")
        got = probe()
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}" + (f"; operator log:\n{log.read_text()[-3000:]}" if log else ""))


def _mark_ready(custom: client.CustomObjectsApi, stop: threading.Event) -> None:
    """KServe's part: every InferenceService of the Rollout becomes Ready once it exists."""
    while not stop.is_set():
        try:
            found: Any = custom.list_namespaced_custom_object(*KSERVE[:2], NS, KSERVE[2])
            for obj in found["items"]:
                conds = (obj.get("status") or {}).get("conditions") or []
                if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    custom.patch_namespaced_custom_object_status(
                        *KSERVE[:2], NS, KSERVE[2], obj["metadata"]["name"],
                        {"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}})
        except client.ApiException:
            pass
        stop.wait(0.1)


def _canary_weight(route: dict[str, Any], canary: str) -> int:
    refs = [b for rule in (route.get("spec") or {}).get("rules") or [] for b in rule.get("backendRefs") or []]
    return sum(int(b.get("weight", 1)) for b in refs if b.get("name") == canary)


def _post(url: str, token: str, fingerprint: str) -> int:
    alert = {"status": "firing", "labels": {"alertname": "BenchAlert", "rollout": NAME, "namespace": NS}, "annotations": {},
             "startsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "", "fingerprint": fingerprint}
    payload = {"version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0, "status": "firing", "receiver": "fm-operator",
               "groupLabels": {}, "commonLabels": alert["labels"], "commonAnnotations": {}, "externalURL": "", "alerts": [alert]}
    req = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with 20 trials, p99 is the slowest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 1)) - 1))]


def trial(custom: client.CustomObjectsApi, api: client.ApiClient, n: int, webhook: str, token: str,
          op: subprocess.Popen[bytes], log: Path) -> dict[str, float]:
    revision = n + 1
    _apply_rollout(custom, f"v{n + 1}")  # v1 is the first, promoted revision
    _wait(f"revision {revision} paused at 50%",
          lambda: (s := _status(custom)).get("revision") == revision and s.get("phase") == "Paused" and s.get("canaryWeight") == 50,
          op=op, log=log)
    canary = naming.predictor_service(NAME, revision)
    route: Any = custom.get_namespaced_custom_object(*ROUTE[:2], NS, ROUTE[2], NAME)
    assert _canary_weight(route, canary) == 50, route["spec"]
    seen: dict[str, float] = {}
    ready = threading.Event()

    def watch_route() -> None:
        w = watch.Watch()  # type: ignore[no-untyped-call]
        stream = w.stream(client.CustomObjectsApi(api).list_namespaced_custom_object, *ROUTE[:2], NS, ROUTE[2],  # type: ignore[no-untyped-call]
                          resource_version=route["metadata"]["resourceVersion"], timeout_seconds=60)
        ready.set()
        for event in stream:
            if event["object"]["metadata"]["name"] == NAME and _canary_weight(event["object"], canary) == 0:
                seen["patched"] = time.perf_counter()
                w.stop()  # type: ignore[no-untyped-call]
                return

    t = threading.Thread(target=watch_route, daemon=True)
    t.start()
    ready.wait(10)
    time.sleep(0.2)  # the watch request is on the wire
    t0 = time.perf_counter()
    code = _post(webhook, token, secrets.token_hex(8))
    answered = time.perf_counter()
    if code != 200:
        raise SystemExit(f"the webhook answered {code}; operator log:\n{log.read_text()[-3000:]}")
    _wait(f"revision {revision} RolledBack", lambda: _status(custom).get("phase") == "RolledBack", op=op, log=log)
    status = time.perf_counter()
    t.join(30)
    if "patched" not in seen:
        raise SystemExit(f"trial {n}: the HTTPRoute never lost its canary weight")
    return {"answered_ms": 1000 * (answered - t0), "patched_ms": 1000 * (seen["patched"] - t0), "status_ms": 1000 * (status - t0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmdev.bench.webhook", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fmop-bench-webhook-") as tmp, \
            LocalCluster(workdir=Path(tmp), node=False, log=lambda m: None) as c:
        print(f"control plane up ({c.server}); {a.trials} trials", flush=True)
        c.kubectl("create", "namespace", NS)
        api = config.new_client_from_config(config_file=str(c.kubeconfig_path))  # type: ignore[no-untyped-call]
        custom = client.CustomObjectsApi(api)
        fm = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FoundationModel", "metadata": {"name": "movielens", "namespace": NS},
              "spec": json.loads(json.dumps(_fm_spec()))}
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "foundationmodels", fm)
        versions = [{"version": f"v{i}", "artifactUri": f"pvc://fmop-models/{NS}/movielens/v{i}"} for i in range(1, a.trials + 2)]
        custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, "foundationmodels", "movielens",
                                                     {"status": {"phase": "Ready", "latestVersion": f"v{a.trials + 1}", "versions": versions}})
        token = secrets.token_hex(24)
        token_file = Path(tmp) / "token"
        token_file.write_text(token)
        port, metrics_port, health_port = free_port(), free_port(), free_port()
        log = Path(tmp) / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(c.kubeconfig_path), "PYTHONUNBUFFERED": "1"}
        argv_op = [sys.executable, "-m", "fmop", "--log-format=plain", f"--metrics-port={metrics_port}", f"--health-port={health_port}",
                   "--bind-address=127.0.0.1", "--namespaces", NS, f"--webhook-port={port}", f"--webhook-token-file={token_file}",
                   "--rollout-tick-seconds=0.5"]
        stop = threading.Event()
        marker = threading.Thread(target=_mark_ready, args=(custom, stop), daemon=True)
        marker.start()
        with open(log, "wb") as out:
            op = subprocess.Popen(argv_op, env=env, stdout=out, stderr=subprocess.STDOUT)
        rows = []
        try:
            _apply_rollout(custom, "v1")
            _wait("revision 1 promoted", lambda: (s := _status(custom)).get("revision") == 1 and s.get("phase") == "Promoted",
                  op=op, log=log)
            webhook = f"http://127.0.0.1:{port}/alertmanager"
            for n in range(1, a.trials + 1):
                row = trial(custom, api, n, webhook, token, op, log)
                rows.append(row)
                print(f"trial {n:2d}: answered {row['answered_ms']:7.1f} ms  patched {row['patched_ms']:7.1f} ms  "
                      f"status RolledBack {row['status_ms']:7.1f} ms", flush=True)
        finally:
            stop.set()
            op.terminate()
            op.wait(timeout=30)
        print(f"\n{len(rows)} trials, operator and control plane on this machine ({os.cpu_count()} cores), from the POST being sent:")
        for key, label in (("answered_ms", "webhook answered"), ("patched_ms", "HTTPRoute patched (seen by a watch)"),
                           ("status_ms", "status RolledBack (polled every 50 ms)")):
            values = [r[key] for r in rows]
            print(f"  {label:40s} p50 {statistics.median(values):7.1f} ms  p99 {_pct(values, 0.99):7.1f} ms  max {max(values):7.1f} ms")
    return 0


def _fm_spec() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load((REPO / "examples" / "foundationmodel.yaml").read_text())["spec"])


if __name__ == "__main__":
    sys.exit(main())
