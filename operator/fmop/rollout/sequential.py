"""Always-valid statistics for an A/B `experiment` step: is the candidate's success rate better or worse than
the stable's, and did the users split as configured? Pure: standard library `math` only.

At every analysis interval the step reads, per arm, CUMULATIVE counts from Prometheus: exposures n
(recommendations served) and successes x (say "played"). `decide(counts, spec, elapsed_seconds)` turns
the counts of one look into a Decision; it keeps no history and needs none. Both statistics below are
functions of the cumulative counts at that look alone, and their guarantees hold however often, and
whenever, anyone looks (they are valid under continuous monitoring and optional stopping), so the engine
only calls `decide` with the current counts and acts on the first outcome that is not "continue". What
status shows of it is `to_status(decision)`.

1. Candidate vs stable: the mixture sequential probability ratio test (mSPRT) of Johari, Koomen,
   Pekelis and Walsh ("Always valid inference", the Optimizely test) on the difference of the two
   success rates, with the normal approximation and plug-in variance. With diff = p_B - p_A (B the
   candidate, A the stable), V = p_A(1-p_A)/n_A + p_B(1-p_B)/n_B its variance and a normal mixing
   distribution N(0, tau^2) over the true difference, the mixture likelihood ratio against "no
   difference" is

       Lambda = sqrt(V / (V + tau^2)) * exp(diff^2 * tau^2 / (2 V (V + tau^2)))

   and H0 is rejected once Lambda >= 1/alpha. The mixture is symmetric, so this one test is already
   two-sided at level alpha (no alpha/2). Inverting it (the differences d for which the same test with
   diff - d in place of diff does not reject) gives the confidence sequence

       diff +- sqrt(V (V + tau^2) / tau^2 * (2 ln(1/alpha) + ln((V + tau^2) / V)))

   which covers the true difference at every look at once with probability >= 1 - alpha. It has the
   form of the asymptotic confidence sequence of Waudby-Smith et al. (2021, "Time-uniform central limit
   theory"), 2 ln(1/alpha) term included, with the mixing variance fixed on the difference (tau^2)
   instead of on the standardised scale (their rho). So "better" (0 below the
   confidence sequence) and "worse" (0 above it) are exactly Lambda >= 1/alpha with the sign of diff.
   Unequal and changing arm sizes only enter through V.

   tau is the spec's minimum effect of interest, as an ABSOLUTE difference in success rate (a +10%
   relative lift on a 12% play rate is 0.012). The mixture spends its power on effects of about that
   size: a much larger tau needs more data for small effects, a much smaller one for large effects.
   tau is fixed before the data: tying it to the observed control rate would make the mixture data
   dependent and void the guarantee.

   The guarantee is asymptotic (normal approximation, variance estimated from the data). Three guards
   keep it honest at small counts:
   (a) every rate in a variance has half a success and half a failure added, p~ = (x + 1/2) / (n + 1),
       so 0 or n successes never give V = 0 (the difference itself uses the raw rates; at 100
       exposures the change to V is about 1%);
   (b) V is the larger of that plug-in variance and the pooled one H0 implies,
       p~(1 - p~)(1/n_A + 1/n_B) with p~ the rate of both arms together. The plug-in variance
       collapses when the small arm of an uneven split has seen no success yet: with a 10% candidate
       share, rates of 1% and tau = 0.01 (20 looks of 200 users), 2,000 simulated A/A experiments
       decided falsely 7.1% of the time with the plug-in variance alone, above alpha; raising
       min_exposures is a poor cure (still 7.1% at 100 per arm, 4.2% at 300: the false verdicts come
       when the candidate has 0-2 successes). The pooled variance borrows the big arm's rate: 0 of
       2,000. The larger of two variances only widens the confidence sequence (it stays valid, a
       little conservative), and on a balanced split the two are nearly equal even when the rates differ;
   (c) no verdict before `min_exposures` per arm (default 100). tests/unit/test_sequential.py shows the
       false-positive rate under alpha with these defaults, monitored at every look.

2. Sample-ratio mismatch (SRM): the beta-binomial mixture Bayes factor of Lindon and Malek
   ("Anytime-valid inference for multinomial count data", their SRM test; the two-arm case of the
   Dirichlet-multinomial). Each exposure goes to the candidate with probability theta; H0 is
   theta = p0, the configured candidate share; under the alternative theta ~ Beta(a, b) with
   a = k p0, b = k (1 - p0) (centred on p0, k the concentration). The Bayes factor of the exposure
   sequence is

       BF = [B(a + n_B, b + n_A) / B(a, b)] / [p0^n_B (1 - p0)^n_A]

   a nonnegative martingale under H0 (an exact e-process: no approximation, any n), so
   P(BF ever >= 1/alpha_srm) <= alpha_srm. Mismatch once BF >= 1/alpha_srm. k = 100 puts the prior's
   standard deviation of theta at about 0.05 around a 50/50 split: tuned to shifts of a few points.

Assumption behind both: exposures are independent draws. The split is sticky per user, but Prometheus
counts requests: a heavy user's many requests all land in one arm, and their outcomes are correlated.
Both make the counts over-dispersed compared to independent draws, which inflates false alarms (SRM
most of all: a handful of heavy users can move the split far more than binomial noise allows). Count
one exposure per user (or per session) where the metrics allow; otherwise expect alarms above alpha.

An SRM mismatch outranks everything: with a broken split neither arm's rate can be trusted, so the
outcome is "sample-ratio-mismatch" even when the comparison would decide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Outcome = Literal["better", "worse", "continue", "no-decision", "sample-ratio-mismatch"]
OnNoDecision = Literal["rollback", "promote", "pause"]

VARIANCE_PSEUDO_COUNT = 0.5  # half a success and half a failure per arm, for the variance only
DEFAULT_MIN_EXPOSURES = 100
DEFAULT_SRM_CONCENTRATION = 100.0
_MAX_LOG = 709.0  # exp() of more overflows a float; larger statistics are reported at this cap


@dataclass(frozen=True)
class Arm:
    """Cumulative counts of one arm: exposures (recommendations served) and successes among them."""

    exposures: int
    successes: int

    @property
    def rate(self) -> float:
        """The observed success rate; 0 before any exposure."""
        return self.successes / self.exposures if self.exposures else 0.0


@dataclass(frozen=True)
class Counts:
    """One look's cumulative counts: control (the stable revision, A) and candidate (B)."""

    control: Arm
    candidate: Arm

    def __post_init__(self) -> None:
        for side, arm in (("control", self.control), ("candidate", self.candidate)):
            if arm.exposures < 0 or not 0 <= arm.successes <= arm.exposures:
                raise ValueError(f"{side}: successes={arm.successes} must be between 0 and exposures={arm.exposures} (cumulative counts)")

    @property
    def total(self) -> int:
        return self.control.exposures + self.candidate.exposures


@dataclass(frozen=True)
class ExperimentSpec:
    """What an experiment step asks for. `minimum_effect` is tau (an absolute difference in success rate);
    `max_exposures` counts both arms together; a decision needs `min_exposures` in each arm."""

    minimum_effect: float
    max_duration_seconds: float
    alpha: float = 0.05
    candidate_share: float = 0.5
    alpha_srm: float = 0.001
    srm_concentration: float = DEFAULT_SRM_CONCENTRATION
    min_exposures: int = DEFAULT_MIN_EXPOSURES
    max_exposures: int | None = None
    on_no_decision: OnNoDecision = "rollback"

    def __post_init__(self) -> None:
        if not 0 < self.minimum_effect < 1:
            raise ValueError(f"minimum_effect={self.minimum_effect} must be an absolute difference in success rate, between 0 and 1 (e.g. 0.01)")
        for name in ("alpha", "alpha_srm", "candidate_share"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be between 0 and 1, exclusive")
        if not self.max_duration_seconds > 0:
            raise ValueError(f"max_duration_seconds={self.max_duration_seconds} must be positive")
        if not self.srm_concentration > 0:
            raise ValueError(f"srm_concentration={self.srm_concentration} must be positive")
        if self.min_exposures < 1:
            raise ValueError(f"min_exposures={self.min_exposures} must be at least 1")
        if self.max_exposures is not None and self.max_exposures < 2 * self.min_exposures:
            raise ValueError(f"max_exposures={self.max_exposures} must be at least twice min_exposures={self.min_exposures} (both arms)")


@dataclass(frozen=True)
class Comparison:
    """The mSPRT of candidate vs control at one look: the difference of rates, its (1 - alpha) confidence
    sequence, the approximate relative lift and the mixture likelihood ratio (as logs: it overflows)."""

    difference: float
    lower: float
    upper: float
    variance: float
    log_lambda: float
    log_threshold: float  # ln(1/alpha)
    alpha: float
    lift: float | None  # difference / control rate; None when the control rate is 0
    lift_lower: float | None  # the confidence sequence divided by the control rate: APPROXIMATE (ignores its noise)
    lift_upper: float | None

    @property
    def rejects(self) -> bool:
        """Lambda >= 1/alpha: H0 (no difference) is rejected; equivalently, 0 is outside the confidence sequence."""
        return self.log_lambda >= self.log_threshold


@dataclass(frozen=True)
class SampleRatio:
    """The SRM test at one look: the candidate's observed and configured share of exposures and the Bayes factor."""

    observed_share: float
    expected_share: float
    log_bayes_factor: float
    log_threshold: float  # ln(1/alpha_srm)

    @property
    def mismatch(self) -> bool:
        return self.log_bayes_factor >= self.log_threshold


@dataclass(frozen=True)
class Decision:
    """One look's verdict and the numbers behind it. `on_no_decision` echoes the spec's action when the
    outcome is "no-decision" (and is None otherwise)."""

    outcome: Outcome
    reason: str
    counts: Counts
    comparison: Comparison
    sample_ratio: SampleRatio
    elapsed_seconds: float
    on_no_decision: OnNoDecision | None = None


# ---------------------------------------------------------------- formulas
def mixture_log_lambda(difference: float, variance: float, tau: float) -> float:
    """ln Lambda = 1/2 ln(V / (V + tau^2)) + diff^2 tau^2 / (2 V (V + tau^2))."""
    if not (variance > 0 and tau > 0):
        raise ValueError(f"variance={variance} and tau={tau} must be positive")
    t2 = tau * tau
    return 0.5 * math.log(variance / (variance + t2)) + difference * difference * t2 / (2 * variance * (variance + t2))


def confidence_radius(variance: float, tau: float, alpha: float) -> float:
    """Half-width of the (1 - alpha) confidence sequence: sqrt(V (V + tau^2) / tau^2 (2 ln(1/alpha) + ln((V + tau^2) / V))).

    It is the |diff| at which Lambda = 1/alpha, and it grows with V (so it narrows as counts grow)."""
    if not (variance > 0 and tau > 0 and 0 < alpha < 1):
        raise ValueError(f"variance={variance} and tau={tau} must be positive, alpha={alpha} between 0 and 1")
    t2 = tau * tau
    return math.sqrt(variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance)))


def srm_log_bayes_factor(control: int, candidate: int, share: float, concentration: float = DEFAULT_SRM_CONCENTRATION) -> float:
    """ln BF of "the candidate's share is not `share`" for `candidate` of `control + candidate` exposures:
    ln B(a + candidate, b + control) - ln B(a, b) - candidate ln(share) - control ln(1 - share), a = k share, b = k (1 - share)."""
    if control < 0 or candidate < 0:
        raise ValueError(f"exposures must be nonnegative: control={control}, candidate={candidate}")
    if not 0 < share < 1 or not concentration > 0:
        raise ValueError(f"share={share} must be between 0 and 1, concentration={concentration} positive")
    a, b = concentration * share, concentration * (1 - share)
    return _log_beta(a + candidate, b + control) - _log_beta(a, b) - candidate * math.log(share) - control * math.log1p(-share)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _variance(arm: Arm) -> float:
    """p~(1 - p~)/n with p~ = (x + 1/2)/(n + 1): never 0, so V > 0 even at 0 or n successes."""
    if arm.exposures == 0:
        return 0.25  # no data: the largest a rate's variance can be (callers wait for min_exposures anyway)
    p = (arm.successes + VARIANCE_PSEUDO_COUNT) / (arm.exposures + 2 * VARIANCE_PSEUDO_COUNT)
    return p * (1 - p) / arm.exposures


def _pooled_variance(counts: Counts) -> float:
    """p~(1 - p~)(1/n_A + 1/n_B) with p~ the rate of both arms together (plus the pseudo-count): the variance H0 implies."""
    a, b = counts.control, counts.candidate
    if not (a.exposures and b.exposures):
        return 0.0
    p = (a.successes + b.successes + VARIANCE_PSEUDO_COUNT) / (counts.total + 2 * VARIANCE_PSEUDO_COUNT)
    return p * (1 - p) * (1 / a.exposures + 1 / b.exposures)


def compare(counts: Counts, tau: float, alpha: float) -> Comparison:
    """The mSPRT and its confidence sequence on this look's cumulative counts."""
    a, b = counts.control, counts.candidate
    difference = b.rate - a.rate
    variance = max(_variance(a) + _variance(b), _pooled_variance(counts))
    radius = confidence_radius(variance, tau, alpha)
    lower, upper = difference - radius, difference + radius
    base = a.rate
    return Comparison(
        difference=difference, lower=lower, upper=upper, variance=variance,
        log_lambda=mixture_log_lambda(difference, variance, tau), log_threshold=math.log(1 / alpha), alpha=alpha,
        lift=difference / base if base > 0 else None,
        lift_lower=lower / base if base > 0 else None,
        lift_upper=upper / base if base > 0 else None,
    )


def sample_ratio(counts: Counts, share: float, alpha: float, concentration: float = DEFAULT_SRM_CONCENTRATION) -> SampleRatio:
    """The SRM Bayes factor of this look's exposures against the configured candidate share."""
    n_a, n_b = counts.control.exposures, counts.candidate.exposures
    return SampleRatio(
        observed_share=n_b / (n_a + n_b) if n_a + n_b else share, expected_share=share,
        log_bayes_factor=srm_log_bayes_factor(n_a, n_b, share, concentration), log_threshold=math.log(1 / alpha),
    )


# ---------------------------------------------------------------- the decision
def decide(counts: Counts, spec: ExperimentSpec, elapsed_seconds: float) -> Decision:
    """One look: the verdict on these cumulative counts, `elapsed_seconds` after the experiment started.

    In order: a sample-ratio mismatch; else, with `min_exposures` in each arm, "better" or "worse" once
    Lambda >= 1/alpha; else "no-decision" once max_duration_seconds or max_exposures is reached (a look
    that reaches the limit and decides still decides); else "continue". A function of its arguments alone.
    """
    comparison = compare(counts, spec.minimum_effect, spec.alpha)
    srm = sample_ratio(counts, spec.candidate_share, spec.alpha_srm, spec.srm_concentration)
    a, b = counts.control, counts.candidate
    numbers = _numbers(counts, comparison)

    def verdict(outcome: Outcome, reason: str, action: OnNoDecision | None = None) -> Decision:
        return Decision(outcome, reason, counts, comparison, srm, elapsed_seconds, action)

    if srm.mismatch:
        return verdict("sample-ratio-mismatch",
                       f"sample ratio mismatch: the candidate has {b.exposures} of {counts.total} exposures "
                       f"({srm.observed_share:.2%}), configured {srm.expected_share:.2%}; Bayes factor {_exp(srm.log_bayes_factor)} "
                       f">= 1/alpha_srm = {1 / spec.alpha_srm:g}; the split is broken, so neither rate is trusted")
    enough = min(a.exposures, b.exposures) >= spec.min_exposures
    if enough and comparison.rejects:
        outcome: Outcome = "better" if comparison.difference > 0 else "worse"
        return verdict(outcome, f"candidate {outcome}: {numbers}; Lambda {_exp(comparison.log_lambda)} >= 1/alpha = {1 / spec.alpha:g}")
    limits = []
    if elapsed_seconds >= spec.max_duration_seconds:
        limits.append(f"{elapsed_seconds:g} s (max_duration_seconds {spec.max_duration_seconds:g})")
    if spec.max_exposures is not None and counts.total >= spec.max_exposures:
        limits.append(f"{counts.total} exposures (max_exposures {spec.max_exposures})")
    if limits:
        why = (f"{numbers}; Lambda {_exp(comparison.log_lambda)} < 1/alpha = {1 / spec.alpha:g}" if enough else
               f"fewer than min_exposures={spec.min_exposures} in an arm (stable {a.exposures}, candidate {b.exposures})")
        return verdict("no-decision", f"no decision after {' and '.join(limits)}: {why}; on_no_decision: {spec.on_no_decision}",
                       spec.on_no_decision)
    if not enough:
        return verdict("continue", f"waiting for {spec.min_exposures} exposures per arm: stable {a.exposures}, candidate {b.exposures}")
    return verdict("continue", f"no decision yet: {numbers}; Lambda {_exp(comparison.log_lambda)} < 1/alpha = {1 / spec.alpha:g}")


def _numbers(counts: Counts, c: Comparison) -> str:
    a, b = counts.control, counts.candidate
    lift = "" if c.lift is None else f", lift {c.lift:+.1%} (approx. [{c.lift_lower:+.1%}, {c.lift_upper:+.1%}])"
    return (f"rate {b.rate:.4f} (candidate, n={b.exposures}) vs {a.rate:.4f} (stable, n={a.exposures}), difference {c.difference:+.4f}, "
            f"{1 - c.alpha:.0%} confidence sequence [{c.lower:+.4f}, {c.upper:+.4f}]{lift}")


def _exp(log: float) -> str:
    """A statistic kept as its log, printed as a number (e^x past what a float holds)."""
    return f"{math.exp(log):.3g}" if log <= _MAX_LOG else f"e^{log:.1f}"


# ---------------------------------------------------------------- status
def to_status(decision: Decision) -> dict[str, object]:
    """The decision as JSON-safe, rounded data for the Rollout's status (no NaN or infinity)."""
    c, s, counts = decision.comparison, decision.sample_ratio, decision.counts

    def arm(a: Arm) -> dict[str, object]:
        return {"exposures": a.exposures, "successes": a.successes, "rate": round(a.rate, 6)}

    def maybe(x: float | None, digits: int) -> float | None:
        return None if x is None else round(x, digits)

    out: dict[str, object] = {
        "outcome": decision.outcome,
        "reason": decision.reason,
        "elapsedSeconds": round(decision.elapsed_seconds, 3),
        "control": arm(counts.control),
        "candidate": arm(counts.candidate),
        "difference": round(c.difference, 6),
        "confidenceLevel": round(1 - c.alpha, 6),
        "confidenceSequence": {"lower": round(c.lower, 6), "upper": round(c.upper, 6)},
        "lift": maybe(c.lift, 4),
        "liftInterval": None if c.lift is None else {"lower": maybe(c.lift_lower, 4), "upper": maybe(c.lift_upper, 4), "approximate": True},
        "lambda": _sig(math.exp(min(c.log_lambda, _MAX_LOG))),
        "logLambda": round(c.log_lambda, 3),
        "threshold": _sig(1 / c.alpha),
        "sampleRatio": {
            "observedShare": round(s.observed_share, 6),
            "expectedShare": round(s.expected_share, 6),
            "bayesFactor": _sig(math.exp(min(s.log_bayes_factor, _MAX_LOG))),
            "logBayesFactor": round(s.log_bayes_factor, 3),
            "threshold": _sig(math.exp(s.log_threshold)),
            "mismatch": s.mismatch,
        },
    }
    if decision.on_no_decision is not None:
        out["onNoDecision"] = decision.on_no_decision
    return out


def _sig(x: float) -> float:
    return float(f"{x:.4g}")
