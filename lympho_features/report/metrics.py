"""Performance figures the report computes from out-of-fold predictions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..model import calibration_table, choose_threshold


def calibration_bins(y_true, proba, n_bins: int = 10) -> pd.DataFrame:
    """Reliability table: per equal-width probability bin, mean predicted, observed rate, count.

    The bins are those of :func:`lympho_features.model.calibration_table` (stored in model.json), as a table.
    """
    bins = calibration_table(y_true, proba, n_bins)["bins"]
    table = pd.DataFrame(bins, columns=["lower", "upper", "mean_predicted", "observed", "count"])
    return table.rename(columns={"lower": "bin_low", "upper": "bin_high", "observed": "observed_rate"})


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    d = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


#: Sensitivities a lab may want instead of the balanced operating point (report table).
OPERATING_SENSITIVITIES = (0.90, 0.95, 0.98)


def operating_points(cvp: pd.DataFrame, threshold: float, sensitivities=OPERATING_SENSITIVITIES) -> pd.DataFrame:
    """Sensitivity and specificity at the model's threshold and at thresholds keeping a minimum sensitivity.

    Computed on the pooled out-of-fold probabilities ``cvp`` (``label``, ``probability``,
    optional ``repeat``): one threshold per target (the highest whose pooled sensitivity
    reaches it), then sensitivity and specificity averaged over repeats. Columns:
    ``operating_point``, ``threshold``, ``sensitivity``, ``specificity``, ``reactive_cleared_per_100``
    (reactive patients spared flow cytometry per 100 reactive).
    """
    y, p = cvp["label"].astype(int).to_numpy(), cvp["probability"].to_numpy(float)
    groups = [g for _, g in cvp.groupby("repeat")] if "repeat" in cvp else [cvp]

    def at(t):
        sens = np.mean([(g["probability"][g["label"] == 1] >= t).mean() for g in groups])
        spec = np.mean([(g["probability"][g["label"] == 0] < t).mean() for g in groups])
        return sens, spec

    rows = [("the model's threshold", threshold, *at(threshold))]
    for s in sensitivities:
        t = choose_threshold(y, p, s)
        rows.append((f"sensitivity at least {s:.2f}", t, *at(t)))
    out = pd.DataFrame(rows, columns=["operating_point", "threshold", "sensitivity", "specificity"])
    out["reactive_cleared_per_100"] = 100 * out["specificity"]
    return out
