"""The traffic provider interface: what a provider writes for a SetTraffic, and what it reads back.

A provider does no I/O. `render` turns (Rollout, spec.trafficRouting, SetTraffic) into the complete
objects to server-side apply; `objects` names what to read back, and `observe` parses those objects,
as found, into ObservedTraffic (or "unknown" when they are missing or say something the provider
cannot map back). `providers.kube` does the reading and writing. The shape follows Flagger's router
(SetRoutes / GetRoutes) and Argo Rollouts' traffic routers (VerifyWeight may answer "unknown").

Conventions every provider keeps, so `observe(render(...))` gives back what was asked:
- backends are the predictor Services `naming.predictor_service(rollout, revision)`, port
  `naming.PREDICTOR_PORT`; the stable backend comes first, the canary second;
- the canary backend is present whenever SetTraffic names a canary revision, even at weight 0
  (shadowing), so the canary revision can be read back from the object;
- stable-only (canary_revision None) routes 100% to the stable and mirrors nothing;
- every object carries the fmops.dev/rollout label and a controller ownerReference to the Rollout,
  so the garbage collector removes it with the Rollout;
- an experiment (SetTraffic.buckets) adds one route before the weighted one that sends requests whose
  naming.BUCKET_HEADER matches naming.bucket_regex to the canary backend alone (the weighted one then
  gives the canary 0); a provider that cannot match headers says so in `supports_buckets`.

No takeover: a traffic object that already exists is written only when it is the Rollout's (`holder`
says None): it has the Rollout's ownerReference (the operator created it, or adopted it before), or
it carries the annotation `fmops.dev/adopt: <the Rollout's name>` and no other controller, or this
operator's field manager wrote it for a Rollout of that name (its ownerReference was removed, e.g. by
`kubectl delete rollout --cascade=orphan`). Anything else (another team's HTTPRoute that happens to
have the Rollout's name, an object another controller owns) is neither read as the Rollout's traffic
nor changed, and so never garbage-collected with the Rollout: `refusal` names it, its holder and the fix.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from fmop.api.rollout import TrafficRouting, experiment_refusal
from fmop.kinds import ROLLOUT, Kind
from fmop.rollout import naming
from fmop.rollout.types import ObservedTraffic, SetTraffic

Unknown = Literal["unknown"]
UNKNOWN: Unknown = "unknown"
Obj = dict[str, Any]
ADOPT_ANNOTATION = "fmops.dev/adopt"  # value: the name of the Rollout (in the object's namespace) that may take it over

_REVISION_OF_BACKEND = re.compile(r"-r([0-9]+)-predictor$")


@dataclass(frozen=True)
class RolloutRef:
    """The Rollout that owns the traffic objects."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> Obj:
        return {"apiVersion": ROLLOUT.api_version, "kind": ROLLOUT.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}

    def labels(self, revision: int | None = None) -> dict[str, str]:
        """Labels of everything this Rollout owns; with a revision for its InferenceServices and their pods."""
        out = {naming.LABEL_ROLLOUT: self.name, "app.kubernetes.io/managed-by": "fm-operator"}
        if revision is not None:
            out[naming.LABEL_REVISION] = str(revision)
        return out

    def metadata(self, name: str) -> Obj:
        """metadata of an object this Rollout owns."""
        return {"name": name, "namespace": self.namespace, "labels": {naming.LABEL_ROLLOUT: self.name},
                "ownerReferences": [self.owner_reference()]}


@dataclass(frozen=True)
class ObjectRef:
    """One object a provider writes and reads back, in the Rollout's namespace; `owner`, the Rollout it is for:
    providers.kube reads and writes it only while it is that Rollout's (`holder`)."""

    api_version: str  # group/version
    kind: str
    plural: str
    name: str
    owner: RolloutRef | None = None

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.split("/")[1]

    @classmethod
    def of(cls, kind: Kind, name: str, owner: RolloutRef | None = None) -> ObjectRef:
        return cls(kind.api_version, kind.kind, kind.plural, name, owner)

    def as_kind(self, install: str) -> Kind:
        """The kind's typed reference, with what to install when the API server does not serve it."""
        return Kind(self.group, self.version, self.plural, self.kind, install)

    def __str__(self) -> str:
        return f"{self.kind} {self.name} ({self.plural}.{self.api_version})"


class TrafficProvider(ABC):
    """One traffic provider: pure rendering and parsing of its traffic objects."""

    name: ClassVar[str]  # spec.trafficRouting.provider
    install_hint: ClassVar[str]  # what to install when the API server does not know the kind
    name_field: ClassVar[str] = ""  # the spec field that names the traffic object, "" when it is always the Rollout's name
    field_manager: ClassVar[str] = naming.FIELD_MANAGER
    creates: ClassVar[bool] = True  # False: the objects must already exist (the provider writes a few fields only)

    @abstractmethod
    def objects(self, rollout: RolloutRef, routing: TrafficRouting) -> list[ObjectRef]:
        """What `render` writes, in the same order: what to read back for `observe`."""

    @abstractmethod
    def render(self, rollout: RolloutRef, routing: TrafficRouting, t: SetTraffic) -> list[Obj]:
        """The complete objects to server-side apply so that traffic follows `t`."""

    @abstractmethod
    def observe(self, found: list[Obj | None]) -> ObservedTraffic | Unknown:
        """The objects of `objects()` as found (None: not found), parsed back into weights and mirror."""


# ---------------------------------------------------------------- whose object is it
@dataclass(frozen=True)
class Held:
    """Who holds a traffic object that is not the Rollout's, and whether the adopt annotation could hand it over."""

    by: str  # "it is controlled by HTTPRoute x", "it was not created by this operator (written by kubectl-edit)"
    adoptable: bool


def holder(obj: Obj, rollout: RolloutRef, field_manager: str) -> Held | None:
    """None when `rollout` may manage `obj` (see the module's docstring); otherwise who holds it."""
    meta = _mapping(obj.get("metadata"))
    owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, dict)]
    if any(o.get("uid") == rollout.uid for o in owners):
        return None  # created by this Rollout, or adopted by it before
    controller = next((o for o in owners if o.get("controller") is True), None)
    if controller is not None:
        return Held(f"it is controlled by {controller.get('kind')} {controller.get('name')} (its controller ownerReference), and an "
                    "object has one controller", adoptable=False)
    adopt = _mapping(meta.get("annotations")).get(ADOPT_ANNOTATION)
    if adopt == rollout.name:
        return None
    managers = sorted({str(m.get("manager")) for m in meta.get("managedFields") or [] if isinstance(m, dict) and m.get("manager")})
    if field_manager in managers and _mapping(meta.get("labels")).get(naming.LABEL_ROLLOUT) == rollout.name:
        return None  # this operator wrote it for a Rollout of this name, whose ownerReference is gone (orphaned)
    if adopt is not None:
        return Held(f"its {ADOPT_ANNOTATION} annotation names Rollout {str(adopt)[:63]!r}, not {rollout.name}", adoptable=True)
    written = f"written by {', '.join(managers)[:256]}" if managers else "no owner recorded"
    return Held(f"it was not created by this operator ({written}) and has no {ADOPT_ANNOTATION} annotation", adoptable=True)


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def refusal(ref: ObjectRef, namespace: str, held: Held, provider: TrafficProvider, rollout: RolloutRef) -> str:
    """What the Rollout is told of a traffic object it may not manage: the object, who holds it, the fix."""
    rename = f"name another object in {provider.name_field}" if provider.name_field else f"use a provider other than {provider.name}"
    handover = (f"to hand it to this Rollout, annotate it: kubectl annotate -n {namespace} {ref.plural}.{ref.group} {ref.name} "
                f"{ADOPT_ANNOTATION}={rollout.name} (the Rollout then owns it: deleting the Rollout deletes it); or ") if held.adoptable else ""
    return (f"{ref.kind} {namespace}/{ref.name} is not Rollout {rollout.name}'s to manage: {held.by}. The operator changes (and, "
            f"with the Rollout, deletes) only traffic objects it created, so it left this one as it is and routes nothing through it; "
            f"{handover}{rename}")


# ---------------------------------------------------------------- helpers shared by the providers
def check(t: SetTraffic) -> tuple[int, int]:
    """(stable weight, canary weight) for `t`, which must make sense: a ValueError says what does not."""
    if not 0 <= t.canary_weight <= 100:
        raise ValueError(f"SetTraffic.canary_weight must be within 0..100, got {t.canary_weight}")
    if not 0 <= t.mirror_percent <= 100:
        raise ValueError(f"SetTraffic.mirror_percent must be within 0..100, got {t.mirror_percent}")
    if t.canary_revision is None and (t.canary_weight or t.mirror_percent):
        raise ValueError(f"SetTraffic without a canary revision cannot send {t.canary_weight}% or mirror {t.mirror_percent}% to a canary")
    if t.canary_revision is not None and t.canary_revision == t.stable_revision:
        raise ValueError(f"SetTraffic names revision {t.stable_revision} as both stable and canary")
    if t.buckets is not None:
        if t.canary_revision is None:
            raise ValueError(f"SetTraffic without a canary revision cannot send user buckets {t.buckets[0]}..{t.buckets[1]} to a canary")
        if t.mirror_percent:
            raise ValueError(f"SetTraffic cannot mirror {t.mirror_percent}% during an experiment: the candidate's users are its own "
                             "(mirroring would make the stable's users its requests too)")
        first, last = t.buckets
        if not 0 <= first <= last < naming.BUCKETS:
            raise ValueError(f"SetTraffic.buckets must be a range first..last with 0 <= first <= last <= {naming.BUCKETS - 1}, "
                             f"got {first}..{last}")
    return 100 - t.canary_weight, t.canary_weight


def supports_buckets(routing: TrafficRouting) -> str | None:
    """None when the provider of `routing` can send user buckets to the canary by a header match (an experiment step);
    otherwise why not, and the fix: the words admission (the CRD's rule) and the engine use, so a refusal reads the same
    wherever it comes from. gatewayAPI and istio always can; traefik with spec.trafficRouting.traefik.ingressRoute (a
    TraefikService cannot match headers, the IngressRoute can); kserve never (it splits by percentage only)."""
    return experiment_refusal(routing)


def with_buckets(observed: ObservedTraffic | Unknown, service: object, regex: object) -> ObservedTraffic | Unknown:
    """`observed` (the weighted part, read as usual) plus the bucket route read back: its one backend `service` must be
    the canary's and `regex` one that naming.bucket_regex wrote; anything else is "unknown"."""
    buckets = naming.buckets_of(regex)
    if observed == UNKNOWN or buckets is None:
        return UNKNOWN
    assert isinstance(observed, ObservedTraffic)
    if observed.canary_revision is None or revision_of(service) != observed.canary_revision or observed.mirror_percent:
        return UNKNOWN
    return replace(observed, buckets=buckets)


def backend(rollout: RolloutRef, revision: int) -> str:
    return naming.predictor_service(rollout.name, revision)


def revision_of(service: object) -> int | None:
    """The revision behind a predictor Service name (`recommender-r3-predictor` -> 3), None for any other name."""
    if not isinstance(service, str):
        return None
    m = _REVISION_OF_BACKEND.search(service)
    return int(m.group(1)) if m else None


def weighted(backends: list[tuple[object, object]], mirror: tuple[object, object] | None) -> ObservedTraffic | Unknown:
    """ObservedTraffic from (service name, weight) pairs and the mirror's (service name, percent).

    The canary is the backend with the newer revision (a canary is always newer than the stable); one
    backend is stable-only. Anything else (unknown names, no weight at all, three backends) is "unknown".
    """
    parsed: list[tuple[int, int]] = []
    for service, weight in backends:
        rev = revision_of(service)
        if rev is None or not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            return UNKNOWN
        parsed.append((rev, weight))
    if not 1 <= len(parsed) <= 2 or len({rev for rev, _ in parsed}) != len(parsed):
        return UNKNOWN
    total = sum(w for _, w in parsed)
    if total == 0:
        return UNKNOWN
    mirror_percent, mirror_rev = 0, None
    if mirror is not None:
        mirror_rev = revision_of(mirror[0])
        if mirror_rev is None or not isinstance(mirror[1], int | float) or isinstance(mirror[1], bool):
            return UNKNOWN
        mirror_percent = round(mirror[1])
    if len(parsed) == 1:
        if not mirror_percent:
            return ObservedTraffic(canary_weight=0, mirror_percent=0)
        if mirror_rev == parsed[0][0]:
            return UNKNOWN  # mirrors the stable to itself
        return ObservedTraffic(canary_weight=0, mirror_percent=mirror_percent, canary_revision=mirror_rev)
    (_, _), (canary_rev, canary_w) = sorted(parsed)
    if mirror_percent and mirror_rev != canary_rev:
        return UNKNOWN  # mirrors to something that is not the canary
    return ObservedTraffic(canary_weight=round(100 * canary_w / total), mirror_percent=mirror_percent, canary_revision=canary_rev)


def dig(obj: Obj | None, *path: str | int) -> Any:
    """obj[path...], or None where any step is missing or of the wrong type."""
    cur: Any = obj
    for key in path:
        if isinstance(key, int):
            if not isinstance(cur, list) or not -len(cur) <= key < len(cur):
                return None
        elif not isinstance(cur, dict):
            return None
        cur = cur[key] if isinstance(key, int) else cur.get(key)
    return cur
