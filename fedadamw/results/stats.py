"""Confidence intervals over seeds: the one Student-t interval that tables and figures use."""

from __future__ import annotations

import math
from collections.abc import Iterable
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
