"""Rollout: serve a FoundationModel version plus adapters, shifting traffic step by step."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal

import re2  # google-re2: RE2, the engine (syntax and linear-time matching) of Alertmanager's and Prometheus' matchers
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fmop.api.common import (
    ApiModel,
    Condition,
    CustomResource,
    Duration,
    KindInfo,
    Message,
    ModelVersion,
    Name,
    ResourceRequirements,
    ShortText,
    Timestamp,
)

# A deliberately small condition language: `result <op> <number>`. Evaluated by the operator
# without eval(); anything richer belongs in the PromQL query itself.
CONDITION_PATTERN = r"^result\s*(<=|>=|==|!=|<|>)\s*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"
LABEL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
AnalysisCondition = Annotated[str, Field(pattern=CONDITION_PATTERN, max_length=128, examples=["result < 0.01"])]
# Built-in analysis checks a step may name without defining them in spec.analysis.metrics (their
# queries live in fmop.rollout.checks); a metric of the same name in spec.analysis.metrics replaces one.
BUILTIN_METRICS = ("error-rate", "p99-latency", "prediction-drift")
_BUILTIN_CEL = "[" + ", ".join(f"'{n}'" for n in BUILTIN_METRICS) + "]"
_BUILTIN_DOC = (" Built-in checks need no definition: error-rate (canary failed/all Triton requests < 1%), p99-latency "
                "(canary p99 < 1 s), prediction-drift (PSI of canary vs stable popularity-decile shares < 0.2).")


class FoundationModelTarget(ApiModel):
    name: Name
    version: ModelVersion | None = Field(None, description="A version listed in the FoundationModel's status.versions; "
                                                          "required when versionPolicy is Pinned.")
    versionPolicy: Literal["Pinned", "FollowLatest"] = Field(
        "Pinned", description="Pinned serves `version`. FollowLatest serves the newest version that passed the quality gate "
                              "and for which every adapter in model.adapters has a version: FoundationModel and adapters move "
                              "together, as one canary through spec.strategy.")
    allowHeldBack: bool = Field(False, description="Serve the version even if its quality gate held it back "
                                                   "(status.versions[].gate HeldBack). Off: only versions that passed the gate, "
                                                   "or were recorded without one, are served.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.versionPolicy != 'Pinned' || has(self.version)",
                    "message": "model.foundationModel.version is required when versionPolicy is Pinned (the default): "
                               "name a version or set versionPolicy: FollowLatest",
                    "fieldPath": ".version",
                },
                {
                    "rule": "self.versionPolicy != 'FollowLatest' || !has(self.version)",
                    "message": "model.foundationModel.version conflicts with versionPolicy FollowLatest: remove it or use Pinned",
                    "fieldPath": ".version",
                },
            ]
        }
    )


class AdapterTarget(ApiModel):
    name: Name = Field(description="A TaskAdapter in the same namespace.")
    version: ModelVersion | None = Field(None, description="Adapter version; defaults to its newest valid for the FM version.")


class ServeTarget(ApiModel):
    """What the canary serves."""

    foundationModel: FoundationModelTarget
    adapters: Annotated[list[AdapterTarget], Field(max_length=32)] = Field(default_factory=list)

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
                    "message": "model.adapters must not name the same TaskAdapter twice",
                    "fieldPath": ".adapters",
                }
            ]
        }
    )


class Serving(ApiModel):
    """How each InferenceService (stable and canary) is run."""

    runtime: Literal["triton"] = "triton"
    protocolVersion: Literal["v2"] = "v2"
    storageUri: Annotated[str, Field(max_length=2048, description="Overrides the version's artifactUri.")] | None = None
    minReplicas: Annotated[int, Field(ge=0, le=1000)] = 1
    maxReplicas: Annotated[int, Field(ge=1, le=1000)] = 1
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    timeoutSeconds: Annotated[int, Field(ge=1, le=3600)] = 60

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.maxReplicas >= self.minReplicas",
                    "message": "serving.maxReplicas must be at least serving.minReplicas",
                    "fieldPath": ".maxReplicas",
                }
            ]
        }
    )


class ShadowStep(ApiModel):
    """Mirror live traffic to the canary (responses discarded) before it gets any real traffic."""

    mirrorPercent: Annotated[int, Field(ge=1, le=100)]
    duration: Duration
    analysis: Annotated[list[Name], Field(max_length=16, description="Metric names (spec.analysis.metrics) checked during shadow." + _BUILTIN_DOC)] = Field(
        default_factory=list
    )


class PauseStep(ApiModel):
    duration: Duration | None = None
    untilPromoted: bool | None = Field(None, description="Wait until a person runs the promote action.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.duration) != (has(self.untilPromoted) && self.untilPromoted)",
                    "message": "a pause step needs exactly one of pause.duration or pause.untilPromoted: true",
                }
            ]
        }
    )


class AnalysisStep(ApiModel):
    metrics: Annotated[list[Name], Field(min_length=1, max_length=16, description="Metric names from spec.analysis.metrics." + _BUILTIN_DOC)]


# The outcomes a client reports for a recommendation (the served model's fmrec_experiment_outcomes_total{outcome}).
ExperimentOutcome = Literal["played", "clicked", "added", "skipped", "ignored"]
EXPERIMENT_DEFAULT_MIN_EXPOSURES = 100  # fmop.rollout.sequential.DEFAULT_MIN_EXPOSURES (a test keeps the two equal)


class ExperimentStep(ApiModel):
    """An A/B experiment: a sticky share of USERS (by the bucket the client sends in the x-fmops-bucket header, 0..99)
    goes to the canary, the rest to the stable, until an always-valid sequential test on the success rate of the two
    says the canary is better (next step) or worse (rollback), or maxDuration / maxExposures ends it (onNoDecision).
    Needs a provider that routes by header: gatewayAPI, istio, or traefik with traefik.ingressRoute."""

    candidatePercent: Annotated[int, Field(ge=1, le=99, description="Percent of users on the canary: buckets 0..candidatePercent-1 "
                                                                    "of the x-fmops-bucket header go to it, all others to the stable.")] = 50
    success: ExperimentOutcome = Field("played", description="The outcome report counted as a success of a recommendation.")
    alpha: Annotated[float, Field(ge=0.001, le=0.2, description="Chance of a false verdict (better or worse when there is no "
                                                                "difference), however often the test looks.")] = 0.05
    minimumEffect: Annotated[float, Field(gt=0, lt=1, description="The absolute difference in success rate the test is tuned to "
                                                                  "(e.g. 0.01: one point); far smaller or larger effects need more data.")] = 0.01
    minExposures: Annotated[int, Field(ge=1, le=1_000_000_000, description="Exposures each arm needs before any verdict.")] = (
        EXPERIMENT_DEFAULT_MIN_EXPOSURES)
    maxDuration: Duration = Field("1h", description="No verdict by then: onNoDecision. Counted from when the split is in place.")
    maxExposures: Annotated[int, Field(ge=2, le=1_000_000_000_000, description="Exposures of both arms together after which, without "
                                                                               "a verdict, onNoDecision applies; at least twice "
                                                                               "minExposures.")] | None = None
    interval: Duration = Field("30s", description="How often the counts are read and the test looks.")
    onNoDecision: Literal["promote", "rollback", "pause"] = Field(
        "pause", description="No verdict by maxDuration or maxExposures: promote goes on to the next step, rollback rolls the canary "
                             "back, pause holds (phase Paused) until a person promotes (kubectl fmops promote) or aborts.")
    sampleRatioAlpha: Annotated[float, Field(ge=0.000001, le=0.05, description="Chance of a false sample-ratio-mismatch alarm. A "
                                                                               "mismatch (the users did not split as configured) "
                                                                               "pauses the Rollout: neither rate can be trusted.")] = 0.001

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.maxExposures) || self.maxExposures >= 2 * self.minExposures",
                    "message": "experiment.maxExposures counts both arms together and must be at least twice experiment.minExposures",
                    "fieldPath": ".maxExposures",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _max_covers_min(self) -> ExperimentStep:
        if self.maxExposures is not None and self.maxExposures < 2 * self.minExposures:
            raise ValueError(f"experiment.maxExposures {self.maxExposures} counts both arms together and must be at least twice "
                             f"experiment.minExposures {self.minExposures}")
        return self


class Step(ApiModel):
    """One canary step: exactly one of setWeight, pause, analysis or experiment."""

    setWeight: Annotated[int, Field(ge=0, le=100, description="Percent of live traffic sent to the canary.")] | None = None
    pause: PauseStep | None = None
    analysis: AnalysisStep | None = None
    experiment: ExperimentStep | None = Field(None, description="Hold a sticky split of users between stable and canary until a "
                                                                "sequential test on their outcomes decides.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.setWeight), has(self.pause), has(self.analysis), has(self.experiment)].filter(x, x).size() == 1",
                    "message": "each step sets exactly one of setWeight, pause, analysis or experiment",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        # Only the experiment is checked here (the CEL rule checks all): older objects the operator reads keep parsing.
        if self.experiment is not None and (self.setWeight is not None or self.pause is not None or self.analysis is not None):
            raise ValueError("a step with experiment sets nothing else: put setWeight, pause or analysis in a step of its own "
                             "(an experiment routes by user bucket, not by weight)")
        return self


class Strategy(ApiModel):
    shadow: ShadowStep | None = None
    steps: Annotated[list[Step], Field(min_length=1, max_length=32)]
    keepWarm: Duration = Field(
        "10m",
        description="How long the previous stable InferenceService keeps running after a promotion, so traffic can go back "
        "to it without a cold start; then it is deleted.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
                    "message": "strategy.steps[].setWeight must not decrease from one step to the next",
                    "fieldPath": ".steps",
                },
                {
                    "rule": "self.steps.exists(s, has(s.setWeight) && s.setWeight > 0)",
                    "message": "strategy.steps needs at least one setWeight above 0, or the canary never gets traffic",
                    "fieldPath": ".steps",
                },
            ]
        }
    )


class MinSampleSize(ApiModel):
    query: Annotated[str, Field(min_length=1, max_length=4096, description="PromQL giving the number of samples behind the measurement.")]
    minimum: Annotated[int, Field(ge=1)]


class Metric(ApiModel):
    """A PromQL measurement and the verdict on it."""

    name: Name
    query: Annotated[
        str,
        Field(
            min_length=1,
            max_length=4096,
            description="PromQL returning one number. {{canary}}, {{stable}} and {{namespace}} are replaced before the query runs.",
        ),
    ]
    successCondition: AnalysisCondition | None = None
    failureCondition: AnalysisCondition | None = None
    interval: Duration = "30s"
    count: Annotated[int, Field(ge=1, le=1000, description="Measurements to take.")] = 3
    failureLimit: Annotated[int, Field(ge=0, le=1000, description="Failed measurements tolerated before the analysis fails.")] = 0
    inconclusiveLimit: Annotated[int, Field(ge=0, le=1000, description="Errors (e.g. Prometheus unreachable) tolerated.")] = 2
    minSampleSize: MinSampleSize | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.successCondition) || has(self.failureCondition)",
                    "message": "an analysis metric needs successCondition, failureCondition or both (e.g. 'result < 0.01')",
                },
                {
                    "rule": "self.failureLimit < self.count",
                    "message": "analysis metric failureLimit must be smaller than count, or it can never fail",
                    "fieldPath": ".failureLimit",
                },
            ]
        }
    )


# spec.analysis.prometheusAddress is the base URL of a Prometheus server and nothing more: http(s), a host, maybe a
# port and a path. No user info, query string or fragment (`http://host/any/path#` made the operator fetch any path),
# no characters a URL does not have. Which servers the operator then queries is the platform's --prometheus-allow.
PROMETHEUS_ADDRESS_PATTERN = (r"^https?://([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
                              r"(/[-A-Za-z0-9._~!$&'()*+,;=:%/]*)?$")
# (CEL rule on the string, the same check in Python, the refusal): the API server and pydantic say the same thing.
_ADDRESS_RULES: tuple[tuple[str, Any, str], ...] = (
    ("self.startsWith('http://') || self.startsWith('https://')", lambda a: a.startswith(("http://", "https://")),
     "analysis.prometheusAddress must be an http:// or https:// URL: the base URL of a Prometheus server, "
     "e.g. http://prometheus.monitoring.svc:9090"),
    ("!self.contains('@')", lambda a: "@" not in a,
     "analysis.prometheusAddress must not carry user info (user:password@): anyone who can read the Rollout could read it; "
     "the platform decides which Prometheus servers the operator queries (its --prometheus-allow)"),
    ("!self.contains('?')", lambda a: "?" not in a,
     "analysis.prometheusAddress must not carry a query string (?...): the operator appends /api/v1/query and its parameters"),
    ("!self.contains('#')", lambda a: "#" not in a,
     "analysis.prometheusAddress must not carry a fragment (#...): name the base URL of a Prometheus server"),
)
_ADDRESS_DOC = ("Base URL of a Prometheus server: http(s)://host[:port][/path], no user info, query string or fragment. "
                "Defaults to the operator's --prometheus-url; any other address must be on the operator's --prometheus-allow "
                "(the chart's prometheusAllowedUrls), or the analysis gets no data and an Error naming the address.")


class Analysis(ApiModel):
    prometheusAddress: Annotated[str, Field(max_length=2048, description=_ADDRESS_DOC, json_schema_extra={
        "pattern": PROMETHEUS_ADDRESS_PATTERN,
        "x-kubernetes-validations": [{"rule": rule, "message": message} for rule, _, message in _ADDRESS_RULES]})] | None = None
    metrics: Annotated[list[Metric], Field(max_length=32)] = Field(default_factory=list)

    @field_validator("prometheusAddress")
    @classmethod
    def _base_url_only(cls, address: str | None) -> str | None:
        if address is None:
            return None
        for _, holds, message in _ADDRESS_RULES:
            if not holds(address):
                raise ValueError(message)
        if not re.fullmatch(PROMETHEUS_ADDRESS_PATTERN, address):  # fullmatch: `$` of re also matches before a final newline
            raise ValueError("analysis.prometheusAddress must be a base URL, http(s)://host[:port][/path], with only letters, digits "
                             f"and -._~!$&'()*+,;=:%/ in the path (it should match {PROMETHEUS_ADDRESS_PATTERN})")
        return address

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))",
                    "message": "analysis.metrics names must be unique",
                    "fieldPath": ".metrics",
                }
            ]
        }
    )


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to its author, not printed to the operator's stderr


@lru_cache(maxsize=8192)
def label_regex(pattern: str) -> Any:
    """A label matcher's regex as Alertmanager runs it: RE2 (linear time: no backtracking, so no pattern can stall the
    operator), anchored `^(?:pattern)$`; match with `.fullmatch(value)`. ValueError says why a pattern is refused
    (RE2 has no backreferences or lookaround)."""
    try:
        return re2.compile(f"^(?:{pattern})$", _RE2_OPTIONS)
    except re2.error as e:
        why = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(f"is not a valid RE2 regular expression (the syntax Alertmanager and Prometheus use): {why}") from None
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode (it holds a lone UTF-16 surrogate)") from None


class LabelMatcher(ApiModel):
    name: Annotated[str, Field(pattern=LABEL_NAME_PATTERN, max_length=128)]
    op: Literal["=", "!=", "=~", "!~"] = "="
    value: Annotated[str, Field(max_length=1024, description="A label value; with =~ and !~ an RE2 regular expression, "
                                                             "anchored at both ends as Alertmanager anchors it.")]

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # CEL's matches() is RE2 (Go's regexp, as in Alertmanager): an invalid pattern is an evaluation error,
                    # which the API server reports with this message; `in [true, false]` keeps that error (|| would absorb it).
                    "rule": "!has(self.op) || self.op in ['=', '!='] || ''.matches('^(?:' + self.value + ')$') in [true, false]",
                    "message": "a matcher with op =~ or !~ needs an RE2 regular expression in value (the syntax of Alertmanager "
                               "and Prometheus: no backreferences or lookaround)",
                    "fieldPath": ".value",
                }
            ]
        }
    )

    @field_validator("value")
    @classmethod
    def _value_is_re2_for_regex_ops(cls, value: str, info: ValidationInfo) -> str:
        op = info.data.get("op")
        if op in ("=~", "!~"):
            try:
                label_regex(value)
            except ValueError as e:
                raise ValueError(f"matcher {info.data.get('name', '')}{op}{json.dumps(value)} {e}") from None
        return value


class AlertRollback(ApiModel):
    """Roll back at once when a firing Alertmanager alert matches all matchers."""

    matchers: Annotated[list[LabelMatcher], Field(min_length=1, max_length=16)]


class RollbackPolicy(ApiModel):
    onAnalysisFailure: bool = True
    alerts: AlertRollback | None = None


class GatewayParentRef(ApiModel):
    name: Name
    namespace: Name | None = None
    sectionName: Name | None = None


class GatewayAPIRouting(ApiModel):
    httpRouteName: Name | None = Field(None, description="HTTPRoute the operator owns; defaults to the Rollout's name.")
    parentRefs: Annotated[list[GatewayParentRef], Field(min_length=1, max_length=8)]
    hostnames: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=16)] = Field(default_factory=list)


class IstioRouting(ApiModel):
    virtualServiceName: Name | None = None
    hosts: Annotated[list[Annotated[str, Field(max_length=253)]], Field(min_length=1, max_length=16)]
    gateways: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=16)] = Field(default_factory=list)


class TraefikIngressRoute(ApiModel):
    """An IngressRoute the operator also writes, sending matching requests to the Rollout's TraefikService."""

    entryPoints: Annotated[list[Name], Field(max_length=8, description="Traefik entry points; empty means all of them.")] = Field(
        default_factory=list
    )
    match: Annotated[str, Field(min_length=1, max_length=4096, description="Traefik rule, e.g. Host(`reco.example.com`).", examples=["PathPrefix(`/`)"])]


class TraefikRouting(ApiModel):
    traefikServiceName: Name | None = Field(
        None, description="TraefikService the operator owns (it mirrors; `<name>-split` weighs); defaults to the Rollout's name."
    )
    ingressRoute: TraefikIngressRoute | None = Field(None, description="Also write an IngressRoute to the TraefikService; leave out to route to it yourself.")


class TrafficRouting(ApiModel):
    provider: Literal["gatewayAPI", "istio", "kserve", "traefik"] = "gatewayAPI"
    gatewayAPI: GatewayAPIRouting | None = None
    istio: IstioRouting | None = None
    traefik: TraefikRouting | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.provider != 'gatewayAPI' || has(self.gatewayAPI)",
                    "message": "trafficRouting.gatewayAPI (parentRefs) is required when provider is gatewayAPI",
                    "fieldPath": ".gatewayAPI",
                },
                {
                    "rule": "self.provider != 'istio' || has(self.istio)",
                    "message": "trafficRouting.istio (hosts) is required when provider is istio",
                    "fieldPath": ".istio",
                },
                {
                    "rule": "self.provider == 'gatewayAPI' || !has(self.gatewayAPI)",
                    "message": "trafficRouting.gatewayAPI is set but provider is not gatewayAPI",
                    "fieldPath": ".gatewayAPI",
                },
                {
                    "rule": "self.provider == 'istio' || !has(self.istio)",
                    "message": "trafficRouting.istio is set but provider is not istio",
                    "fieldPath": ".istio",
                },
                {
                    "rule": "self.provider == 'traefik' || !has(self.traefik)",
                    "message": "trafficRouting.traefik is set but provider is not traefik",
                    "fieldPath": ".traefik",
                },
            ]
        }
    )


# Which providers can hold an experiment step (route a user bucket header to the canary): (CEL rule on the spec, message).
# fmop.rollout.providers.base.supports_buckets says the same for the providers.
_EXPERIMENT_RULES: tuple[tuple[str, str], ...] = (
    ("!self.strategy.steps.exists(s, has(s.experiment)) || self.trafficRouting.provider != 'kserve'",
     "strategy.steps[].experiment needs routing by header, which trafficRouting.provider kserve cannot do (it splits by "
     "percentage only): use provider gatewayAPI, istio, or traefik with traefik.ingressRoute"),
    ("!self.strategy.steps.exists(s, has(s.experiment)) || self.trafficRouting.provider != 'traefik' || "
     "(has(self.trafficRouting.traefik) && has(self.trafficRouting.traefik.ingressRoute))",
     "strategy.steps[].experiment with trafficRouting.provider traefik needs trafficRouting.traefik.ingressRoute: a TraefikService "
     "cannot match headers, the IngressRoute the operator writes can"),
)


def experiment_refusal(routing: TrafficRouting) -> str | None:
    """None when `routing` can hold an experiment step; otherwise the refusal (the same words as the CRD's CEL rules)."""
    if routing.provider == "kserve":
        return _EXPERIMENT_RULES[0][1]
    if routing.provider == "traefik" and (routing.traefik is None or routing.traefik.ingressRoute is None):
        return _EXPERIMENT_RULES[1][1]
    return None


class RolloutSpec(ApiModel):
    model: ServeTarget
    serving: Serving = Field(default_factory=Serving)
    strategy: Strategy
    analysis: Analysis = Field(default_factory=Analysis)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    trafficRouting: TrafficRouting
    paused: bool = Field(False, description="Hold at the current step until set back to false.")
    progressDeadline: Duration = "30m"
    revisionHistoryLimit: Annotated[int, Field(ge=1, le=100)] = 10

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.strategy.shadow) || self.trafficRouting.provider != 'kserve'",
                    "message": "provider kserve cannot mirror traffic: remove strategy.shadow or use trafficRouting.provider gatewayAPI, istio or traefik",
                    "fieldPath": ".strategy.shadow",
                },
                {
                    "rule": "self.strategy.steps.all(s, !has(s.analysis) || s.analysis.metrics.all(m, m in " + _BUILTIN_CEL
                    + " || self.analysis.metrics.exists(d, d.name == m)))",
                    "message": "a strategy.steps[].analysis names a metric that is not built in (" + ", ".join(BUILTIN_METRICS)
                    + ") and not defined in analysis.metrics",
                    "fieldPath": ".strategy.steps",
                },
                {"rule": _EXPERIMENT_RULES[0][0], "message": _EXPERIMENT_RULES[0][1], "fieldPath": ".trafficRouting.provider"},
                {"rule": _EXPERIMENT_RULES[1][0], "message": _EXPERIMENT_RULES[1][1], "fieldPath": ".trafficRouting"},
                {
                    "rule": "!has(self.strategy.shadow) || self.strategy.shadow.analysis.all(m, m in " + _BUILTIN_CEL
                    + " || self.analysis.metrics.exists(d, d.name == m))",
                    "message": "strategy.shadow.analysis names a metric that is not built in (" + ", ".join(BUILTIN_METRICS)
                    + ") and not defined in analysis.metrics",
                    "fieldPath": ".strategy.shadow.analysis",
                },
            ]
        }
    )

    @model_validator(mode="after")
    def _experiment_routable(self) -> RolloutSpec:
        if any(step.experiment is not None for step in self.strategy.steps):
            refused = experiment_refusal(self.trafficRouting)
            if refused is not None:
                raise ValueError(refused)
        return self


class MeasurementResult(ApiModel):
    metric: Name
    phase: Literal["Running", "Successful", "Failed", "Error", "Inconclusive"]
    value: float | None = None
    message: Message = ""
    measuredAt: Timestamp | None = None
    successes: Annotated[int, Field(ge=0)] = 0
    failures: Annotated[int, Field(ge=0)] = 0
    errors: Annotated[int, Field(ge=0)] = 0
    inconclusive: Annotated[int, Field(ge=0, description="Measurements that returned no data; never a success, never a failure.")] = 0
    consecutiveErrors: Annotated[int, Field(ge=0, description="Errors since the last measurement that returned a value.")] = 0


class HistoryEntry(ApiModel):
    revision: Annotated[int, Field(ge=1)]
    foundationModelVersion: ModelVersion
    adapters: Annotated[list[ShortText], Field(max_length=32)] = Field(default_factory=list)
    outcome: Literal["Promoted", "RolledBack", "Failed", "Superseded"]
    reason: Message = ""
    startedAt: Timestamp | None = None
    finishedAt: Timestamp | None = None


class ServedRevision(ApiModel):
    """One revision of the served model: what its InferenceService serves and when it started."""

    revision: Annotated[int, Field(ge=1)]
    model: ServeTarget = Field(description="What this revision's InferenceService serves.")
    startedAt: Timestamp | None = None
    promotedAt: Timestamp | None = Field(None, description="When it became the stable; unset while it is a canary.")
    keepWarmUntil: Timestamp | None = Field(None, description="Only on status.previousStable: when its InferenceService is deleted.")


class HandledAlert(ApiModel):
    """An Alertmanager alert already acted on; a resend with the same or an older startsAt is ignored."""

    fingerprint: ShortText
    startsAt: Timestamp
    alertname: ShortText = ""


class ExperimentArm(ApiModel):
    """One arm's cumulative counts since the experiment's split was in place."""

    exposures: Annotated[int, Field(ge=0)] = 0
    successes: Annotated[int, Field(ge=0)] = 0
    rate: Annotated[float, Field(ge=0, le=1)] = 0.0


class Interval(ApiModel):
    lower: float
    upper: float


class ExperimentSampleRatio(ApiModel):
    """Did the users split as configured: the candidate's share of exposures and the sample-ratio Bayes factor."""

    observedShare: Annotated[float, Field(ge=0, le=1)]
    expectedShare: Annotated[float, Field(ge=0, le=1)]
    bayesFactor: float
    threshold: float = Field(description="1/sampleRatioAlpha: a Bayes factor at or above it is a mismatch.")
    mismatch: bool


class ExperimentStatus(ApiModel):
    """The experiment of strategy.steps[stepIndex] for revision `revision`: its counts, the test and its verdict."""

    stepIndex: Annotated[int, Field(ge=0)]
    revision: Annotated[int, Field(ge=1, description="The canary revision tested against the stable.")]
    candidatePercent: Annotated[int, Field(ge=1, le=99)]
    success: ShortText
    outcome: Literal["pending", "continue", "better", "worse", "no-decision", "sample-ratio-mismatch"] = Field(
        "pending", description="pending: no counts yet; continue: no verdict yet; the others are final for this step.")
    reason: Message = ""
    countsError: Message | None = Field(None, description="Why the last look could not read the counts (then it holds).")
    startedAt: Timestamp | None = Field(None, description="When the canary was Ready and the split seen in place: counts start here.")
    lastLookAt: Timestamp | None = None
    looks: Annotated[int, Field(ge=0)] = 0
    elapsedSeconds: Annotated[float, Field(ge=0)] | None = None
    control: ExperimentArm | None = Field(None, description="The stable revision's arm.")
    candidate: ExperimentArm | None = Field(None, description="The canary revision's arm.")
    difference: float | None = Field(None, description="Candidate minus control success rate.")
    confidenceLevel: float | None = None
    confidenceSequence: Interval | None = Field(None, description="Always-valid interval of the difference at confidenceLevel.")
    lift: float | None = Field(None, description="difference / control rate.")
    liftInterval: Interval | None = Field(None, description="confidenceSequence / control rate (approximate).")
    likelihoodRatio: float | None = Field(None, description="The test statistic (mixture likelihood ratio); a verdict at threshold.")
    threshold: float | None = Field(None, description="1/alpha.")
    sampleRatio: ExperimentSampleRatio | None = None
    action: Literal["next-step", "rollback", "pause"] | None = Field(None, description="What the final outcome did.")


class RolloutStatus(ApiModel):
    phase: Literal["Pending", "Shadowing", "Progressing", "Paused", "Promoted", "RolledBack", "Failed"] = "Pending"
    observedGeneration: Annotated[int, Field(ge=0)] | None = None
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(default_factory=list)
    revision: Annotated[int, Field(ge=0)] = 0
    currentStepIndex: Annotated[int, Field(ge=-1, description="-1 while shadowing; len(steps) once promoted.")] | None = None
    currentStepStartedAt: Timestamp | None = None
    stableVersion: ShortText | None = None
    canaryVersion: ShortText | None = None
    stableWeight: Annotated[int, Field(ge=0, le=100)] = 100
    canaryWeight: Annotated[int, Field(ge=0, le=100)] = 0
    mirrorPercent: Annotated[int, Field(ge=0, le=100)] = 0
    lastAnalysis: Annotated[list[MeasurementResult], Field(max_length=32)] = Field(default_factory=list)
    rollbackReason: Message | None = None
    history: Annotated[list[HistoryEntry], Field(max_length=100)] = Field(default_factory=list)
    message: Message = ""
    stable: ServedRevision | None = Field(None, description="The revision serving the stable share of traffic.")
    canary: ServedRevision | None = Field(None, description="The newest revision while it is rolled out; kept after a rollback to show what was rolled back.")
    previousStable: ServedRevision | None = Field(None, description="The stable before the last promotion, kept warm until keepWarmUntil.")
    heldSince: Timestamp | None = Field(
        None,
        description="Since when the current step waits on something outside the operator (InferenceService readiness, "
        "traffic, the observed split); spec.progressDeadline counts from here.",
    )
    strategyHash: ShortText | None = Field(None, description="Fingerprint of spec.strategy the current revision follows; a change restarts the steps.")
    handledAlerts: Annotated[list[HandledAlert], Field(max_length=64)] = Field(default_factory=list)
    lastPromoteRequest: ShortText | None = Field(None, description="The promote request (annotation value) last acted on.")
    lastRetryRequest: ShortText | None = Field(None, description="The retry request (annotation value) last acted on.")
    lastAbortRequest: ShortText | None = Field(None, description="The abort request (annotation value) last acted on.")
    experiment: ExperimentStatus | None = Field(None, description="The experiment step of the current revision, while it runs and "
                                                                  "after it decided; reset when an experiment step or revision starts.")


class Rollout(CustomResource):
    """Serves a FoundationModel version with adapters through stable/canary InferenceServices."""

    info: ClassVar[KindInfo] = KindInfo(
        kind="Rollout",
        plural="rollouts",
        singular="rollout",
        shortNames=["fmro"],
        printerColumns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Step", "type": "integer", "jsonPath": ".status.currentStepIndex"},
            {"name": "Weight", "type": "integer", "jsonPath": ".status.canaryWeight", "description": "Percent of traffic on the canary"},
            {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion"},
            {"name": "Canary", "type": "string", "jsonPath": ".status.canaryVersion"},
            {"name": "Mirror", "type": "integer", "jsonPath": ".status.mirrorPercent", "priority": 1},
            {"name": "Provider", "type": "string", "jsonPath": ".spec.trafficRouting.provider", "priority": 1},
            {"name": "Revision", "type": "integer", "jsonPath": ".status.revision", "priority": 1},
            {"name": "Reason", "type": "string", "jsonPath": ".status.rollbackReason", "priority": 1},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )

    kind: Literal["Rollout"] = "Rollout"
    spec: RolloutSpec
    status: RolloutStatus | None = None
