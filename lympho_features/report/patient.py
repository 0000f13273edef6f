"""Section 4, the patients: the summary table and one page per patient (decision, waterfall, cells).

Each function decides what a page says and returns plain data for ``templates/patient.html.j2``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..glossary import COUNT_UNIT, clinician_name, format_input_value
from ..model import few_cells_reasons, missing_value_reasons, refer_limits
from .cell_types import HIGH_OTHER_CELL_SHARE, other_cell_share, other_cells
from .explanations import waterfall
from .gallery import all_cells, score_column, select_gallery
from .inputs import ReportInputs
from .numbers import percent
from .performance import threshold_is_fixed
from .thumbnails import ThumbnailMaker


def class_kind(label) -> str:
    """``'tumoral'``, ``'reactive'`` or ``'unknown'`` for a recorded label (1, 0 or missing)."""
    if label is None or pd.isna(label):
        return "unknown"
    return "tumoral" if int(label) == 1 else "reactive"


def patient_anchor(pid: str) -> str:
    """The page anchor of a patient: its ID with every character outside ``[A-Za-z0-9_-]`` replaced."""
    return "p-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(pid))


def cv_by_patient(inp: ReportInputs) -> pd.DataFrame | None:
    """Each training patient's out-of-fold probabilities over the repeats: mean, spread, count, mean call."""
    if inp.cv_predictions is None:
        return None
    g = inp.cv_predictions.groupby("patient_id")
    oof = pd.DataFrame(
        {"mean": g["probability"].mean(), "std": g["probability"].std(ddof=0), "n": g["probability"].size()}
    )
    if "prediction" in inp.cv_predictions:
        oof["pred"] = g["prediction"].mean()
    return oof


def table_row(inp: ReportInputs, i: int, oof) -> dict:
    """A patient's row of the summary table.

    ``miss``: the model's call, as shown in the row, disagrees with the recorded class (the row is shaded red).
    ``cv_miss``: for a training patient, its cross-validated call disagrees (its CV probability is marked).
    """
    r = inp.patients.iloc[i]
    prob = float(inp.proba[i])
    decision = int(prob >= inp.threshold)
    label = r["label"]
    known = pd.notna(label)
    cv_miss = known and oof is not None and "pred" in oof and round(float(oof["pred"])) != int(label)
    pid = str(r["patient_id"])
    return {
        "miss": bool(known and decision != int(label)),
        "cv_miss": bool(cv_miss),
        "pid": pid,
        "anchor": patient_anchor(pid),
        "label": class_kind(label),
        "call": "tumoral" if decision else "reactive",
        "uncertain": bool(inp.uncertain[i]),
        "probability": f"{prob:.2f}",
        "cv_probability": f"{oof['mean']:.2f}" if oof is not None else "–",
        "count": format_input_value("lymph_count", r["lymph_count"]).removesuffix(" " + COUNT_UNIT)
        if "lymph_count" in r and pd.notna(r["lymph_count"])
        else "–",
        "age": format_input_value("age", r["age"]).removesuffix(" years") if "age" in r and pd.notna(r["age"]) else "–",
        "crops": str(int(r["n_cells"])) if "n_cells" in r else "–",
        # The share of crops the cell-type gate calls other cells (None: no gate in these features).
        "other_cells": _other_share_cell(inp, i),
    }


def _other_share_cell(inp: ReportInputs, i: int) -> dict | None:
    """Patient ``i``'s share of other cells for the summary table: its text and whether it is high."""
    share = other_cell_share(inp.patients)
    if share is None:
        return None
    value = float(share.iat[i])
    return {"text": percent(value), "high": value >= HIGH_OTHER_CELL_SHARE}


def refer_note(meta: dict) -> str:
    """Why a call in the refer band is flagged (a note on the patient card; no trailing full stop)."""
    rate = (meta.get("refer") or {}).get("min_error_rate")
    how = f"at least {rate:.0%} of" if isinstance(rate, int | float) else "many of"
    return (
        f"In the band around the threshold where {how} the cross-validation's calls were wrong: refer to flow "
        "cytometry rather than trust this call"
    )


def threshold_rule(meta: dict) -> str:
    """How the model's threshold was set, in a few words for the patient card."""
    ms = meta.get("min_sensitivity")
    if isinstance(ms, int | float):
        return f"chosen in cross-validation to keep sensitivity at least {ms:.2f}"
    if threshold_is_fixed(meta):
        return "the neutral point of a model that weighs both classes equally (fixed, not tuned)"
    # Models fitted before the balanced threshold was fixed tuned it by inner cross-validation.
    return "chosen in cross-validation to balance sensitivity and specificity"


def clinical_values(p: pd.Series) -> list[tuple[str, str]]:
    """The patient's clinical values (named and written by the glossary) and crop counts, as (what, value) pairs."""
    out = [
        (clinician_name(col), format_input_value(col, p[col]))
        for col in ("age", "gender", "lymph_count")
        if col in p and pd.notna(p[col])
    ]
    if "n_cells" in p:
        ok = f", {int(p['n_cells_ok'])} pass QC" if "n_cells_ok" in p and pd.notna(p["n_cells_ok"]) else ""
        out.append(("crops", f"{int(p['n_cells'])}{ok}"))
    return out


def decision(inp: ReportInputs, i: int) -> dict:
    """The decision box of patient ``i``'s card: probability, call, flags and the notes that qualify it."""
    pid = str(inp.patients["patient_id"].iat[i])
    prob, thr = float(inp.proba[i]), inp.threshold
    one = inp.patients.iloc[[i]]
    # The card names the patient: the model's reasons, without the "PID: " of predict's warning lines.
    missing = [text for _, text in missing_value_reasons(inp.meta, one)]
    few = [text for _, text in few_cells_reasons(inp.meta, one)]
    notes = missing + few
    outside = [r["text"] for r in inp.domain_reasons.get(pid, [])]
    if refer_limits(inp.meta) is not None:
        # the same band as `lympho predict`'s `uncertain` column, so that the report and the CSV agree
        flag = "uncertain: refer" if inp.uncertain[i] else None
        if inp.uncertain[i]:
            notes.insert(0, refer_note(inp.meta))
    else:  # models written before the refer band
        flag = "close to threshold" if abs(prob - thr) < 0.1 else None
    return {
        "probability": f"{prob:.2f}",
        "call": "tumoral" if prob >= thr else "reactive",
        "flag": flag,
        "few_crops": bool(few),
        "missing_values": bool(missing),
        # How the patient lies outside the model's training profile (acquisition, inputs): one line per reason.
        "outside_profile": outside,
        "many_other_cells": bool((_other_share_cell(inp, i) or {}).get("high")),
        "threshold": f"{thr:.3f}",
        "threshold_rule": threshold_rule(inp.meta),
        "notes": notes,
    }


def cross_validated(oof) -> dict | None:
    """The cross-validated box of a training patient's card (None for a patient the model never saw)."""
    if oof is None:
        return None
    out = {"mean": f"{oof['mean']:.2f}", "sd": f" ± {oof['std']:.2f}" if pd.notna(oof.get("std")) else "", "call": None}
    if pd.notna(oof.get("pred")):
        k, n = int(round(oof["pred"] * oof["n"])), int(oof["n"])
        word, agree = ("tumoral", k) if oof["pred"] >= 0.5 else ("reactive", n - k)
        out["call"] = {"kind": word, "agree": agree, "n": n}
    return out


def gallery(
    inp: ReportInputs, i: int, medians: dict[str, float], thumbs: ThumbnailMaker, shown: set[str] | None = None
) -> list[dict]:
    """Patient ``i``'s groups of cells, each image as its thumbnail URI (None when the crop cannot be read).

    ``shown``: crops the page shows elsewhere (the cell-type gate's examples), left out of the flagged cells.
    """
    return [
        {
            "title": g.title,
            "note": g.note,
            "direction": g.direction,
            "cells": [{"image": image, "uri": thumbs(image), "caption": caption} for image, caption in g.cells],
        }
        for g in select_gallery(inp, i, medians, shown=shown)
    ]


def other_cells_box(inp: ReportInputs, i: int, thumbs: ThumbnailMaker) -> dict | None:
    """The crops of patient ``i`` the cell-type gate calls other cells, with example thumbnails (None: none)."""
    found = other_cells(inp, i)
    if found is None:
        return None
    return {
        "summary": found.summary,
        "high": found.high,
        "types": [
            {
                "sentence": t.sentence,
                "cells": [{"image": im, "uri": thumbs(im), "caption": cap} for im, cap in t.examples],
            }
            for t in found.types
        ],
    }


def strip(inp: ReportInputs, i: int, thumbs: ThumbnailMaker) -> list[dict]:
    """Every crop of patient ``i``, small, for the folded "all cells" strip."""
    return [{"image": im, "uri": thumbs.strip(im), "caption": cap} for im, cap in all_cells(inp, i)]


def patient_page(inp: ReportInputs, i: int, oof, medians: dict[str, float], thumbs: ThumbnailMaker) -> dict:
    """Everything patient ``i``'s page shows."""
    r = inp.patients.iloc[i]
    pid = str(r["patient_id"])
    others = other_cells_box(inp, i, thumbs)
    shown = {c["image"] for t in others["types"] for c in t["cells"]} if others else set()
    return {
        "pid": pid,
        "anchor": patient_anchor(pid),
        "decision": decision(inp, i),
        "cv": cross_validated(oof),
        "label": class_kind(r["label"]),
        "clinical": clinical_values(r),
        "waterfall": waterfall(inp, i),
        "gallery": gallery(inp, i, medians, thumbs, shown),
        "other_cells": others,
        "all_cells": strip(inp, i, thumbs),
        "strip_scored": inp.cells is not None and score_column(inp.cells) is not None,
    }


def patients(inp: ReportInputs, thumbs: ThumbnailMaker) -> tuple[list[dict], list[dict]]:
    """The rows of the patient table and the patient pages, in the report's order."""
    oof = cv_by_patient(inp)
    medians = {
        f: float(np.nanmedian(inp.X[:, j])) if np.isfinite(inp.X[:, j]).any() else np.nan
        for j, f in enumerate(inp.features)
    }
    rows, pages = [], []
    for i in range(len(inp.patients)):
        pid = str(inp.patients["patient_id"].iat[i])
        o = oof.loc[pid] if oof is not None and pid in oof.index else None
        rows.append(table_row(inp, i, o))
        pages.append(patient_page(inp, i, o, medians, thumbs))
    return rows, pages
