"""Claim verdicts of ``report`` on scripted results: holds, fails, tie within noise, one seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from torchopt_survey.experiments.report.results import claims_markdown, group_runs, summarize
from torchopt_survey.experiments.report.stats import claim_verdict, pair_test

WINNERS, LOSERS = ("adagrad", "adam"), ("momentum", "nag")


def _result(optimizer: str, seed: int, acc: float, variant: str = "mnist-minibatch") -> dict:
    """A finished run as ``result.json`` holds it (only what the report reads)."""
    return {
        "spec": {"experiment": "mnist", "variant": variant, "optimizer": optimizer,
                 "seed": seed, "epochs": 2},
        "history": {"test/accuracy": [0.5, acc], "train/loss_epoch": [1.0, 0.5]},
        "wall_time_s": 1.0,
    }  # fmt: skip


def _rows(accuracies: dict[str, Sequence[float]]) -> list[dict[str, Any]]:
    """Scripted final test accuracies per optimizer (one per seed) -> summary rows."""
    runs = [_result(opt, seed, acc) for opt, accs in accuracies.items()
            for seed, acc in enumerate(accs)]  # fmt: skip
    return summarize(group_runs(runs))


def _verdict(accuracies: dict[str, Sequence[float]]) -> tuple[str, str]:
    res = claim_verdict(_rows(accuracies), WINNERS, LOSERS, "final_test_accuracy")
    assert res is not None
    return res


def test_a_claim_that_clearly_holds_is_confirmed() -> None:
    verdict, evidence = _verdict({
        "adagrad": [0.950, 0.952, 0.948], "adam": [0.940, 0.942, 0.939],
        "momentum": [0.900, 0.903, 0.899], "nag": [0.905, 0.901, 0.903],
    })  # fmt: skip
    assert verdict == "confirmed"
    assert evidence.startswith("4/4 pairs hold, 0 reversed, 0 within noise")


def test_a_claim_that_clearly_fails_is_not_confirmed() -> None:
    verdict, evidence = _verdict({
        "adagrad": [0.850, 0.852, 0.848], "adam": [0.840, 0.842, 0.839],
        "momentum": [0.900, 0.903, 0.899], "nag": [0.905, 0.901, 0.903],
    })  # fmt: skip
    assert verdict == "not confirmed"
    assert evidence.startswith("0/4 pairs hold, 4 reversed")


def test_a_tie_within_seed_noise_is_not_a_win() -> None:
    # every winner's mean is a little higher (the old rule, means only, said "confirmed"),
    # but the seeds spread over +-2 points: no pair differs significantly
    verdict, evidence = _verdict({
        "adagrad": [0.93, 0.90, 0.915], "adam": [0.89, 0.935, 0.92],
        "momentum": [0.91, 0.93, 0.895], "nag": [0.90, 0.925, 0.91],
    })  # fmt: skip
    assert verdict == "within noise"
    assert evidence.startswith("0/4 pairs hold, 0 reversed, 4 within noise")


def test_a_single_seed_cannot_decide() -> None:
    verdict, _ = _verdict({"adagrad": [0.99], "adam": [0.98], "momentum": [0.5], "nag": [0.6]})
    assert verdict == "cannot decide (one seed)"
    # one optimizer with a single seed is enough to have no spread to test against
    verdict, _ = _verdict({
        "adagrad": [0.950, 0.952], "adam": [0.940],
        "momentum": [0.900, 0.903], "nag": [0.905, 0.901],
    })  # fmt: skip
    assert verdict == "cannot decide (one seed)"


def test_partial_support_is_mostly_confirmed_or_mixed() -> None:
    clear_win = [0.950, 0.952, 0.948]
    noisy = [0.93, 0.88, 0.91]
    losers = {"momentum": [0.900, 0.903, 0.899], "nag": [0.905, 0.901, 0.903]}
    # adagrad beats both, adam is within noise of both: 2 of 4 pairs hold
    verdict, evidence = _verdict({"adagrad": clear_win, "adam": noisy, **losers})
    assert (verdict, evidence[:16]) == ("mixed", "2/4 pairs hold, ")
    res = claim_verdict(
        _rows({"adagrad": clear_win, "adam": clear_win, "amsgrad": noisy, **losers}),
        ("adagrad", "adam", "amsgrad"), LOSERS, "final_test_accuracy",
    )
    assert res is not None and res[0] == "mostly confirmed" and res[1].startswith("4/6 pairs")


def test_pair_test_is_welchs_t_test_over_seeds() -> None:
    from scipy.stats import ttest_ind

    a, b = [0.93, 0.90, 0.915, 0.92], [0.91, 0.93, 0.895]
    rows = {r["optimizer"]: r for r in _rows({"adam": a, "nag": b})}
    sign, p = pair_test(rows["adam"], rows["nag"], "final_test_accuracy")
    assert sign == 1
    assert p == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)


def test_claims_table_carries_the_verdict_and_names_the_test() -> None:
    rows = _rows({
        "adagrad": [0.950, 0.952, 0.948], "amsgrad": [0.951, 0.949, 0.95],
        "adam": [0.940, 0.942, 0.939], "momentum": [0.900, 0.903, 0.899],
        "nag": [0.905, 0.901, 0.903], "rmsprop": [0.80, 0.81, 0.805],
    })  # fmt: skip
    text = claims_markdown(rows)
    (line,) = [ln for ln in text.splitlines() if "beat Momentum/NAG/RMSProp" in ln]
    assert "| **confirmed** | 9/9 pairs hold" in line
    assert "Welch's t-test" in text and "p < 0.05" in text
