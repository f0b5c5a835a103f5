"""What kopf's watches have seen, kept for the Rollout controller to read instead of the API server.

    cache = WatchCache((ROLLOUT, FOUNDATION_MODEL, TASK_ADAPTER, INFERENCE_SERVICE))
    cache.seen(ROLLOUT, body)                   # every watch event (kopf index handlers, see fmop.handlers)
    cache.gone(ROLLOUT, "team-a", "reco")       # a DELETED event, or our own delete
    cache.open()                                # kopf has listed every kind: reads may come from here now
    cache.get(ROLLOUT, "team-a", "reco")        # a copy of the newest body seen; None: not there
    cache.get(ROLLOUT, "team-a", "x")           # raises Unsynced while the kind is not served from here

Like client-go's informer caches, which Argo Rollouts and Flagger read from: without it every reconcile
of every Rollout re-read the Rollout, its FoundationModel, its TaskAdapters and its InferenceServices
(500 Rollouts: 197.8 API requests/s). What a reader gets may be behind the API server by the watch's lag,
never ahead of it, and never behind a write this process made (`seen` is also called with what each write
returned). A body is replaced only by one with a newer resourceVersion (they are etcd revisions: integers;
one that is not an integer always replaces). Consumers stay safe with a stale read because every write
they make carries the resourceVersion read: a stale one is a 409, after which they read the API server.

A kind is served from here only after `open()` and only if it was `serve`d (its CRD is installed, so kopf
watches it): otherwise `Unsynced`, and the caller reads the API server. kopf relists after a broken watch
without telling which objects vanished meanwhile, so a deletion can be missed: callers also read the API
server now and then (the Rollout daemon at each idle wake), which puts back the truth with `seen`/`gone`.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from fmop.kinds import Kind

Obj = dict[str, Any]


class Unsynced(LookupError):
    """The kind is not (yet) served from the cache: read the API server."""


def _rv(obj: Mapping[str, Any]) -> int | None:
    try:
        return int(str((obj.get("metadata") or {}).get("resourceVersion")))
    except ValueError:
        return None


def newer(candidate: Mapping[str, Any], held: Mapping[str, Any] | None) -> bool:
    """Should `candidate` replace `held`? Yes unless both resourceVersions are integers and it is not greater."""
    if held is None:
        return True
    a, b = _rv(candidate), _rv(held)
    return a is None or b is None or a > b


class WatchCache:
    def __init__(self, kinds: Iterable[Kind]) -> None:
        self._kinds = {k.plural: k for k in kinds}
        self._objs: dict[str, dict[tuple[str, str], Obj]] = {p: {} for p in self._kinds}
        self._served: set[str] = set()
        self._open = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------ fed by watches and writes
    def serve(self, kind: Kind) -> None:
        """kopf watches this kind (its CRD is installed): it may be served once open."""
        with self._lock:
            self._served.add(kind.plural)

    def open(self) -> None:
        """kopf has listed every watched kind (its handlers run only after its index handlers saw every object)."""
        self._open = True

    def seen(self, kind: Kind, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._lock:
            objs = self._objs.get(kind.plural)
            if objs is not None and newer(obj, objs.get(key)):
                objs[key] = copy.deepcopy(dict(obj))

    def gone(self, kind: Kind, namespace: str, name: str) -> None:
        with self._lock:
            objs = self._objs.get(kind.plural)
            if objs is not None:
                objs.pop((namespace, name), None)

    # ------------------------------------------------------------ read
    def serves(self, kind: Kind) -> bool:
        return self._open and kind.plural in self._served

    def get(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        with self._lock:
            found = self._objs_of(kind).get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def list(self, kind: Kind, namespace: str, labels: Mapping[str, str]) -> list[Obj]:
        with self._lock:
            return [copy.deepcopy(o) for (ns, _), o in self._objs_of(kind).items()
                    if ns == namespace and all(((o.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in labels.items())]

    def _objs_of(self, kind: Kind) -> dict[tuple[str, str], Obj]:
        if not self.serves(kind):
            raise Unsynced(f"{kind.kind} is not served from the watch cache{'' if self._open else ' yet'}")
        return self._objs[kind.plural]

    def __len__(self) -> int:
        return sum(len(o) for o in self._objs.values())
