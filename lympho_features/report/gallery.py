"""Which cells of a patient to show, and what to say under each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..features import CELL_FINDINGS
from .inputs import ReportInputs
from .language import short_label, split_aggregate
from .numbers import short_num


@dataclass
class GalleryGroup:
    """A titled row of cells of one patient."""

    title: str
    note: str
    cells: list[tuple[str, str]]  # (image path relative to the data folder, caption)
    feature: str | None = None  #: the cells.parquet column the cells were chosen on
    side: str | None = None  #: "highest", "lowest" or "lowest and highest"


def _cell_reasons(inp: ReportInputs, index, top: int = 2) -> str:
    """The cell model's strongest reasons to call one cell tumoral, for its caption (empty without them)."""
    if inp.cell_contrib is None or index not in inp.cell_contrib.index:
        return ""
    row = inp.cell_contrib.loc[index]
    up = row[row > 0].sort_values(ascending=False, kind="stable")[:top]
    if up.empty:
        return ""
    cells = inp.cells
    parts = []
    for name, v in up.items():
        value = cells.at[index, name] if cells is not None and name in cells.columns else np.nan
        shown = f" {short_num(value)}" if np.isfinite(value) else ""
        typical = inp.cell_medians.get(name)
        if typical is None or not np.isfinite(value):
            parts.append(f"{short_label(name)}{shown} (+{v:.2f})")
            continue
        # High or low against a typical training cell, in words where the feature has a plain reading.
        high = value > typical
        finding = CELL_FINDINGS.get(name)
        if finding is not None:
            parts.append(f"{finding[0] if high else finding[1]} ({short_label(name)}{shown}, +{v:.2f})")
        else:
            parts.append(f"{'high' if high else 'low'} {short_label(name)}{shown} (+{v:.2f})")
    return "; why: " + ", ".join(parts)


def _patient_cells(inp: ReportInputs, i: int) -> pd.DataFrame | None:
    """Patient ``i``'s rows of cells.parquet (None without cells or images)."""
    cells = inp.cells
    if cells is None or "image" not in cells:
        return None
    pc = cells[cells["patient_id"] == inp.patients["patient_id"].iat[i]]
    return None if pc.empty else pc


def _score_group(inp: ReportInputs, pc: pd.DataFrame, per_group: int) -> GalleryGroup | None:
    """The patient's highest cell-level scores, each with the cell model's reasons (None without scores)."""
    score_col = next((c for c in ("cell_score", "cell_score_tumoral", "cellscore") if c in pc.columns), None)
    if score_col is None or not pd.api.types.is_numeric_dtype(pc[score_col]):
        return None
    s = pc[score_col].dropna().sort_values(ascending=False, kind="stable")
    if not len(s):
        return None
    caps = [
        (str(pc.at[ix, "image"]), f"score {short_num(pc.at[ix, score_col])}{_cell_reasons(inp, ix)}")
        for ix in s.index[:per_group]
    ]
    note = (
        "Under each cell, the measurements that raised its score most (SHAP, log-odds of the cell model)."
        if inp.cell_contrib is not None
        else ""
    )
    return GalleryGroup("Most tumoral-looking cells by the cell-level model", note, caps)


def _extremes(vals: pd.Series, stat: str, high: bool, per_group: int) -> tuple[list, str]:
    """The cells most extreme on a measurement: on the patient's side, or both ends for a spread (``std``)."""
    if stat == "std":
        k = per_group // 2
        srt = vals.sort_values(kind="stable")
        chosen = list(srt.index[:k]) + [ix for ix in srt.index[::-1][: per_group - k] if ix not in srt.index[:k]]
        return chosen, "lowest and highest"
    return list(vals.sort_values(ascending=not high, kind="stable").index[:per_group]), "highest" if high else "lowest"


def _driver_groups(
    inp: ReportInputs, i: int, ok: pd.DataFrame, cohort_medians: dict, n_groups: int, per_group: int, used: set
) -> list[GalleryGroup]:
    """For the image inputs that moved patient ``i``'s score most, its cells most extreme on that measurement."""
    groups: list[GalleryGroup] = []
    shown_bases: set[str] = set()
    for j in np.argsort(-np.abs(inp.contrib[i]), kind="stable"):
        if len(groups) >= n_groups or abs(inp.contrib[i, j]) < 1e-9:
            break
        name = inp.features[j]
        base, stat = split_aggregate(name)
        if stat is None or base in shown_bases or base not in ok.columns or not pd.api.types.is_numeric_dtype(ok[base]):
            continue
        shown_bases.add(base)
        vals = ok[base].dropna()
        vals = vals[~ok.loc[vals.index, "image"].isin(used)]
        if vals.empty:
            continue
        value = inp.X[i, j]
        push = "tumoral" if inp.contrib[i, j] > 0 else "reactive"
        high = not np.isfinite(cohort_medians.get(name, np.nan)) or value >= cohort_medians[name]
        chosen, which = _extremes(vals, stat, high, per_group)
        captions = [(str(ok.at[ix, "image"]), f"{short_num(ok.at[ix, base])}") for ix in chosen]
        used.update(c for c, _ in captions)
        groups.append(
            GalleryGroup(
                f"{short_label(name)}: pushes toward {push} ({inp.contrib[i, j]:+.2f})",
                f"cells with the {which} {short_label(base)} of this patient (patient value {short_num(value)}, "
                f"cohort median {short_num(cohort_medians.get(name, np.nan))})",
                captions,
                base,
                which,
            )
        )
    return groups


def _sample_group(ok: pd.DataFrame, n: int, used: set) -> GalleryGroup | None:
    """Up to ``n`` of the patient's cells spanning its range of nucleus sizes."""
    pool = ok[~ok["image"].isin(used)]
    key = "nucleus_area" if "nucleus_area" in pool else None
    pool = pool.sort_values([key, "image"] if key else ["image"], kind="stable")
    n = min(len(pool), n)
    if not n:
        return None
    picks = pool.iloc[np.unique(np.linspace(0, len(pool) - 1, n).round().astype(int))]
    caps = [
        (str(im), f"nucleus {short_num(a)}" if key else "")
        for im, a in zip(picks["image"], picks[key] if key else picks["image"], strict=True)
    ]
    return GalleryGroup(
        "A sample of this patient's cells",
        "spanning its range of nucleus sizes (few image inputs moved this patient's score)",
        caps,
    )


def _flagged_group(pc: pd.DataFrame, n_ok: int, n_flagged: int, used: set) -> GalleryGroup | None:
    """The patient's flagged cells (smudge, not a lymphocyte, other QC failures), most flags first."""
    flag_cols = [c for c in ("is_smudge", "is_not_lymphocyte") if c in pc.columns]
    flagged = pc[(~pc["qc_ok"].astype(bool)) if "qc_ok" in pc else np.zeros(len(pc), bool)]
    if flag_cols:
        flagged = pc[pc[flag_cols].astype(bool).any(axis=1) | ~pc["qc_ok"].astype(bool)]
    if not len(flagged):
        return None
    prio = flagged[flag_cols].astype(int).sum(axis=1) if flag_cols else pd.Series(0, index=flagged.index)
    flagged = flagged.assign(_prio=-prio).sort_values(["_prio", "image"], kind="stable")
    flagged = flagged[~flagged["image"].isin(used)]
    counts = pc.loc[~pc["qc_ok"].astype(bool), "qc_reason"].value_counts() if "qc_reason" in pc else pd.Series()
    summary = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
    # Flags also flagged on cells whose first failed check was another one.
    extra = [
        f"{f[3:].replace('_', ' ')} (flag) {int(pc[f].sum())}"
        for f in flag_cols
        if pc[f].any() and int(pc[f].sum()) != int(counts.get(f[3:], 0))
    ]
    caps = []
    for ix in flagged.index[:n_flagged]:
        tags = [f.replace("is_", "").replace("_", " ") for f in flag_cols if bool(flagged.at[ix, f])]
        reason = str(flagged.at[ix, "qc_reason"]) if "qc_reason" in flagged else ""
        if reason and reason != "ok" and reason.replace("_", " ") not in tags:
            tags.append(reason.replace("_", " "))
        caps.append((str(flagged.at[ix, "image"]), ", ".join(tags)))
    return GalleryGroup(
        f"Flagged cells ({len(pc) - n_ok} of {len(pc)} crops fail quality control)",
        "; ".join(x for x in (summary, ", ".join(extra)) if x),
        caps,
    )


def select_gallery(
    inp: ReportInputs,
    i: int,
    cohort_medians: dict[str, float],
    n_drivers: int = 3,
    per_group: int = 4,
    n_flagged: int = 4,
) -> list[GalleryGroup]:
    """The cells worth looking at for patient row ``i``.

    First the highest cell-level scores when cells.parquet has a ``cell_score``
    column. Then, for each of the ``n_drivers`` image inputs (one fewer after
    a cell-score row) that moved this patient's score most (and that summarise a per-cell measurement), the
    patient's cells most extreme on that measurement, on the side where the
    patient stands relative to the cohort (both extremes for a spread); when
    fewer such inputs matter (and no cell score exists), a sample spanning the
    patient's nucleus sizes. Last, flagged cells (smudge, not a lymphocyte,
    other QC failures). A cell appears at most once.
    """
    pc = _patient_cells(inp, i)
    if pc is None:
        return []
    ok = pc[pc["qc_ok"].astype(bool)] if "qc_ok" in pc else pc
    used: set[str] = set()
    score = _score_group(inp, pc, per_group)
    groups = [score] if score else []
    used.update(c for c, _ in (score.cells if score else []))
    # a cell-score row takes a driver's place
    groups += _driver_groups(inp, i, ok, cohort_medians, n_drivers - len(groups), per_group, used)
    if score is None and len(groups) < n_drivers and len(ok):
        # Few image inputs moved this patient's score: show a sample spanning its range of nucleus sizes instead.
        sample = _sample_group(ok, min(per_group * (n_drivers - len(groups)), 8), used)
        if sample:
            used.update(c for c, _ in sample.cells)
            groups.append(sample)
    flagged = _flagged_group(pc, len(ok), n_flagged, used)
    return groups + ([flagged] if flagged else [])
