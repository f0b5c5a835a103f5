"""Properties of the rollout engine over random histories.

Hypothesis draws a spec (shadow or not, setWeight / pause / analysis steps, analysis limits) and a
sequence of moves: time passing, InferenceServices flapping, the traffic provider applying, sticking or
unable to tell, Prometheus answering with any result, alerts (new, duplicated, late), promote, retry and abort
requests, split samples, spec edits (pause, model, strategy) and operator crashes between writing
status and acting. After every move the invariants below must hold; the World also replays every
call against its own output, as a restarted operator does, and stores status through JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmop.api.rollout import RolloutSpec, RolloutStatus
from fmop.rollout import Alert, Decision, Measure, RecordHistory, SetTraffic, SplitSample, decide
from fmop.rollout.clock import parse_ts
from fmop.rollout.types import MeasurementPhase
from tests.unit.rollout_world import BASE, World, stable_world, with_model

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
METRICS = ("m1", "m2")
YES: MeasurementPhase = "Successful"
RESULTS: list[MeasurementPhase] = [YES, YES, YES, YES, YES, YES, "Failed", "Error", "Inconclusive"]  # mostly yes, sometimes anything else
WEIGHTS = (0, 5, 10, 25, 50, 100)


# ---------------------------------------------------------------- what hypothesis draws
@st.composite
def strategies(draw: st.DrawFn) -> dict[str, Any]:
    kinds = draw(st.lists(st.sampled_from(["setWeight", "setWeight", "pause", "untilPromoted", "analysis"]), min_size=1, max_size=6))
    weights = iter(sorted(draw(st.lists(st.sampled_from(WEIGHTS), min_size=len(kinds), max_size=len(kinds)))))
    steps: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == "setWeight":
            steps.append({"setWeight": next(weights)})
        elif kind == "pause":
            steps.append({"pause": {"duration": draw(st.sampled_from(["30s", "1m", "3m"]))}})
        elif kind == "untilPromoted":
            steps.append({"pause": {"untilPromoted": True}})
        else:
            steps.append({"analysis": {"metrics": draw(st.lists(st.sampled_from(METRICS), min_size=1, max_size=2, unique=True))}})
    if not any(s.get("setWeight", 0) > 0 for s in steps):
        steps.append({"setWeight": draw(st.sampled_from([25, 100]))})
    strategy: dict[str, Any] = {"steps": steps, "keepWarm": draw(st.sampled_from(["0s", "2m"]))}
    if draw(st.booleans()):
        strategy["shadow"] = {"mirrorPercent": draw(st.sampled_from([10, 100])), "duration": draw(st.sampled_from(["30s", "2m"])),
                              "analysis": draw(st.lists(st.sampled_from(METRICS), max_size=2, unique=True))}
    return strategy


@st.composite
def metric(draw: st.DrawFn, name: str) -> dict[str, Any]:
    count = draw(st.integers(1, 3))
    return {"name": name, "query": f"q-{name}", "successCondition": "result < 1", "count": count,
            "failureLimit": draw(st.integers(0, count - 1)), "inconclusiveLimit": draw(st.integers(0, 2)),
            "interval": draw(st.sampled_from(["30s", "1m", "2m"]))}


@st.composite
def specs(draw: st.DrawFn) -> tuple[RolloutSpec, RolloutSpec]:
    """A spec and the same spec with another strategy (what a strategy edit switches to)."""
    doc = {**BASE, "strategy": draw(strategies()), "analysis": {"metrics": [draw(metric(n)) for n in METRICS]},
           "progressDeadline": draw(st.sampled_from(["3m", "10m"])), "revisionHistoryLimit": draw(st.integers(1, 4)),
           "rollback": {**BASE["rollback"], "onAnalysisFailure": draw(st.sampled_from([True, True, False]))}}
    return RolloutSpec.model_validate(doc), RolloutSpec.model_validate({**doc, "strategy": draw(strategies())})


@dataclass(frozen=True)
class Move:
    minutes: float
    ready: bool
    traffic: str
    result: MeasurementPhase
    alert: tuple[str, float] | None  # fingerprint, minutes before now it started firing
    promote: str | None
    retry: str | None
    abort: str | None
    edit: str | None
    split: str | None
    act: bool  # False: the operator dies after writing status, before acting


def _sometimes(values: list[Any], never: int) -> st.SearchStrategy[Any]:
    """One of `values`, or None `never` times as often as each value."""
    return st.sampled_from([None] * (never * len(values)) + values)


moves = st.builds(
    Move,
    minutes=st.sampled_from([0, 0.5, 1, 1, 1, 2, 5]),
    ready=st.sampled_from([True] * 9 + [False]),
    traffic=st.sampled_from(["applies"] * 6 + ["stuck", "unknown"]),
    result=st.sampled_from(RESULTS),
    alert=_sometimes([("fp-a", 0.0), ("fp-a", 3.0), ("fp-b", 0.5), ("fp-b", 20.0), ("fp-c", 1.0)], never=12),
    promote=_sometimes(["p1", "p2", "p3"], never=4),
    retry=_sometimes(["r1", "r2"], never=12),
    abort=_sometimes(["a1", "a2"], never=15),
    edit=_sometimes(["pause", "unpause", "model", "model-back", "strategy"], never=12),
    split=_sometimes(["good", "bad"], never=3),
    act=st.sampled_from([True] * 9 + [False]),
)


# ---------------------------------------------------------------- one run, its bookkeeping and invariants
@dataclass
class Run:
    """Plays moves against a World and keeps what an outside observer needs to judge the engine."""

    world: World
    specs: tuple[RolloutSpec, RolloutSpec]
    version: int = 1
    allowed_weights: set[int] = field(default_factory=lambda: {0, 100})
    allowed_mirror: set[int] = field(default_factory=lambda: {0})
    finished: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # revision -> (outcome, finishedAt)
    records: dict[int, int] = field(default_factory=dict)  # revision -> RecordHistory actions
    passed: dict[int, set[int]] = field(default_factory=dict)  # revision -> analysis steps it left forward (-1: shadow)
    seen: dict[tuple[str, datetime], MeasurementPhase] = field(default_factory=dict)  # every measurement delivered
    fired: dict[str, datetime] = field(default_factory=dict)  # newest startsAt delivered per fingerprint

    def __post_init__(self) -> None:
        for spec in self.specs:
            self.allowed_weights |= {s.setWeight for s in spec.strategy.steps if s.setWeight is not None}
            if spec.strategy.shadow is not None:
                self.allowed_mirror.add(spec.strategy.shadow.mirrorPercent)

    def play(self, move: Move) -> None:
        w, before = self.world, self.world.status
        now = w.now + timedelta(minutes=move.minutes)
        fresh_alert = self._prepare(move, now)
        obs = w.observations()
        decision = w.tick(move.minutes, act=move.act)
        assert decide(w.spec, before, obs, now) == decision, "decide is not deterministic"
        fresh_abort = move.abort is not None and move.abort != before.lastAbortRequest
        self._check(before, decision, fresh_alert, now, edited=move.edit in ("model", "model-back", "strategy") or move.retry is not None)
        self._new_abort_rolls_back(before, self.world.status, fresh_abort, edited=move.edit in ("model", "model-back") or move.retry is not None)

    def _prepare(self, move: Move, now: datetime) -> datetime | None:
        """Change the world as the move says; returns startsAt of an alert firing never delivered before."""
        w = self.world
        w.set_ready(move.ready)
        w.traffic_mode = move.traffic  # type: ignore[assignment]
        w.script = {m: [move.result] for m in METRICS}
        w.promote = move.promote or w.promote
        w.retry = move.retry or w.retry
        w.abort = move.abort or w.abort
        self._edit(move.edit)
        w.split = self._split(move.split)
        for m in w.measurements.values():
            if m.measured_at <= now:
                self.seen.setdefault((m.metric, m.measured_at), m.phase)
        if move.alert is None:
            return None
        fingerprint, ago = move.alert
        starts = now - timedelta(minutes=ago)
        newest = self.fired.get(fingerprint)
        self.fired[fingerprint] = max(starts, newest or starts)
        w.alerts.append(Alert("CanaryErrors", fingerprint, starts))
        return starts if newest is None or starts > newest else None

    def _edit(self, edit: str | None) -> None:
        w = self.world
        if edit in ("pause", "unpause"):
            w.spec = w.spec.model_copy(update={"paused": edit == "pause"})
        elif edit in ("model", "model-back"):
            self.version = self.version + 1 if edit == "model" else max(1, self.version - 1)
            w.spec = with_model(w.spec, f"v{self.version}")
        elif edit == "strategy":
            other = self.specs[1] if w.spec.strategy == self.specs[0].strategy else self.specs[0]
            w.spec = w.spec.model_copy(update={"strategy": other.strategy})

    def _split(self, kind: str | None) -> SplitSample | None:
        s = self.world.status
        if kind is None or s.currentStepStartedAt is None:
            return None
        expected = round(1000 * s.canaryWeight / 100)
        canary = expected if kind == "good" else (1000 - expected if expected < 400 else 0)
        return SplitSample(canary, 1000, parse_ts(s.currentStepStartedAt))

    # -------------------------------------------------- invariants
    def _check(self, before: RolloutStatus, decision: Decision, fresh_alert: datetime | None, now: datetime, edited: bool) -> None:
        after = self.world.status
        self._weights_are_the_steps(after, decision)
        self._each_revision_finishes_once(after, decision)
        self._analysis_passed_before_moving_on(before, after, now)
        self._new_alert_rolls_back(before, after, fresh_alert, edited)
        self._paused_stays_put(before, after, decision)
        if after.phase in ("RolledBack", "Failed") and after.canary is not None:
            assert (after.canaryWeight, after.mirrorPercent) == (0, 0), "a rolled-back canary still gets traffic"
        if after.phase == "Promoted":
            assert after.canary is None and after.canaryWeight == 0 and after.mirrorPercent == 0

    def _paused_stays_put(self, before: RolloutStatus, after: RolloutStatus, decision: Decision) -> None:
        """While spec.paused, a canary keeps its step and weights and nothing is measured (alerts may still roll it back)."""
        if not self.world.spec.paused or after.phase in ("RolledBack", "Failed") or before.canary is None or after.canary is None:
            return
        if before.canary.revision == after.canary.revision and before.phase in ("Shadowing", "Progressing", "Paused") and after.currentStepIndex is not None:
            assert (after.currentStepIndex, after.canaryWeight, after.mirrorPercent) == (before.currentStepIndex, before.canaryWeight, before.mirrorPercent)
            assert after.phase == "Paused" and not any(isinstance(a, Measure) for a in decision.actions)

    def _weights_are_the_steps(self, after: RolloutStatus, decision: Decision) -> None:
        assert after.canaryWeight in self.allowed_weights, f"weight {after.canaryWeight} is no step's"
        assert after.mirrorPercent in self.allowed_mirror, f"mirror {after.mirrorPercent} is not the shadow's"
        assert after.stableWeight + after.canaryWeight == 100
        for a in decision.actions:
            if isinstance(a, SetTraffic):
                assert a.canary_weight in self.allowed_weights and a.mirror_percent in self.allowed_mirror
                assert a.canary_revision is not None or (a.canary_weight, a.mirror_percent) == (0, 0), "traffic to no canary"

    def _each_revision_finishes_once(self, after: RolloutStatus, decision: Decision) -> None:
        revisions = [h.revision for h in after.history]
        assert len(revisions) == len(set(revisions)), f"a revision finished twice: {revisions}"
        for h in after.history:
            assert self.finished.setdefault(h.revision, (h.outcome, h.finishedAt)) == (h.outcome, h.finishedAt), f"revision {h.revision} finished again"
        for record in decision.actions:
            if isinstance(record, RecordHistory):
                self.records[record.entry.revision] = self.records.get(record.entry.revision, 0) + 1
        assert all(n == 1 for n in self.records.values()), f"history recorded twice: {self.records}"

    def _analysis_passed_before_moving_on(self, before: RolloutStatus, after: RolloutStatus, now: datetime) -> None:
        """Leaving an analysis forward needs enough successful measurements seen since it began; promotion needs every analysis passed."""
        rev = before.canary.revision if before.canary is not None and before.phase in ("Pending", "Shadowing", "Progressing", "Paused") else None
        if rev is None:
            return
        same = after.canary is not None and after.canary.revision == rev
        promoted = after.stable is not None and after.stable.revision == rev and after.phase == "Promoted" and before.currentStepIndex is not None
        if same and after.currentStepIndex is None:
            self.passed[rev] = set()  # the steps restarted
        idx = before.currentStepIndex
        moved_on = idx is not None and (promoted or (same and after.currentStepIndex is not None and after.currentStepIndex > idx))
        if moved_on and idx is not None:
            for name in self._analysis_of(idx):
                self._enough_successes(name, parse_ts(before.currentStepStartedAt or ""), now)
            self.passed.setdefault(rev, set()).add(idx)
        if promoted:
            required = {i for i, s in enumerate(self.world.spec.strategy.steps) if s.analysis is not None}
            shadow = self.world.spec.strategy.shadow
            required |= {-1} if shadow is not None and shadow.analysis else set()
            assert required <= self.passed.get(rev, set()), f"revision {rev} promoted without passing analysis steps {required - self.passed.get(rev, set())}"

    def _analysis_of(self, idx: int) -> list[str]:
        strategy = self.world.spec.strategy
        if idx == -1:
            return list(strategy.shadow.analysis) if strategy.shadow is not None else []
        step = strategy.steps[idx] if idx < len(strategy.steps) else None
        return list(step.analysis.metrics) if step is not None and step.analysis is not None else []

    def _enough_successes(self, name: str, started: datetime, now: datetime) -> None:
        spec = next(m for m in self.world.spec.analysis.metrics if m.name == name)
        successes = sum(1 for (metric, at), phase in self.seen.items() if metric == name and started < at <= now and phase == "Successful")
        assert successes >= spec.count - spec.failureLimit, f"left analysis of {name} after {successes} successes (count {spec.count})"

    def _new_alert_rolls_back(self, before: RolloutStatus, after: RolloutStatus, starts: datetime | None, edited: bool) -> None:
        """A firing never seen before, that began after the canary did, rolls the canary back on this very call."""
        canary = before.canary
        if starts is None or edited or canary is None or canary.startedAt is None or before.phase not in ("Pending", "Shadowing", "Progressing", "Paused"):
            return
        if starts >= parse_ts(canary.startedAt):
            assert after.phase == "RolledBack", f"a new alert firing since {starts} did not roll back revision {canary.revision}"


    def _new_abort_rolls_back(self, before: RolloutStatus, after: RolloutStatus, fresh: bool, edited: bool) -> None:
        """A new abort request rolls a canary in flight back on this very call, to 100% stable; a repeated value does nothing."""
        in_flight = before.canary is not None and before.phase in ("Pending", "Shadowing", "Progressing", "Paused")
        if fresh and in_flight and not edited:
            assert after.phase == "RolledBack" and (after.canaryWeight, after.mirrorPercent, after.stableWeight) == (0, 0, 100)
            assert after.rollbackReason is not None and after.rollbackReason.startswith(("aborted by request", "alert "))
        if not fresh:
            assert after.lastAbortRequest == before.lastAbortRequest


# ---------------------------------------------------------------- the properties
@SETTINGS
@given(specs(), st.lists(moves, min_size=20, max_size=60))
def test_invariants_hold_over_random_histories(pair: tuple[RolloutSpec, RolloutSpec], history: list[Move]) -> None:
    run = Run(stable_world(pair[0]), pair, version=2)
    run.world.spec = with_model(pair[0], "v2")  # a rollout starts; the moves take it from there
    for move in history:
        run.play(move)


@settings(max_examples=50, deadline=None)
@given(specs())
def test_a_healthy_canary_is_always_promoted(pair: tuple[RolloutSpec, RolloutSpec]) -> None:
    """Ready InferenceServices, a provider that applies, Prometheus saying yes: every spec ends Promoted."""
    spec = pair[0]
    w = stable_world(spec)
    w.spec = with_model(spec, "v2")
    for minute in range(200):
        w.promote = f"p{minute // 10}"  # someone promotes now and then, for pause untilPromoted
        w.tick()
        if w.status.phase == "Promoted":
            break
    assert w.status.phase == "Promoted" and w.status.stable is not None and w.status.stable.revision == 2, w.status.message
