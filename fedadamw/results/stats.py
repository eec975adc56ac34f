"""Confidence intervals and tests over seeds: the one Student-t interval that tables and figures
use, the paired t-test's p-value and Holm's adjustment for testing many differences at once."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

CI_LEVEL = 0.95


def t_half_width(std: np.ndarray, n: np.ndarray, level: float = CI_LEVEL) -> np.ndarray:
    """Half-width t_{(1+level)/2, n−1} · s / √n per entry; NaN where n < 2."""
    std = np.asarray(std, dtype=float)
    n = np.asarray(n, dtype=float)
    quantile = np.full(n.shape, np.nan)
    several = n >= 2
    # stdtrit is Student's t quantile function (scipy.stats' t.ppf, at half the import cost).
    quantile[several] = special.stdtrit(n[several] - 1, 0.5 + level / 2)
    return np.asarray(quantile * std / np.sqrt(np.maximum(n, 1)))


@dataclass(frozen=True)
class Interval:
    """A mean with its t-interval over `n` values (NaN bounds for one value)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "—"
        if self.n < 2:
            return f"{self.mean:+.4f} (n=1)"
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"


def t_interval(values: Iterable[float | None], level: float = CI_LEVEL) -> Interval:
    """Mean and Student-t interval of `values` (None and NaN dropped)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(t_half_width(np.asarray([x.std(ddof=1)]), np.asarray([len(x)]), level)[0])
    return Interval(mean, mean - half, mean + half, len(x))


def paired_t_pvalue(differences: Iterable[float | None]) -> float:
    """Two-sided p-value of the paired t-test that the mean difference is 0 (None/NaN dropped).

    NaN for fewer than two differences; with no spread at all, 1 if every difference is 0 and 0
    otherwise (the t statistic is 0/0 or ±inf).
    """
    x = np.asarray([v for v in differences if v is not None and not math.isnan(v)], dtype=float)
    if len(x) < 2:
        return math.nan
    sd = float(x.std(ddof=1))
    mean = float(x.mean())
    if sd == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(len(x)))
    # stdtr is Student's t CDF: 2·P(T ≤ −|t|) is the two-sided tail (scipy.stats' 2·t.sf(|t|)).
    return float(2.0 * special.stdtr(len(x) - 1, -abs(t)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of `pvalues` (NaN entries stay NaN and are not counted).

    With m finite p-values sorted p₍₁₎ ≤ … ≤ p₍ₘ₎, the adjusted p₍ᵢ₎ is
    max over j ≤ i of min(1, (m − j + 1)·p₍ⱼ₎): the family-wise error rate stays at most α
    when every adjusted p below α is called significant.
    """
    finite = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(finite, key=lambda i: pvalues[i])
    m = len(order)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


POWER = 0.8  # the power `detectable_difference` solves for
ALPHA = 0.05  # two-sided


def detectable_difference(
    differences: Iterable[float | None], power: float = POWER, alpha: float = ALPHA
) -> float:
    """The smallest |mean difference| a two-sided paired t-test at `alpha` detects with `power`,
    for as many seeds and the same per-seed SD as `differences` (None/NaN dropped).

    Exact for the paired t-test: the noncentrality δ√n/s at which the noncentral t
    (scipy.stats.nct, n − 1 degrees of freedom) exceeds ±t_{1−α/2} with probability `power`,
    solved by root finding. NaN for fewer than two differences or no spread.
    """
    x = np.asarray([v for v in differences if v is not None and not math.isnan(v)], dtype=float)
    if len(x) < 2 or float(x.std(ddof=1)) == 0.0:
        return math.nan
    from scipy import optimize, stats  # only here: scipy.stats is slow to import

    n, sd = len(x), float(x.std(ddof=1))
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))

    def shortfall(nc: float) -> float:
        # The far tail below −t is tiny for nc > 0; scipy returns NaN where it underflows.
        lower = float(np.nan_to_num(stats.nct.cdf(-crit, df, nc), nan=0.0))
        return float(stats.nct.sf(crit, df, nc)) + lower - power

    high = 1.0
    while shortfall(high) < 0:  # power rises with nc: bracket the root
        high *= 2
    nc = float(optimize.brentq(shortfall, 0.0, high, xtol=1e-10))
    return nc * sd / math.sqrt(n)
