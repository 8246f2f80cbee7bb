"""Verdicts on costs to a target come from a censoring-aware rank test (report.stats.cost_test),
checked against scipy directly, and the second-order claims use it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from scipy.stats import mannwhitneyu, ttest_ind

from torchopt_survey.experiments.report.second_order import claims, summarize_to_target
from torchopt_survey.experiments.report.stats import (
    MIN_SEEDS,
    censor,
    cost_test,
    mean_test,
)

WORST = 1e9  # "not reached", independently of the module's own choice of a worst value


def _side(costs: list[float | None], budget: float) -> list[tuple[float | None, float]]:
    return [(c, budget) for c in costs]


def test_not_reached_ranks_worst_instead_of_being_dropped() -> None:
    # a: 4 fast seeds and 4 that never reach; b: 8 slower seeds that all reach
    a = _side([1, 2, 3, 4, None, None, None, None], 20)
    b = _side([5, 6, 7, 8, 9, 10, 11, 12], 20)
    res = cost_test(a, b)
    expected = mannwhitneyu([1, 2, 3, 4] + [WORST] * 4, list(range(5, 13)),
                            alternative="two-sided").pvalue
    assert res.p == pytest.approx(float(expected), rel=1e-12)
    assert res.verdict == "within noise" and expected >= 0.05
    # dropping the unreached seeds would have called a significantly lower
    dropped = mannwhitneyu([1, 2, 3, 4], list(range(5, 13)), alternative="two-sided").pvalue
    assert dropped < 0.05
    assert (res.reached_a, res.seeds_a, res.reached_b, res.seeds_b) == (4, 8, 8, 8)


@pytest.mark.parametrize("flip", [False, True])
def test_direction_and_p_match_scipy(flip: bool) -> None:
    fast = _side([1, 2, 2, 3, 4, 5, 5, None], 30)
    slow = _side([6, 7, 9, 11, 12, 15, 20, 25], 30)
    a, b = (slow, fast) if flip else (fast, slow)
    res = cost_test(a, b)
    xa = [WORST if c is None else c for c, _ in a]
    xb = [WORST if c is None else c for c, _ in b]
    assert res.p == pytest.approx(float(mannwhitneyu(xa, xb, alternative="two-sided").pvalue))
    assert res.p < 0.05
    assert res.verdict == ("higher" if flip else "lower")


def test_common_budget_censors_the_longer_runs() -> None:
    # a's runs stopped after 10 iterations (one seed short of the target); b ran 100 and
    # reached it at 12..20: past a's budget nobody can say a is slower, so both are censored
    a = _side([3, 4, 5, 6, None], 10)
    b = _side([12, 14, 16, 18, 20], 100)
    ca, cb, horizon = censor(a, b)
    assert horizon == 10 and cb == [math.inf] * 5 and ca[:4] == [3, 4, 5, 6]
    res = cost_test(a, b)
    assert res.verdict == "lower" and res.reached_b == 0 and res.horizon == 10
    expected = mannwhitneyu([3, 4, 5, 6, WORST], [WORST] * 5, alternative="two-sided").pvalue
    assert res.p == pytest.approx(float(expected))
    # without the common budget, a's unreached seed would rank below b's 12..20
    uncensored = mannwhitneyu([3, 4, 5, 6, WORST], [12, 14, 16, 18, 20],
                              alternative="two-sided").pvalue
    assert uncensored != pytest.approx(float(expected))


def test_cannot_decide() -> None:
    many = _side([5, 6, 7, 8, 9, 10], 50)
    few = _side([1.0] * (MIN_SEEDS - 1), 50)
    assert cost_test(few, many).verdict.startswith("cannot decide (fewer than")
    assert math.isnan(cost_test(few, many).p)
    # 3 against 3: even the most extreme outcome gives p = 0.1
    three = cost_test(_side([1, 2, 3], 50), _side([7, 8, 9], 50))
    assert three.verdict.startswith("cannot decide (3 vs 3 seeds")
    assert mannwhitneyu([1, 2, 3], [7, 8, 9], alternative="two-sided").pvalue >= 0.05
    nobody = cost_test(_side([None] * 4, 50), _side([None] * 5, 80))
    assert nobody.verdict.startswith("cannot decide (no seed reached")


def test_mean_test_is_welch() -> None:
    a, b = [1.0, 1.2, 0.9, 1.1], [2.0, 2.5, 1.9, 2.2]
    outcome, p = mean_test(a, b)
    welch = ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(float(welch.pvalue))  # pyright: ignore[reportAttributeAccessIssue]
    assert outcome == "lower" and mean_test(b, a)[0] == "higher"
    assert mean_test(a[:2], b)[0].startswith("cannot decide")


def _run(opt: str, reach_at: float, epochs: int = 10, seed: int = 0) -> dict[str, Any]:
    """A scripted Karate run whose training loss drops to 0.1 at iteration ``reach_at``."""
    loss = [1.0 - 0.01 * seed if i + 1 < reach_at else 0.1 for i in range(epochs)]
    return {"spec": {"experiment": "karate", "optimizer": opt, "epochs": epochs, "seed": seed},
            "history": {"train/loss": loss, "time/train_seconds": [0.1] * epochs}}


def _newton_row(newton: list[float], adam: list[float]) -> str:
    by_opt = {"adam": [_run("adam", r, seed=i) for i, r in enumerate(adam)],
              "newton": [_run("newton", r, seed=i) for i, r in enumerate(newton)]}
    (row,) = [line for line in claims({("karate", "karate-gcn"): summarize_to_target(by_opt)},
                                      []) if line.startswith("| Newton converges")]
    return row


def test_newton_verdict_from_the_rank_test_not_the_median() -> None:
    # Newton: 6 seeds at 2 iterations, 4 that never get there; Adam: every seed at 3.
    # Medians say 2 < 3 ("confirmed"); the rank test says within noise.
    inf = math.inf
    row = _newton_row([2, 2, 2, 2, 2, 2, inf, inf, inf, inf], [3] * 10)
    p = mannwhitneyu([2] * 6 + [WORST] * 4, [3] * 10, alternative="two-sided").pvalue
    assert p >= 0.05
    assert "| within noise |" in row and f"p = {p:.3g}" in row
    assert "reached 6/10 vs 10/10 seeds within 10" in row
    # every Newton seed at 2: significantly fewer
    assert "| **confirmed** |" in _newton_row([2] * 10, [3] * 10)
    assert "| **refuted** |" in _newton_row([5] * 5, [3, 3, 3, 4, 3])
    assert "cannot decide (fewer than" in _newton_row([2, 2], [3] * 10)
