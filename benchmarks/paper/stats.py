"""The study's statistics: differences paired by training seed, two-sided t-intervals and the smallest effect a
comparison can detect. Plain Python (scipy is not a dependency); the t quantiles are tested against tables.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

ALPHA = 0.05  # two-sided
POWER = 0.80


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularised_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for 0 ≤ x ≤ 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x: expected a value in [0, 1], got {x!r}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df: expected a positive number of degrees of freedom, got {df!r}")
    tail = 0.5 * regularised_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p: expected a probability in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference a two-sided one-sample (paired) t-test of ``n`` differences with standard
    deviation ``sd`` detects with probability ``power`` at level ``alpha``: (t_{1−α/2} + t_{power})·sd/√n, both
    quantiles at n − 1 degrees of freedom (the usual approximation to the noncentral t)."""
    if n < 2 or not sd == sd:
        return float("nan")
    df = n - 1
    return (t_quantile(1.0 - alpha / 2.0, df) + t_quantile(power, df)) * sd / math.sqrt(n)


def paired_difference(a: Sequence[Optional[float]], b: Sequence[Optional[float]], alpha: float = ALPHA,
                      power: float = POWER) -> dict:
    """a − b paired by position (the training seed: the same prompts and noise in both): the mean difference, its
    s.e., the two-sided (1 − α) t-interval, the detectable effect at ``power`` and the number of pairs. Pairs with
    a missing side are left out; with fewer than two pairs the interval and detectable effect are nan."""
    if len(a) != len(b):
        raise ValueError(f"b: expected one value per value of a ({len(a)}), got {len(b)}")
    diffs = [x - y for x, y in zip(a, b) if _number(x) and _number(y)]
    n = len(diffs)
    nan = float("nan")
    if not n:
        return {"mean": nan, "se": nan, "low": nan, "high": nan, "detectable": nan, "n": 0, "differences": []}
    mean = sum(diffs) / n
    if n < 2:
        return {"mean": mean, "se": nan, "low": nan, "high": nan, "detectable": nan, "n": 1, "differences": diffs}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(1.0 - alpha / 2.0, n - 1) * se
    return {"mean": mean, "se": se, "low": mean - half, "high": mean + half,
            "detectable": detectable_effect(sd, n, alpha, power), "n": n, "differences": diffs}


def verdict(diff: dict) -> str:
    """One phrase from a paired difference: its sign where the interval excludes 0, else 'no detectable change'."""
    if diff["n"] < 2:
        return "not testable (fewer than 2 paired seeds)"
    if diff["low"] > 0:
        return "higher (interval above 0)"
    if diff["high"] < 0:
        return "lower (interval below 0)"
    return "no detectable change (interval contains 0)"


def format_difference(diff: dict, digits: int = 4) -> str:
    """``+0.0123 [−0.0040, +0.0286], detectable 0.0310, n = 5``."""
    if diff["n"] == 0:
        return "not run"
    if diff["n"] < 2:
        return f"{diff['mean']:+.{digits}f} (one seed: no interval)"
    return (f"{diff['mean']:+.{digits}f} [{diff['low']:+.{digits}f}, {diff['high']:+.{digits}f}], detectable "
            f"{diff['detectable']:.{digits}f}, n = {diff['n']}")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and x == x
