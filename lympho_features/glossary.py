"""One glossary of the names a clinician reads: every model input and per-cell measurement, with its unit.

The report (captions, waterfalls, tables), ``lympho predict --explain`` and the
glossary table of docs/features.md all take their words from here, so a name or
a unit changes in one place. Each :class:`Term` says what a column is called,
in which unit its values are, and how a value is written (rounded as a lab
report would: a lymphocyte count to two decimals, an age in whole years, a
share in percent).

>>> format_input_value("log_lymph_count", 2.116)
'8.30 ×10⁹/L'
>>> format_input_value("age", 67.4)
'67 years'
>>> format_input_value("gender_male", 0.0)
'female'
>>> term("nc_rim_width_max__mean").name
'thickest cytoplasm rim, mean over cells'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .feature_sets import CELL_MODEL_BLOCKS, cell_model_block
from .features import GRANULARITY_RADII, RADIAL_RINGS

#: Unit of the lengths measured on the crops: micrometres since features version 5 (every crop carries its
#: pixel scale, :mod:`lympho_features.scale`; the columns converted are ``scale.LENGTH_COLUMNS``).
LENGTH_UNIT = "µm"
#: Unit of the areas measured on the crops (``scale.AREA_COLUMNS``).
AREA_UNIT = "µm²"
#: Unit of the blood lymphocyte count.
COUNT_UNIT = "×10⁹/L"

#: How values of a kind are written. ``measure``: three significant digits; ``share``: a fraction 0-1 in
#: percent; ``ratio``: two decimals; ``count``: a whole number; the clinical kinds as on a lab report.
KINDS = ("measure", "share", "ratio", "count", "years", "sex", "log_count", "lymph_count")


@dataclass(frozen=True)
class Term:
    """What a column is called for a clinician, its unit and how a value is written.

    Attributes
    ----------
    name : str
        Plain-language name, short enough for a caption (``"nucleus area"``).
    unit : str
        Unit of the values as shown (``"px²"``, ``"×10⁹/L"``, ``""`` for none).
    kind : str
        How a value is written: one of :data:`KINDS`.
    """

    name: str
    unit: str = ""
    kind: str = "measure"

    def format(self, value) -> str:  # noqa: A003 - reads as what it does: term.format(value)
        """A value of this column as a reader expects it, unit included (``"missing"`` for NaN or None)."""
        if self.kind == "sex" and isinstance(value, str):  # the clinical CSV's M / F
            return {"M": "male", "F": "female"}.get(value.strip().upper(), value)
        try:
            v = float(value)
        except (TypeError, ValueError):
            return "missing" if value is None else str(value)
        if not math.isfinite(v):
            return "missing"
        text = _FORMATS[self.kind](v)
        return f"{text} {self.unit}" if self.unit else text


def _sig3(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _share(v: float) -> str:
    pct = 100 * v
    return f"{pct:.1f}%" if abs(pct) < 10 else f"{pct:.0f}%"


_FORMATS = {
    "measure": _sig3,
    "share": _share,
    "ratio": lambda v: f"{v:.2f}",
    "count": lambda v: f"{v:,.0f}",
    "years": lambda v: f"{math.floor(v + 1e-9):.0f}",  # completed years, as a lab writes an age
    "sex": lambda v: "male" if v >= 0.5 else "female",
    "log_count": lambda v: f"{math.exp(v):.2f}",
    "lymph_count": lambda v: f"{v:.2f}",
}


# --------------------------------------------------------------- entries ----
def _entries() -> dict[str, Term]:
    g = _named_entries()
    g.update(_shape_entries())
    g.update(_chromatin_entries())
    g.update(_colour_entries())
    g.update(_flag_entries())
    return g


def _named_entries() -> dict[str, Term]:
    """The clinical values, crop counts and the per-cell measurements named one by one."""
    return {
        # clinical values, as stored in patients.parquet and as the model takes them
        "age": Term("age", "years", "years"),
        "gender": Term("sex", "", "sex"),
        "gender_male": Term("sex", "", "sex"),
        "lymph_count": Term("lymphocyte count", COUNT_UNIT, "lymph_count"),
        "log_lymph_count": Term("lymphocyte count", COUNT_UNIT, "log_count"),
        "n_cells": Term("number of crops", "", "count"),
        "n_cells_ok": Term("crops passing quality control", "", "count"),
        # per-cell measurements (cells.parquet)
        "nucleus_area": Term("nucleus area", AREA_UNIT),
        "cell_area": Term("cell area", AREA_UNIT),
        "nc_ratio": Term("N:C ratio", "", "ratio"),
        "nc_cytoplasm_area": Term("cytoplasm area", AREA_UNIT),
        "nc_rim_width": Term("cytoplasm rim, mean thickness", LENGTH_UNIT),
        "nc_rim_width_min": Term("thinnest cytoplasm rim", LENGTH_UNIT),
        "nc_rim_width_max": Term("thickest cytoplasm rim", LENGTH_UNIT),
        "nc_nucleus_offset": Term("nucleus off-centre", "", "ratio"),
        "lbp_nucleus_nonuniform": Term("irregular fine chromatin pattern", "", "share"),
        "lbp_nucleus_entropy": Term("variety of fine chromatin patterns", "", "ratio"),
        "radial_nucleus_rim_centre": Term("chromatin at the rim vs the centre of the nucleus", "", "ratio"),
        "nucleoli_count": Term("nucleoli", "", "count"),
        "nucleoli_area_fraction": Term("nucleoli, share of the nucleus", "", "share"),
        "nucleoli_contrast": Term("paleness of the nucleoli", "", "ratio"),
        "color_cytoplasm_basophilia": Term("cytoplasm blueness", "", "ratio"),
    }


def _shape_entries() -> dict[str, Term]:
    """Size and shape of the nucleus and of the whole cell (``shape_nucleus_*``, ``shape_cell_*``)."""
    sizes = {  # in µm (areas in µm²), written to 3 significant digits
        "area": "area",
        "perimeter": "perimeter",
        "equivalent_diameter": "diameter",
        "major_axis": "length",
        "minor_axis": "width",
        "feret_max": "longest diameter",
        "feret_min": "shortest diameter",
    }
    shapes = {  # unitless ratios, written to 2 decimals
        "eccentricity": "elongation",
        "solidity": "outline fullness",
        "convexity": "outline smoothness",
        "circularity": "roundness",
        "fourier_low": "outline lobulation",
        "fourier_high": "outline raggedness",
        "notch_depth": "depth of the deepest notch",
        "curvature_std": "outline unevenness",
    }
    regions = ("nucleus", "cell")
    units = {k: AREA_UNIT if k == "area" else LENGTH_UNIT for k in sizes}
    out = {f"shape_{r}_{k}": Term(f"{r} {name}", units[k]) for r in regions for k, name in sizes.items()}
    out.update({f"shape_{r}_{k}": Term(f"{r} {name}", "", "ratio") for r in regions for k, name in shapes.items()})
    return out


def _chromatin_entries() -> dict[str, Term]:
    """Chromatin texture, micro-pattern, granularity and radial distribution of the nucleus."""
    g: dict[str, Term] = {}
    texture = {
        "asm": "chromatin uniformity",
        "contrast": "chromatin clumping",
        "correlation": "chromatin gradualness",
        "sum_of_squares": "chromatin spread",
        "idm": "chromatin smoothness",
        "sum_average": "chromatin density",
        "sum_variance": "chromatin unevenness",
        "sum_entropy": "chromatin disorder of pairs",
        "entropy": "chromatin disorder",
        "difference_variance": "variability of chromatin contrast",
        "difference_entropy": "disorder of chromatin contrast",
        "imc1": "chromatin structure 1",
        "imc2": "chromatin structure 2",
    }
    for d, scale in ((1, "fine"), (3, "coarse")):
        for k, name in texture.items():
            g[f"haralick_{k}_d{d}"] = Term(f"{name}, {scale} scale", "", "measure")
    for k in range(9):
        what = {0: "dark chromatin spots", 4: "chromatin edges", 8: "bright chromatin spots"}.get(
            k, f"chromatin pattern {k}/8"
        )
        g[f"lbp_nucleus_u{k}"] = Term(what, "", "share")
    for r in GRANULARITY_RADII:
        g[f"granularity_nucleus_r{r}"] = Term(f"chromatin clumps about {2 * r} {LENGTH_UNIT} wide", "", "share")
    for k in range(1, RADIAL_RINGS + 1):
        where = {1: "at the rim", RADIAL_RINGS: "in the core"}.get(k, f"in ring {k} from the rim")
        g[f"radial_nucleus_ring{k}"] = Term(f"chromatin density {where} of the nucleus", "", "ratio")
    return g


def _colour_entries() -> dict[str, Term]:
    """Stain colour of nucleus and cytoplasm (optical density)."""
    g: dict[str, Term] = {}
    for region in ("nucleus", "cytoplasm"):
        g[f"color_{region}_od_mean"] = Term(f"{region} stain density", "OD", "ratio")
        g[f"color_{region}_od_rbc_ratio"] = Term(f"{region} stain density vs red cells", "", "ratio")
        for c in ("red", "green", "blue"):
            g[f"color_{region}_od_{c}_mean"] = Term(f"{region} {c}-light absorption", "OD", "ratio")
            g[f"color_{region}_od_{c}_std"] = Term(f"{region} patchiness of {c}-light absorption", "OD", "ratio")
            g[f"color_{region}_od_{c}_fraction"] = Term(f"{region} share of absorption in {c} light", "", "share")
    return g


def _flag_entries() -> dict[str, Term]:
    """Per-patient shares of quality-control and cell-type flags."""
    # per-patient shares of quality-control and cell-type flags (aggregate.py's frac_<flag>)
    flags = {
        "qc_ok": "crops passing quality control",
        "qc_off_centre": "crops off centre",
        "qc_at_border": "crops with the nucleus cut by the border",
        "qc_too_small": "crops with a too small nucleus",
        "qc_too_large": "crops with a too large nucleus",
        "qc_touching": "cells touching another cell",
        "qc_neighbour_split": "cells split from a touching neighbour",
        "is_pyknotic": "pyknotic cells",
        "is_granulocyte": "granulocytes",
        "is_monocyte": "monocytes",
        "is_not_lymphocyte": "cells that are not lymphocytes",
        "is_smudge": "smudge cells",
        "qc_blur": "blurred crops",
        "qc_tight_crop": "crops cut close around the cell (no red cells, little glass)",
    }
    return {f"frac_{flag}": Term(f"share of {name}", "", "share") for flag, name in flags.items()}


#: Every column a clinician may read about, by its name in cells.parquet / patients.parquet / the model.
GLOSSARY: dict[str, Term] = _entries()

#: Words for the per-patient statistic of an aggregate input (``nucleus_area__mean``).
STATISTICS = {
    "mean": "mean over cells",
    "std": "spread across cells",
    "median": "median over cells",
}


def _statistic(stat: str) -> str:
    if stat in STATISTICS:
        return STATISTICS[stat]
    m = re.fullmatch(r"q(\d{1,2})", stat)
    if m:
        return f"{int(m.group(1))}th percentile over cells"
    m = re.fullmatch(r"frac_gt(\d{2})", stat)
    if m:
        return f"share of cells above 0.{m.group(1)}"
    return stat.replace("_", " ")


def term(name: str) -> Term | None:
    """The glossary entry of a column or model input, None when it has none.

    A per-patient summary ``base__stat`` is named after its per-cell base with
    the statistic (``"nucleus area, mean"``); a spread keeps the base's unit, a
    share of cells above a cut-off is a share. Cell-score summaries are named
    after their cell model; learned (CNN) inputs by their number.
    """
    if name in GLOSSARY:
        return GLOSSARY[name]
    base, sep, stat = name.rpartition("__")
    block = cell_model_block(name)
    if block is not None:
        label = CELL_MODEL_BLOCKS[block].label
        if not sep:
            return Term(label, "", "ratio")
        kind = "share" if stat.startswith("frac_gt") else "ratio"
        return Term(f"{label}, {_statistic(stat)}", "", kind)
    if name.startswith("cnn_") and not sep:
        return Term(f"learned feature {name[len('cnn_') :]}", "", "measure")
    if sep and base:
        inner = term(base)
        if inner is not None:
            kind = "share" if stat.startswith("frac_gt") else inner.kind
            return Term(f"{inner.name}, {_statistic(stat)}", "" if kind == "share" else inner.unit, kind)
    return None


def clinician_name(name: str) -> str:
    """The plain-language name of a column or model input (its own name, underscores spaced, when unknown)."""
    t = term(name)
    return t.name if t is not None else name.replace("_", " ")


def format_value(name: str, value) -> str:
    """A value of a column or model input, in its unit, rounded for reading (``"missing"`` when absent)."""
    t = term(name)
    if t is None:
        return Term(name).format(value)
    return t.format(value)


def format_input_value(name: str, value, ascii: bool = False) -> str:
    """A model input's value as a lab report writes it.

    The clinical inputs in their clinical units: ``log_lymph_count`` (the model's
    natural log of the count) and ``lymph_count`` (as stored) as ``"8.30 ×10⁹/L"``,
    ``age`` as ``"67 years"``, ``gender_male`` (1/0) as ``"male"``/``"female"``;
    other inputs through :func:`format_value`.

    Parameters
    ----------
    name : str
        Model input or column name.
    value : float
        Its value as the model takes it.
    ascii : bool
        Write units in plain ASCII (``"8.30 x10^9/L"``, ``"um^2"``), for files read by tools
        that mangle Unicode.

    Examples
    --------
    >>> format_input_value("lymph_count", 8.3, ascii=True)
    '8.30 x10^9/L'
    >>> format_input_value("gender_male", float("nan"))
    'missing'
    """
    text = format_value(name, value)
    return to_ascii(text) if ascii else text


def to_ascii(text: str) -> str:
    """Units written in plain ASCII: ``×10⁹/L`` -> ``x10^9/L``, ``²`` -> ``^2``, ``µ`` -> ``u``."""
    return text.replace("×10⁹", "x10^9").replace("²", "^2").replace("µ", "u").replace("×", "x")


def glossary_markdown() -> str:
    """The glossary as the markdown table of docs/features.md (generated from :data:`GLOSSARY`)."""
    lines = ["| column | name in the report | unit | written as |", "|---|---|---|---|"]
    examples = {
        "measure": "3 significant digits",
        "share": "percent",
        "ratio": "2 decimals",
        "count": "whole number",
        "years": "completed years",
        "sex": "male / female",
        "log_count": "the count (exp of the log), 2 decimals",
        "lymph_count": "2 decimals",
    }
    for col, t in GLOSSARY.items():
        lines.append(f"| `{col}` | {t.name} | {t.unit or '–'} | {examples[t.kind]} |")
    return "\n".join(lines) + "\n"
