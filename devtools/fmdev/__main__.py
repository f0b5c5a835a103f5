"""python -m fmdev COMMAND: the local single-node Kubernetes (detached), the demo and the alert benchmark.

    up       control plane, node (containerd + kubelet), KServe and Argo controllers, Traefik, all CRDs,
             Prometheus + Alertmanager
    down     stop everything and remove every container, network namespace, bridge and mount
    status   what runs and where
    models-volume NAMESPACE   the fmop-models claim in NAMESPACE (`default` has one after `up`)
    demo     the whole product on the running cluster (make demo; see devtools/fmdev/demo.py)
    bench-alert [--trials N]   alert fired in Prometheus -> traffic restored, N trials (make bench-alert)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from fmdev.local.common import DEFAULT_DIR, ClusterError, alive


def _up(args: argparse.Namespace) -> int:
    from fmdev.local.cluster import LocalCluster

    state = args.dir / "state.json"
    if state.exists() and any(alive(p) for p in json.loads(state.read_text()).get("pids", {}).values()):
        print(f"already running; export KUBECONFIG={args.dir / 'kubeconfig'}")
        return 0
    node = not args.no_node
    if node and os.geteuid() != 0:
        print("the node (containerd, kubelet, a bridge) needs root; run as root or with --no-node", file=sys.stderr)
        return 1
    scrape: dict[str, list[str]] = {}
    for item in args.scrape:
        job, _, target = item.partition("=")
        if not job or ":" not in target:
            print(f"--scrape {item!r}: expected JOB=HOST:PORT, e.g. fm-operator=127.0.0.1:9090", file=sys.stderr)
            return 1
        scrape.setdefault(job, []).append(target)
    cluster = LocalCluster(workdir=args.dir, attached=False, node=node, kserve=node and not args.no_kserve,
                           argo=node and not args.no_argo, traefik=not args.no_traefik,
                           monitoring=not args.no_monitoring and not args.no_crds, scrape=scrape, webhook_url=args.webhook_url)
    t0 = time.monotonic()
    try:
        cluster.start()
        if args.no_crds:
            pass
        else:
            cluster.install_extras()
    except (ClusterError, OSError) as err:
        cluster.stop()
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"up in {time.monotonic() - t0:.1f}s")
    for name, where in cluster.endpoints.items():
        print(f"  {name:15} {where}")
    print(f"logs in {args.dir}/*.log")
    print(f"export KUBECONFIG={cluster.kubeconfig_path}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from fmdev.local import node as nodemod
    from fmdev.local.common import terminate

    state = args.dir / "state.json"
    data = json.loads(state.read_text()) if state.exists() else {}
    if nodemod.LOCK.exists():
        owner = Path(json.loads(nodemod.LOCK.read_text())["workdir"])
        owner_state = owner / "state.json"
        owner_pids = json.loads(owner_state.read_text()).get("pids", {}) if owner_state.exists() else {}
        if owner != args.dir and any(alive(p) for p in owner_pids.values()):
            print(f"the node on this machine belongs to {owner}, not {args.dir}: use --dir {owner}", file=sys.stderr)
            return 1
    if data.get("node") or (args.dir / "node").exists():
        nodemod.cleanup(args.dir)
        if nodemod.LOCK.exists() and json.loads(nodemod.LOCK.read_text()).get("workdir") == str(args.dir):
            nodemod.LOCK.unlink()
    for name, pid in reversed(list(data.get("pids", {}).items())):
        terminate(pid, name)
    state.unlink(missing_ok=True)
    print("stopped" if data else "not running (cleaned up anything left behind)")
    return 0


def _models_volume(args: argparse.Namespace) -> int:
    from fmdev.local import volumes
    from fmdev.local.cluster import LocalCluster

    cluster = LocalCluster(workdir=args.dir, attached=False)
    try:
        volumes.models_volume(cluster, args.namespace)
    except ClusterError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"pvc://{volumes.MODELS_CLAIM}/<path> in namespace {args.namespace} is {volumes.models_dir(cluster)}/<path>")
    return 0


def _publish(args: argparse.Namespace) -> int:
    """Export a trained model onto the local models volume and list it in a FoundationModel's status."""
    from kubernetes import client, config

    from fmdev.local import volumes
    from fmdev.local.cluster import LocalCluster
    from fmrec.serving.export import ExportError, export_triton, set_faults

    cluster = LocalCluster(workdir=args.dir, attached=False)
    try:
        volumes.models_volume(cluster, args.namespace)
        model = export_triton(args.model, volumes.models_dir(cluster) / args.namespace / args.name / args.version, name="fmrec",
                              adapters=[(task, Path(folder)) for task, _, folder in (a.rpartition("=") for a in args.adapter)])
        if args.fault_error_share or args.fault_latency_ms:
            set_faults(model, args.fault_error_share, args.fault_latency_ms)
    except (ClusterError, ExportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    uri = f"pvc://{volumes.MODELS_CLAIM}/{args.namespace}/{args.name}/{args.version}"
    custom = client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.kubeconfig_path)))  # type: ignore[no-untyped-call]
    try:
        fm: Any = custom.get_namespaced_custom_object("fmops.dev", "v1alpha1", args.namespace, "foundationmodels", args.name)
    except client.ApiException as err:
        print(f"error: FoundationModel {args.namespace}/{args.name}: HTTP {err.status} {err.reason}; create it first "
              "(kubectl apply -f examples/foundationmodel.yaml)", file=sys.stderr)
        return 1
    versions = [v for v in (fm.get("status") or {}).get("versions") or [] if v.get("version") != args.version]
    versions.append({"version": args.version, "artifactUri": uri})
    custom.patch_namespaced_custom_object_status("fmops.dev", "v1alpha1", args.namespace, "foundationmodels", args.name,
                                                 {"status": {"versions": versions, "latestVersion": args.version}})
    faults = f" (TEST ONLY: {args.fault_error_share:.0%} errors, +{args.fault_latency_ms:g} ms)" if args.fault_error_share or args.fault_latency_ms else ""
    print(f"FoundationModel {args.namespace}/{args.name} version {args.version}: {uri}{faults}")
    return 0


def _env(args: argparse.Namespace) -> int:
    """Shell assignments that point the operator (`make run`) at this cluster's Prometheus and Alertmanager."""
    state = args.dir / "state.json"
    if not state.exists():
        print("not running: make cluster-up first", file=sys.stderr)
        return 1
    data = json.loads(state.read_text())
    ends = data.get("endpoints", {})
    print(f"export KUBECONFIG={data['kubeconfig']}")
    from fmdev.local.common import BIN

    print(f"export PATH={Path(sys.executable).parent}:{BIN}:$PATH")  # kubectl, and the kubectl-fmops plugin
    if "prometheus" in ends:
        print(f"export FMOP_PROMETHEUS_URL={ends['prometheus']}")
    token = args.dir / "monitoring" / "webhook-token"
    if token.exists():
        print(f"export FMOP_WEBHOOK_PORT=8081 FMOP_WEBHOOK_TOKEN_FILE={token}")
        from fmdev.local import monitoring

        tls = monitoring.made_webhook_tls(args.dir, ends)
        if tls:  # Alertmanager posts over TLS, trusting the CA that signed this certificate
            print(f"export FMOP_WEBHOOK_TLS_CERT={tls[0]} FMOP_WEBHOOK_TLS_KEY={tls[1]}")
    if "traefik" in ends:
        print(f"export FMOP_GATEWAY={ends['traefik']}")
    return 0


def _load(args: argparse.Namespace) -> int:
    """Steady v2 inference requests through the local gateway, one line of counts per second."""
    import urllib.error
    import urllib.request
    from collections import Counter

    state = args.dir / "state.json"
    url = args.url or json.loads(state.read_text()).get("endpoints", {}).get("traefik") if state.exists() else args.url
    if not url:
        print("no gateway: make cluster-up first, or give --url", file=sys.stderr)
        return 1
    from fmdev.local.common import INFER_REQUEST

    body = json.dumps(INFER_REQUEST).encode()
    counts: Counter[str] = Counter()
    tick = time.monotonic()
    try:
        while True:
            start = time.monotonic()
            req = urllib.request.Request(f"{url}/v2/models/fmrec/infer", data=body, headers={"Content-Type": "application/json", "Host": args.host})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    r.read()
                    counts[str(r.status)] += 1
            except urllib.error.HTTPError as err:
                counts[str(err.code)] += 1
            except OSError:
                counts["no answer"] += 1
            if time.monotonic() - tick >= 1:
                print(time.strftime("%H:%M:%S"), " ".join(f"{k}: {v}" for k, v in sorted(counts.items())), flush=True)
                tick = time.monotonic()
            time.sleep(max(0.0, 1 / args.rate - (time.monotonic() - start)))
    except KeyboardInterrupt:
        return 0


def _demo(args: argparse.Namespace) -> int:
    from fmdev import demo

    return demo.main(args.rest, workdir=args.dir)


def _bench_alert(args: argparse.Namespace) -> int:
    from fmdev.bench import alert as bench_alert

    return bench_alert.main(args.rest, workdir=args.dir)


def _status(args: argparse.Namespace) -> int:
    state = args.dir / "state.json"
    if not state.exists():
        print("not running")
        return 1
    data = json.loads(state.read_text())
    for name, pid in data["pids"].items():
        print(f"{name:24} pid {pid:<8} {'running' if alive(pid) else 'DEAD'}")
    for name, where in data.get("endpoints", {}).items():
        print(f"{name:24} {where}")
    print(f"export KUBECONFIG={data['kubeconfig']}")
    return 0 if all(alive(p) for p in data["pids"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmdev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("FMOP_CLUSTER_DIR", DEFAULT_DIR)),
                        help="state directory (kubeconfig, logs, etcd data, node state); default %(default)s")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start in the background")
    up.add_argument("--no-crds", action="store_true", help="do not install CRDs (nor start KServe, Argo and Traefik)")
    up.add_argument("--no-node", action="store_true", help="control plane only: objects are stored, pods never run")
    up.add_argument("--no-kserve", action="store_true", help="do not start the KServe controller")
    up.add_argument("--no-argo", action="store_true", help="do not start the Argo workflow-controller")
    up.add_argument("--no-monitoring", action="store_true", help="do not start Prometheus and Alertmanager")
    up.add_argument("--scrape", action="append", default=["fm-operator=127.0.0.1:9090"], metavar="JOB=HOST:PORT",
                    help="an extra Prometheus scrape target, repeatable (default: the operator's metrics, %(default)s)")
    up.add_argument("--webhook-url", default=None,
                    help="where Alertmanager posts alerts (default the operator's receiver, http://127.0.0.1:8081/alertmanager); "
                    "the bearer token is in <dir>/monitoring/webhook-token")
    up.add_argument("--no-traefik", action="store_true", help="do not start Traefik (the local gateway)")
    up.set_defaults(func=_up)
    sub.add_parser("down", help="stop and clean up").set_defaults(func=_down)
    pub = sub.add_parser("publish", help="export a model trained elsewhere (fmrec train --out DIR) onto the models volume and "
                                         "record it as a version of a FoundationModel, as a training Workflow would")
    pub.add_argument("--namespace", "-n", default="default")
    pub.add_argument("--name", default="movielens", help="the FoundationModel (default %(default)s)")
    pub.add_argument("--version", required=True)
    pub.add_argument("--model", type=Path, required=True, help="the trained model's folder")
    pub.add_argument("--adapter", action="append", default=[], metavar="[TASK=]DIR", help="a task adapter served with it")
    pub.add_argument("--fault-error-share", type=float, default=0.0, help="TEST ONLY: fail this share of requests (a bad version)")
    pub.add_argument("--fault-latency-ms", type=float, default=0.0, help="TEST ONLY: answer this much later (a slow version)")
    pub.set_defaults(func=_publish)
    sub.add_parser("env", help="print exports for the operator: KUBECONFIG, Prometheus, the webhook token").set_defaults(func=_env)
    ld = sub.add_parser("load", help="steady inference requests through the local gateway (Traefik), counts per second")
    ld.add_argument("--host", required=True, help="the Host header the route matches, e.g. recommender.local")
    ld.add_argument("--rate", type=float, default=20.0, help="requests per second (default %(default)s)")
    ld.add_argument("--url", default=None, help="the gateway (default: the local Traefik)")
    ld.set_defaults(func=_load)
    sub.add_parser("status", help="show processes and endpoints").set_defaults(func=_status)
    sub.add_parser("demo", help="the whole story on the running local cluster: train through Argo, fine-tune, serve, canary, "
                                "alert rollback (fmdev.demo)", add_help=False).set_defaults(func=_demo)
    sub.add_parser("bench-alert", help="alert fired in Prometheus -> traffic restored, over repeated trials on the running "
                                       "local cluster (fmdev.bench.alert)", add_help=False).set_defaults(func=_bench_alert)
    mv = sub.add_parser("models-volume", help="create the fmop-models claim (pvc://fmop-models/...) in a namespace")
    mv.add_argument("namespace")
    mv.set_defaults(func=_models_volume)
    args, rest = parser.parse_known_args(argv)
    if rest and args.cmd not in ("demo", "bench-alert"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    args.dir = args.dir.resolve()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
