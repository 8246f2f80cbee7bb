"""The statistics every verdict uses: seed means, Welch's t-test, the claim rule, and how
numbers are shown (the bottom of the report layer)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

#: significance level of every per-pair test
ALPHA = 0.05
TEST_NAME = "Welch's t-test (unequal variances, two-sided) over seeds"


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (nan without data, std 0 for one)."""
    vals = [float(x) for x in xs]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in vals) / (len(vals) - 1))


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided Welch t-test p-value (nan with fewer than 2 values per side or no spread)."""
    from scipy.stats import ttest_ind  # (scipy: imported when a verdict is made)

    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        # Near-identical seeds (a run stuck at chance) only make scipy warn about precision.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_ind(a, b, equal_var=False)
    return float(res.pvalue)  # pyright: ignore[reportAttributeAccessIssue]  # scipy: runtime field


def pair_test(a: dict[str, Any], b: dict[str, Any], key: str) -> tuple[int, float]:
    """Welch's t-test of row ``a`` against row ``b`` on the seeds behind ``key``'s mean/std.

    Returns ``(sign, p)``: sign +1/-1 when a's mean is higher/lower, 0 when equal. The test
    needs only each row's mean, std (ddof=1) and seed count, which is what the table keeps
    (``scipy.stats.ttest_ind_from_stats``: the same test as ``ttest_ind(equal_var=False)``).
    """
    from scipy.stats import ttest_ind_from_stats

    ma, mb = a[f"{key}_mean"], b[f"{key}_mean"]
    sign = (ma > mb) - (ma < mb)
    if sign == 0:
        return 0, 1.0
    _, p = ttest_ind_from_stats(
        ma, a[f"{key}_std"], a["seeds"], mb, b[f"{key}_std"], b["seeds"], equal_var=False
    )
    return sign, float(p) if math.isfinite(p) else 1.0


def claim_verdict(
    rows: Sequence[dict[str, Any]], winners: Sequence[str], losers: Sequence[str], key: str,
    alpha: float = ALPHA,
) -> tuple[str, str] | None:
    """Verdict on "every optimizer of ``winners`` beats every one of ``losers``" on ``key``.

    ``rows`` are :func:`summarize` rows (``seeds``, ``<key>_mean``, ``<key>_std``). A pair
    *holds* only when the winner's seed mean is higher **and** Welch's t-test over seeds gives
    p < ``alpha``; it is *reversed* when the loser is significantly higher, else *within noise*.
    Verdict: *confirmed* if every pair holds, *mostly confirmed* if >= 2/3 do, *mixed* if
    > 1/3 do; below that, *within noise* when no pair is reversed (the few pairs that hold do
    not carry the claim, and none contradicts it), else *not confirmed*. With fewer than 2
    seeds per optimizer there is no spread to test against: *cannot decide (one seed)*.
    Returns ``(verdict, evidence)``, or None without data.
    """
    by_name = {r["optimizer"]: r for r in rows if f"{key}_mean" in r}
    a = [o for o in winners if o in by_name]
    b = [o for o in losers if o in by_name]
    if not a or not b:
        return None
    pairs = [(w, l) for w in a for l in b]
    fmt = ", ".join(f"{o} {100 * by_name[o][f'{key}_mean']:.1f}" for o in a)
    fmt_b = ", ".join(f"{o} {100 * by_name[o][f'{key}_mean']:.1f}" for o in b)
    seeds = min(int(by_name[o]["seeds"]) for o in a + b)
    if seeds < 2:
        return "cannot decide (one seed)", f"no spread over seeds to test; {fmt} vs {fmt_b}"
    tests = [pair_test(by_name[w], by_name[l], key) for w, l in pairs]
    held = sum(1 for sign, p in tests if sign > 0 and p < alpha)
    reversed_ = sum(1 for sign, p in tests if sign < 0 and p < alpha)
    n = len(pairs)
    if held == n:
        verdict = "confirmed"
    elif held >= 2 / 3 * n:
        verdict = "mostly confirmed"
    elif held > n / 3:
        verdict = "mixed"
    elif reversed_ == 0:
        verdict = "within noise"
    else:
        verdict = "not confirmed"
    detail = (
        f"{held}/{n} pairs hold, {reversed_} reversed, {n - held - reversed_} within noise "
        f"(p < {alpha}, >= {seeds} seeds); {fmt} vs {fmt_b}"
    )
    return verdict, detail


def pm(mean: Any, std: Any, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` scaled (percent by default); ``-`` without a mean."""
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def fmt(v: Any) -> str:
    """A table cell: 6 significant digits, empty for None; commas in plain words become
    semicolons (CSV-safe)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v).replace(",", ";") if isinstance(v, str) and "," in v and "=" not in v \
        else str(v)
