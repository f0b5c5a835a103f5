"""Benchmark: an alert firing in Prometheus -> traffic restored, over repeated trials (issue #7, section 9).

    python -m fmdev bench-alert [--trials 20]      # make bench-alert, after `make cluster-up`

Everything is the real thing, as in `make demo`: KServe turns each revision into a Triton pod on the
local node, Traefik carries a steady client load (10 requests/s), Prometheus scrapes Triton every
second and evaluates the chart's rules every second, Alertmanager (group_wait 1s) posts to the
operator's webhook, and the operator runs as a process (without a trainer image: this benchmark
trains nothing through Argo). One small FM is trained here (1 epoch, about half a minute) and
exported as the good version v1; each trial points the Rollout (steps: 50%, pause until promoted)
at a new version (trial n: v(n+1)) that is v1's export with the served model's TEST-ONLY fault of +1500 ms per
answer, so FmRolloutLatencyP99 fires for that revision only. Per trial, on one clock (everything
runs on this machine):

- detect: the canary holding 50% of the route -> the alert's startsAt (when Prometheus fired it,
  after the rule's `for` of 5 s);
- restored: startsAt -> the TraefikService `<rollout>-split` without the canary's weight, seen by a
  watch (the webhook handler patches it before it answers Alertmanager);
- status: startsAt -> the RolledBack history entry's finishedAt.

The alert is the one the operator recorded in status.handledAlerts, so a trial that was rolled back
by anything else fails. Prints each trial, then the median and the slowest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from fmdev.local.common import ClusterError
from fmdev.demo import GROUP, REPO, VERSION, Demo, DemoError, Load

NAME, ALERT = "recommender", "FmRolloutLatencyP99"
TRAEFIK = ("traefik.io", "v1alpha1", "traefikservices")


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


class AlertBench(Demo):
    def setup(self, trials: int) -> None:
        from fmdev.local import volumes
        from fmrec.serving.export import export_triton, set_faults

        self.start_operator(train=False)
        self.fresh_namespace()
        trained = self.workdir / "bench-alert" / "fm"
        self.tl.say("training a small FM for the good version (1 epoch, width 32)")
        train_small_fm(trained)
        models = volumes.models_dir(self.cluster)
        prefix = f"pvc://{volumes.MODELS_CLAIM}/"
        versions = []
        for i in range(trials + 1):
            version = f"v{i + 1}"
            rel = f"{self.ns}/movielens/{version}"
            model = export_triton(trained, models / rel, name="fmrec", k=10)
            if i:
                set_faults(model, latency_ms=1500.0)
            versions.append({"version": version, "artifactUri": prefix + rel})
        fm = yaml.safe_load((REPO / "examples" / "foundationmodel.yaml").read_text())
        self.create("foundationmodels", fm)
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.ns, "foundationmodels", "movielens",
                                                          {"status": {"phase": "Ready", "latestVersion": "v1", "versions": versions}})
        self.tl.say(f"versions v1 (good) and v2..v{trials + 1} (v1's export, TEST-ONLY +1500 ms per answer) on the models volume")
        ro = yaml.safe_load((REPO / "examples" / "local" / "rollout.yaml").read_text())
        ro["spec"]["strategy"] = {"steps": [{"setWeight": 50}, {"pause": {"untilPromoted": True}}, {"setWeight": 100}], "keepWarm": "10s"}
        ro["spec"].pop("analysis", None)
        self.create("rollouts", ro)
        self.watch_until("the Rollout to serve v1", lambda: self.serves("v1"), 600)
        self.load = Load(self.state["endpoints"]["traefik"]).start()
        self.tl.say("client load: 10 requests/s through Traefik")

    def trial(self, n: int) -> dict[str, float]:
        version = f"v{n + 1}"  # trial n serves the slow copy v(n+1)
        self.patch("rollouts", NAME, {"spec": {"model": {"foundationModel": {"version": version}}}})
        self.tl.say(f"trial {n}: Rollout -> {version}")
        self.watch_until(f"trial {n}: the canary at 50%",
                         lambda: self.ro("canaryVersion") == f"movielens:{version}" and self.ro("canaryWeight") == 50, 600)
        at50 = datetime.now(UTC)
        revision = self.ro("revision")
        from fmop.rollout import naming

        canary = naming.predictor_service(NAME, revision)
        restored: dict[str, datetime] = {}
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_split, args=(canary, restored, stop), daemon=True)
        watcher.start()
        try:
            self.watch_until(f"trial {n}: rolled back by {ALERT}",
                             lambda: self.ro("revision") == revision and self.ro("phase") in ("RolledBack", "Failed"), 300)
            watcher.join(10)
        finally:
            stop.set()
        s = self.get("rollouts", NAME)["status"]
        if s["phase"] != "RolledBack" or f"alert {ALERT}" not in str(s.get("rollbackReason")):
            raise DemoError(f"trial {n}: {s['phase']}: {s.get('rollbackReason') or s.get('message')}")
        handled = [a for a in s.get("handledAlerts") or [] if a.get("alertname") == ALERT and parse(a["startsAt"]) >= at50.replace(microsecond=0)]
        if not handled:
            raise DemoError(f"trial {n}: status.handledAlerts has no {ALERT} that started after the canary took traffic: {s.get('handledAlerts')}")
        fired = min(parse(a["startsAt"]) for a in handled)
        entry = next(h for h in reversed(s["history"]) if h.get("revision") == revision)
        if "at" not in restored:
            raise DemoError(f"trial {n}: the watch never saw TraefikService {NAME}-split without {canary}")
        row = {"detect_s": (fired - at50).total_seconds(), "restored_s": (restored["at"] - fired).total_seconds(),
               "status_s": (parse(entry["finishedAt"]) - fired).total_seconds()}
        self.tl.say(f"trial {n}: canary at 50% -> {ALERT} fired {row['detect_s']:.2f} s; fired -> traffic restored "
                    f"{row['restored_s']:.2f} s; fired -> status RolledBack {row['status_s']:.2f} s")
        return row

    def _watch_split(self, canary: str, restored: dict[str, datetime], stop: threading.Event) -> None:
        """Record when `<rollout>-split` stops giving the canary any weight."""
        from kubernetes import watch

        while not stop.is_set() and "at" not in restored:
            found: Any = self.custom.get_namespaced_custom_object(*TRAEFIK[:2], self.ns, TRAEFIK[2], f"{NAME}-split")
            if _canary_weight(found, canary) == 0:
                restored["at"] = datetime.now(UTC)
                return
            w = watch.Watch()  # type: ignore[no-untyped-call]
            for event in w.stream(self.custom.list_namespaced_custom_object, *TRAEFIK[:2], self.ns, TRAEFIK[2],  # type: ignore[no-untyped-call]
                                  resource_version=found["metadata"]["resourceVersion"], timeout_seconds=5):
                obj = event["object"]
                if obj["metadata"]["name"] == f"{NAME}-split" and _canary_weight(obj, canary) == 0:
                    restored["at"] = datetime.now(UTC)
                    w.stop()  # type: ignore[no-untyped-call]
                    return
                if stop.is_set():
                    w.stop()  # type: ignore[no-untyped-call]
                    return


def _canary_weight(split: dict[str, Any], canary: str) -> int:
    services = ((split.get("spec") or {}).get("weighted") or {}).get("services") or []
    return sum(int(s.get("weight", 1)) for s in services if s.get("name") == canary)


def train_small_fm(out: Path) -> None:
    from fmrec import checkpoint
    from fmrec.data.movielens import load_ml100k
    from fmrec.data.split import leave_one_out
    from fmrec.train.loop import TrainSettings
    from fmrec.train.pretrain import build_model, pretrain
    from fmrec.vocab import Vocabulary

    ml = leave_one_out(load_ml100k())
    model = build_model(ml.log, d_model=32, n_layers=1, n_heads=2, context_len=32, event_fields=("item", "action", "timeGap"))
    pretrain(model, ml, TrainSettings(epochs=1, batch_size=256, stride=32), log=lambda m: None)
    checkpoint.save(model, out, {"data": "movielens100k"}, Vocabulary.from_log(ml.log, ml.train_mask()))


def summary(rows: list[dict[str, float]]) -> str:
    lines = [f"{len(rows)} trials            median s   slowest s"]
    for key, what in (("detect_s", "canary at 50% -> alert fired"), ("restored_s", "fired -> traffic restored"),
                      ("status_s", "fired -> status RolledBack")):
        values = [r[key] for r in rows]
        lines.append(f"{what:32} {statistics.median(values):8.2f} {max(values):11.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, workdir: Path | None = None) -> int:
    from fmdev.local.common import DEFAULT_DIR

    p = argparse.ArgumentParser(prog="python -m fmdev bench-alert", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--namespace", default="bench-alert")
    p.add_argument("--dir", type=Path, default=workdir or Path(os.environ.get("FMOP_CLUSTER_DIR", DEFAULT_DIR)))
    a = p.parse_args(argv)
    if a.trials < 1:
        p.error("--trials must be at least 1")
    bench: AlertBench | None = None
    rows: list[dict[str, float]] = []
    try:
        bench = AlertBench(a.dir.resolve(), a.namespace)
        bench.setup(a.trials)
        for n in range(1, a.trials + 1):
            rows.append(bench.trial(n))
        print(f"\n{summary(rows)}\nclient load in all: {bench.load.line() if bench.load else '-'}", flush=True)
        return 0
    except (DemoError, ClusterError) as err:
        print(f"bench-alert failed after {len(rows)} trials: {err}", file=sys.stderr, flush=True)
        if rows:
            print(summary(rows), flush=True)
        return 1
    finally:
        if bench is not None:
            bench.close()


if __name__ == "__main__":
    sys.exit(main())
