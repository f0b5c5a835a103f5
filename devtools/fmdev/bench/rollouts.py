"""Benchmark: N Rollouts against the real local control plane, serving not started (issue #7, section 9).

    python -m fmdev.bench.rollouts --rollouts 500 --steady 60                # make bench-rollouts: idle (Pending)
    python -m fmdev.bench.rollouts --rollouts 500 --steady 60 --in-flight    # every Rollout in a canary step, ticking

Starts the local control plane (etcd, kube-apiserver, controller-manager, scheduler; every CRD, no
node, no KServe controller: InferenceServices are written but never become Ready), one
FoundationModel with a recorded version, N Rollouts (gatewayAPI provider), and the operator as a
subprocess. Prints:
- the time until every Rollout has a status written by the operator (the first reconcile of all N);
- in steady state (after that, for --steady seconds): the operator's CPU (share of one core) and
  RSS, reconcile latency p50/p99 (the operator's fmop_reconcile_duration_seconds histogram), and
  the API server's request rate with and without the operator (apiserver_request_total), with the
  reads of the kinds a reconcile needs broken down by verb and resource.

--in-flight: this driver plays KServe (it marks each InferenceService Ready), every Rollout is
promoted on v1, then moved to v2, whose canary stays in an analysis step: one measurement every
--interval against a real Prometheus (Debian's, no targets; the query is `vector(0)`), up to 1000,
each written to status. The Rollouts are in flight and their daemons wake for every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from fmdev.local.cluster import LocalCluster
from fmdev.local.common import REPO, free_port
from fmdev.local.monitoring import Monitoring

TICK = os.sysconf("SC_CLK_TCK")


def _proc(pid: int) -> tuple[float, int]:
    """(CPU seconds so far, RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    rss = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return cpu, rss


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def _histogram(text: str, name: str, labels: str) -> list[tuple[float, float]]:
    """Cumulative (le, count) pairs of one histogram series."""
    out = []
    for m in re.finditer(rf'^{name}_bucket{{(.*?)}} ([0-9.e+]+)$', text, re.M):
        if labels in m.group(1):
            le = re.search(r'le="([^"]+)"', m.group(1))
            assert le is not None
            out.append((float("inf") if le.group(1) == "+Inf" else float(le.group(1)), float(m.group(2))))
    return sorted(out)


def _quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style histogram_quantile over the increase between two scrapes (linear within a bucket)."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = counts[-1][1]
    if total <= 0:
        return float("nan")
    rank, lower, prev = q * total, 0.0, 0.0
    for le, c in counts:
        if c >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - prev) / max(c - prev, 1e-12)
        lower, prev = le, c
    return lower


def _apiserver_requests(cluster: LocalCluster) -> float:
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    return sum(float(m.group(1)) for m in re.finditer(r"^apiserver_request_total{.*} ([0-9.e+]+)$", text, re.M))


def _objects(n: int, namespace: str, interval: str = "") -> list[dict[str, Any]]:
    """The FoundationModel and n Rollouts; with an `interval`, each canary analyses (vector(0), 1000 times) before its first weight."""
    fm = yaml.safe_load((REPO / "examples" / "foundationmodel.yaml").read_text())
    fm["metadata"] = {"name": "movielens", "namespace": namespace}
    spec: dict[str, Any] = {"model": {"foundationModel": {"name": "movielens", "version": "v1"}},
                            "trafficRouting": {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
                            "strategy": {"steps": [{"setWeight": 50}, {"setWeight": 100}]}}
    if interval:
        spec["strategy"]["steps"] = [{"analysis": {"metrics": ["ok"]}}, {"setWeight": 100}]
        spec["analysis"] = {"metrics": [{"name": "ok", "query": "vector(0)", "successCondition": "result < 1", "interval": interval,
                                         "count": 1000}]}
        spec["progressDeadline"] = "3h"
    rollouts = [{"apiVersion": "fmops.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": f"ro-{i:04d}", "namespace": namespace},
                 "spec": spec} for i in range(n)]
    return [fm, *rollouts]


FM_STATUS = {"status": {"phase": "Ready", "latestVersion": "v2",
                        "versions": [{"version": v, "artifactUri": f"pvc://fmop-models/bench/movielens/{v}"} for v in ("v1", "v2")]}}
READY = {"status": {"conditions": [{"type": "Ready", "status": "True"}], "url": "http://isvc.example"}}


def _items(c: LocalCluster, plural: str, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(c.kubectl("get", plural, "-n", namespace, "-o", "json").stdout)["items"]
    return items


def _mark_ready(c: LocalCluster, namespace: str, done: set[str]) -> None:
    """Play KServe: every InferenceService not marked yet gets a Ready condition."""
    for isvc in _items(c, "inferenceservices.serving.kserve.io", namespace):
        name = isvc["metadata"]["name"]
        if name not in done:
            c.kubectl("patch", "inferenceservices.serving.kserve.io", name, "-n", namespace, "--subresource=status", "--type=merge",
                      "-p", json.dumps(READY))
            done.add(name)


def until_phase(c: LocalCluster, namespace: str, n: int, phases: tuple[str, ...], revision: int, op: subprocess.Popen[bytes], log: Path,
                timeout: float = 1800.0) -> None:
    """Play KServe until all n Rollouts are in one of `phases` with `revision` in flight (or stable)."""
    done: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if op.poll() is not None:
            raise SystemExit(f"the operator exited with {op.returncode}:\n{log.read_text()[-3000:]}")
        _mark_ready(c, namespace, done)
        got = [r.get("status") or {} for r in _items(c, "rollouts", namespace)]
        there = sum(1 for s in got if s.get("phase") in phases and ((s.get("canary") or s.get("stable") or {}).get("revision") == revision))
        print(f"  {there}/{n} Rollouts {'/'.join(phases)} with revision {revision}", flush=True)
        if there == n:
            return
        time.sleep(5)
    raise SystemExit(f"not all {n} Rollouts reached {'/'.join(phases)} in {timeout:.0f}s")


def in_flight(c: LocalCluster, namespace: str, n: int, op: subprocess.Popen[bytes], log: Path) -> None:
    """Promote v1 everywhere, then start v2's canary, which holds in a one-hour pause: n Rollouts in flight."""
    until_phase(c, namespace, n, ("Promoted",), 1, op, log)
    patch = json.dumps({"spec": {"model": {"foundationModel": {"name": "movielens", "version": "v2"}}}})
    for r in _items(c, "rollouts", namespace):
        c.kubectl("patch", "rollouts", r["metadata"]["name"], "-n", namespace, "--type=merge", "-p", patch)
    until_phase(c, namespace, n, ("Progressing",), 2, op, log)


READS = re.compile(r'^apiserver_request_total{(.*?)} ([0-9.e+]+)$', re.M)


def api_reads(c: LocalCluster, resources: tuple[str, ...] = ("rollouts", "foundationmodels", "taskadapters", "inferenceservices", "httproutes")
              ) -> dict[str, float]:
    """apiserver_request_total for GET and LIST of `resources` (the reads a Rollout reconcile can make), by "VERB resource"."""
    out: dict[str, float] = {}
    for m in READS.finditer(c.kubectl("get", "--raw", "/metrics").stdout):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("verb") in ("GET", "LIST") and labels.get("resource") in resources and not labels.get("subresource"):
            key = f"{labels['verb']} {labels['resource']}"
            out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmdev.bench.rollouts", description=__doc__.split("\n\n")[0])
    p.add_argument("--rollouts", type=int, default=500)
    p.add_argument("--steady", type=float, default=60.0, help="seconds of steady state to measure")
    p.add_argument("--resync-seconds", type=float, default=10.0, help="the operator's --resync-seconds (its default)")
    p.add_argument("--in-flight", action="store_true", help="measure with every Rollout in a canary's analysis step (this driver plays KServe)")
    p.add_argument("--interval", default="10s", help="with --in-flight: the analysis interval (default %(default)s)")
    a = p.parse_args(argv)
    ns = "bench"
    with tempfile.TemporaryDirectory(prefix="fmop-bench-") as tmp, LocalCluster(workdir=Path(tmp), node=False, log=lambda m: None) as c:
        print(f"control plane up ({c.server}); creating 1 FoundationModel and {a.rollouts} Rollouts in namespace {ns}", flush=True)
        c.kubectl("create", "namespace", ns)
        objs = _objects(a.rollouts, ns, a.interval if a.in_flight else "")
        prometheus: list[str] = []
        if a.in_flight:
            mon = Monitoring(Path(tmp), alertmanager=False, rules=False)
            mon.start(c.sup)
            prometheus = [f"--prometheus-url={mon.prometheus_url}"]
        c.apply(objs[:1], "FoundationModel")
        c.kubectl("patch", "foundationmodel", "movielens", "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(FM_STATUS))
        for i in range(1, len(objs), 100):
            c.apply(objs[i:i + 100], "Rollouts")
        base0, t0 = _apiserver_requests(c), time.monotonic()
        time.sleep(15)
        idle_rate = (_apiserver_requests(c) - base0) / (time.monotonic() - t0)

        metrics_port, health_port = free_port(), free_port()
        log = Path(tmp) / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(c.kubeconfig_path), "PYTHONUNBUFFERED": "1"}
        argv_op = [sys.executable, "-m", "fmop", "--log-format=plain", f"--resync-seconds={a.resync_seconds}", f"--metrics-port={metrics_port}",
                   f"--health-port={health_port}", "--bind-address=127.0.0.1", "--namespaces", ns, *prometheus]
        start = time.monotonic()
        with open(log, "wb") as out:
            op = subprocess.Popen(argv_op, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                if op.poll() is not None:
                    raise SystemExit(f"the operator exited with {op.returncode}:\n{log.read_text()[-3000:]}")
                got = json.loads(c.kubectl("get", "rollouts", "-n", ns, "-o", "json").stdout)["items"]
                done = sum(1 for r in got if (r.get("status") or {}).get("conditions"))
                if done == a.rollouts:
                    break
                time.sleep(1)
            first = time.monotonic() - start
            print(f"all {a.rollouts} Rollouts reconciled once {first:.1f}s after the operator started", flush=True)
            if a.in_flight:
                in_flight(c, ns, a.rollouts, op, log)
            time.sleep(min(30.0, a.resync_seconds * 2))  # let the start-up wave pass
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            m0, (cpu0, _), api0, t0 = _metrics(url), _proc(op.pid), _apiserver_requests(c), time.monotonic()
            reads0 = api_reads(c)
            rss_peak = 0
            while time.monotonic() - t0 < a.steady:
                time.sleep(1)
                rss_peak = max(rss_peak, _proc(op.pid)[1])
            m1, (cpu1, rss), api1, t1 = _metrics(url), _proc(op.pid), _apiserver_requests(c), time.monotonic()
            reads1 = api_reads(c)
        finally:
            op.terminate()
            op.wait(timeout=30)
        span = t1 - t0
        h0, h1 = _histogram(m0, "fmop_reconcile_duration_seconds", 'kind="Rollout"'), _histogram(m1, "fmop_reconcile_duration_seconds", 'kind="Rollout"')
        reconciles = h1[-1][1] - h0[-1][1] if h0 and h1 else 0
        cores = os.cpu_count()
        what = f"in flight: a canary analysing every {a.interval}" if a.in_flight else "Pending: InferenceServices never Ready"
        print(f"\nsteady state over {span:.0f}s, {a.rollouts} Rollouts ({what}), resync {a.resync_seconds}s, {cores} cores:")
        print(f"  operator CPU      {100 * (cpu1 - cpu0) / span:.1f}% of one core")
        print(f"  operator RSS      {rss / 2**20:.0f} MiB (peak {rss_peak / 2**20:.0f} MiB)")
        print(f"  reconciles        {reconciles / span:.1f}/s; latency p50 {1000 * _quantile(h0, h1, 0.5):.1f} ms, p99 {1000 * _quantile(h0, h1, 0.99):.1f} ms")
        print(f"  API requests      {(api1 - api0) / span:.1f}/s with the operator, {idle_rate:.1f}/s without (all clients of the API server)")
        reads = ", ".join(f"{k} {(reads1.get(k, 0) - reads0.get(k, 0)) / span:.1f}/s" for k in sorted(set(reads0) | set(reads1)))
        print(f"  of which reads    {reads or 'none'} (this driver's own reads included)")
        print(f"  first reconcile   all {a.rollouts} in {first:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
