"""The Rollout daemon (fmop.handlers.rollout_daemon) with the real Controller on the in-memory world.

An idle Rollout's daemon sleeps until its next clock-driven change or --rollout-idle-seconds. A reconcile
that an event runs meanwhile (an InferenceService became Ready, a spec edit, an alert) can start
time-driven work (a step, a measurement): the daemon must then wake, not sleep on its older decision.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import kopf

from fmop import handlers
from fmop.config import Config
from fmop.kinds import INFERENCE_SERVICE
from fmop.rollout import naming
from fmop.rollout.controller import Controller, Outcome
from tests.unit.controller_world import NAME, NS, Cluster, promoted_first

V2 = {"foundationModel": {"name": "movielens", "version": "v2"}, "adapters": [{"name": "region-jp", "version": "v1"}]}


class Stopped:
    """kopf's DaemonStopped, as a daemon uses it: truthy once stopped, `await stopped.wait(seconds)`."""

    def __init__(self) -> None:
        self.flag = asyncio.Event()

    def __bool__(self) -> bool:
        return self.flag.is_set()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.flag.wait(), timeout)
        except TimeoutError:
            pass


class Counted(Controller):
    """The real Controller, counting who asked: the daemon passes its arguments positionally, handlers by name."""

    calls: list[tuple[float, str]]

    def reconcile(self, namespace: str, name: str, *args: Any, **kwargs: Any) -> Outcome:
        self.calls.append((time.monotonic(), "daemon" if args else "event"))
        return super().reconcile(namespace, name, *args, **kwargs)


def test_an_event_that_starts_a_step_wakes_the_sleeping_daemon() -> None:
    """The canary's InferenceService is not Ready: the daemon sees a wait that only an event ends and sleeps for the idle
    resync (300 s here). The InferenceService becomes Ready; its watch event reconciles, and from there the canary's first
    weight step is time-driven work. The daemon used to sleep on for the rest of its 300 s, so the step never started.
    (Found by `make bench-rollouts` --in-flight: 20 canaries stayed at "waiting for the first measurement".)"""
    c = promoted_first(Cluster())
    c.edit_spec(model=V2)
    c.kserve_ready = False
    ctl = Counted(c.kube, traffic_for=lambda routing: c.traffic, analysis=c.analysis, clock=lambda: c.now)
    ctl.calls = []
    cfg = Config(resync_seconds=10, rollout_tick_seconds=0.2, rollout_idle_seconds=300)
    memo = kopf.Memo(config=cfg, rollouts=ctl, wakes={}, rollout_bodies={})

    async def clock() -> None:  # the world's time runs 300 times faster than the test's
        while True:
            await asyncio.sleep(0.1)
            c.now += timedelta(seconds=30)

    async def scenario() -> list[tuple[float, str]]:
        ticking = asyncio.create_task(clock())
        stopped = Stopped()
        daemon = asyncio.create_task(handlers.rollout_daemon(memo=memo, namespace=NS, name=NAME, stopped=stopped,  # type: ignore[arg-type]
                                                             logger=handlers.logging.getLogger("test")))
        for _ in range(50):
            await asyncio.sleep(0.05)
            if ctl.calls:
                break
        await asyncio.sleep(0.5)
        assert c.phase()[0] == "Pending", c.status().get("message")
        asleep = len(ctl.calls)
        c.kserve_ready = True
        c._kserve()
        isvc = naming.isvc_name(NAME, 2)
        await asyncio.to_thread(handlers.on_inference_service, memo=memo, namespace=NS, name=isvc, labels={naming.LABEL_ROLLOUT: NAME},
                                type="MODIFIED", resource=kopf.Resource(INFERENCE_SERVICE.group, INFERENCE_SERVICE.version,
                                                                       INFERENCE_SERVICE.plural))
        event_at = time.monotonic()
        await asyncio.sleep(3.0)
        stopped.flag.set()
        await asyncio.wait_for(daemon, 10)
        ticking.cancel()
        return [call for call in ctl.calls[asleep:] if call[1] == "daemon" and call[0] > event_at]

    after = asyncio.run(scenario())
    assert after, "the daemon slept through the work the event started (it woke only at its idle resync)"
    assert c.phase()[0] in ("Progressing", "Paused", "Promoted") and c.status()["revision"] == 2, c.status().get("message")
