"""How the report writes numbers: plain text, no markup (the templates escape and place it)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def fmt(x, digits: int = 3) -> str:
    """A value of model.json or a metric: ``–`` when missing, ``yes``/``no``, ints with separators, floats fixed."""
    if x is None:
        return "–"
    if isinstance(x, bool | np.bool_):
        return "yes" if x else "no"
    if isinstance(x, int | np.integer):
        return f"{int(x):,}"
    if isinstance(x, float | np.floating):
        if not np.isfinite(x):
            return "–"
        return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def plus_minus(summary: dict, key: str) -> str:
    """``'0.812 ± 0.021'`` from ``summary[key_mean]`` and ``summary[key_std]``."""
    mean, std = summary.get(f"{key}_mean"), summary.get(f"{key}_std")
    if not isinstance(mean, int | float):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if isinstance(std, int | float) else f"{mean:.3f}"


def median_iqr(s: pd.Series, digits: int = 1) -> str:
    """``'62.0 [51.0–74.0]'``: median and interquartile range."""
    s = pd.to_numeric(s, errors="coerce").dropna()
    if s.empty:
        return "–"
    q1, q2, q3 = s.quantile([0.25, 0.5, 0.75])
    return f"{q2:.{digits}f} [{q1:.{digits}f}–{q3:.{digits}f}]"


def short_num(x) -> str:
    """A measurement to three significant digits (thousands separated above 1,000), ``–`` when missing."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    if not np.isfinite(x):
        return "–"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def ordinal(x: float) -> str:
    """``21`` -> ``'21st'``."""
    n = int(round(x))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def signed_interval(v) -> str:
    """A stored ``[low, high]`` interval of a difference, signed: ``'[+0.010, +0.050]'``."""
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
        return f"[{v[0]:+.3f}, {v[1]:+.3f}]"
    return "–"


def percent(share: float) -> str:
    """A share of crops, under 1% with one decimal so that one crop is never ``'0%'``.

    >>> percent(0.05), percent(1 / 135), percent(0.0)
    ('5%', '0.7%', '0%')
    """
    return f"{share:.0%}" if share >= 0.01 or share == 0 else f"{share:.1%}"
