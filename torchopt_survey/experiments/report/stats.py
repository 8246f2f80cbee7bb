"""The statistics every verdict uses: seed means, Welch's t-test, the claim rule, and how
numbers are shown (the bottom of the report layer)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
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


#: fewest seeds per side for a cost-to-target verdict
MIN_SEEDS = 3
RANK_TEST_NAME = (
    "Mann-Whitney U test (two-sided) over seeds on the cost to the target; a seed that did not "
    "reach the target within the common budget ranks worse than any that did (all such seeds "
    "tied)"
)

#: one seed: its cost to the target (None: not reached) and the cost its whole run spent
SeedCost = tuple[float | None, float]


@dataclass(frozen=True)
class CostTest:
    """The outcome of :func:`cost_test`: ``verdict`` is ``"lower"``, ``"higher"`` (side a's
    cost against side b's, significant at ``alpha``), ``"within noise"`` or
    ``"cannot decide (why)"``; ``p`` is nan when no test was made."""

    verdict: str
    p: float
    seeds_a: int
    seeds_b: int
    reached_a: int
    reached_b: int
    horizon: float

    @property
    def decided(self) -> bool:
        return not self.verdict.startswith("cannot decide")

    def evidence(self) -> str:
        """``p = …, reached 9/10 vs 10/10 seeds within …`` for a table cell."""
        p = "no test" if math.isnan(self.p) else f"p = {self.p:.3g}"
        budget = "" if math.isinf(self.horizon) else f" within {self.horizon:.4g}"
        return (f"{p}; reached {self.reached_a}/{self.seeds_a} vs "
                f"{self.reached_b}/{self.seeds_b} seeds{budget}")


def censor(a: Sequence[SeedCost], b: Sequence[SeedCost]) -> tuple[list[float], list[float],
                                                                   float]:
    """Both sides censored at one common budget: the smallest budget of any seed that did not
    reach the target (a seed of a shorter run cannot be said to be slower than one that
    reached the target later than that run stopped). Costs above the budget become ``inf``
    ("not reached"). Returns ``(a, b, budget)``; the budget is ``inf`` when every seed reached
    the target."""
    horizon = min((budget for cost, budget in (*a, *b) if cost is None), default=math.inf)

    def cut(side: Sequence[SeedCost]) -> list[float]:
        return [c if c is not None and c <= horizon else math.inf for c, _ in side]

    return cut(a), cut(b), horizon


def cost_test(a: Sequence[SeedCost], b: Sequence[SeedCost], alpha: float = ALPHA,
              min_seeds: int = MIN_SEEDS) -> CostTest:
    """Is side a's cost to a target lower or higher than side b's, over seeds, with seeds that
    never reach it? :func:`censor` at a common budget, then the rank test
    (``scipy.stats.mannwhitneyu``, two-sided; "not reached" ranks worst, tied).

    Cannot decide: fewer than ``min_seeds`` seeds on a side; no seed reached the target within
    the common budget; or so few seeds that no outcome could give p < ``alpha`` (the exact
    test's smallest p is 2 / C(n_a + n_b, n_a): 0.1 for 3 against 3).
    """
    from scipy.stats import mannwhitneyu

    ca, cb, horizon = censor(a, b)
    ra = sum(1 for c in ca if math.isfinite(c))
    rb = sum(1 for c in cb if math.isfinite(c))

    def result(verdict: str, p: float = math.nan) -> CostTest:
        return CostTest(verdict, p, len(ca), len(cb), ra, rb, horizon)

    if min(len(ca), len(cb)) < min_seeds:
        return result(f"cannot decide (fewer than {min_seeds} seeds on a side)")
    if ra == 0 and rb == 0:
        return result("cannot decide (no seed reached the target within the common budget)")
    best_p = 2.0 / math.comb(len(ca) + len(cb), len(ca))
    if best_p >= alpha:
        return result(f"cannot decide ({len(ca)} vs {len(cb)} seeds: p >= {best_p:.2g} "
                      "whatever the outcome)")
    # ranks only: "not reached" = one value above every reached cost
    worst = max((c for c in (*ca, *cb) if math.isfinite(c)), default=0.0) + 1.0
    xa = [c if math.isfinite(c) else worst for c in ca]
    xb = [c if math.isfinite(c) else worst for c in cb]
    if len(set(xa) | set(xb)) == 1:
        return result("within noise", 1.0)
    res = mannwhitneyu(xa, xb, alternative="two-sided")
    p = float(res.pvalue)
    if p >= alpha:
        return result("within noise", p)
    # U counts the pairs where a's cost is the higher (ties: 1/2)
    return result("higher" if float(res.statistic) > len(xa) * len(xb) / 2 else "lower", p)


def mean_test(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA,
              min_seeds: int = MIN_SEEDS) -> tuple[str, float]:
    """Welch's t-test over seeds of side a's values against side b's: ``("lower" | "higher" |
    "within noise" | "cannot decide (why)", p)``."""
    if min(len(a), len(b)) < min_seeds:
        return f"cannot decide (fewer than {min_seeds} seeds on a side)", math.nan
    p = welch_p(list(a), list(b))
    if math.isnan(p):
        return "cannot decide (no spread over seeds)", p
    if p >= alpha:
        return "within noise", p
    return ("lower" if mean_std(a)[0] < mean_std(b)[0] else "higher"), p
