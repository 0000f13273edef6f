"""Per-patient aggregation of cell features, next to the clinical values.

A patient is a bag of cells. Morphology is summarised over the cells that
passed quality control (mean, spread and quantiles of each feature); the
fraction of cells in each QC outcome and flag (smudge cells, non-lymphocytes)
becomes a feature of its own, since e.g. smudge cells are a known marker of
chronic lymphocytic leukaemia.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._lazy import pd
from ._validate import SettingsCheck

#: Columns of cells.parquet that are not cell measurements (the pixel scale describes the acquisition, not the
#: cell: never a model input).
CELL_META_COLUMNS = (
    "patient_id", "image", "qc_ok", "qc_reason", "image_sha256", "um_per_px", "scale_source", "scale_flag",
    "cell_type", "cell_type_prob",
)  # fmt: skip

#: The cell types whose share of a patient's crops patients.parquet reports (``share_<type>``): every type the
#: cell-type gate knows but the lymphocyte. A QC signal of the lab's pre-classifier, not a model input.
SHARE_TYPES = ("neutrophil", "eosinophil", "basophil", "monocyte", "immature_granulocyte", "erythroblast", "platelet")

#: Clinical columns of patients.parquet.
CLINICAL_COLUMNS = ("label", "age", "gender", "lymph_count")

#: Prefix of the acquisition measurements (:mod:`lympho_features.acquisition`): how the crop was scanned and
#: compressed, not what the cell looks like. Never a cell feature nor a model input; summarised per patient by
#: their median, for the domain check.
ACQUISITION_PREFIX = "acq_"


@dataclass(frozen=True)
class AggregateSettings:
    """Which statistics summarise each feature over a patient's cells."""

    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    min_cells: int = 1  #: below this many qc_ok cells, morphology aggregates are NaN

    def __post_init__(self) -> None:
        """Refuse a value that cannot mean what its setting says (raises :class:`~lympho_features.errors.SettingsError`)."""
        check = SettingsCheck(self)
        check.numbers("quantiles", 0, 1, non_empty=False)
        check.integer("min_cells", 0)


def cell_feature_columns(cells: pd.DataFrame) -> list[str]:
    """Numeric measurement columns of a cells table (no meta, QC, flag or acquisition columns)."""
    return [
        c
        for c in cells.columns
        if c not in CELL_META_COLUMNS
        and not c.startswith(("qc_", "is_", ACQUISITION_PREFIX))
        and pd.api.types.is_numeric_dtype(cells[c])
        and not pd.api.types.is_bool_dtype(cells[c])
    ]


def flag_columns(cells: pd.DataFrame) -> list[str]:
    """Boolean QC and cell-type flag columns (``qc_*``, ``is_*``) other than ``qc_ok``.

    QC measurements (e.g. ``qc_sharpness``, a number) are neither flags nor features.
    """
    return [
        c
        for c in cells.columns
        if c.startswith(("qc_", "is_"))
        and c not in ("qc_ok", "qc_reason")
        and not pd.api.types.is_float_dtype(cells[c])
    ]


def _stat_name(q: float) -> str:
    return "median" if q == 0.5 else f"q{int(round(q * 100)):02d}"


def aggregate_cells(cells: pd.DataFrame, settings: AggregateSettings = AggregateSettings()) -> pd.DataFrame:
    """Summarise each patient's cells.

    Parameters
    ----------
    cells : DataFrame
        One row per cell with ``patient_id``, ``qc_ok``, flags and features.

    Returns
    -------
    DataFrame
        One row per patient: ``patient_id``, ``n_cells`` (readable crops),
        ``n_cells_ok``, ``frac_qc_ok``, ``um_per_px``, ``scale_source`` and
        ``scale_flag`` when the cells have them, ``frac_{flag}`` for each flag (e.g.
        ``frac_is_smudge``), ``share_{type}`` for each type of :data:`SHARE_TYPES` when the
        cells have a ``cell_type`` (share of the readable crops), ``{feature}__{stat}`` for each feature and
        statistic (mean, std, quantiles) over the ``qc_ok`` cells, and the
        median of each acquisition measurement ``acq_*`` over all the
        patient's crops (same name; the scan, not the cell, so QC-failed crops
        count too).
    """
    feats = cell_feature_columns(cells)
    flags = flag_columns(cells)
    grouped_all = cells.groupby("patient_id", sort=True)
    out = pd.DataFrame({"n_cells": grouped_all.size()})
    ok = cells[cells["qc_ok"].astype(bool)]
    out["n_cells_ok"] = ok.groupby("patient_id").size().reindex(out.index).fillna(0).astype(int)
    out["frac_qc_ok"] = out["n_cells_ok"] / out["n_cells"]
    # The patient's pixel scale and its provenance: the same on every crop of a patient (extract measures a
    # patient at one scale).
    for c in ("um_per_px", "scale_source", "scale_flag"):
        if c in cells.columns:
            out[c] = grouped_all[c].first()
    for f in flags:
        out[f"frac_{f}"] = grouped_all[f].mean().astype(float)
    acquisition = [c for c in cells.columns if c.startswith(ACQUISITION_PREFIX)]
    if acquisition:
        out = pd.concat([out, grouped_all[acquisition].median().astype(float)], axis=1)
    if "cell_type" in cells.columns:
        # Share of the patient's readable crops the cell-type gate calls each other type.
        counts = pd.crosstab(cells["patient_id"], cells["cell_type"]).reindex(out.index).fillna(0)
        for t in SHARE_TYPES:
            col = counts[t] if t in counts.columns else 0.0
            out[f"share_{t}"] = (col / out["n_cells"]).astype(float)
    if feats:
        g = ok.groupby("patient_id")[feats]
        blocks = [g.mean().add_suffix("__mean"), g.std(ddof=0).add_suffix("__std")]
        for q in settings.quantiles:
            blocks.append(g.quantile(q).add_suffix(f"__{_stat_name(q)}"))
        stats = pd.concat(blocks, axis=1).reindex(out.index)
        stats[out["n_cells_ok"] < settings.min_cells] = np.nan
        out = pd.concat([out, stats], axis=1)
    out.index.name = "patient_id"
    return out.reset_index()


def build_patient_table(
    clinical: pd.DataFrame, cells: pd.DataFrame, settings: AggregateSettings = AggregateSettings()
) -> pd.DataFrame:
    """Join clinical values and cell aggregates: one row per patient of either.

    Patients with a clinical row but no readable crop get ``n_cells = 0`` and
    NaN aggregates, so that a prediction can still be made from the clinical
    values alone.
    """
    agg = aggregate_cells(cells, settings) if len(cells) else pd.DataFrame({"patient_id": pd.Series(dtype=str)})
    table = clinical[["patient_id", *CLINICAL_COLUMNS]].merge(agg, on="patient_id", how="outer")
    for c in ("n_cells", "n_cells_ok"):
        if c not in table:
            table[c] = 0
        table[c] = table[c].fillna(0).astype(int)
    table["label"] = table["label"].astype("Int64")
    return table.sort_values("patient_id", kind="stable").reset_index(drop=True)
