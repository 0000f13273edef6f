"""What a model remembers of its training patients: the distribution of each input, and their crop counts.

Stored in model.json (``reference``, ``training_cells_ok``): the report compares a new patient's
inputs with them, ``predict`` fills a missing input with the training median and warns about
patients with fewer cells than any training patient had (:mod:`lympho_features.model.predict`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Percentiles of each model input over the training patients stored in model.json (every 5 %). Not 0 and
#: 100: those would be single patients' values (the oldest patient's age), which a shared model need not carry.
REFERENCE_PERCENTILES = tuple(range(5, 100, 5))


def reference_ranges(X: pd.DataFrame, y) -> dict:
    """Distribution of each model input over the training patients: the reference a report compares with.

    Parameters
    ----------
    X : DataFrame
        The patient model's training inputs, one row per patient (for cell-score
        summaries, the out-of-fold values the patient model was trained on).
    y : array of 0/1
        Labels (1 tumoral).

    Returns
    -------
    dict
        ``{"percentiles": [5, 10, ..., 95], "inputs": {name: {"all": values at those
        percentiles, "reactive": [q25, median, q75], "tumoral": [q25, median, q75],
        "n": patients with a value}}}``; missing values are left out, an input
        without any value is omitted.
    """
    y = np.asarray(y).astype(int)
    out = {}
    for name in X.columns:
        v = X[name].to_numpy(float)
        ok = np.isfinite(v)
        if not ok.any():
            continue
        entry = {"all": np.percentile(v[ok], REFERENCE_PERCENTILES).tolist(), "n": int(ok.sum())}
        for label, key in ((0, "reactive"), (1, "tumoral")):
            vals = v[ok & (y == label)]
            entry[key] = np.percentile(vals, [25, 50, 75]).tolist() if vals.size else None
        out[name] = entry
    return {"percentiles": list(REFERENCE_PERCENTILES), "inputs": out}


def reference_percentile(value: float, reference: dict, name: str) -> float | None:
    """Percentile (0-100) of ``value`` among the training patients' values of input ``name``.

    Interpolated between the stored percentiles of :func:`reference_ranges`
    (ties, as for a 0/1 input, take the middle of their percentiles); below the
    lowest stored percentile (5) or above the highest (95), that percentile.
    None when the value is missing or the input has no reference.
    """
    entry = (reference or {}).get("inputs", {}).get(name)
    if entry is None or not np.isfinite(value):
        return None
    xs = np.asarray(entry["all"], float)
    ps = np.asarray(reference["percentiles"], float)
    levels, inverse = np.unique(xs, return_inverse=True)
    mids = np.bincount(inverse, weights=ps) / np.bincount(inverse)
    if value < levels[0]:
        return float(ps[0])
    if value > levels[-1]:
        return float(ps[-1])
    return float(np.interp(value, levels, mids))


def training_cell_counts(patients: pd.DataFrame) -> dict | None:
    """Crops passing QC per training patient: the fewest and the median (None without the column)."""
    if "n_cells_ok" not in patients:
        return None
    n = pd.to_numeric(patients["n_cells_ok"], errors="coerce").dropna().to_numpy(float)
    if not n.size:
        return None
    return {"min": float(n.min()), "median": float(np.median(n))}


def fill_missing_inputs(X: pd.DataFrame, meta: dict) -> pd.DataFrame:
    """A new patient's missing model inputs, replaced by the training patients' median.

    The patient model never saw a missing value of an input that every
    training patient had, and LightGBM sends one down the branch of a zero:
    an age of 0, a lymphocyte count of 1 x10^9/L, cell scores of 0 for a
    patient without usable cells, a strong and false push toward reactive
    (seen: a missing age alone moved a patient by -1.6 log-odds). At the
    median the input is neutral-ish and the call rests on the other inputs, as
    :func:`input_warnings` tells the user. Inputs that were missing for some
    training patients keep the missing-value branch LightGBM learned for
    them; models saved without reference ranges are left as they are.
    """
    ref = meta.get("reference") or {}
    pcts = list(ref.get("percentiles", []))
    if 50 not in pcts:
        return X
    k = pcts.index(50)
    inputs = ref.get("inputs", {})
    n_train = meta.get("n_training_patients")
    todo = [
        c
        for c in meta.get("features", ())
        if c in X.columns
        and c in inputs
        and (n_train is None or inputs[c].get("n") == n_train)  # complete in training: no learned missing branch
        and X[c].isna().any()
    ]
    if not todo:
        return X
    X = X.copy()
    for c in todo:
        X[c] = X[c].fillna(inputs[c]["all"][k])
    return X
