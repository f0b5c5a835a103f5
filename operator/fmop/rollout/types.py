"""What the rollout engine reads (Observations) and what it asks for (Actions), as plain data.

The controller fills in Observations from the cluster, Prometheus and the Alertmanager webhook,
calls `decide`, then carries the Decision out: write `status` first (the intent, with the
resourceVersion read), then the actions in the order given. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from fmop.api.rollout import HistoryEntry, RolloutStatus, ServeTarget
from fmop.conditions import Cond
from fmop.rollout.sequential import Arm

Side = Literal["stable", "canary"]
MeasurementPhase = Literal["Successful", "Failed", "Error", "Inconclusive"]

# Annotations a person sets (`kubectl fmops promote|retry|abort`) to ask for a promotion, a retry or an abort; the
# handler passes their values on as Observations.promote_request / retry_request / abort_request. A request is
# acted on once: set a new value to ask again.
PROMOTE_ANNOTATION = "fmops.dev/promote"
RETRY_ANNOTATION = "fmops.dev/retry"
ABORT_ANNOTATION = "fmops.dev/abort"


# ---------------------------------------------------------------- observations
@dataclass(frozen=True)
class ModelRef:
    """What one InferenceService serves: a FoundationModel version plus adapters, as hashable data."""

    foundation_model: str
    version: str
    adapters: tuple[tuple[str, str | None], ...] = ()  # (TaskAdapter name, version or None for its newest)

    @classmethod
    def of(cls, target: ServeTarget) -> ModelRef:
        adapters = sorted((a.name, a.version) for a in target.adapters)  # order in spec.model.adapters does not matter
        return cls(target.foundationModel.name, target.foundationModel.version or "", tuple(adapters))  # FollowLatest: resolved first

    def label(self) -> str:
        """Short form for kubectl columns and messages: movielens:v2+region-jp@v1."""
        adapters = "".join(f"+{name}" + (f"@{version}" if version else "") for name, version in self.adapters)
        return f"{self.foundation_model}:{self.version}{adapters}"


@dataclass(frozen=True)
class InferenceServiceState:
    """One InferenceService the Rollout owns, as found (label fmops.dev/revision tells which)."""

    revision: int
    ready: bool
    message: str = ""  # why it is not Ready, from its Ready condition


@dataclass(frozen=True)
class Measurement:
    """One PromQL measurement of an analysis metric, taken by the handler after a Measure action.

    Failures are data: an unreachable Prometheus is phase Error (with the address), an empty
    result or too few samples (minSampleSize) is Inconclusive (with the query that returned nothing).
    """

    metric: str
    phase: MeasurementPhase
    measured_at: datetime
    value: float | None = None
    message: str = ""
    query: str = ""  # the query that returned nothing (the metric's or its minSampleSize query)
    address: str = ""  # the Prometheus that was asked


@dataclass(frozen=True)
class Alert:
    """A firing Alertmanager alert already matched against spec.rollback.alerts."""

    name: str
    fingerprint: str
    starts_at: datetime
    summary: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # the alert's labels, sorted, for the rollback reason


@dataclass(frozen=True)
class ObservedTraffic:
    """The traffic object as found: what share goes to the canary and how much is mirrored to it."""

    canary_weight: int
    mirror_percent: int
    canary_revision: int | None = None  # the revision behind the canary backend, when the provider can tell
    buckets: tuple[int, int] | None = None  # the user buckets (first, last) routed to the canary by header, if any


@dataclass(frozen=True)
class SplitSample:
    """Requests counted at the backends since `since`: checks that the provider really splits as asked."""

    canary_requests: int
    total_requests: int
    since: datetime


@dataclass(frozen=True)
class SplitUnknown:
    """The observed split was asked for and could not be read; `message` says why (Prometheus error, bad answer).
    checkable=False: the operator runs without Prometheus, so there is nothing to read it from."""

    message: str
    checkable: bool = True


@dataclass(frozen=True)
class ExperimentCounts:
    """An experiment's cumulative counts per arm since `since` (when its routing was first seen in place), read at `at`.
    control is the stable revision, candidate the canary; successes are the step's `success` outcome reports."""

    control: Arm
    candidate: Arm
    since: datetime
    at: datetime


@dataclass(frozen=True)
class ExperimentUnknown:
    """The experiment's counts were asked for and could not be read; `message` says why.
    checkable=False: the operator runs without Prometheus, so there is nothing to read them from."""

    message: str
    at: datetime
    since: datetime
    checkable: bool = True


@dataclass(frozen=True)
class UnrecordedRollback:
    """A rollback this operator decided and carried out (traffic on the stable) but could not record in status:
    fed back into every decision until status records it, so no later decision routes to the revision again."""

    revision: int
    outcome: Literal["RolledBack", "Failed"]
    reason: str


@dataclass(frozen=True)
class Observations:
    """Everything decide() knows about the world besides spec and status, read by the handler."""

    inference_services: tuple[InferenceServiceState, ...] = ()
    measurements: tuple[Measurement, ...] = ()
    alerts: tuple[Alert, ...] = ()
    traffic: ObservedTraffic | Literal["unknown"] = "unknown"  # "unknown": not found, or the provider cannot tell
    split: SplitSample | SplitUnknown | None = None  # None: not measured (no SampleSplit asked, or no Prometheus configured)
    experiment: ExperimentCounts | ExperimentUnknown | None = None  # None: not counted (no SampleExperiment asked)
    promote_request: str | None = None  # value of the fmops.dev/promote annotation
    retry_request: str | None = None  # value of the fmops.dev/retry annotation
    abort_request: str | None = None  # value of the fmops.dev/abort annotation
    generation: int | None = None  # metadata.generation, copied to status and conditions
    hold: str | None = None  # why spec.model cannot be served yet (its references do not resolve); None: it can
    hold_failed: bool = False  # the reference check says Failed (not merely waiting): a Rollout that serves nothing yet is Failed
    references: tuple[Cond, ...] = ()  # the reference check's conditions (Accepted, ResolvedRefs, Ready), merged into status
    latest_version: str | None = None  # FollowLatest: the newest complete bundle the reference check resolved
    unrecorded: UnrecordedRollback | None = None  # a rollback carried out whose status write failed (see UnrecordedRollback)


# ---------------------------------------------------------------- actions
@dataclass(frozen=True)
class EnsureInferenceService:
    """Create or update the InferenceService of `revision` so that it serves `model`."""

    side: Side
    revision: int
    model: ModelRef


@dataclass(frozen=True)
class SetTraffic:
    """Route `canary_weight` percent to the canary and the rest to the stable; mirror `mirror_percent` to the canary."""

    stable_revision: int
    canary_revision: int | None
    canary_weight: int
    mirror_percent: int
    # An experiment: requests whose naming.BUCKET_HEADER names a bucket in first..last (inclusive) go to the canary,
    # all others by the weights (the engine sets canary_weight 0 and no mirror then). None: no header routing.
    buckets: tuple[int, int] | None = None


@dataclass(frozen=True)
class Measure:
    """Take one measurement of each metric now; the results come back as Observations.measurements."""

    metrics: tuple[str, ...]
    stable_revision: int | None
    canary_revision: int
    during: str  # which analysis asks: "shadow" or "strategy.steps[3]"


@dataclass(frozen=True)
class SampleSplit:
    """Count the requests each revision answered since `since`; the result comes back as Observations.split."""

    stable_revision: int
    canary_revision: int
    since: datetime


@dataclass(frozen=True)
class SampleExperiment:
    """Count each arm's exposures and `success` outcomes since `since` (cumulative); the result comes back as
    Observations.experiment."""

    stable_revision: int
    canary_revision: int
    success: str
    since: datetime


@dataclass(frozen=True)
class RemoveInferenceService:
    """Delete the InferenceService of a revision nothing routes to any more."""

    revision: int
    reason: str


@dataclass(frozen=True)
class RecordHistory:
    """A revision finished (the entry is already in status.history); for logs and metrics."""

    entry: HistoryEntry


@dataclass(frozen=True)
class EmitEvent:
    """Post a Kubernetes Event on the Rollout."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Action = EnsureInferenceService | SetTraffic | Measure | SampleSplit | SampleExperiment | RemoveInferenceService | RecordHistory | EmitEvent


@dataclass(frozen=True)
class Decision:
    """The status to write (once, before anything else: the intent) and the actions to carry out, in
    order, stopping at the first failure.

    Actions are level-triggered where they can be (EnsureInferenceService, SetTraffic, Measure,
    SampleSplit, SampleExperiment and RemoveInferenceService come back on every call while they apply, derived from
    status alone), so an action lost to a crash after the status write is repeated on the next call;
    Events and history records come once, with the transition that caused them. On a rollback the
    traffic change comes first of all. `busy`: time-driven work is under way (steps, pauses,
    measurements), so look again soon; otherwise `next_look` says when the clock alone changes
    something (a kept-warm revision to let go, a progress deadline), and the rest is event-driven.
    """

    status: RolloutStatus
    actions: tuple[Action, ...] = field(default_factory=tuple)
    busy: bool = False
    next_look: datetime | None = None  # look again by then at the latest (now when busy); None: only an event changes anything
    blocked: bool = False  # nothing can be served or started (references, artifact or spec): status only, nothing routed anew

    @property
    def events(self) -> tuple[EmitEvent, ...]:
        return tuple(a for a in self.actions if isinstance(a, EmitEvent))
