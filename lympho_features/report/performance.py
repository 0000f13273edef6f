"""Section 2, how good the model is: cross-validation, confusion, operating points, held-out patients, ablation.

Each function returns plain data for ``templates/performance.html.j2``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..model import BALANCED_THRESHOLD, calls_table, labelled_metrics
from .figures import calibration_figure, roc_figure
from .inputs import ReportInputs
from .language import configuration_words
from .metrics import operating_points, wilson_interval
from .numbers import fmt, plus_minus, signed_interval

#: The cross-validation metrics shown as key figures, with what each means.
CV_METRICS = (
    ("balanced_accuracy", "balanced accuracy"),
    ("roc_auc", "ROC AUC"),
    ("sensitivity", "sensitivity (tumoral found)"),
    ("specificity", "specificity (reactive cleared)"),
    ("brier", "Brier score (lower is better)"),
)


def threshold_is_fixed(meta: dict) -> bool:
    """Whether the model's threshold is the fixed balanced one (0.5), not one chosen by cross-validation."""
    return meta.get("min_sensitivity") is None and meta.get("threshold") == BALANCED_THRESHOLD


def cv_summary(meta: dict) -> dict:
    """The model's cross-validation as stored in model.json: design, key figures, range across repeats."""
    cv = meta.get("cv") if isinstance(meta.get("cv"), dict) else {}
    if not cv:
        return {}
    out = {
        "folds": fmt(cv.get("folds")),
        "repeats": fmt(cv.get("repeats")),
        "n_patients": fmt(cv.get("n_patients")),
        "fixed_threshold": threshold_is_fixed(meta),
        "balanced_threshold": BALANCED_THRESHOLD,
        "min_sensitivity": fmt(meta["min_sensitivity"]) if meta.get("min_sensitivity") is not None else None,
        "kpis": [(plus_minus(cv, k), t) for k, t in CV_METRICS if f"{k}_mean" in cv],
        "per_repeat": [],
    }
    per = cv.get("per_repeat")
    if isinstance(per, list) and per and isinstance(per[0], dict):
        for k in [k for k, _ in CV_METRICS if k in per[0]]:
            v = np.array([r.get(k, np.nan) for r in per], float)
            out["per_repeat"].append([k.replace("_", " "), fmt(np.nanmin(v)), fmt(np.nanmax(v))])
    return out


def confusion(cvp: pd.DataFrame, threshold: float, meta: dict) -> dict:
    """Cross-validated confusion counts (mean per repeat) and how the folds' thresholds were set."""
    reps = cvp["repeat"].nunique() if "repeat" in cvp else 1
    y, pred = cvp["label"].astype(int), cvp["prediction"].astype(int)

    def count(mask) -> str:
        v = int(mask.sum())
        return f"{v / reps:.1f}" if reps > 1 else str(v)

    return {
        "repeats": reps,
        "found": count((y == 1) & (pred == 1)),
        "missed": count((y == 1) & (pred == 0)),
        "false_alarms": count((y == 0) & (pred == 1)),
        "cleared": count((y == 0) & (pred == 0)),
        "fixed_threshold": threshold_is_fixed(meta),
        "threshold": f"{threshold:.3f}",
    }


def operating_point_rows(cvp: pd.DataFrame, meta: dict) -> list[list[str]]:
    """The rows of the "other operating points" table."""
    table = operating_points(cvp, float(meta.get("threshold", 0.5)))
    return [
        [
            r.operating_point,
            f"{r.threshold:.3f}",
            f"{r.sensitivity:.3f}",
            f"{r.specificity:.3f}",
            f"{r.reactive_cleared_per_100:.0f}",
        ]
        for r in table.itertuples()
    ]


def held_out(inp: ReportInputs) -> dict | None:
    """How the calls compare with the recorded classes of this report's patients that did not train the model.

    The patients the model was trained on are those of its cv_predictions.csv; without that file nobody can tell,
    and every labelled patient is counted, with a word of caution. None when no such patient has a label.
    """
    p = inp.patients
    calls = calls_table(p["patient_id"].astype(str).to_numpy(), inp.proba, inp.meta)
    known = inp.cv_predictions is not None
    if known:
        calls = calls[~calls["patient_id"].isin(set(inp.cv_predictions["patient_id"].astype(str)))]
    m = labelled_metrics(calls, p, inp.threshold)
    if m is None:
        return None
    alarms = m["n_false_alarms"]
    kpis = [
        (f"{m['n']}", f"labelled patients ({m['n_tumoral']} tumoral, {m['n_reactive']} reactive)"),
        (fmt(m["balanced_accuracy"]), "balanced accuracy"),
        (fmt(m["roc_auc"]), "ROC AUC"),
        (fmt(m["sensitivity"]), "sensitivity (tumoral found)"),
        (fmt(m["specificity"]), "specificity (reactive cleared)"),
        (f"{m['n_uncertain']}", "uncertain (refer)"),
        (fmt(m["balanced_accuracy_confident"]), f"balanced accuracy of the other {m['n'] - m['n_uncertain']} calls"),
    ]
    spread = None
    if m["n_tumoral"]:
        lo, hi = wilson_interval(m["sensitivity"] * m["n_tumoral"], m["n_tumoral"])
        spread = {"n_tumoral": m["n_tumoral"], "sensitivity": f"{m['sensitivity']:.2f}", "lo": f"{lo:.2f}"}
        spread["hi"] = f"{hi:.2f}"
    confusion_rows = [
        ["tumoral", f"{m['n_found']} found", f"{m['n_missed']} missed"],
        ["reactive", f"{alarms} false alarm{'' if alarms == 1 else 's'}", f"{m['n_cleared']} cleared"],
    ]
    return {"known": known, "spread": spread, "kpis": kpis, "confusion": confusion_rows}


def ablation_rows(ablation) -> list[dict]:
    """Normalise an ablation table from model.json: a dict name->metrics or a list of records."""
    if isinstance(ablation, dict):
        if all(isinstance(v, dict) for v in ablation.values()):
            return [{"configuration": k, **v} for k, v in ablation.items()]
        return []
    if isinstance(ablation, list):
        return [r for r in ablation if isinstance(r, dict)]
    return []


def _pm_row(r: dict, key: str) -> str:
    v, sd = r.get(key), r.get(f"{key}_std")
    if not isinstance(v, int | float):
        return "–"
    return f"{v:.3f} ± {sd:.3f}" if isinstance(sd, int | float) else f"{v:.3f}"


def ablation(meta: dict) -> dict | None:
    """The ablation table of model.json: the one `lympho fit` writes laid out for reading, any other as stored."""
    rows = ablation_rows(meta.get("ablation"))
    if not rows:
        return None
    if not all("balanced_accuracy" in r and "configuration" in r for r in rows):
        return {"generic": _generic_ablation(rows), "reference": None, "rows": []}
    # The table `lympho fit` writes (model.ablation_table): fixed columns, in the order a reader compares them.
    ref = next((k[len("delta_ba_vs_") :] for r in rows for k in r if k.startswith("delta_ba_vs_")), "clinical")
    mine = str(meta.get("feature_set", ""))
    body = []
    for r in rows:
        body.append(
            {
                "name": r["configuration"],
                "this_model": r["configuration"] == mine,
                "cells": [
                    configuration_words(str(r["configuration"])),
                    fmt(r.get("n_features")),
                    _pm_row(r, "balanced_accuracy"),
                    _pm_row(r, "roc_auc"),
                    fmt(r.get("sensitivity")),
                    fmt(r.get("specificity")),
                    fmt(r.get("brier")),
                    "(reference)" if r["configuration"] == ref else signed_interval(r.get(f"delta_ba_vs_{ref}")),
                    signed_interval(r.get(f"delta_auc_vs_{ref}")),
                    fmt(r.get("p_better_ba"), 2),
                ],
            }
        )
    return {"generic": None, "reference": ref, "rows": body}


def _generic_ablation(rows: list[dict]) -> dict:
    """An ablation table of another shape (models written by earlier versions): every numeric column, as stored."""
    name_key = next((k for k in ("configuration", "feature_set", "name", "model") if k in rows[0]), None)
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if (
                k != name_key
                and k not in cols
                and isinstance(v, int | float | list | tuple | str)
                and not isinstance(v, bool)
            ):
                cols.append(k)

    def cell(v):
        if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
            return f"[{v[0]:.3f}, {v[1]:.3f}]"
        return fmt(v) if not isinstance(v, str) else v

    body = [[str(r.get(name_key, "")) if name_key else ""] + [cell(r.get(c)) for c in cols] for r in rows]
    return {"header": [name_key or "", *[c.replace("_", " ") for c in cols]], "rows": body}


def performance(inp: ReportInputs) -> dict:
    """Everything section 2 shows."""
    cv = inp.meta.get("cv") if isinstance(inp.meta.get("cv"), dict) else {}
    cvp = inp.cv_predictions
    both = cvp is not None and cvp["label"].nunique() == 2
    return {
        "cv": cv_summary(inp.meta),
        "roc": roc_figure(cvp, cv) if both else None,
        "calibration": calibration_figure(cvp, inp.meta) if both else None,
        "confusion": confusion(cvp, inp.threshold, inp.meta) if cvp is not None and "prediction" in cvp else None,
        "operating_points": operating_point_rows(cvp, inp.meta) if both else None,
        "held_out": held_out(inp),
        "ablation": ablation(inp.meta),
    }
