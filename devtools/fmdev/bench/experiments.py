"""Simulations of the experiment step's statistics (fmop.rollout.sequential): false positives under
continuous monitoring, power, exposures to a decision, and the sample-ratio-mismatch check.

    python -m fmdev.bench.experiments [--sims 2000] [--seed 0]

Prints a markdown table; every number is a count over seeded simulations, so it is the same on any
machine. Each simulated experiment is a stream of looks: at each look `per_look` new users arrive,
each goes to the candidate with the configured share (so the arms are unequal and vary), and each
exposure succeeds with its arm's rate. `decide` is called on the cumulative counts at EVERY look and
the first outcome other than "continue" ends the experiment, as the rollout engine does. The
"peeking" baseline is the fixed-horizon two-proportion z-test (pooled variance, two-sided alpha)
applied at the same looks. tests/unit/test_sequential.py asserts on these same simulations.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from fmop.rollout.sequential import Arm, Counts, ExperimentSpec, Outcome, decide, srm_log_bayes_factor

IntArray = npt.NDArray[np.int64]
SECONDS_PER_LOOK = 30.0
ALPHA = 0.05
ALPHA_SRM = 0.001  # ExperimentSpec's default


@dataclass(frozen=True)
class Scenario:
    """A simulated experiment: true rates, the configured candidate share, looks, and the spec's tau."""

    name: str
    p_control: float
    p_candidate: float
    share: float = 0.5
    looks: int = 20
    per_look: int = 400  # users arriving between two looks, both arms together
    tau: float = 0.02  # ExperimentSpec.minimum_effect: +20% relative on a 10% rate

    def spec(self, alpha: float = ALPHA) -> ExperimentSpec:
        return ExperimentSpec(minimum_effect=self.tau, max_duration_seconds=self.looks * SECONDS_PER_LOOK, alpha=alpha,
                              candidate_share=self.share)


AA = Scenario("A/A, p = 0.1, 50/50", 0.1, 0.1)
AA_RARE = Scenario("A/A, p = 0.01, candidate share 10%", 0.01, 0.01, share=0.1, per_look=200, tau=0.01)
POWER = (Scenario("+20% (0.10 -> 0.12)", 0.1, 0.12, looks=50), Scenario("+40% (0.10 -> 0.14)", 0.1, 0.14, looks=50),
         Scenario("-20% (0.10 -> 0.08)", 0.1, 0.08, looks=50))
SRM_LOOKS, SRM_PER_LOOK, SRM_WITHIN = 100, 100, 5000


@dataclass(frozen=True)
class Stream:
    """Cumulative counts per simulation (rows) and look (columns)."""

    n_control: IntArray
    x_control: IntArray
    n_candidate: IntArray
    x_candidate: IntArray

    def counts(self, sim: int, look: int) -> Counts:
        return Counts(Arm(int(self.n_control[sim, look]), int(self.x_control[sim, look])),
                      Arm(int(self.n_candidate[sim, look]), int(self.x_candidate[sim, look])))


def simulate(scenario: Scenario, sims: int, seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    n_b = rng.binomial(scenario.per_look, scenario.share, size=(sims, scenario.looks))
    n_a = scenario.per_look - n_b
    x_a, x_b = rng.binomial(n_a, scenario.p_control), rng.binomial(n_b, scenario.p_candidate)
    return Stream(*(np.cumsum(a, axis=1) for a in (n_a, x_a, n_b, x_b)))


def outcomes(stream: Stream, spec: ExperimentSpec) -> list[list[Outcome]]:
    """decide() at every look of every simulation (looks after the first decision included)."""
    sims, looks = stream.n_control.shape
    return [[decide(stream.counts(i, j), spec, (j + 1) * SECONDS_PER_LOOK).outcome for j in range(looks)] for i in range(sims)]


def first_decisions(stream: Stream, every: list[list[Outcome]]) -> tuple[list[Outcome], npt.NDArray[np.float64]]:
    """Per simulation: the first outcome other than "continue" (the engine stops there) and the exposures
    per arm, (n_A + n_B) / 2, at that look."""
    firsts: list[Outcome] = []
    exposures = np.empty(len(every))
    for i, row in enumerate(every):
        j = next((j for j, o in enumerate(row) if o != "continue"), len(row) - 1)
        firsts.append(row[j])
        exposures[i] = (stream.n_control[i, j] + stream.n_candidate[i, j]) / 2
    return firsts, exposures


def peeking_z(stream: Stream, alpha: float = ALPHA) -> npt.NDArray[np.bool_]:
    """The fixed-horizon pooled two-proportion z-test, |z| >= z_(1 - alpha/2), rejecting at ANY look."""
    n_a, n_b = stream.n_control.astype(float), stream.n_candidate.astype(float)
    p_a, p_b = stream.x_control / np.maximum(n_a, 1), stream.x_candidate / np.maximum(n_b, 1)
    pooled = (stream.x_control + stream.x_candidate) / np.maximum(n_a + n_b, 1)
    se = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(n_a, 1) + 1 / np.maximum(n_b, 1)))
    z = np.divide(p_b - p_a, se, out=np.zeros_like(se), where=se > 0)
    critical = NormalDist().inv_cdf(1 - alpha / 2)
    reject: npt.NDArray[np.bool_] = (np.abs(z) >= critical).any(axis=1)
    return reject


def srm_first_alarm(sims: int, seed: int, share: float, true_share: float, alpha: float,
                    looks: int = SRM_LOOKS, per_look: int = SRM_PER_LOOK) -> npt.NDArray[np.float64]:
    """Total exposures at the first look where the SRM Bayes factor reaches 1/alpha; inf if it never does."""
    rng = np.random.default_rng(seed)
    candidate = np.cumsum(rng.binomial(per_look, true_share, size=(sims, looks)), axis=1)
    threshold = math.log(1 / alpha)
    first = np.full(sims, np.inf)
    for i in range(sims):
        for j in range(looks):
            total = (j + 1) * per_look
            if srm_log_bayes_factor(total - int(candidate[i, j]), int(candidate[i, j]), share) >= threshold:
                first[i] = total
                break
    return first


def binomial_interval(k: int, n: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 95% interval of a rate k/n."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def _rate(k: int, n: int) -> str:
    lo, hi = binomial_interval(k, n)
    return f"{k / n:.4f} [{lo:.4f}, {hi:.4f}]"


def report(sims: int, seed: int) -> str:
    rows = ["| check | scenario | result |", "|---|---|---|"]
    for s in (AA, AA_RARE):
        stream = simulate(s, sims, seed)
        firsts, _ = first_decisions(stream, outcomes(stream, s.spec()))
        fp = sum(o not in ("continue", "no-decision") for o in firsts)
        rows.append(f"| A/A false positives, mSPRT (alpha {ALPHA}) | {s.name}, {s.looks} looks x {s.per_look} users, tau {s.tau} | "
                    f"{_rate(fp, sims)} |")
        peek = int(peeking_z(stream).sum())
        rows.append(f"| A/A false positives, z-test peeking at every look | {s.name}, same streams | {_rate(peek, sims)} |")
    for s in POWER:
        stream = simulate(s, sims, seed)
        firsts, exposures = first_decisions(stream, outcomes(stream, s.spec()))
        want: Outcome = "better" if s.p_candidate > s.p_control else "worse"
        wrong: Outcome = "worse" if want == "better" else "better"
        tally = Counter(firsts)
        rows.append(f"| power: '{want}' within {s.looks * s.per_look // 2} per arm | {s.name}, {s.looks} looks x {s.per_look} users, "
                    f"tau {s.tau} | {_rate(tally[want], sims)}; median {np.median(exposures):.0f} exposures per arm to decision "
                    f"(no decision counted at the maximum); wrong direction {tally[wrong]} |")
    total = SRM_LOOKS * SRM_PER_LOOK
    for share, alpha in ((0.5, ALPHA_SRM), (0.5, 0.05), (0.1, 0.05)):
        alarms = int(np.isfinite(srm_first_alarm(sims, seed, share, share, alpha)).sum())
        rows.append(f"| SRM false alarms (alpha_srm {alpha}) | correct split, candidate share {share:.0%}, {SRM_LOOKS} looks x "
                    f"{SRM_PER_LOOK} exposures | {_rate(alarms, sims)} |")
    first = srm_first_alarm(sims, seed, 0.5, 0.55, ALPHA_SRM)
    detected = int((first <= SRM_WITHIN).sum())
    rows.append(f"| SRM detection (alpha_srm {ALPHA_SRM}) | configured 50/50, observed 45/55, looks of {SRM_PER_LOOK} | "
                f"within {SRM_WITHIN} exposures {_rate(detected, sims)}; median {np.median(first):.0f}, "
                f"95th percentile {np.quantile(first, 0.95):.0f} (of at most {total}) |")
    header = (f"Settings: alpha {ALPHA}, alpha_srm {ALPHA_SRM} (and 0.05 where stated), SRM concentration 100, min_exposures 100 per arm, "
              f"a look every {SECONDS_PER_LOOK:g} s (max duration = looks x {SECONDS_PER_LOOK:g} s), tau = minimum_effect (absolute), "
              f"{sims} simulations per row, seed {seed} (numpy default_rng). Rates with exact 95% binomial intervals.")
    return header + "\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmdev.bench.experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("--sims", type=int, default=2000, help="simulated experiments per row")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    start = time.monotonic()
    print(report(a.sims, a.seed))
    print(f"\n({time.monotonic() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
