"""Names and labels every part of a rollout agrees on: the serving objects, the traffic objects, the
Prometheus series. One place, so the handlers, the traffic providers, the analysis queries and the
local Prometheus' relabelling cannot drift apart.

One InferenceService per revision (not per side): a promotion changes which revision the traffic
object calls stable, never renames anything, so it is one patch and a rollback is one patch back.
"""

from __future__ import annotations

import hashlib

# Labels on every object the operator writes for a Rollout.
LABEL_ROLLOUT = "fmops.dev/rollout"  # the Rollout's name
LABEL_REVISION = "fmops.dev/revision"  # status.revision the InferenceService serves
FIELD_MANAGER = "fm-operator"  # server-side apply field manager

# KServe (Standard/raw deployment mode) names the predictor's Service `<isvc>-predictor`, port 80 -> the
# container's 8080 (v2 HTTP); gRPC is 9000 on the pod. The pod carries the label below.
PREDICTOR_PORT = 80
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"

# The local Prometheus relabels pod metadata to these target labels (see fmdev.local.monitoring); on a
# real cluster a PodMonitor/ServiceMonitor must do the same for the built-in analysis checks to work.
PROM_ISVC_LABEL = "inferenceservice"  # from the pod label serving.kserve.io/inferenceservice
PROM_NAMESPACE_LABEL = "namespace"
PROM_POD_LABEL = "pod"
PROM_ROLLOUT_LABEL = "rollout"  # from the pod label fmops.dev/rollout (KServe copies InferenceService labels to its pods)
PROM_REVISION_LABEL = "revision"  # from the pod label fmops.dev/revision

_MAX_NAME = 63  # a DNS-1035 label: KServe derives Service and Deployment names from the InferenceService's


def isvc_name(rollout: str, revision: int) -> str:
    """`recommender-r3`; long Rollout names are shortened with a hash so `-predictor` still fits in 63."""
    suffix = f"-r{revision}"
    room = _MAX_NAME - len("-predictor") - len(suffix)
    if len(rollout) <= room:
        return f"{rollout}{suffix}"
    digest = hashlib.sha256(rollout.encode()).hexdigest()[:8]
    return f"{rollout[: room - 9].rstrip('-')}-{digest}{suffix}"


def predictor_service(rollout: str, revision: int) -> str:
    """The Kubernetes Service in front of a revision's predictor pods: what traffic objects point at."""
    return f"{isvc_name(rollout, revision)}-predictor"


def traffic_object_name(rollout: str, override: str | None = None) -> str:
    """HTTPRoute / VirtualService / TraefikService name: the spec's override, else the Rollout's name."""
    return override or rollout


# A/B experiments (strategy.steps[].experiment): each user's sticky bucket, 0..99, which the client computes
# from a user key (fmrec.serving.client.bucket: the first 15 hex digits of SHA-256 of the key, modulo 100)
# and sends in this header; the traffic object sends the candidate's buckets to the canary by a header match.
BUCKET_HEADER = "x-fmops-bucket"
BUCKETS = 100


def bucket_regex(first: int, last: int) -> str:
    """An anchored RE2 regular expression matching the header values first..last (inclusive) and nothing else:
    the decimal numbers, written without leading zeros, as the client sends them."""
    if not 0 <= first <= last < BUCKETS:
        raise ValueError(f"a bucket range must lie within 0..{BUCKETS - 1}, got {first}..{last}")
    return "^(" + "|".join(str(b) for b in range(first, last + 1)) + ")$"


def buckets_of(regex: object) -> tuple[int, int] | None:
    """The range bucket_regex wrote, read back; None for anything else."""
    if not isinstance(regex, str) or not regex.startswith("^(") or not regex.endswith(")$"):
        return None
    parts = regex[2:-2].split("|")
    if not all(p.isdigit() and p == str(int(p)) for p in parts):
        return None
    first, last = int(parts[0]), int(parts[-1])
    return (first, last) if 0 <= first <= last < BUCKETS and parts == [str(b) for b in range(first, last + 1)] else None
