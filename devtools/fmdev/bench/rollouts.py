"""Benchmark: N Rollouts against the real local control plane, serving not started (issue #7, section 9).

    python -m fmdev.bench.rollouts --rollouts 500 --steady 60      # make bench-rollouts

Starts the local control plane (etcd, kube-apiserver, controller-manager, scheduler; every CRD, no
node, no KServe controller: InferenceServices are written but never become Ready), one
FoundationModel with a recorded version, N Rollouts (gatewayAPI provider), and the operator as a
subprocess. Prints:
- the time until every Rollout has a status written by the operator (the first reconcile of all N);
- in steady state (after that, for --steady seconds): the operator's CPU (share of one core) and
  RSS, reconcile latency p50/p99 (the operator's fmop_reconcile_duration_seconds histogram), and
  the API server's request rate with and without the operator (apiserver_request_total).
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


def _objects(n: int, namespace: str) -> list[dict[str, Any]]:
    fm = yaml.safe_load((REPO / "examples" / "foundationmodel.yaml").read_text())
    fm["metadata"] = {"name": "movielens", "namespace": namespace}
    rollouts = [{"apiVersion": "fmops.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": f"ro-{i:04d}", "namespace": namespace},
                 "spec": {"model": {"foundationModel": {"name": "movielens", "version": "v1"}},
                          "trafficRouting": {"provider": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
                          "strategy": {"steps": [{"setWeight": 50}, {"setWeight": 100}]}}}
                for i in range(n)]
    return [fm, *rollouts]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmdev.bench.rollouts", description=__doc__.split("\n\n")[0])
    p.add_argument("--rollouts", type=int, default=500)
    p.add_argument("--steady", type=float, default=60.0, help="seconds of steady state to measure")
    p.add_argument("--resync-seconds", type=float, default=10.0, help="the operator's --resync-seconds (its default)")
    a = p.parse_args(argv)
    ns = "bench"
    with tempfile.TemporaryDirectory(prefix="fmop-bench-") as tmp, LocalCluster(workdir=Path(tmp), node=False, log=lambda m: None) as c:
        print(f"control plane up ({c.server}); creating 1 FoundationModel and {a.rollouts} Rollouts in namespace {ns}", flush=True)
        c.kubectl("create", "namespace", ns)
        objs = _objects(a.rollouts, ns)
        c.apply(objs[:1], "FoundationModel")
        status = {"status": {"phase": "Ready", "latestVersion": "v1",
                             "versions": [{"version": "v1", "artifactUri": "pvc://fmop-models/bench/movielens/v1"}]}}
        c.kubectl("patch", "foundationmodel", "movielens", "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status))
        for i in range(1, len(objs), 100):
            c.apply(objs[i:i + 100], "Rollouts")
        base0, t0 = _apiserver_requests(c), time.monotonic()
        time.sleep(15)
        idle_rate = (_apiserver_requests(c) - base0) / (time.monotonic() - t0)

        metrics_port, health_port = free_port(), free_port()
        log = Path(tmp) / "operator.log"
        env = {**os.environ, "KUBECONFIG": str(c.kubeconfig_path), "PYTHONUNBUFFERED": "1"}
        argv_op = [sys.executable, "-m", "fmop", "--log-format=plain", f"--resync-seconds={a.resync_seconds}", f"--metrics-port={metrics_port}",
                   f"--health-port={health_port}", "--bind-address=127.0.0.1", "--namespaces", ns]
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
            time.sleep(min(30.0, a.resync_seconds * 2))  # let the start-up wave pass
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            m0, (cpu0, _), api0, t0 = _metrics(url), _proc(op.pid), _apiserver_requests(c), time.monotonic()
            rss_peak = 0
            while time.monotonic() - t0 < a.steady:
                time.sleep(1)
                rss_peak = max(rss_peak, _proc(op.pid)[1])
            m1, (cpu1, rss), api1, t1 = _metrics(url), _proc(op.pid), _apiserver_requests(c), time.monotonic()
        finally:
            op.terminate()
            op.wait(timeout=30)
        span = t1 - t0
        h0, h1 = _histogram(m0, "fmop_reconcile_duration_seconds", 'kind="Rollout"'), _histogram(m1, "fmop_reconcile_duration_seconds", 'kind="Rollout"')
        reconciles = h1[-1][1] - h0[-1][1] if h0 and h1 else 0
        cores = os.cpu_count()
        print(f"\nsteady state over {span:.0f}s, {a.rollouts} Rollouts (Pending: InferenceServices never Ready), resync {a.resync_seconds}s, "
              f"{cores} cores:")
        print(f"  operator CPU      {100 * (cpu1 - cpu0) / span:.1f}% of one core")
        print(f"  operator RSS      {rss / 2**20:.0f} MiB (peak {rss_peak / 2**20:.0f} MiB)")
        print(f"  reconciles        {reconciles / span:.1f}/s; latency p50 {1000 * _quantile(h0, h1, 0.5):.1f} ms, p99 {1000 * _quantile(h0, h1, 0.99):.1f} ms")
        print(f"  API requests      {(api1 - api0) / span:.1f}/s with the operator, {idle_rate:.1f}/s without (all clients of the API server)")
        print(f"  first reconcile   all {a.rollouts} in {first:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
