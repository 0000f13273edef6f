"""Which cells of a patient to show, and what to say under each, in a clinician's words.

With a cell model, the cells that push the patient's score toward tumoral (the
cell model scores them above its neutral 0.5: they look like tumoral patients'
cells) and those that push it toward reactive, up to 12 each, the patient's call
first. Without one, the cells most extreme on the image inputs that moved the
score, each group labelled by the direction it pushed. Then flagged cells.
Captions name measurements with the glossary (:mod:`lympho_features.glossary`),
in their units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..features import CELL_FINDINGS
from ..glossary import clinician_name, format_value
from .inputs import ReportInputs
from .language import split_aggregate

#: A cell model weighs both classes equally: a cell scored above this looks like a tumoral patient's cell.
CELL_NEUTRAL_SCORE = 0.5
#: Cells shown per direction (toward tumoral, toward reactive).
CELLS_PER_DIRECTION = 12
#: Cells of a group a printed page keeps (static/report.css, ``@media print``), so a patient fits one A4 page.
PRINTED_PER_GROUP = 8


@dataclass
class GalleryGroup:
    """A titled row of cells of one patient.

    ``cells`` are ``(image path relative to the data folder, caption)``; a caption's lines are
    separated by newlines (the page shows each on its own line).
    """

    title: str
    note: str
    cells: list[tuple[str, str]] = field(default_factory=list)
    feature: str | None = None  #: the cells.parquet column the cells were chosen on
    side: str | None = None  #: "highest", "lowest" or "lowest and highest"
    direction: str | None = None  #: "tumoral" or "reactive": where these cells push the patient's score


def _reading(inp: ReportInputs, index, name: str) -> str | None:
    """One measurement of a cell in words: ``"scant cytoplasm all round (6.6 px)"``, ``"high nucleoli (2)"``."""
    cells = inp.cells
    value = cells.at[index, name] if cells is not None and name in cells.columns else np.nan
    if not np.isfinite(value):
        return None
    shown = format_value(name, value)
    typical = inp.cell_medians.get(name)
    if typical is None or not np.isfinite(typical):
        return f"{clinician_name(name)} {shown}"
    # High or low against a typical training cell, in words where the feature has a plain reading.
    high = value > typical
    finding = CELL_FINDINGS.get(name)
    if finding is not None:
        return f"{finding[0] if high else finding[1]} ({shown})"
    return f"{'high' if high else 'low'} {clinician_name(name)} ({shown})"


def cell_reasons(inp: ReportInputs, index, direction: str = "tumoral", top: int = 2) -> list[str]:
    """The cell model's strongest reasons to score one cell toward ``direction``, in words (none without them)."""
    if inp.cell_contrib is None or index not in inp.cell_contrib.index:
        return []
    row = inp.cell_contrib.loc[index]
    pushes = row[row > 0] if direction == "tumoral" else -row[row < 0]
    out = [_reading(inp, index, name) for name in pushes.sort_values(ascending=False, kind="stable").index[:top]]
    return [r for r in out if r]


def _patient_cells(inp: ReportInputs, i: int) -> pd.DataFrame | None:
    """Patient ``i``'s rows of cells.parquet (None without cells or images)."""
    cells = inp.cells
    if cells is None or "image" not in cells:
        return None
    pc = cells[cells["patient_id"] == inp.patients["patient_id"].iat[i]]
    return None if pc.empty else pc


def score_column(pc: pd.DataFrame) -> str | None:
    """The column of cells.parquet holding each cell's score by a cell model, if any."""
    col = next((c for c in ("cell_score", "cell_score_tumoral", "cellscore") if c in pc.columns), None)
    return col if col is not None and pd.api.types.is_numeric_dtype(pc[col]) else None


def _direction_groups(inp: ReportInputs, i: int, pc: pd.DataFrame, per_group: int) -> list[GalleryGroup]:
    """The cells pushing toward tumoral and toward reactive by their cell score, the patient's call first."""
    col = score_column(pc)
    if col is None:
        return []
    s = pc[col].dropna()
    if not len(s):
        return []
    why = inp.cell_contrib is not None
    groups = []
    for direction in ("tumoral", "reactive"):
        up = direction == "tumoral"
        side = s[s > CELL_NEUTRAL_SCORE] if up else s[s < CELL_NEUTRAL_SCORE]
        side = side.sort_values(ascending=not up, kind="stable")
        above = "above" if up else "below"
        caps = [
            (str(pc.at[ix, "image"]), "\n".join([f"cell score {v:.2f}", *cell_reasons(inp, ix, direction)]))
            for ix, v in side.iloc[:per_group].items()
        ]
        shown = f"the {len(caps)} {'highest' if up else 'lowest'}" if len(side) > len(caps) else "all"
        if len(caps) > PRINTED_PER_GROUP:
            shown += f" (the first {PRINTED_PER_GROUP} on paper)"
        note = (
            f"{len(side)} of the patient's {len(s)} scored cells score {above} {CELL_NEUTRAL_SCORE} "
            f"(the cell model's neutral point): they look like cells of {direction} patients; {shown} shown."
            if len(side)
            else f"None of the patient's {len(s)} scored cells scores {above} {CELL_NEUTRAL_SCORE}."
        )
        if why and caps:
            note += f" Under each, its score and what {'raised' if up else 'lowered'} it most."
        groups.append(GalleryGroup(f"Cells pushing toward {direction}", note, caps, col, direction=direction))
    if inp.proba[i] < inp.threshold:
        groups.reverse()  # the direction of the call first
    return groups


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
        captions = [(str(ok.at[ix, "image"]), format_value(base, ok.at[ix, base])) for ix in chosen]
        used.update(c for c, _ in captions)
        groups.append(
            GalleryGroup(
                f"{clinician_name(name)}: pushes toward {push}",
                f"cells with the {which} {clinician_name(base)} of this patient (patient value "
                f"{format_value(name, value)}, cohort median {format_value(name, cohort_medians.get(name, np.nan))})",
                captions,
                base,
                which,
                push,
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
        (str(im), f"nucleus {format_value(key, a)}" if key else "")
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
    per_group: int = 6,
    n_flagged: int = 4,
    per_direction: int = CELLS_PER_DIRECTION,
    shown: set[str] | None = None,
) -> list[GalleryGroup]:
    """The cells worth looking at for patient row ``i``.

    With cell scores (a model with a cell model, or a ``cell_score`` column in
    cells.parquet): the cells pushing toward tumoral (score above 0.5, highest
    first) and those pushing toward reactive (below 0.5, lowest first), up to
    ``per_direction`` each, the direction of the patient's call first. Without:
    for each of the ``n_drivers`` image inputs that moved this patient's score
    most (and that summarise a per-cell measurement), the patient's cells most
    extreme on that measurement, on the side where the patient stands relative
    to the cohort (both extremes for a spread), labelled by the direction the
    input pushed; when fewer such inputs matter, a sample spanning the patient's
    nucleus sizes. Last, flagged cells (smudge, not a lymphocyte, other QC
    failures), leaving out the crops in ``shown`` (those the page already
    shows elsewhere: the cell-type gate's examples). A cell appears at most once.
    """
    pc = _patient_cells(inp, i)
    if pc is None:
        return []
    ok = pc[pc["qc_ok"].astype(bool)] if "qc_ok" in pc else pc
    groups = _direction_groups(inp, i, pc, per_direction)
    used: set[str] = {c for g in groups for c, _ in g.cells}
    if not groups:
        groups = _driver_groups(inp, i, ok, cohort_medians, n_drivers, per_group, used)
        if len(groups) < n_drivers and len(ok):
            # Few image inputs moved this patient's score: show a sample spanning its range of nucleus sizes instead.
            sample = _sample_group(ok, min(per_group * (n_drivers - len(groups)), 8), used)
            if sample:
                used.update(c for c, _ in sample.cells)
                groups.append(sample)
    flagged = _flagged_group(pc, len(ok), n_flagged, used | (shown or set()))
    if flagged and shown and pc["image"].isin(shown).any():
        # Said once: the crops the page shows under "Other cells among the crops" are not repeated here.
        flagged.note = "; ".join(x for x in (flagged.note, "other cells are shown below, by type") if x)
    return groups + ([flagged] if flagged else [])


def all_cells(inp: ReportInputs, i: int) -> list[tuple[str, str]]:
    """Every crop of patient ``i`` as ``(image, caption)``: its cell score, or its failed check, in crop order."""
    pc = _patient_cells(inp, i)
    if pc is None:
        return []
    col = score_column(pc)
    out = []
    for ix in pc.sort_values("image", kind="stable").index:
        reason = str(pc.at[ix, "qc_reason"]) if "qc_reason" in pc else "ok"
        if reason != "ok":
            caption = reason.replace("_", " ")
        elif col is not None and np.isfinite(pc.at[ix, col]):
            caption = f"{pc.at[ix, col]:.2f}"
        else:
            caption = ""
        out.append((str(pc.at[ix, "image"]), caption))
    return out
