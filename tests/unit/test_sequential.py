"""The experiment step's statistics (fmop.rollout.sequential): the formulas on hand-computed cases, the
guards, and the claims that matter, proven on seeded simulations monitored at EVERY look:

- A/A: the mSPRT decides falsely at most alpha of the time (the exact 95% upper bound of the observed
  rate is under alpha), where a z-test peeking at the same looks is far above alpha;
- power and exposures to a decision at +20% and +40% on a 10% rate, and -20% decides "worse";
- SRM: false alarms at most alpha_srm on correct splits; a 45/55 split of a 50/50 configuration found.

The simulations are fmdev.bench.experiments' (which prints them as a table), with its default seed, so
the table and these assertions are the same numbers.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import betaln

from fmdev.bench.experiments import (AA, AA_RARE, ALPHA, POWER, SRM_WITHIN, Scenario, binomial_interval, first_decisions, outcomes,
                                     peeking_z, simulate, srm_first_alarm)
from fmop.rollout.sequential import (Arm, Counts, ExperimentSpec, Outcome, compare, confidence_radius, decide,
                                     mixture_log_lambda, sample_ratio, srm_log_bayes_factor, to_status)

SIMS, SEED = 2000, 0
Looks = dict[str, tuple[list[list[Outcome]], list[Outcome], npt.NDArray[np.float64]]]  # per scenario: every look, first verdicts, exposures
SPEC = ExperimentSpec(minimum_effect=0.02, max_duration_seconds=3600)


def counts(n_a: int, x_a: int, n_b: int, x_b: int) -> Counts:
    return Counts(Arm(n_a, x_a), Arm(n_b, x_b))


# ---------------------------------------------------------------- formulas, by hand
def test_mixture_likelihood_ratio_on_a_hand_computed_case() -> None:
    # V = tau^2 = 1e-4, diff = 0.02: sqrt(V / 2V) = 1/sqrt(2); exponent 0.02^2 * 1e-4 / (2 * 1e-4 * 2e-4) = 1.
    assert math.exp(mixture_log_lambda(0.02, 1e-4, 0.01)) == pytest.approx(math.e / math.sqrt(2), rel=1e-12)  # 1.92212
    assert math.exp(mixture_log_lambda(0.0, 1e-4, 0.01)) == pytest.approx(1 / math.sqrt(2), rel=1e-12), "no difference: Lambda < 1"


def test_confidence_radius_on_a_hand_computed_case() -> None:
    # sqrt(V (V + tau^2) / tau^2 * (2 ln 20 + ln 2)) = sqrt(2e-4 * 6.684612) = 0.0365639
    assert confidence_radius(1e-4, 0.01, 0.05) == pytest.approx(0.03656394871, rel=1e-9)


@pytest.mark.parametrize(("variance", "tau", "alpha"), [(1e-4, 0.01, 0.05), (3e-6, 0.02, 0.05), (2e-3, 0.005, 0.01), (1e-8, 0.1, 0.2)])
def test_the_confidence_sequence_is_the_test_inverted(variance: float, tau: float, alpha: float) -> None:
    """At |diff| = radius, Lambda is exactly 1/alpha: 0 outside the sequence <=> H0 rejected (2 ln(1/alpha), no alpha/2)."""
    r = confidence_radius(variance, tau, alpha)
    for diff in (r, -r):
        assert mixture_log_lambda(diff, variance, tau) == pytest.approx(math.log(1 / alpha), rel=1e-9)


def test_the_confidence_sequence_narrows_as_the_variance_falls() -> None:
    radii = [confidence_radius(v, 0.02, 0.05) for v in np.geomspace(1e-2, 1e-9, 60)]
    assert all(a > b for a, b in zip(radii, radii[1:]))


def test_compare_on_hand_computed_counts() -> None:
    # stable 100/1000, candidate 130/1000. Variance rates with half a success and half a failure:
    # 100.5/1001 = 0.100400 -> 9.031952e-5; 130.5/1001 = 0.130370 -> 1.133734e-4; sum 2.036929e-4.
    # Pooled: 230.5/2001 = 0.115192 -> 0.115192 * 0.884808 * 2/1000 = 2.038462e-4, the larger, so V.
    c = compare(counts(1000, 100, 1000, 130), tau=0.02, alpha=0.05)
    assert c.difference == pytest.approx(0.03)
    assert c.variance == pytest.approx(2.038462278e-4, rel=1e-8)
    # ln Lambda = 1/2 ln(V / (V + 4e-4)) + 0.03^2 * 4e-4 / (2 V (V + 4e-4)) = 0.919347 (Lambda 2.51 < 20)
    assert c.log_lambda == pytest.approx(0.9193467044, rel=1e-8)
    assert not c.rejects
    # radius sqrt(V (V + 4e-4) / 4e-4 * (2 ln 20 + ln((V + 4e-4) / V))) = 0.0466683
    assert (c.lower, c.upper) == pytest.approx((0.03 - 0.0466682969, 0.03 + 0.0466682969), rel=1e-8)
    # lift = 0.03 / 0.1, its interval the sequence over the control rate (approximate)
    assert (c.lift, c.lift_lower, c.lift_upper) == pytest.approx((0.3, -0.166682969, 0.766682969), rel=1e-8)


def test_srm_bayes_factor_on_a_hand_computed_case() -> None:
    # 3 stable, 7 candidate, share 1/2, concentration 2 (a uniform prior): B(8, 4) / B(1, 1) = 7! 3! / 11! = 1/1320,
    # over 0.5^10 = 1/1024: BF = 1024/1320.
    assert math.exp(srm_log_bayes_factor(3, 7, 0.5, concentration=2)) == pytest.approx(1024 / 1320, rel=1e-12)
    assert srm_log_bayes_factor(0, 0, 0.3) == 0.0, "no exposures: no evidence"


@pytest.mark.parametrize(("control", "candidate", "share", "k"), [(3, 7, 0.5, 2.0), (500, 500, 0.5, 100.0), (4500, 5500, 0.5, 100.0),
                                                                  (9000, 1000, 0.1, 100.0), (123456, 14321, 0.1, 37.5), (10, 0, 0.95, 1000.0)])
def test_srm_bayes_factor_matches_scipy_betaln(control: int, candidate: int, share: float, k: float) -> None:
    a, b = k * share, k * (1 - share)
    want = betaln(a + candidate, b + control) - betaln(a, b) - candidate * math.log(share) - control * math.log(1 - share)
    assert srm_log_bayes_factor(control, candidate, share, k) == pytest.approx(float(want), rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------- guards
@pytest.mark.parametrize(("name", "c"), [
    ("no exposures", counts(0, 0, 0, 0)),
    ("no successes anywhere", counts(1000, 0, 1000, 0)),
    ("all successes everywhere", counts(1000, 1000, 1000, 1000)),
])
def test_degenerate_counts_continue_with_finite_numbers(name: str, c: Counts) -> None:
    d = decide(c, SPEC, 10)
    assert d.outcome == "continue", d.reason
    assert d.comparison.variance > 0 and math.isfinite(d.comparison.lower) and math.isfinite(d.comparison.upper)
    json.dumps(to_status(d), allow_nan=False)


def test_a_candidate_that_never_succeeds_is_worse_quickly() -> None:
    d = decide(counts(200, 20, 200, 0), SPEC, 10)
    assert d.outcome == "worse", d.reason
    assert d.comparison.lift == pytest.approx(-1.0)


def test_below_min_exposures_waits_whatever_the_difference() -> None:
    d = decide(counts(99, 0, 99, 99), SPEC, 10)
    assert d.comparison.rejects, "the test alone would decide"
    assert d.outcome == "continue" and "waiting for 100 exposures per arm: stable 99, candidate 99" in d.reason


@pytest.mark.parametrize("action", ["rollback", "promote", "pause"])
def test_max_duration_reached_is_no_decision_with_the_configured_action(action: str) -> None:
    spec = replace(SPEC, on_no_decision=action)
    d = decide(counts(5000, 500, 5000, 510), spec, 3600)
    assert (d.outcome, d.on_no_decision) == ("no-decision", action)
    assert "no decision after 3600 s (max_duration_seconds 3600)" in d.reason and f"on_no_decision: {action}" in d.reason
    assert to_status(d)["onNoDecision"] == action
    assert "onNoDecision" not in to_status(decide(counts(5000, 500, 5000, 510), spec, 3599))


def test_max_exposures_reached_is_no_decision() -> None:
    d = decide(counts(5000, 500, 5000, 510), replace(SPEC, max_exposures=10_000), 60)
    assert d.outcome == "no-decision" and "10000 exposures (max_exposures 10000)" in d.reason


def test_the_limit_with_too_few_exposures_says_so() -> None:
    d = decide(counts(40, 4, 50, 5), SPEC, 4000)
    assert d.outcome == "no-decision" and "fewer than min_exposures=100 in an arm (stable 40, candidate 50)" in d.reason


def test_a_decisive_look_at_the_limit_still_decides() -> None:
    d = decide(counts(5000, 500, 5000, 650), SPEC, 3600)
    assert d.outcome == "better" and d.on_no_decision is None


def test_a_sample_ratio_mismatch_outranks_a_decision() -> None:
    c = counts(4000, 400, 6000, 900)
    assert compare(c, SPEC.minimum_effect, SPEC.alpha).rejects
    d = decide(c, SPEC, 60)
    assert d.outcome == "sample-ratio-mismatch"
    assert "the candidate has 6000 of 10000 exposures (60.00%), configured 50.00%" in d.reason


@pytest.mark.parametrize(("n", "x"), [(10, 11), (-1, 0), (10, -1)])
def test_impossible_counts_are_refused(n: int, x: int) -> None:
    with pytest.raises(ValueError, match="successes=.* must be between 0 and exposures="):
        counts(100, 10, n, x)


@pytest.mark.parametrize("change", [{"alpha": 0.0}, {"alpha_srm": 1.0}, {"candidate_share": 1.0}, {"minimum_effect": 0.0},
                                    {"minimum_effect": 1.5}, {"max_duration_seconds": 0.0}, {"min_exposures": 0},
                                    {"max_exposures": 150}, {"srm_concentration": 0.0}])
def test_impossible_specs_are_refused(change: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(change))):
        replace(SPEC, **change)


def test_status_is_json_safe_rounded_and_names_the_numbers() -> None:
    d = decide(counts(1_000_000, 100_000, 1_000_000, 200_000), SPEC, 90)
    assert d.comparison.log_lambda > 709, "far past what exp() holds"
    s = to_status(d)
    text = json.dumps(s, allow_nan=False)
    assert s["outcome"] == "better" and "Lambda e^" in d.reason
    assert s["control"] == {"exposures": 1_000_000, "successes": 100_000, "rate": 0.1}
    assert s["difference"] == 0.1 and s["lift"] == 1.0 and s["threshold"] == 20.0 and s["confidenceLevel"] == 0.95
    assert s["liftInterval"] == {"lower": pytest.approx(0.9815, abs=1e-4), "upper": pytest.approx(1.0185, abs=1e-4), "approximate": True}
    assert len(text) < 2000
    rounded = to_status(decide(counts(1234, 137, 1250, 171), SPEC, 30.123456))
    assert rounded["elapsedSeconds"] == 30.123 and rounded["difference"] == round(171 / 1250 - 137 / 1234, 6)
    assert to_status(decide(counts(500, 0, 500, 3), SPEC, 1))["lift"] is None, "no lift over a control rate of 0"


def test_swapping_the_arms_swaps_better_and_worse() -> None:
    for c in (counts(3000, 300, 3000, 390), counts(800, 80, 800, 40)):
        there, back = decide(c, SPEC, 60), decide(Counts(c.candidate, c.control), SPEC, 60)
        assert {there.outcome, back.outcome} == {"better", "worse"}
        assert there.comparison.log_lambda == pytest.approx(back.comparison.log_lambda)


# ---------------------------------------------------------------- no hidden state; does a verdict flip?
def test_a_decision_depends_on_the_current_counts_alone() -> None:
    stream = simulate(POWER[0], 1, SEED)
    looks = [(stream.counts(0, j), 30.0 * (j + 1)) for j in range(POWER[0].looks)]
    forward = [decide(c, SPEC, t) for c, t in looks]
    shuffled = list(range(len(looks)))
    random.Random(1).shuffle(shuffled)
    again = {j: decide(looks[j][0], SPEC, looks[j][1]) for j in shuffled}
    assert forward == [again[j] for j in range(len(looks))]


@settings(max_examples=200, deadline=None)
@given(n_a=st.integers(100, 2000), n_b=st.integers(100, 2000), r_a=st.floats(0, 1), r_b=st.floats(0, 1))
def test_on_fixed_rates_the_verdict_only_moves_from_continue_to_the_side_of_the_difference(n_a: int, n_b: int, r_a: float, r_b: float) -> None:
    """More data at the same observed rates narrows the sequence around the same difference, so the verdict
    goes continue -> better (or worse) and never crosses over: monotone by construction (the radius grows
    with V, and V falls as the counts grow). On a real stream the rates move; see the test below."""
    x_a, x_b = round(r_a * n_a), round(r_b * n_b)
    spec = replace(SPEC, candidate_share=n_b / (n_a + n_b), max_duration_seconds=1e9)
    seen: list[Outcome] = []
    radii = []
    for k in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89):
        d = decide(counts(k * n_a, k * x_a, k * n_b, k * x_b), spec, 0)
        seen.append(d.outcome)
        radii.append(d.comparison.upper - d.comparison.difference)
    assert all(a > b for a, b in zip(radii, radii[1:])), radii
    assert "sample-ratio-mismatch" not in seen
    side = "better" if x_b / n_b > x_a / n_a else "worse"
    decided = [o != "continue" for o in seen]
    assert decided == sorted(decided), f"once decided, stays decided: {seen}"
    assert set(seen) <= {"continue", side}, seen


# ---------------------------------------------------------------- simulations
@pytest.fixture(scope="module")
def every_look() -> Looks:
    """decide() at every look of every simulated stream, per scenario, and each stream's first decision."""
    out = {}
    for s in (AA, AA_RARE, *POWER):
        stream = simulate(s, SIMS, SEED)
        every = outcomes(stream, s.spec())
        firsts, exposures = first_decisions(stream, every)
        out[s.name] = (every, firsts, exposures)
    return out


def false_positives(firsts: list[Outcome]) -> int:
    return sum(o not in ("continue", "no-decision") for o in firsts)


@pytest.mark.parametrize("scenario", [AA, AA_RARE], ids=["p0.1-even-split", "p0.01-10pct-candidate"])
def test_aa_false_positive_rate_is_under_alpha_at_every_look(scenario: Scenario, every_look: Looks) -> None:
    _, firsts, _ = every_look[scenario.name]
    assert len(firsts) >= 2000
    fp = false_positives(firsts)
    _, upper = binomial_interval(fp, len(firsts))
    # The claim is <= alpha; the exact 95% upper bound of the observed rate must be under it, so
    # simulation error can only make this stricter. Observed (seed 0): 27/2000 = 0.0135 and 0/2000.
    assert upper <= ALPHA, f"{fp}/{len(firsts)} false decisions, 95% upper bound {upper:.4f} > alpha {ALPHA}"


@pytest.mark.parametrize("scenario", [AA, AA_RARE], ids=["p0.1-even-split", "p0.01-10pct-candidate"])
def test_a_fixed_horizon_z_test_peeking_at_the_same_looks_is_far_above_alpha(scenario: Scenario) -> None:
    rejected = int(peeking_z(simulate(scenario, SIMS, SEED)).sum())
    lower, _ = binomial_interval(rejected, SIMS)
    assert rejected / SIMS > 0.1 and lower > ALPHA, f"peeking z-test: {rejected}/{SIMS}"  # observed 0.276 and 0.215


@pytest.mark.parametrize(("scenario", "want", "power_floor", "median_ceiling"), [
    (POWER[0], "better", 0.8, 5000),   # +20%: observed 0.953, median 4000 per arm
    (POWER[1], "better", 0.99, 2000),  # +40%: observed 0.9995, median 1400
    (POWER[2], "worse", 0.8, 5000),    # -20%: observed 0.9805, median 3400
], ids=["plus20pct", "plus40pct", "minus20pct"])
def test_power_and_exposures_to_decision(scenario: Scenario, want: str, power_floor: float, median_ceiling: int,
                                         every_look: Looks) -> None:
    """Within 50 looks of 400 users (10,000 exposures per arm), tau = 0.02: the right verdict, and soon."""
    _, firsts, exposures = every_look[scenario.name]
    tally = Counter(firsts)
    power = tally[want] / len(firsts)
    wrong = tally["worse" if want == "better" else "better"] / len(firsts)
    assert power >= power_floor, tally
    assert float(np.median(exposures)) <= median_ceiling, "median exposures per arm to a decision (no decision counted at the maximum)"
    assert wrong <= ALPHA / 2, f"the wrong direction {wrong}: a miss of the confidence sequence, at most alpha"


def test_a_verdict_rarely_reverses_on_the_same_stream(every_look: Looks) -> None:
    """decide() keeps no history, so a stream monitored past its first verdict could, in principle, say
    "better" at one look and "worse" at a later one: two disjoint confidence sequences, one of which
    misses the truth, so it happens at most alpha of the time. (The engine stops at the first verdict, so
    it never acts on both.) Every look of the +20%, +40%, -20% and A/A streams, continued past the first verdict."""
    reversed_ = total = 0
    for every, _, _ in every_look.values():
        for row in every:
            verdicts = [o for o in row if o in ("better", "worse")]
            reversed_ += len(set(verdicts)) > 1
            total += 1
    assert reversed_ / total <= ALPHA, f"{reversed_} of {total} streams said both better and worse"


@pytest.mark.parametrize(("share", "alpha"), [(0.5, 0.001), (0.5, 0.05), (0.1, 0.05)], ids=["even-default", "even-0.05", "10pct-0.05"])
def test_srm_false_alarm_rate_is_under_alpha_srm_at_every_look(share: float, alpha: float) -> None:
    """100 looks of 100 exposures on a correct split. At 0.05 the exact upper bound must be under alpha
    (observed 0.025 and 0.0265); at the default 0.001, 2,000 runs cannot bound the rate that tightly, so
    the observed rate must be (observed 0)."""
    first = srm_first_alarm(SIMS, SEED, share, share, alpha)
    alarms = int(np.isfinite(first).sum())
    _, upper = binomial_interval(alarms, SIMS)
    assert alarms / SIMS <= alpha
    if alpha >= 0.01:
        assert upper <= alpha, f"{alarms}/{SIMS}, 95% upper bound {upper:.4f}"


def test_srm_finds_a_45_55_split_of_a_50_50_configuration() -> None:
    """Default alpha_srm (0.001) and concentration (100): found within 5,000 exposures in >= 99% of runs
    (observed 99.9%, median 1,700, 95th percentile 3,300)."""
    first = srm_first_alarm(SIMS, SEED, 0.5, 0.55, 0.001)
    assert (first <= SRM_WITHIN).mean() >= 0.99
    assert float(np.median(first)) <= 2000


def test_sample_ratio_reports_the_observed_share() -> None:
    s = sample_ratio(counts(4500, 0, 5500, 0), 0.5, 0.001)
    assert s.observed_share == 0.55 and s.expected_share == 0.5 and s.mismatch
