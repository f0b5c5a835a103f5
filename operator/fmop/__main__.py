"""Entry point: `fm-operator` / `python -m fmop`.

One process, in this order:
1. the health endpoints on --health-port, served for the whole life of the process:
   /healthz (liveness: the loop answers), /readyz (pod readiness: this replica does its part, the
   leader or a standby able to take over) and /leaderz (200 only on the replica that acts and whose
   webhook can judge alerts); see fmop.leader `readiness` and `leadership`;
2. with leader election (the default), a standby until it holds the Lease (fmop.leader);
3. kopf, until SIGTERM/SIGINT; the Lease is renewed on a thread meanwhile, and a replica that cannot
   renew it exits at once;
4. on a graceful stop, it takes its leader label off its Pod and releases the Lease, so the standby
   takes over at its next try.
In a Pod (POD_NAME and POD_NAMESPACE set, as the chart does), the replica that /leaderz calls the
leader labels its own Pod `fmops.dev/leader=true`: the chart's Service, and so Alertmanager, reaches it
alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import kopf
from aiohttp import web

from fmop import handlers, leader
from fmop.config import Config, from_args
from fmop.kube import KubeError, api_client
from fmop.rollout import webhook

log = logging.getLogger("fmop")

Judge = Callable[[leader.Snapshot], tuple[bool, str]]


def run(cfg: Config) -> None:
    kopf.configure(
        verbose=cfg.verbose,
        log_format={"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}[cfg.log_format],
    )
    handlers.register(cfg)
    memo = kopf.Memo()
    memo["config"] = cfg
    asyncio.run(_operate(cfg, memo))


class _Replica:
    """This replica as the health endpoints and the leader label see it."""

    def __init__(self, cfg: Config, memo: kopf.Memo, elector: leader.Elector | None, in_pod: bool) -> None:
        self.cfg, self.memo, self.elector = cfg, memo, elector
        self.started = asyncio.Event()  # kopf's ready flag: the startup handlers (the webhook's list included) are done
        self.label_clear = not in_pod  # in a Pod, unknown until the first unlabel worked

    def snapshot(self) -> leader.Snapshot:
        gate: webhook.Gate | None = self.memo.get("webhook_gate")
        judging = self.started.is_set() and (not self.cfg.webhook_port or (gate is not None and gate()))
        e = self.elector
        if e is None:
            return leader.Snapshot(electing=False, leading=True, judging=judging, lease_age=0.0, label_clear=self.label_clear)
        return leader.Snapshot(electing=True, leading=e.leading, judging=judging, lease_age=e.lease_age(), lease_error=e.last_error,
                               label_clear=self.label_clear)


async def _serve_health(cfg: Config, replica: _Replica, me: str) -> web.AppRunner | None:
    if not cfg.health_port:
        return None

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    def judged(judge: Judge) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def answer(_: web.Request) -> web.Response:
            ok, why = judge(replica.snapshot())
            holder = replica.elector.holder if replica.elector else me
            return web.json_response({"ready": ok, "why": why, "identity": me, "holder": holder}, status=200 if ok else 503)
        return answer

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", judged(leader.readiness))
    app.router.add_get("/leaderz", judged(leader.leadership))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, cfg.bind_address, cfg.health_port).start()
    return runner


async def _advertise(pod: leader.PodLabel, replica: _Replica, pool: ThreadPoolExecutor) -> None:
    """Keep the leader label on our own Pod in step with `leadership`; the first thing it does is take a
    label left from an earlier run of this Pod off."""
    loop = asyncio.get_running_loop()
    labelled: bool | None = None
    said = ""
    while True:
        want = leader.leadership(replica.snapshot())[0]
        if want != labelled:
            try:
                await loop.run_in_executor(pool, pod.set, want)
                labelled, said = want, ""
                replica.label_clear = replica.label_clear or not want
                log.info("%s %s=true on Pod %s/%s", "put" if want else "no", leader.LEADER_LABEL, pod.namespace, pod.name)
            except KubeError as err:
                if str(err) != said:
                    log.warning("%s; the Service %s this replica until it works", err, "cannot reach" if want else "may still reach")
                    said = str(err)
        await asyncio.sleep(0.5)


def _signals_to_now(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _signals_to(stop: asyncio.Event, started: asyncio.Event) -> None:
    """Once kopf has started, route SIGTERM/SIGINT back to `stop`. kopf installs its own handlers, which
    stop it but leave its waiter on our stop flag pending, and it then waits 5 s for that "hung" task."""
    await started.wait()
    _signals_to_now(stop)


async def _operate(cfg: Config, memo: kopf.Memo) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()  # SIGTERM/SIGINT; kopf's stop flag too
    _signals_to_now(stop)
    signals: asyncio.Task[None] | None = None
    pod_name, pod_namespace = os.environ.get("POD_NAME", ""), os.environ.get("POD_NAMESPACE", "")
    in_pod = bool(pod_name and pod_namespace)
    me = leader.identity(pod_name)
    api = api_client() if cfg.leader_election or in_pod else None
    elector: leader.Elector | None = None
    if cfg.leader_election:
        assert api is not None
        elector = leader.Elector(leader.LeaseLock(api, leader.lease_namespace(cfg.lease_namespace), cfg.lease_name), me)
    replica = _Replica(cfg, memo, elector, in_pod)
    health = await _serve_health(cfg, replica, me)
    pool = ThreadPoolExecutor(1, thread_name_prefix="fmop-pod-label")
    pod = leader.PodLabel(api, pod_namespace, pod_name) if in_pod and api is not None else None
    advertiser = asyncio.create_task(_advertise(pod, replica, pool)) if pod is not None else None
    try:
        if elector is not None:
            if not await elector.acquire(stop):
                log.info("stopped while a standby")
                return
            elector.start_renewing()
        if not stop.is_set():
            signals = asyncio.create_task(_signals_to(stop, replica.started))
            await kopf.operator(
                standalone=True,  # one actor: the Lease decides which (no kopf peering CRDs)
                clusterwide=cfg.clusterwide,
                namespaces=list(cfg.namespaces),
                memo=memo,
                ready_flag=replica.started,
                stop_flag=stop,
            )
    finally:
        if signals is not None:
            signals.cancel()
        _signals_to_now(stop)
        replica.started.clear()
        if advertiser is not None and pod is not None:
            advertiser.cancel()
            try:
                await loop.run_in_executor(pool, pod.set, False)
            except KubeError as err:
                log.warning("%s; the Service may reach this stopped replica until its Pod goes", err)
        if elector is not None and elector.leading:
            await loop.run_in_executor(None, elector.stop_renewing)
            await loop.run_in_executor(None, elector.release)
        if health is not None:
            await health.cleanup()
        pool.shutdown(wait=False)


def main(argv: list[str] | None = None) -> int:
    run(from_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
