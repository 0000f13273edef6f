"""Self-contained HTML report of a fitted model, written for the hematologists who read it.

:func:`write_report` reads a model folder (``lympho fit``) and a features folder
(``lympho extract``) and writes ``REPORT_DIR/index.html``: cohort, cross-validated
performance, what the model looks at, one page per patient with the cells that
drove its decision, provenance and caveats. Everything is inline (figures as
base64 PNG, cell crops as base64 JPEG), the page needs no network and no
JavaScript (its Content-Security-Policy forbids both), and it prints one patient
per page.

Explanations are LightGBM's own SHAP values (``Booster.predict(...,
pred_contrib=True)``): per patient, each feature's additive contribution to the
log-odds of tumoral, so the contributions plus the base value give the model's
score exactly. model.json is read defensively: a section whose data is absent
is left out, so the report works with richer model folders too.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from ._io import atomic_path, dataframe_fingerprint, library_versions
from .errors import ReportError  # noqa: F401 (re-exported)
from .features import CELL_FINDINGS
from .features import describe_feature as describe_cell_feature
from .segment import FLAG_DESCRIPTIONS

#: Log-odds are what SHAP contributions add up to; the page converts the total to a probability.
TUMORAL_COLOUR = "#c0392b"
REACTIVE_COLOUR = "#2e6da4"
UNKNOWN_COLOUR = "#8c8c8c"
NUCLEUS_OUTLINE = (255, 215, 0)  # gold: visible on purple chromatin and pink red cells
CELL_OUTLINE = (0, 200, 70)  # green: visible on pale-blue cytoplasm and the cream background


# ------------------------------------------------------- plain language ----
#: Feature families: (name prefixes, key, title, meaning for a clinician). First match wins.
FAMILIES: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    (
        ("cnn_",),
        "learned",
        "Learned features (CNN embedding)",
        "not hand-made: a principal component of a neural network's (ImageNet-pretrained EfficientNet-Lite0) "
        "description of each cell; it has no plain-language meaning, look at the cells",
    ),
    (
        ("age", "gender_male", "log_lymph_count", "lymph_count", "gender"),
        "clinical",
        "Clinical values",
        "age, sex and blood lymphocyte count given with the request",
    ),
    (
        ("n_cells",),
        "acquisition",
        "Number of crops",
        "how many lymphocyte images were taken from the smear: reflects how the slide was scanned as much as the patient",
    ),
    (
        ("frac_qc_",),
        "quality",
        "Image quality",
        "share of crops failing a quality check (off-centre, touching cells, blur): mostly acquisition",
    ),
    (
        ("frac_is_", "frac_"),
        "cell_types",
        "Cell-type flags",
        "share of smudge (broken) cells and of cells that are not lymphocytes",
    ),
    (
        ("shape_", "nucleus_area", "cell_area"),
        "shape",
        "Size and shape",
        "size of nucleus and cell, roundness, notches and clefts of the outline",
    ),
    (
        ("nc_",),
        "nc",
        "Nucleus vs cytoplasm",
        "how much of the cell the nucleus fills, thickness of the cytoplasm rim",
    ),
    (
        ("haralick_",),
        "texture",
        "Chromatin texture",
        "how smooth, clumped or coarse the chromatin looks (Haralick texture)",
    ),
    (("lbp_",), "lbp", "Chromatin micro-pattern", "fine repeated patterns of the chromatin (local binary patterns)"),
    (("granularity_",), "granularity", "Chromatin granularity", "size of the chromatin clumps"),
    (
        ("radial_",),
        "radial",
        "Radial chromatin distribution",
        "whether chromatin is condensed at the rim or the centre of the nucleus",
    ),
    (("nucleoli_",), "nucleoli", "Nucleoli", "pale spots inside the nucleus (nucleoli), a sign of immature cells"),
    (
        ("color_",),
        "color",
        "Stain colour",
        "how dark and how blue nucleus and cytoplasm stain (optical density; also depends on stain and scanner)",
    ),
    (
        ("cell_score", "cellscore"),
        "cell_score",
        "Cell-level score",
        "a per-cell model's estimate of how tumoral each cell looks, summarised over the patient",
    ),
)
_FAMILY_TITLE = {k: t for _, k, t, _ in FAMILIES} | {"other": "Other"}
_FAMILY_MEANING = {k: m for _, k, _, m in FAMILIES} | {"other": ""}

#: Families that may reflect how the smear was acquired rather than the patient's biology.
ACQUISITION_FAMILIES = ("acquisition", "quality", "color")

_CLINICAL = {
    "age": "age at the reference date (years)",
    "gender_male": "sex (1 male, 0 female)",
    "log_lymph_count": "blood lymphocyte count (log of 10⁹/L)",
    "n_cells": "number of crops of the patient (readable images)",
    "n_cells_ok": "number of crops passing quality control",
}
#: Meaning of each QC outcome (``qc_reason``) of a crop.
_QC_REASON = {
    "ok": "passing quality control",
    "bad_image": "unreadable or too small image",
    "no_nucleus": "no nucleus found",
    "nucleus_off_centre": "nucleus off centre: probably not the cell the crop was taken for",
    "nucleus_at_border": "nucleus cut by the crop border",
    "nucleus_too_small": "nucleus too small to measure",
    "nucleus_too_large": "nucleus too large (clump of cells?)",
    "touching_cells": "cell touching another cell: outlines unreliable",
    "not_lymphocyte": "lobulated nucleus: granulocyte or monocyte rather than lymphocyte",
    "smudge": "smudge (broken) cell, frequent in chronic lymphocytic leukaemia",
    "blur": "blurred crop",
}
_STATS = {
    "mean": "average over the patient's cells",
    "std": "spread across the patient's cells (low: a uniform, monomorphic population)",
    "median": "median over the patient's cells",
}


def feature_family(name: str) -> str:
    """Family key of a model input (``shape``, ``texture``, ``clinical``...), ``other`` if unknown."""
    for prefixes, key, _, _ in FAMILIES:
        if name.startswith(prefixes):
            return key
    return "other"


def split_aggregate(name: str) -> tuple[str, str | None]:
    """``'nc_ratio__mean'`` -> ``('nc_ratio', 'mean')``; a non-aggregate name -> ``(name, None)``."""
    base, sep, stat = name.rpartition("__")
    return (base, stat) if sep and base else (name, None)


def _score_cutoff(stat: str | None) -> str | None:
    """The cut-off of a cell-score summary ``frac_gtNN`` (CellScoreAggregator's names) as ``0.NN``, else None."""
    m = re.fullmatch(r"frac_gt(\d{2})", stat or "")
    return f"0.{m.group(1)}" if m else None


def _stat_words(stat: str | None) -> str:
    if stat is None:
        return ""
    if stat in _STATS:
        return _STATS[stat]
    m = re.fullmatch(r"q(\d{1,2})", stat)
    if m:
        return f"{int(m.group(1))}th percentile over the patient's cells"
    cutoff = _score_cutoff(stat)
    if cutoff:
        return f"share of the patient's cells scoring above {cutoff}"
    return stat.replace("_", " ")


def _base_meaning(base: str) -> str:
    """Meaning of a model input that :mod:`lympho_features.features` does not describe (clinical, learned...)."""
    if base in _CLINICAL:
        return _CLINICAL[base]
    if base.startswith("cnn_"):
        return f"learned feature {base[len('cnn_') :]}, {_FAMILY_MEANING['learned']}"
    if base.startswith("frac_"):
        flag = base[len("frac_") :]
        return "share of crops flagged: " + FLAG_DESCRIPTIONS.get(flag, flag.replace("_", " "))
    fam = feature_family(base)
    words = base.replace("_", " ")
    return f"{words}: {_FAMILY_MEANING[fam]}" if _FAMILY_MEANING.get(fam) else words


def _external_description(name: str) -> str | None:
    """The description of :func:`lympho_features.features.describe_feature`, with the statistic's words."""
    for candidate in (name, split_aggregate(name)[0]):
        text = describe_cell_feature(candidate)
        if text:
            if candidate != name:
                stat = _stat_words(split_aggregate(name)[1])
                return f"{text}; {stat}" if stat else text
            return text
    return None


def describe_feature(name: str) -> str:
    """Plain-language meaning of a model input, e.g. ``haralick_contrast_d1__mean``.

    Uses the descriptions of :mod:`lympho_features.features` when it has them,
    else a mapping by family and feature name.
    """
    from .feature_sets import CELL_MODEL_BLOCKS, cell_model_block

    ext = _external_description(name)
    if ext:
        return ext
    base, stat = split_aggregate(name)
    block = cell_model_block(name)
    meaning = CELL_MODEL_BLOCKS[block].meaning if block else _base_meaning(base)
    return f"{meaning}; {_stat_words(stat)}" if stat else meaning


def short_label(name: str) -> str:
    """A compact readable label for plots: ``nucleus circularity · median``."""
    from .feature_sets import CELL_MODEL_BLOCKS, cell_model_block

    base, stat = split_aggregate(name)
    block = cell_model_block(name)
    if block:
        cutoff = _score_cutoff(stat)
        short = f"share > {cutoff}" if cutoff else stat
        return f"{CELL_MODEL_BLOCKS[block].label} · {short}" if short else CELL_MODEL_BLOCKS[block].label
    label = {
        "log_lymph_count": "lymphocyte count",
        "gender_male": "sex (male)",
        "age": "age",
        "n_cells": "number of crops",
        "n_cells_ok": "crops passing QC",
    }.get(base)
    if label is None:
        label = (
            base.replace("cnn_", "learned ")
            .replace("shape_", "")
            .replace("haralick_", "chromatin ")
            .replace("color_", "")
            .replace("_od_", " OD ")
            .replace("frac_is_", "share ")
            .replace("frac_qc_", "share QC ")
            .replace("_", " ")
        )
    return f"{label} · {stat}" if stat else label


# ------------------------------------------------------- explanations ----
def shap_contributions(booster, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient SHAP contributions of a LightGBM binary model, in log-odds.

    Returns
    -------
    contributions : ndarray, shape (n_patients, n_features)
        Positive values push toward tumoral.
    base : ndarray, shape (n_patients,)
        Expected score; ``base + contributions.sum(1)`` is the model's log-odds.
    """
    out = np.asarray(booster.predict(np.asarray(X, float), pred_contrib=True), float)
    return out[:, :-1], out[:, -1]


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, float)))


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _design_matrix(
    patients: pd.DataFrame,
    features: list[str],
    where: str,
    model_dir=None,
    meta: dict | None = None,
    embeddings_dir: str | Path | None = None,
) -> pd.DataFrame:
    from .feature_sets import cell_model_block, is_learned_feature
    from .model import ModelError, fill_missing_inputs, model_inputs, model_matrix

    X = model_matrix(patients)
    missing = [c for c in features if c not in X.columns]
    fitted = [c for c in missing if cell_model_block(c) is not None or is_learned_feature(c)]
    if missing and missing == fitted and model_dir is not None and meta is not None:
        # Inputs fitted on data (cell scores, CNN features) come from the model's own stages.
        try:
            return model_inputs(model_dir, meta, where, patients, embeddings_dir)
        except ModelError as exc:
            raise ReportError(str(exc)) from None
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ReportError(f"features in {where} lack {len(missing)} column(s) the model uses: {shown}")
    return fill_missing_inputs(X, meta) if meta is not None else X


def explain_predictions(
    model_dir: str | Path, features_dir: str | Path, top: int = 3, embeddings_dir: str | Path | None = None
) -> pd.DataFrame:
    """Predictions with each patient's strongest contributions, for ``lympho predict --explain``.

    Returns the contract columns ``patient_id, probability, prediction`` then,
    for k = 1..top, ``top{k}_feature``, ``top{k}_value`` (the patient's value)
    and ``top{k}_contribution`` (SHAP, log-odds; positive pushes toward tumoral),
    strongest first. ``embeddings_dir``: where the CNN embeddings of these
    patients are, for models with CNN inputs (default ``features_dir``).
    """
    from .model import load_model, load_patients
    from .model import predict as model_predict

    preds = model_predict(model_dir, features_dir, embeddings_dir)
    booster, meta = load_model(model_dir)
    patients = load_patients(features_dir)
    feats = meta["features"]
    X = _design_matrix(patients, feats, str(features_dir), model_dir, meta, embeddings_dir)[feats].to_numpy(float)
    contrib, _ = shap_contributions(booster, X)
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :top]
    rows = np.arange(len(X))[:, None]
    out = preds.copy()
    for k in range(min(top, len(feats))):
        idx = order[:, k]
        out[f"top{k + 1}_feature"] = [feats[i] for i in idx]
        out[f"top{k + 1}_value"] = X[rows[:, 0], idx]
        out[f"top{k + 1}_contribution"] = contrib[rows[:, 0], idx]
    return out


# ----------------------------------------------------------- metrics ----
def calibration_bins(y_true, proba, n_bins: int = 10) -> pd.DataFrame:
    """Reliability table: per equal-width probability bin, mean predicted, observed rate, count.

    The bins are those of :func:`lympho_features.model.calibration_table` (stored in model.json), as a table.
    """
    from .model import calibration_table

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


# ------------------------------------------------------------ images ----
def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    return _data_uri(buf.getvalue(), "image/png")


def cell_thumbnail(
    rgb: np.ndarray, nucleus_mask: np.ndarray, cell_mask: np.ndarray, size: int = 104, quality: int = 75
) -> bytes:
    """JPEG thumbnail zoomed on the cell, with its outline (green) and its nucleus outline (gold).

    The crop is cut to a square around the cell (a quarter of its size as
    margin, at least 40% of the crop side) so the chromatin stays visible at
    thumbnail size; the outlines are drawn at thumbnail scale so they stay one
    pixel wide.
    """
    import cv2

    h, w = rgb.shape[:2]
    ys, xs = np.nonzero(cell_mask if cell_mask.any() else nucleus_mask)
    if len(ys):
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        side = max(ys.max() - ys.min(), xs.max() - xs.min()) * 1.5
    else:
        cy, cx, side = (h - 1) / 2, (w - 1) / 2, 0.6 * min(h, w)
    side = int(min(max(side, 0.4 * min(h, w)), min(h, w)))
    y0 = int(np.clip(round(cy - side / 2), 0, h - side))
    x0 = int(np.clip(round(cx - side / 2), 0, w - side))
    box = (slice(y0, y0 + side), slice(x0, x0 + side))
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
    small = cv2.resize(np.ascontiguousarray(rgb[box]), (size, size), interpolation=interp)
    for mask, colour in ((cell_mask, CELL_OUTLINE), (nucleus_mask, NUCLEUS_OUTLINE)):
        m = cv2.resize(mask[box].astype(np.uint8) * 255, (size, size), interpolation=cv2.INTER_LINEAR) > 127
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(small, contours, -1, colour, 1, lineType=cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - encoding an RGB uint8 array does not fail
        raise ReportError("cannot encode a thumbnail")
    return buf.tobytes()


def _segmentation_settings(manifest: dict):
    """The segmentation settings recorded at extraction (defaults when absent or unreadable)."""
    from dataclasses import fields

    from .segment import SegmentationSettings

    recorded = (manifest.get("settings") or {}).get("segmentation")
    if not isinstance(recorded, dict):
        return SegmentationSettings()
    known = {f.name for f in fields(SegmentationSettings)}
    try:
        return SegmentationSettings(**{k: v for k, v in recorded.items() if k in known})
    except (TypeError, ValueError):
        return SegmentationSettings()


# --------------------------------------------------------------- data ----
@dataclass
class ReportInputs:
    """Everything the report is built from, read once."""

    model_dir: Path
    features_dir: Path
    booster: object
    meta: dict
    patients: pd.DataFrame  # one row per patient of FEATURES_DIR, natural order
    X: np.ndarray  # model inputs, rows as patients
    proba: np.ndarray
    contrib: np.ndarray
    base: np.ndarray
    cells: pd.DataFrame | None
    manifest: dict
    cv_predictions: pd.DataFrame | None
    data_dir: Path | None
    warnings: list[str] = field(default_factory=list)
    #: The cell model's SHAP contributions per scored cell (rows: index of ``cells``), when the model has one.
    cell_contrib: pd.DataFrame | None = None
    #: The cell model's training-cell median of each feature (a typical cell), when it has them.
    cell_medians: dict = field(default_factory=dict)
    _ranks: np.ndarray | None = field(default=None, repr=False)

    @functools.cached_property
    def uncertain(self) -> np.ndarray:
        """Whether each patient's probability lies in the model's refer band (``lympho predict``'s ``uncertain``)."""
        from .model import uncertain_calls

        return uncertain_calls(self.proba, self.meta)

    @property
    def reference(self) -> dict | None:
        """The training patients' reference ranges stored with the model (models fitted before them: None)."""
        return self.meta.get("reference") or None

    @property
    def percentile_ranks(self) -> np.ndarray:
        """Percentile (0-100) of each patient's value of each input.

        Among the model's training patients when model.json holds their
        reference ranges, else among the patients of the report.
        """
        if self._ranks is None:
            if self.reference is not None:
                from .model import reference_percentile

                ranks = [
                    [reference_percentile(v, self.reference, f) for f, v in zip(self.features, row, strict=True)]
                    for row in self.X
                ]
                self._ranks = np.array(ranks, dtype=float)  # None -> nan
            else:
                self._ranks = pd.DataFrame(self.X).rank(pct=True).to_numpy() * 100
        return self._ranks

    @property
    def features(self) -> list[str]:
        return list(self.meta["features"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def load_inputs(model_dir: str | Path, features_dir: str | Path, data_dir: str | Path | None = None) -> ReportInputs:
    """Read model, features, cells, manifest and CV predictions; compute probabilities and SHAP values."""
    from .model import ModelError, load_model, load_patients

    model_dir, features_dir = Path(model_dir), Path(features_dir)
    try:
        booster, meta = load_model(model_dir)
        patients = load_patients(features_dir)
    except ModelError as exc:
        raise ReportError(str(exc)) from None
    warnings: list[str] = []
    if patients.empty:
        raise ReportError(f"{features_dir / 'patients.parquet'} has no patient")
    patients = patients.iloc[sorted(range(len(patients)), key=lambda i: _natural_key(patients["patient_id"].iat[i]))]
    patients = patients.reset_index(drop=True)
    feats = list(meta["features"])
    X = _design_matrix(patients, feats, str(features_dir), model_dir, meta)[feats].to_numpy(float)
    contrib, base = shap_contributions(booster, X)
    proba = _sigmoid(base + contrib.sum(1))

    cells = None
    cells_path = features_dir / "cells.parquet"
    if cells_path.is_file():
        try:
            cells = pd.read_parquet(cells_path)
        except Exception as exc:
            warnings.append(f"{cells_path} unreadable ({exc}): cell sections left out")
    else:
        warnings.append(f"{cells_path} not found: cell counts and galleries left out")
    cell_contrib, cell_medians = None, {}
    if cells is not None and "cell_score" not in cells.columns:
        from .model import cell_scores

        try:  # a model with a cell model scores each cell (galleries of the most tumoral-looking cells)
            scored = cell_scores(model_dir, meta, cells, contributions=True)
        except ModelError as exc:
            scored = None
            warnings.append(f"cells could not be scored by the cell model ({exc})")
        if scored is not None:
            scores, cell_contrib, cell_medians = scored
            cells = cells.assign(cell_score=scores)

    manifest: dict = {}
    man_path = features_dir / "manifest.json"
    if man_path.is_file():
        try:
            manifest = json.loads(man_path.read_text())
        except (OSError, ValueError) as exc:
            warnings.append(f"{man_path} unreadable ({exc})")
    if data_dir is None and manifest.get("data_dir"):
        data_dir = manifest["data_dir"]
    data_dir = Path(data_dir) if data_dir else None
    if cells is not None and (data_dir is None or not data_dir.is_dir()):
        warnings.append(
            f"crop folder {data_dir} not found: galleries show no images (use --data-dir)"
            if data_dir
            else "no crop folder recorded in manifest.json: galleries show no images (use --data-dir)"
        )
        data_dir = None

    cvp = None
    cvp_path = model_dir / "cv_predictions.csv"
    if not cvp_path.is_file():
        warnings.append(f"{cvp_path} not found: ROC, calibration and CV probabilities left out")
    else:
        try:
            cvp = pd.read_csv(cvp_path, dtype={"patient_id": str})
            if not {"patient_id", "label", "probability"} <= set(cvp.columns):
                warnings.append(f"{cvp_path} lacks patient_id/label/probability: CV plots left out")
                cvp = None
        except Exception as exc:
            warnings.append(f"{cvp_path} unreadable ({exc}): CV plots left out")
    return ReportInputs(
        model_dir,
        features_dir,
        booster,
        meta,
        patients,
        X,
        proba,
        contrib,
        base,
        cells,
        manifest,
        cvp,
        data_dir,
        warnings,
        cell_contrib=cell_contrib,
        cell_medians=cell_medians,
    )


# ---------------------------------------------------------- html bits ----
def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, digits: int = 3) -> str:
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
    return _e(x)


def _pm(summary: dict, key: str) -> str:
    mean, std = summary.get(f"{key}_mean"), summary.get(f"{key}_std")
    if not isinstance(mean, int | float):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if isinstance(std, int | float) else f"{mean:.3f}"


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kpis(pairs) -> str:
    """A row of key figures: ``(value, what it is)`` pairs; values are already-escaped HTML, labels are text."""
    return (
        '<div class="kpis">'
        + "".join(f"<div class='kpi'><b>{a}</b><span>{_e(b)}</span></div>" for a, b in pairs)
        + "</div>"
    )


def _img(uri: str, alt: str, cls: str = "fig") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{_e(alt)}">'


CSS = """
:root { --tum: #c0392b; --rea: #2e6da4; --ink: #1d1d1f; --mute: #666; --line: #ddd; }
* { box-sizing: border-box; }
body { font: 14px/1.45 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: var(--ink);
       max-width: 1100px; margin: 0 auto; padding: 16px 24px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 19px; border-bottom: 2px solid var(--ink);
     padding-bottom: 3px; margin-top: 28px; } h3 { font-size: 15px; margin: 16px 0 6px; }
.sub { color: var(--mute); } .small { font-size: 12px; } .mono { font-family: "DejaVu Sans Mono", monospace; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num, th.num { text-align: right; }
.kpis { display: flex; flex-wrap: wrap; gap: 10px; margin: 10px 0; }
.kpi { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; min-width: 150px; }
.kpi b { display: block; font-size: 20px; } .kpi span { color: var(--mute); font-size: 12px; }
.figs { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
img.fig { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; margin: 10px 0; }
.caveat li { margin-bottom: 6px; }
nav ol { columns: 2; font-size: 13px; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; }
.tag.t { background: var(--tum); } .tag.r { background: var(--rea); } .tag.u { background: #8c8c8c; }
.tag.warn { background: #e67e22; }
tr.miss td { background: #fdecea; }
.patient { border-top: 3px solid var(--ink); margin-top: 30px; padding-top: 8px; }
.decision { display: flex; gap: 16px; flex-wrap: wrap; align-items: stretch; margin: 8px 0; }
.decision > div { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
.prob { font-size: 26px; font-weight: bold; }
.wf { width: 100%; border-collapse: collapse; }
.wf td { border: none; padding: 2px 4px; font-size: 12.5px; }
.wf td.lab { width: 42%; } .wf td.val { width: 9%; text-align: right; font-family: "DejaVu Sans Mono", monospace; }
.wf td.bar { width: 49%; position: relative; }
.track { position: relative; height: 16px; background: #fafafa; }
.seg { position: absolute; top: 2px; height: 12px; }
.seg.up { background: var(--tum); } .seg.down { background: var(--rea); } .seg.base { background: #999; }
.thr { position: absolute; top: 0; bottom: 0; border-left: 2px dashed #222; }
.gallery { display: flex; flex-wrap: wrap; gap: 6px; }
.cell { width: 108px; font-size: 11px; text-align: center; line-height: 1.2; }
.cell img { width: 104px; height: 104px; display: block; margin: 0 auto 2px; border: 1px solid #ccc; }
.cell .missing { width: 104px; height: 104px; border: 1px dashed #bbb; color: #999; display: flex;
                 align-items: center; justify-content: center; margin: 0 auto 2px; }
.groups { display: flex; flex-wrap: wrap; gap: 4px 18px; }
.group { margin-bottom: 8px; flex: 0 1 470px; } .group h4 { margin: 4px 0; font-size: 13px; }
.legend-dot { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin: 0 3px 0 8px; }
pre { background: #f6f6f6; padding: 8px; font-size: 11.5px; white-space: pre-wrap; word-break: break-all; }
@page { size: A4; margin: 12mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 11.5px; }
  nav { display: none; }
  .patient { break-before: page; border-top: none; margin-top: 0; }
  section.major { break-before: page; }
  h2 { margin-top: 0; } h3 { margin: 8px 0 3px; }
  .prob { font-size: 18px; }
  .decision { flex-wrap: nowrap; gap: 8px; margin: 4px 0; } .decision > div { padding: 4px 8px; }
  .decision table { margin: 2px 0; } .decision th, .decision td { padding: 1px 4px; }
  .wf td { font-size: 9.5px; padding: 0 3px; line-height: 1.2; }
  .wf td.lab { width: 60%; } .wf td.val { width: 7%; } .wf td.bar { width: 33%; }
  .wf .small { font-size: 8.5px; }
  .track { height: 11px; } .seg { top: 1px; height: 9px; }
  .groups { gap: 2px 12px; } .group { flex: 0 1 320px; margin-bottom: 4px; }
  .group .small { font-size: 8.5px; }
  .cell { width: 74px; font-size: 8.5px; } .cell img, .cell .missing { width: 70px; height: 70px; }
  .group h4 { font-size: 10px; margin: 2px 0; }
  .figs, .group, table.cm, .decision, .kpis { break-inside: avoid; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# ---------------------------------------------------------- sections ----
def _label_tag(label) -> str:
    if label is None or (isinstance(label, float) and np.isnan(label)) or pd.isna(label):
        return '<span class="tag u">unknown</span>'
    return '<span class="tag t">tumoral</span>' if int(label) == 1 else '<span class="tag r">reactive</span>'


def _iqr(s: pd.Series, digits: int = 1) -> str:
    s = pd.to_numeric(s, errors="coerce").dropna()
    if s.empty:
        return "–"
    q1, q2, q3 = s.quantile([0.25, 0.5, 0.75])
    return f"{q2:.{digits}f} [{q1:.{digits}f}–{q3:.{digits}f}]"


def section_cohort(inp: ReportInputs) -> str:
    p = inp.patients
    lab = p["label"]
    n_t, n_r = int((lab == 1).sum()), int((lab == 0).sum())
    n_u = len(p) - n_t - n_r
    parts = ['<section id="cohort" class="major"><h2>1. Cohort</h2>']
    kpis = [(f"{len(p)}", "patients")] + ([(f"{n_t} / {n_r}", "tumoral / reactive")] if n_t + n_r else [])
    if n_u:
        kpis.append((f"{n_u}", "without label"))
    if inp.cells is not None:
        n_ok = int(inp.cells["qc_ok"].sum()) if "qc_ok" in inp.cells else 0
        kpis.append((f"{len(inp.cells):,}", "cell crops"))
        kpis.append((f"{n_ok / max(len(inp.cells), 1):.1%}", "crops passing quality control"))
    parts.append(_kpis(kpis))

    # Clinical summaries by class.
    groups = [
        (n, g) for n, g in (("tumoral", p[lab == 1]), ("reactive", p[lab == 0]), ("no label", p[lab.isna()])) if len(g)
    ]
    rows = []
    for name, col, fmt in (
        ("Age, years: median [IQR]", "age", lambda g: _iqr(g["age"])),
        ("Male", "gender", lambda g: f"{(g['gender'] == 'M').mean():.0%}" if len(g) else "–"),
        ("Lymphocyte count, 10⁹/L: median [IQR]", "lymph_count", lambda g: _iqr(g["lymph_count"])),
        ("Crops per patient: median [IQR]", "n_cells", lambda g: _iqr(g["n_cells"], 0)),
    ):
        if col in p:
            rows.append([name] + [fmt(g) for _, g in groups])
    parts.append("<h3>Clinical values by class</h3>")
    parts.append(_table(["", *[f"{n} (n={len(g)})" for n, g in groups]], rows))

    if inp.cells is not None and "qc_reason" in inp.cells:
        vc = inp.cells["qc_reason"].value_counts()
        total = max(int(vc.sum()), 1)
        qrows = [[_e(r), f"{int(c):,}", f"{c / total:.1%}", _e(_QC_REASON.get(r, ""))] for r, c in vc.items()]
        flag_rows = []
        for f in ("is_smudge", "is_not_lymphocyte"):
            if f in inp.cells:
                c = int(inp.cells[f].sum())
                flag_rows.append([_e(f), f"{c:,}", f"{c / total:.1%}", _e(FLAG_DESCRIPTIONS[f])])
        parts.append("<h3>Quality control of the crops</h3>")
        parts.append(
            "<p class='small sub'>Each crop gets the first failed check; cells failing a check are kept but left out "
            "of the morphology summaries. Cell-type flags are counted over all crops.</p>"
        )
        parts.append(_table(["outcome", "crops", "share", "meaning"], qrows + flag_rows))
    parts.append(_cohort_figure(p))
    parts.append("</section>")
    return "".join(parts)


def _class_colour(label) -> str:
    if pd.isna(label):
        return UNKNOWN_COLOUR
    return TUMORAL_COLOUR if int(label) == 1 else REACTIVE_COLOUR


def _plain_log_ticks(axis) -> None:
    """Ticks of a log axis written 2, 5, 10, 20... rather than 2x10^0."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _cohort_figure(p: pd.DataFrame) -> str:
    cols = [
        (c, t)
        for c, t in (
            ("age", "Age (years)"),
            ("lymph_count", "Lymphocyte count (10⁹/L)"),
            ("n_cells", "Crops per patient"),
        )
        if c in p
    ]
    if not cols:
        return ""
    fig = _figure(3.1 * len(cols), 2.6)
    axes = fig.subplots(1, len(cols), squeeze=False)[0]
    for ax, (c, title) in zip(axes, cols, strict=True):
        data, names, colours = [], [], []
        for lab, name, colour in (
            (0, "reactive", REACTIVE_COLOUR),
            (1, "tumoral", TUMORAL_COLOUR),
            (None, "no label", UNKNOWN_COLOUR),
        ):
            rows = p["label"].isna() if lab is None else p["label"] == lab
            v = pd.to_numeric(p.loc[rows.fillna(False), c], errors="coerce").dropna().to_numpy()
            if len(v):
                data.append(v)
                names.append(name)
                colours.append(colour)
        if not data:
            continue
        bp = ax.boxplot(data, tick_labels=names, widths=0.5, patch_artist=True, showfliers=False)
        for patch, colour in zip(bp["boxes"], colours, strict=True):
            patch.set_facecolor(colour)
            patch.set_alpha(0.35)
        rng = np.random.default_rng(0)  # fixed jitter: the same report twice is the same file
        for i, (v, colour) in enumerate(zip(data, colours, strict=True)):
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(v)), v, s=8, color=colour, alpha=0.7, lw=0)
        if c == "lymph_count":
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
    return f'<div class="figs">{_img(_png(fig), "clinical values by class")}</div>'


def _threshold_is_fixed(meta: dict) -> bool:
    """Whether the model's threshold is the fixed balanced one (0.5), not one chosen by cross-validation."""
    from .model import BALANCED_THRESHOLD

    return meta.get("min_sensitivity") is None and meta.get("threshold") == BALANCED_THRESHOLD


def section_performance(inp: ReportInputs) -> str:
    from .model import BALANCED_THRESHOLD

    cv = inp.meta.get("cv") if isinstance(inp.meta.get("cv"), dict) else {}
    parts = ['<section id="performance" class="major"><h2>2. How good is the model? (cross-validation)</h2>']
    if cv:
        parts.append(
            f"<p>Estimated by {_fmt(cv.get('folds'))}-fold cross-validation repeated {_fmt(cv.get('repeats'))} times "
            f"on {_fmt(cv.get('n_patients'))} patients: every patient is scored by models that never saw it. "
            + (
                f"The decision threshold is {BALANCED_THRESHOLD}, the neutral point of a model that weighs both classes "
                "equally (nothing is tuned for it). "
                if _threshold_is_fixed(inp.meta)
                else "The decision threshold"
                + (
                    f" (minimum sensitivity {_fmt(inp.meta.get('min_sensitivity'))})"
                    if inp.meta.get("min_sensitivity") is not None
                    else ""
                )
                + " is chosen on each fold's training patients only. "
            )
            + "Values are mean ± standard deviation across repeats.</p>"
        )
        kpis = [
            ("balanced_accuracy", "balanced accuracy"),
            ("roc_auc", "ROC AUC"),
            ("sensitivity", "sensitivity (tumoral found)"),
            ("specificity", "specificity (reactive cleared)"),
            ("brier", "Brier score (lower is better)"),
        ]
        parts.append(_kpis((_pm(cv, k), t) for k, t in kpis if f"{k}_mean" in cv))
        per = cv.get("per_repeat")
        if isinstance(per, list) and per and isinstance(per[0], dict):
            keys = [k for k, _ in kpis if k in per[0]]
            rows = []
            for k in keys:
                v = np.array([r.get(k, np.nan) for r in per], float)
                rows.append([_e(k.replace("_", " ")), _fmt(np.nanmin(v)), _fmt(np.nanmax(v))])
            parts.append(
                "<details open><summary class='small'>range across repeats</summary>"
                + _table(["metric", "worst repeat", "best repeat"], rows)
                + "</details>"
            )
    else:
        parts.append("<p class='note'>model.json has no cross-validation summary.</p>")

    cvp = inp.cv_predictions
    figs = []
    if cvp is not None and cvp["label"].nunique() == 2:
        figs.append(_img(_roc_figure(cvp, cv), "ROC curve"))
        figs.append(_img(_calibration_figure(cvp, inp.meta), "calibration"))
    parts.append(f'<div class="figs">{"".join(figs)}</div>' if figs else "")
    if cvp is not None and "prediction" in cvp:
        parts.append(_confusion_html(cvp, inp.threshold, inp.meta))
    if cvp is not None and cvp["label"].nunique() == 2:
        parts.append(_operating_points_html(cvp, inp.meta))
    parts.append(_held_out_html(inp))
    parts.append(_ablation_html(inp.meta))
    parts.append("</section>")
    return "".join(parts)


def _roc_figure(cvp: pd.DataFrame, cv: dict) -> str:
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = _figure(4.2, 3.9)
    ax = fig.add_subplot()
    groups = cvp.groupby("repeat") if "repeat" in cvp else [(0, cvp)]
    aucs = []
    for _, g in groups:
        fpr, tpr, _ = roc_curve(g["label"], g["probability"])
        aucs.append(roc_auc_score(g["label"], g["probability"]))
        ax.plot(fpr, tpr, color="#555", lw=0.8, alpha=0.45)
    ax.plot([0, 1], [0, 1], ls=":", color="#aaa", lw=1)
    auc_txt = f"AUC {np.mean(aucs):.3f} ± {np.std(aucs, ddof=1) if len(aucs) > 1 else 0:.3f}"
    if "sensitivity_mean" in cv and "specificity_mean" in cv:
        ax.scatter(
            [1 - cv["specificity_mean"]],
            [cv["sensitivity_mean"]],
            color=TUMORAL_COLOUR,
            zorder=3,
            s=30,
            label="operating point (CV threshold)",
        )
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"ROC, one line per repeat ({auc_txt})", fontsize=9.5)
    ax.set_xlabel("1 − specificity (reactive called tumoral)", fontsize=9)
    ax.set_ylabel("sensitivity (tumoral found)", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.tick_params(labelsize=8)
    return _png(fig)


def _calibration_figure(cvp: pd.DataFrame, meta: dict) -> str:
    bins = calibration_bins(cvp["label"], cvp["probability"], 10)
    brier = float(np.mean((cvp["probability"] - cvp["label"]) ** 2))
    fig = _figure(4.2, 3.9)
    ax, axh = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls=":", color="#aaa", lw=1, label="perfect calibration")
    ax.plot(bins["mean_predicted"], bins["observed_rate"], "o-", color="#333", ms=4, label="model (CV)")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylabel("observed share tumoral", fontsize=9)
    ax.set_title(f"Reliability diagram (Brier {brier:.3f})", fontsize=9.5)
    ax.set_ylim(-0.02, 1.02)
    axh.bar((bins["bin_low"] + bins["bin_high"]) / 2, bins["count"], width=0.09, color="#999")
    axh.set_ylabel("count", fontsize=8)
    axh.set_xlabel("predicted probability of tumoral", fontsize=9)
    for a in (ax, axh):
        a.tick_params(labelsize=8)
    ax.set_xlim(0, 1)
    return _png(fig)


def _confusion_html(cvp: pd.DataFrame, threshold: float, meta: dict | None = None) -> str:
    reps = cvp["repeat"].nunique() if "repeat" in cvp else 1
    y, pred = cvp["label"].astype(int), cvp["prediction"].astype(int)
    tp, fn = int(((y == 1) & (pred == 1)).sum()), int(((y == 1) & (pred == 0)).sum())
    fp, tn = int(((y == 0) & (pred == 1)).sum()), int(((y == 0) & (pred == 0)).sum())

    def c(v):
        return f"{v / reps:.1f}" if reps > 1 else str(v)

    rows = [
        ["<b>tumoral</b>", f"<b>{c(tp)}</b> found", f"{c(fn)} missed"],
        ["<b>reactive</b>", f"{c(fp)} false alarms", f"<b>{c(tn)}</b> cleared"],
    ]
    note = f" (mean over {reps} repeats)" if reps > 1 else ""
    if _threshold_is_fixed(meta or {}):
        how = f"Every fold's decisions, like the final model's, use the fixed threshold {threshold:.3f}."
    else:
        how = (
            "Each fold's decisions use a threshold chosen on its training patients only. "
            f"The final model's threshold, chosen on all out-of-fold probabilities, is {threshold:.3f}."
        )
    return f"<h3>Confusion matrix in cross-validation{note}</h3><p class='small sub'>{how}</p>" + _table(
        ["true class", "called tumoral", "called reactive"], rows, "cm"
    )


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
    from .model import choose_threshold

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


def _operating_points_html(cvp: pd.DataFrame, meta: dict) -> str:
    table = operating_points(cvp, float(meta.get("threshold", 0.5)))
    rows = [
        [
            _e(r.operating_point),
            f"{r.threshold:.3f}",
            f"{r.sensitivity:.3f}",
            f"{r.specificity:.3f}",
            f"{r.reactive_cleared_per_100:.0f}",
        ]
        for r in table.itertuples()
    ]
    return (
        "<h3>Other operating points</h3>"
        "<p class='small sub'>A triage tool may prefer missing fewer tumoral patients to sparing more reactive ones "
        "flow cytometry. Each row's threshold is the highest that keeps the sensitivity of these out-of-fold "
        "predictions at the target, so it is a little optimistic: <code>lympho fit --min-sensitivity 0.95</code> "
        "chooses it inside each fold and reports the honest estimate.</p>"
        + _table(["operating point", "threshold", "sensitivity", "specificity", "reactive cleared per 100"], rows)
    )


def _ablation_rows(ablation) -> list[dict]:
    """Normalise an ablation table from model.json: a dict name->metrics or a list of records."""
    if isinstance(ablation, dict):
        if all(isinstance(v, dict) for v in ablation.values()):
            return [{"configuration": k, **v} for k, v in ablation.items()]
        return []
    if isinstance(ablation, list):
        return [r for r in ablation if isinstance(r, dict)]
    return []


def _held_out_html(inp: ReportInputs) -> str:
    """How the calls compare with the recorded classes of this report's patients that did not train the model.

    The patients the model was trained on are those of its cv_predictions.csv; without that file nobody can tell,
    and every labelled patient is counted, with a word of caution. Empty when no such patient has a label.
    """
    from .model import calls_table, labelled_metrics

    p = inp.patients
    calls = calls_table(p["patient_id"].astype(str).to_numpy(), inp.proba, inp.meta)
    known = inp.cv_predictions is not None
    if known:
        calls = calls[~calls["patient_id"].isin(set(inp.cv_predictions["patient_id"].astype(str)))]
    m = labelled_metrics(calls, p, inp.threshold)
    if m is None:
        return ""
    alarms = m["n_false_alarms"]
    confusion = [
        ["tumoral", f"{m['n_found']} found", f"{m['n_missed']} missed"],
        ["reactive", f"{alarms} false alarm{'' if alarms == 1 else 's'}", f"{m['n_cleared']} cleared"],
    ]
    kpis = [
        (f"{m['n']}", f"labelled patients ({m['n_tumoral']} tumoral, {m['n_reactive']} reactive)"),
        (_fmt(m["balanced_accuracy"]), "balanced accuracy"),
        (_fmt(m["roc_auc"]), "ROC AUC"),
        (_fmt(m["sensitivity"]), "sensitivity (tumoral found)"),
        (_fmt(m["specificity"]), "specificity (reactive cleared)"),
        (f"{m['n_uncertain']}", "uncertain (refer)"),
        (_fmt(m["balanced_accuracy_confident"]), f"balanced accuracy of the other {m['n'] - m['n_uncertain']} calls"),
    ]
    spread = ""
    if m["n_tumoral"]:
        lo, hi = wilson_interval(m["sensitivity"] * m["n_tumoral"], m["n_tumoral"])
        spread = (
            f" With {m['n_tumoral']} tumoral patients, a sensitivity of {m['sensitivity']:.2f} is compatible with "
            f"anything from about {lo:.2f} to {hi:.2f} (95% interval)."
        )
    return (
        "<h3>On this report's labelled patients the model never saw</h3>"
        if known
        else "<h3>On this report's labelled patients</h3>"
    ) + (
        "<p class='small sub'>The final model's calls at its threshold against the recorded class: a check on new "
        "patients, which cross-validation only estimates."
        + (
            ""
            if known
            else " <b>Whether the model was trained on them cannot be told</b> (its cv_predictions.csv is missing): "
            "if it was, these figures are in-sample and optimistic."
        )
        + spread
        + "</p>"
        + _kpis(kpis)
        + _table(["true class", "called tumoral", "called reactive"], confusion)
    )


#: Plain words for the blocks of a configuration in the ablation table (cell-model blocks: their report label).
_BLOCK_WORDS = {
    "clinical": "age, sex, lymphocyte count",
    "crops": "number of crops",
    "morphology": "per-patient summaries of every cell measurement",
    "cnn": "CNN embeddings of the cells",
}


def _configuration_words(name: str) -> str:
    """What a configuration of the ablation feeds the model, in plain words ("" when the name is not a feature set)."""
    from .feature_sets import CELL_MODEL_BLOCKS
    from .model import ModelError, parse_feature_set

    try:
        blocks, drop = parse_feature_set(name)
    except ModelError:
        return ""
    words = {**_BLOCK_WORDS, **{b: spec.label for b, spec in CELL_MODEL_BLOCKS.items()}}
    if "n_cells" in drop and "crops" in blocks:  # the crop count is the `crops` block's only input
        return " + ".join(words.get(b, b) for b in blocks if b != "crops")
    text = " + ".join(words.get(b, b) for b in blocks)
    return text + (", without the number of crops" if "n_cells" in drop else "")


def _interval(v) -> str:
    if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
        return f"[{v[0]:+.3f}, {v[1]:+.3f}]"
    return "–"


def _ablation_html(meta: dict) -> str:
    rows = _ablation_rows(meta.get("ablation"))
    if not rows:
        return ""
    intro = (
        "<h3>Ablation: what each kind of input adds</h3>"
        "<p class='small sub'>Cross-validated performance of models using only some inputs, on the same folds "
        "(as stored in model.json)."
    )
    if not all("balanced_accuracy" in r and "configuration" in r for r in rows):
        return intro + "</p>" + _generic_ablation_table(rows)
    # The table `lympho fit` writes (model.ablation_table): fixed columns, in the order a reader compares them.
    ref = next((k[len("delta_ba_vs_") :] for r in rows for k in r if k.startswith("delta_ba_vs_")), "clinical")
    mine = str(meta.get("feature_set", ""))

    def pm(r, key):
        v, sd = r.get(key), r.get(f"{key}_std")
        if not isinstance(v, int | float):
            return "–"
        return f"{v:.3f} ± {sd:.3f}" if isinstance(sd, int | float) else f"{v:.3f}"

    body = []
    for r in rows:
        name = _e(r["configuration"]) + (" <b>(this model)</b>" if r["configuration"] == mine else "")
        dba = r.get(f"delta_ba_vs_{ref}")
        body.append(
            [
                name,
                _e(_configuration_words(str(r["configuration"]))),
                _fmt(r.get("n_features")),
                pm(r, "balanced_accuracy"),
                pm(r, "roc_auc"),
                _fmt(r.get("sensitivity")),
                _fmt(r.get("specificity")),
                _fmt(r.get("brier")),
                "(reference)" if r["configuration"] == ref else _interval(dba),
                _interval(r.get(f"delta_auc_vs_{ref}")),
                _fmt(r.get("p_better_ba"), 2),
            ]
        )
    header = [
        "configuration",
        "inputs",
        "n",
        "balanced accuracy",
        "ROC AUC",
        "sensitivity",
        "specificity",
        "Brier",
        f"ΔBA vs {_e(ref)} [95%]",
        f"ΔAUC vs {_e(ref)} [95%]",
        "P(better BA)",
    ]
    return (
        intro + f" n: number of model inputs. Δ: paired bootstrap over patients of the difference to {_e(ref)}-only, "
        "95% interval; an interval that contains 0 means these patients cannot tell the two apart. "
        "P(better BA): share of the resamplings where the configuration's balanced accuracy is higher.</p>"
        + _table(header, body)
    )


def _generic_ablation_table(rows: list[dict]) -> str:
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
        return _fmt(v) if not isinstance(v, str) else _e(v)

    body = [[_e(r.get(name_key, "")) if name_key else ""] + [cell(r.get(c)) for c in cols] for r in rows]
    return _table([_e(name_key or ""), *[_e(c.replace("_", " ")) for c in cols]], body)


def global_importance(inp: ReportInputs) -> pd.DataFrame:
    """Per feature: gain importance, mean |SHAP|, direction, family and meaning, strongest first."""
    gain = np.asarray(inp.booster.feature_importance(importance_type="gain"), float)
    mean_abs = np.abs(inp.contrib).mean(0)
    direction = []
    for j in range(inp.X.shape[1]):
        x, s = inp.X[:, j], inp.contrib[:, j]
        ok = np.isfinite(x)
        if ok.sum() < 3 or np.nanstd(x[ok]) == 0 or np.std(s[ok]) == 0:
            direction.append(0.0)
            continue
        r = pd.Series(x[ok]).rank().corr(pd.Series(s[ok]).rank())
        direction.append(float(r) if np.isfinite(r) else 0.0)
    df = pd.DataFrame(
        {
            "feature": inp.features,
            "gain": gain,
            "gain_share": gain / gain.sum() if gain.sum() > 0 else 0.0,
            "mean_abs_shap": mean_abs,
            "direction": direction,
        }
    )
    df["family"] = df["feature"].map(feature_family)
    return df.sort_values(["mean_abs_shap", "gain"], ascending=False, kind="stable").reset_index(drop=True)


def _direction_words(r: float) -> str:
    if r > 0.3:
        return "higher → more tumoral"
    if r < -0.3:
        return "higher → more reactive"
    return "mixed / non-monotone"


def section_explanation(inp: ReportInputs, imp: pd.DataFrame) -> str:
    parts = ['<section id="explanation" class="major"><h2>3. What the model looks at</h2>']
    parts.append(
        "<p>Two views of importance: <b>gain</b> (how much each input improved the fit while the trees were grown) "
        "and <b>mean |SHAP|</b> (how far, on average, each input moves a patient's score, in log-odds, over the "
        f"{len(inp.patients)} patients of this report). Inputs are grouped by family.</p>"
    )
    fam = (
        imp.groupby("family")
        .agg(gain_share=("gain_share", "sum"), mean_abs_shap=("mean_abs_shap", "sum"), n=("feature", "size"))
        .sort_values("mean_abs_shap", ascending=False)
    )
    parts.append(f'<div class="figs">{_img(_family_figure(fam), "importance by family")}</div>')
    total = fam["mean_abs_shap"].sum()
    frows = [
        [
            _e(_FAMILY_TITLE.get(k, k)),
            _e(_FAMILY_MEANING.get(k, "")),
            str(int(r["n"])),
            f"{r['gain_share']:.0%}",
            f"{r['mean_abs_shap'] / total:.0%}" if total > 0 else "–",
        ]
        for k, r in fam.iterrows()
    ]
    parts.append(_table(["family", "what it measures", "inputs", "gain share", "SHAP share"], frows))

    top = imp.head(15)
    rows = []
    for i, r in top.iterrows():
        acq = " <span class='tag warn'>acquisition?</span>" if r["family"] in ACQUISITION_FAMILIES else ""
        rows.append(
            [
                str(i + 1),
                f"<span class='mono small'>{_e(r['feature'])}</span>{acq}",
                _e(describe_feature(r["feature"])),
                _e(_direction_words(r["direction"])),
                f"{r['mean_abs_shap']:.3f}",
                f"{r['gain_share']:.1%}",
            ]
        )
    parts.append("<h3>The 15 strongest inputs</h3>")
    parts.append(_table(["#", "input", "meaning", "direction", "mean |SHAP|", "gain share"], rows))
    parts.append(
        "<h3>Dependence plots</h3><p class='small sub'>Each dot is a patient: the input's value (x) against its "
        "contribution to the score (y, log-odds; above 0 pushes toward tumoral), coloured by recorded class.</p>"
    )
    parts.append(f'<div class="figs">{_img(_dependence_figure(inp, imp.head(6)), "dependence plots")}</div>')
    parts.append("</section>")
    return "".join(parts)


def _family_figure(fam: pd.DataFrame) -> str:
    fig = _figure(8.4, 0.32 * len(fam) + 1.1)
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    names = [_FAMILY_TITLE.get(k, k) for k in fam.index][::-1]
    ax1.barh(names, fam["gain_share"].to_numpy()[::-1] * 100, color="#777")
    ax1.set_xlabel("share of gain (%)", fontsize=9)
    total = fam["mean_abs_shap"].sum()
    ax2.barh(names, (fam["mean_abs_shap"].to_numpy()[::-1] / total * 100) if total > 0 else 0, color="#4a6fa5")
    ax2.set_xlabel("share of mean |SHAP| (%)", fontsize=9)
    for a in (ax1, ax2):
        a.tick_params(labelsize=8.5)
    return _png(fig)


def _dependence_figure(inp: ReportInputs, top: pd.DataFrame) -> str:
    n = len(top)
    ncols = 3
    nrows = max(1, math.ceil(n / ncols))
    fig = _figure(10.5, 2.9 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    lab = inp.patients["label"]
    colours = [_class_colour(v) for v in lab]
    for ax, (_, r) in zip(axes, top.iterrows(), strict=False):
        j = inp.features.index(r["feature"])
        x, s = inp.X[:, j], inp.contrib[:, j]
        if r["feature"] == "log_lymph_count":
            x = np.exp(x)
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis)
        ax.scatter(x, s, c=colours, s=12, alpha=0.75, lw=0)
        ax.axhline(0, color="#999", lw=0.8)
        ax.set_title(short_label(r["feature"]), fontsize=9)
        ax.set_ylabel("contribution", fontsize=8)
        ax.tick_params(labelsize=7.5)
    for ax in axes[n:]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", color=c, label=t)
        for c, t in ((TUMORAL_COLOUR, "tumoral"), (REACTIVE_COLOUR, "reactive"), (UNKNOWN_COLOUR, "no label"))
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    return _png(fig)


def section_caveats(inp: ReportInputs, imp: pd.DataFrame) -> str:
    cv = inp.meta.get("cv") if isinstance(inp.meta.get("cv"), dict) else {}
    n_train = inp.meta.get("n_training_patients", cv.get("n_patients"))
    n_t, n_r = cv.get("n_tumoral"), cv.get("n_reactive")
    items = [
        "<b>Decision support, not a diagnosis.</b> The score says whether the smear and the clinical values resemble "
        "the tumoral or the reactive patients the model was trained on. It does not replace a hematologist's review "
        "of the smear, nor flow cytometry, which remains the reference for a tumoral (clonal) lymphocytosis.",
    ]
    if n_train:
        prev = (
            f" ({n_t} tumoral, {n_r} reactive: {n_t / n_train:.0%} tumoral)"
            if n_t is not None and n_r is not None
            else ""
        )
        items.append(
            f"<b>What it was trained on.</b> {n_train} labeled patients{prev}"
            + (
                f" from <span class='mono'>{_e(Path(str(inp.manifest.get('data_dir'))).name)}</span>"
                if inp.manifest.get("data_dir") and _in_sample_check(inp)
                else ""
            )
            + ". One collection, one staining and scanning protocol. The model weighs reactive and tumoral "
            "patients equally, so its probability is that of a population with as many of each: where tumoral "
            "lymphocytoses are rarer than that, the same score means a lower chance of a tumoral cause, where they "
            "are more frequent (as in this cohort) a higher one. Patients unlike these (children, other scanners "
            "or stains, other cytopenias) are outside what the model has seen."
        )
    if cv.get("sensitivity_mean") is not None and n_t:
        lo, hi = wilson_interval(cv["sensitivity_mean"] * n_t, int(n_t))
        items.append(
            f"<b>The accuracy figures are estimates from few patients.</b> With {n_t} tumoral patients, a "
            f"cross-validated sensitivity of {cv['sensitivity_mean']:.2f} is compatible with anything from about "
            f"{lo:.2f} to {hi:.2f} (95% interval); about {1 - cv['sensitivity_mean']:.0%} of tumoral patients were "
            "called reactive in cross-validation. A reactive call should not stop a work-up that the clinical "
            "picture calls for."
        )
    total = imp["mean_abs_shap"].sum()
    clin = imp.loc[imp["family"] == "clinical", "mean_abs_shap"].sum()
    if total > 0:
        items.append(
            f"<b>How much the images count.</b> Clinical values (age, sex, lymphocyte count) account for "
            f"{clin / total:.0%} of the model's attributions over these patients, the cell images for the rest. "
            "Where the clinical values dominate a patient's waterfall, the cells shown are illustration more than "
            "evidence."
        )
    acq = imp.reset_index().loc[lambda d: d["family"].isin(ACQUISITION_FAMILIES)].head(6)
    acq_list = ", ".join(
        f"<span class='mono'>{_e(r['feature'])}</span> (#{int(r['index']) + 1})" for _, r in acq.iterrows()
    )
    items.append(
        "<b>Some inputs may reflect acquisition rather than biology.</b> The number of crops per patient "
        "(<span class='mono'>n_cells</span>) depends on how many lymphocytes were photographed, which may follow "
        "the lab's protocol for suspect smears; quality-control fractions depend on the scanner; stain colour "
        "(optical density) depends on staining and scanner even after normalisation. A model leaning on them may "
        "not carry over to another lab." + (f" In this model, by mean |SHAP| rank: {acq_list}." if acq_list else "")
    )
    items.append(
        "<b>Segmentation can fail.</b> Every measurement comes from automatic outlines (gold: nucleus, green: whole "
        "cell). The galleries show them: a wrong outline means a wrong measurement. Crops failing quality checks "
        "are kept aside from morphology but still counted."
    )
    items.append(
        "<b>Explanations are of the model, not of the disease.</b> A feature pushing toward tumoral means the model "
        "learned that association from the training patients; features are correlated, so credit may be shared "
        "between neighbours (e.g. nucleus area and perimeter)."
    )
    fp = inp.meta.get("training_data_fingerprint")
    if fp and inp.reference is None and _in_sample_check(inp) is False:
        items.append(
            "<b>These patients are not the training table.</b> Percentiles on patient pages compare each patient "
            f"with the {len(inp.patients)} patients of this report only."
        )
    body = "".join(f"<li>{t}</li>" for t in items)
    return f'<section id="caveats" class="major"><h2>Read this first: limits of this tool</h2><ul class="caveat">{body}</ul></section>'


def _in_sample_check(inp: ReportInputs) -> bool | None:
    """Whether FEATURES_DIR holds exactly the model's training table (None when it cannot be told)."""
    from .model import model_matrix

    fp = inp.meta.get("training_data_fingerprint")
    if not fp:
        return None
    labeled = inp.patients[inp.patients["label"].notna()]
    labeled = labeled.sort_values("patient_id", kind="stable").reset_index(drop=True)
    try:
        matrix = model_matrix(labeled)
        return dataframe_fingerprint(matrix[["patient_id", "label", *inp.features]]) == fp
    except Exception:
        return None


# ------------------------------------------------------------ patients ----
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
        shown = f" {_short_num(value)}" if np.isfinite(value) else ""
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
    cells = inp.cells
    if cells is None or "image" not in cells:
        return []
    pid = inp.patients["patient_id"].iat[i]
    pc = cells[cells["patient_id"] == pid]
    if pc.empty:
        return []
    ok = pc[pc["qc_ok"].astype(bool)] if "qc_ok" in pc else pc
    groups: list[GalleryGroup] = []
    used: set[str] = set()
    score_col = next((c for c in ("cell_score", "cell_score_tumoral", "cellscore") if c in pc.columns), None)
    if score_col is not None and pd.api.types.is_numeric_dtype(pc[score_col]):
        s = pc[score_col].dropna().sort_values(ascending=False, kind="stable")
        if len(s):
            caps = [
                (str(pc.at[ix, "image"]), f"score {_short_num(pc.at[ix, score_col])}{_cell_reasons(inp, ix)}")
                for ix in s.index[:per_group]
            ]
            used.update(c for c, _ in caps)
            note = (
                "Under each cell, the measurements that raised its score most (SHAP, log-odds of the cell model)."
                if inp.cell_contrib is not None
                else ""
            )
            groups.append(GalleryGroup("Most tumoral-looking cells by the cell-level model", note, caps))
    n_score_groups = len(groups)
    shown_bases: set[str] = set()
    order = np.argsort(-np.abs(inp.contrib[i]), kind="stable")
    for j in order:
        if len(groups) >= n_drivers or abs(inp.contrib[i, j]) < 1e-9:  # a cell-score row takes a driver's place
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
        if stat == "std":
            k = per_group // 2
            srt = vals.sort_values(kind="stable")
            chosen = list(srt.index[:k]) + [ix for ix in srt.index[::-1][: per_group - k] if ix not in srt.index[:k]]
            which = "lowest and highest"
        else:
            high = not np.isfinite(cohort_medians.get(name, np.nan)) or value >= cohort_medians[name]
            chosen = list(vals.sort_values(ascending=not high, kind="stable").index[:per_group])
            which = "highest" if high else "lowest"
        captions = [(str(ok.at[ix, "image"]), f"{_short_num(ok.at[ix, base])}") for ix in chosen]
        used.update(c for c, _ in captions)
        groups.append(
            GalleryGroup(
                f"{short_label(name)}: pushes toward {push} ({inp.contrib[i, j]:+.2f})",
                f"cells with the {which} {short_label(base)} of this patient (patient value {_short_num(value)}, "
                f"cohort median {_short_num(cohort_medians.get(name, np.nan))})",
                captions,
                base,
                which,
            )
        )
    if not n_score_groups and len(groups) < n_drivers and len(ok):
        # Few image inputs moved this patient's score: show a sample spanning its range of nucleus sizes instead.
        pool = ok[~ok["image"].isin(used)]
        key = "nucleus_area" if "nucleus_area" in pool else None
        pool = pool.sort_values([key, "image"] if key else ["image"], kind="stable")
        n = min(len(pool), per_group * (n_drivers - len(groups)), 8)
        if n:
            picks = pool.iloc[np.unique(np.linspace(0, len(pool) - 1, n).round().astype(int))]
            caps = [
                (str(im), f"nucleus {_short_num(a)}" if key else "")
                for im, a in zip(picks["image"], picks[key] if key else picks["image"], strict=True)
            ]
            used.update(c for c, _ in caps)
            groups.append(
                GalleryGroup(
                    "A sample of this patient's cells",
                    "spanning its range of nucleus sizes (few image inputs moved this patient's score)",
                    caps,
                )
            )
    flag_cols = [c for c in ("is_smudge", "is_not_lymphocyte") if c in pc.columns]
    flagged = pc[(~pc["qc_ok"].astype(bool)) if "qc_ok" in pc else np.zeros(len(pc), bool)]
    if flag_cols:
        flagged = pc[pc[flag_cols].astype(bool).any(axis=1) | ~pc["qc_ok"].astype(bool)]
    if len(flagged):
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
        groups.append(
            GalleryGroup(
                f"Flagged cells ({len(pc) - len(ok)} of {len(pc)} crops fail quality control)",
                "; ".join(x for x in (summary, ", ".join(extra)) if x),
                caps,
            )
        )
    return groups


def _short_num(x) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    if not np.isfinite(x):
        return "–"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


class ThumbnailMaker:
    """Reads crops from the data folder, re-segments them and returns outlined JPEG data URIs (cached)."""

    def __init__(self, data_dir: Path | None, settings=None, size: int = 104):
        self.data_dir = data_dir
        self.settings = settings
        self.size = size
        self.cache: dict[str, str | None] = {}
        self.missing = 0

    def __call__(self, image: str) -> str | None:
        if image in self.cache:
            return self.cache[image]
        uri = None
        if self.data_dir is not None:
            from .dataset import ImageError, read_image
            from .segment import segment_cell

            path = self.data_dir / image
            try:
                rgb, _ = read_image(path)
                seg = segment_cell(rgb, self.settings)
                uri = _data_uri(cell_thumbnail(rgb, seg.nucleus_mask, seg.cell_mask, self.size), "image/jpeg")
            except (ImageError, OSError):
                self.missing += 1
        self.cache[image] = uri
        return uri


def _clinical_line(p: pd.Series) -> list[tuple[str, str]]:
    out = []
    if "age" in p and pd.notna(p["age"]):
        out.append(("age", f"{float(p['age']):.0f} years"))
    if "gender" in p and pd.notna(p["gender"]):
        out.append(("sex", {"M": "male", "F": "female"}.get(str(p["gender"]), str(p["gender"]))))
    if "lymph_count" in p and pd.notna(p["lymph_count"]):
        out.append(("lymphocyte count", f"{float(p['lymph_count']):.2f} ×10⁹/L"))
    if "n_cells" in p:
        ok = f", {int(p['n_cells_ok'])} pass QC" if "n_cells_ok" in p and pd.notna(p["n_cells_ok"]) else ""
        out.append(("crops", f"{int(p['n_cells'])}{ok}"))
    return out


def _ordinal(x: float) -> str:
    n = int(round(x))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _display_value(name: str, value: float) -> str:
    if not np.isfinite(value):
        return "missing"
    if name == "log_lymph_count":
        return f"{math.exp(value):.2f} ×10⁹/L"
    if name == "gender_male":
        return "male" if value >= 0.5 else "female"
    if name == "age":
        return f"{value:.0f} y"
    return _short_num(value)


def _waterfall_html(inp: ReportInputs, i: int, n_top: int = 10) -> str:
    from .model import CLINICAL_FEATURES, model_matrix

    contrib = inp.contrib[i]
    base = float(inp.base[i])
    raw = model_matrix(inp.patients.iloc[[i]])
    # Clinical values missing from the patient's record (the model used the training median instead).
    raw_missing = {c for c in CLINICAL_FEATURES if c in raw.columns and raw[c].isna().iat[0]}
    order = np.argsort(-np.abs(contrib), kind="stable")
    top = order[:n_top]
    rest = float(contrib[order[n_top:]].sum()) if len(order) > n_top else 0.0
    steps = [(inp.features[j], float(contrib[j])) for j in top]
    if len(order) > n_top:
        steps.append((f"{len(order) - n_top} other inputs", rest))
    cum = [base]
    for _, v in steps:
        cum.append(cum[-1] + v)
    thr = _logit(inp.threshold)
    lo = min(min(cum), thr, 0.0) - 0.3
    hi = max(max(cum), thr, 0.0) + 0.3

    def pos(v):
        return (v - lo) / (hi - lo) * 100

    def bar(a, b, cls):
        left, width = pos(min(a, b)), max(abs(pos(b) - pos(a)), 0.8)
        return (
            f'<div class="track"><div class="seg {cls}" style="left:{left:.2f}%;width:{width:.2f}%"></div>'
            f'<div class="thr" style="left:{pos(thr):.2f}%"></div></div>'
        )

    pct = _percentiles(inp, i)
    rows = [
        f"<tr><td class='lab'><b>start: average training patient</b> <span class='sub small'>p={_sigmoid(base):.2f}</span></td>"
        f"<td class='val'>{base:+.2f}</td><td class='bar'>{bar(base, base, 'base')}</td></tr>"
    ]
    for k, (name, v) in enumerate(steps):
        a, b = cum[k], cum[k + 1]
        if k < len(top):
            j = top[k]
            val = _display_value(name, float(inp.X[i, j]))
            if name in raw_missing:
                val = f"missing (training median {val} used)"
            p = pct.get(name)
            ptxt = f", {_ordinal(p)} pct" if p is not None and feature_family(name) not in ("clinical",) else ""
            label = (
                f"{_e(short_label(name))} <span class='sub small'>= {_e(val)}{ptxt}</span>"
                f"<br><span class='sub small'>{_e(describe_feature(name))}</span>"
                f"{_reference_medians_html(inp, name)}"
            )
        else:
            label = f"<i>{_e(name)}</i>"
        rows.append(
            # The probability once this input is added (log-odds are hard to read; probabilities do not add up).
            f"<tr><td class='lab'>{label}</td><td class='val'>{v:+.2f}"
            f"<br><span class='sub small'>p {_sigmoid(b):.2f}</span></td>"
            f"<td class='bar'>{bar(a, b, 'up' if v > 0 else 'down')}</td></tr>"
        )
    final = cum[-1]
    rows.append(
        f"<tr><td class='lab'><b>model score</b> <span class='sub small'>p={_sigmoid(final):.2f}</span></td>"
        f"<td class='val'><b>{final:+.2f}</b></td><td class='bar'>{bar(final, final, 'base')}</td></tr>"
    )
    return (
        "<table class='wf'><tbody>" + "".join(rows) + "</tbody></table>"
        "<p class='small sub'>Contributions in log-odds (SHAP), with the probability reached once each is added "
        "(from the top; the start is the model's average over the patients it was trained on, not this patient's "
        "prior chance); "
        "<span class='legend-dot' style='background:#c0392b'></span>toward tumoral "
        "<span class='legend-dot' style='background:#2e6da4'></span>toward reactive; dashed line: decision threshold. "
        f"{_percentile_note(inp)}</p>"
    )


def _percentile_note(inp: ReportInputs) -> str:
    """What the percentiles of the patient pages compare with."""
    ref = inp.reference
    if ref is None:
        return "Percentiles (pct) compare the patient with the others of this report."
    n = inp.meta.get("n_training_patients")
    who = f"the {n} training patients" if n else "the training patients"
    return f"Percentiles (pct) and medians compare the patient with {who} of the model."


def _reference_medians_html(inp: ReportInputs, name: str) -> str:
    """Median of an input among the training patients of each class, e.g. the lymphocyte count."""
    entry = (inp.reference or {}).get("inputs", {}).get(name)
    if not entry or name == "gender_male" or not entry.get("reactive") or not entry.get("tumoral"):
        return ""
    rea, tum = _display_value(name, entry["reactive"][1]), _display_value(name, entry["tumoral"][1])
    return f"<br><span class='sub small'>training medians: reactive {_e(rea)}, tumoral {_e(tum)}</span>"


def _percentiles(inp: ReportInputs, i: int) -> dict[str, float]:
    """Percentile of each of patient ``i``'s inputs (see :attr:`ReportInputs.percentile_ranks`)."""
    ranks = inp.percentile_ranks
    return {f: float(ranks[i, j]) for j, f in enumerate(inp.features) if np.isfinite(ranks[i, j])}


def _gallery_html(groups: list[GalleryGroup], thumbs: ThumbnailMaker) -> str:
    if not groups:
        return "<p class='sub'>No cell to show for this patient.</p>"
    out = []
    for g in groups:
        cells = []
        for image, caption in g.cells:
            uri = thumbs(image)
            pic = _img(uri, image, "") if uri else "<div class='missing'>crop not found</div>"
            cells.append(f"<div class='cell'>{pic}<div>{_e(caption)}</div></div>")
        note = f"<div class='small sub'>{_e(g.note)}</div>" if g.note else ""
        out.append(f"<div class='group'><h4>{_e(g.title)}</h4>{note}<div class='gallery'>{''.join(cells)}</div></div>")
    return "<div class='groups'>" + "".join(out) + "</div>"


def _patient_id_anchor(pid: str) -> str:
    return "p-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(pid))


def section_patients(inp: ReportInputs, thumbs: ThumbnailMaker) -> tuple[str, str]:
    """The patient summary table and one page per patient."""
    p = inp.patients
    oof = None
    if inp.cv_predictions is not None:
        g = inp.cv_predictions.groupby("patient_id")
        oof = pd.DataFrame(
            {"mean": g["probability"].mean(), "std": g["probability"].std(ddof=0), "n": g["probability"].size()}
        )
        if "prediction" in inp.cv_predictions:
            oof["pred"] = g["prediction"].mean()
    medians = {
        f: float(np.nanmedian(inp.X[:, j])) if np.isfinite(inp.X[:, j]).any() else np.nan
        for j, f in enumerate(inp.features)
    }
    thr = inp.threshold
    rows, pages = [], []
    for i in range(len(p)):
        r = p.iloc[i]
        pid = str(r["patient_id"])
        prob = float(inp.proba[i])
        decision = int(prob >= thr)
        o = oof.loc[pid] if oof is not None and pid in oof.index else None
        label = r["label"]
        if o is not None:  # a training patient: its cross-validated call is the honest one
            miss = pd.notna(label) and "pred" in o and round(float(o["pred"])) != int(label)
        else:
            miss = pd.notna(label) and decision != int(label)
        dec_tag = '<span class="tag t">tumoral</span>' if decision else '<span class="tag r">reactive</span>'
        if inp.uncertain[i]:
            dec_tag += ' <span class="tag warn">uncertain</span>'
        rows.append(
            (
                "<tr class='miss'>" if miss else "<tr>",
                [
                    f"<a href='#{_patient_id_anchor(pid)}'>{_e(pid)}</a>",
                    _label_tag(label),
                    dec_tag,
                    f"{prob:.2f}",
                    f"{o['mean']:.2f}" if o is not None else "–",
                    _fmt(float(r["lymph_count"]), 2) if "lymph_count" in r and pd.notna(r["lymph_count"]) else "–",
                    f"{float(r['age']):.0f}" if "age" in r and pd.notna(r["age"]) else "–",
                    str(int(r["n_cells"])) if "n_cells" in r else "–",
                ],
            )
        )
        pages.append(_patient_page(inp, i, o, medians, thumbs))
    head = ["patient", "recorded class", "model call", "probability", "CV probability", "lymph. count", "age", "crops"]
    body = "".join(tr + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for tr, cells in rows)
    table = (
        '<section id="patients" class="major"><h2>4. Patients</h2>'
        f"<p>Model call at threshold {thr:.3f}. <b>CV probability</b>: mean out-of-fold probability of the "
        "patient over the cross-validation repeats, from models that never saw this patient; for the patients the "
        "final model was trained on, this is the honest estimate, since the final model has seen them. "
        "Rows in red: the call disagrees with the recorded class (for a patient the model was trained on, the "
        "cross-validated call). <b>uncertain</b>: in the refer band, as in <code>lympho predict</code>'s output.</p>"
        f"<table class='small'><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead><tbody>{body}</tbody></table>"
        "</section>"
    )
    return table, "".join(pages)


def _refer_note(meta: dict) -> str:
    """Why a call in the refer band is flagged (a note on the patient card; no trailing full stop)."""
    rate = (meta.get("refer") or {}).get("min_error_rate")
    how = f"at least {rate:.0%} of" if isinstance(rate, int | float) else "many of"
    return (
        f"In the band around the threshold where {how} the cross-validation's calls were wrong: refer to flow "
        "cytometry rather than trust this call"
    )


def _threshold_rule(meta: dict) -> str:
    """How the model's threshold was set, in a few words for the patient card."""
    ms = meta.get("min_sensitivity")
    if isinstance(ms, int | float):
        return f"chosen in cross-validation to keep sensitivity at least {ms:.2f}"
    if _threshold_is_fixed(meta):
        return "the neutral point of a model that weighs both classes equally (fixed, not tuned)"
    # Models fitted before the balanced threshold was fixed tuned it by inner cross-validation.
    return "chosen in cross-validation to balance sensitivity and specificity"


def _patient_page(inp: ReportInputs, i: int, oof, medians: dict[str, float], thumbs: ThumbnailMaker) -> str:
    r = inp.patients.iloc[i]
    pid = str(r["patient_id"])
    prob = float(inp.proba[i])
    thr = inp.threshold
    call = "tumoral" if prob >= thr else "reactive"
    cls = "t" if prob >= thr else "r"
    trained = oof is not None
    from .model import few_cells_warnings, missing_value_warnings, refer_limits

    one = inp.patients.iloc[[i]]
    missing, few = missing_value_warnings(inp.meta, one), few_cells_warnings(inp.meta, one)
    # Each warning reads "P12: ...": the card names the patient already.
    notes = [w.split(": ", 1)[1] for w in missing + few]
    if refer_limits(inp.meta) is not None:
        # the same band as `lympho predict`'s `uncertain` column, so that the report and the CSV agree
        flag = " <span class='tag warn'>uncertain: refer</span>" if inp.uncertain[i] else ""
        if inp.uncertain[i]:
            notes.insert(0, _refer_note(inp.meta))
    else:  # models written before the refer band
        flag = " <span class='tag warn'>close to threshold</span>" if abs(prob - thr) < 0.1 else ""
    boxes = [
        f"<div><div class='sub small'>probability of tumoral</div><div class='prob'>{prob:.2f}</div>"
        f"<span class='tag {cls}'>leans {call}</span>"
        + flag
        + (" <span class='tag warn'>few crops</span>" if few else "")
        + (" <span class='tag warn'>missing values</span>" if missing else "")
        + f"<div class='small sub' style='max-width:200px'>threshold {thr:.3f}, {_threshold_rule(inp.meta)}</div>"
        + "".join(f"<div class='small sub' style='max-width:200px'>{_e(n)}.</div>" for n in notes)
        + "</div>"
    ]
    if trained:
        sd = f" ± {oof['std']:.2f}" if pd.notna(oof.get("std")) else ""
        cv_call = ""
        if pd.notna(oof.get("pred")):
            k, n = int(round(oof["pred"] * oof["n"])), int(oof["n"])
            word, t, agree = ("tumoral", "t", k) if oof["pred"] >= 0.5 else ("reactive", "r", n - k)
            cv_call = f"<span class='tag {t}'>CV call: {word} ({agree} of {n} repeats)</span>"
        boxes.append(
            f"<div><div class='sub small'>cross-validated probability</div><div class='prob'>{oof['mean']:.2f}"
            f"<span class='small'>{sd}</span></div>{cv_call}<div class='small sub' style='max-width:260px'>from models that "
            "did not see this patient; the final model above was trained on it, so its probability is optimistic"
            "</div></div>"
        )
    clin = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _clinical_line(r))
    boxes.append(
        f"<div><div class='sub small'>recorded class</div>{_label_tag(r['label'])}<table class='small'>{clin}</table></div>"
    )
    groups = select_gallery(inp, i, medians)
    return (
        f"<article class='patient' id='{_patient_id_anchor(pid)}'><h2>Patient {_e(pid)}</h2>"
        f"<div class='decision'>{''.join(boxes)}</div>"
        "<h3>Why: the inputs that moved this patient's score most</h3>"
        f"{_waterfall_html(inp, i)}"
        "<h3>Cells to look at</h3><p class='small sub'>Outlines: "
        "<span class='legend-dot' style='background:#ffd700'></span>nucleus "
        "<span class='legend-dot' style='background:#00c846'></span>whole cell (re-computed from the crop).</p>"
        f"{_gallery_html(groups, thumbs)}</article>"
    )


def section_provenance(inp: ReportInputs, generated: str) -> str:
    meta, man = inp.meta, inp.manifest
    cv = meta.get("cv") if isinstance(meta.get("cv"), dict) else {}
    check = _in_sample_check(inp)
    rows = [
        ["report generated", _e(generated)],
        ["lympho (report)", _e(__version__)],
        ["model folder", f"<span class='mono'>{_e(inp.model_dir.resolve())}</span>"],
        ["features folder", f"<span class='mono'>{_e(inp.features_dir.resolve())}</span>"],
        ["model: lympho version", _e(meta.get("lympho_version", "–"))],
        ["model: feature set / inputs", f"{_e(meta.get('feature_set', '–'))} / {len(inp.features)}"],
        [
            "model: threshold",
            f"{inp.threshold:.4f}"
            + (f" (min. sensitivity {meta['min_sensitivity']})" if meta.get("min_sensitivity") else ""),
        ],
        [
            "model: CV",
            f"{_fmt(cv.get('folds'))} folds × {_fmt(cv.get('repeats'))} repeats, seed {_fmt(cv.get('seed'))}",
        ],
        [
            "training data fingerprint",
            f"<span class='mono small'>{_e(meta.get('training_data_fingerprint', '–'))}</span>",
        ],
        [
            "this features folder is the training table",
            {True: "yes (fingerprints match)", False: "no (other patients or other values)", None: "cannot tell"}[
                check
            ],
        ],
    ]
    if man:
        rows += [
            ["crops folder", f"<span class='mono'>{_e(man.get('data_dir', '–'))}</span>"],
            ["clinical CSV", f"<span class='mono'>{_e(man.get('clinical_csv', '–'))}</span>"],
            [
                "extraction input fingerprint",
                f"<span class='mono small'>{_e(man.get('input_fingerprint', '–'))}</span>",
            ],
            ["extraction: lympho version", _e(man.get("lympho_version", "–"))],
        ]
    parts = ['<section id="provenance" class="major"><h2>5. Provenance</h2>', _table(["", ""], rows)]
    versions = {
        "model (fit)": meta.get("library_versions") or {},
        "extraction": man.get("library_versions") or {},
        "report": library_versions(),
    }
    libs = sorted(set().union(*[v.keys() for v in versions.values()]))
    vrows = [[_e(lib)] + [_e(v.get(lib, "–")) for v in versions.values()] for lib in libs]
    parts.append("<h3>Library versions</h3>" + _table(["library", *versions.keys()], vrows))
    if man.get("settings"):
        parts.append(
            "<h3>Extraction settings</h3><pre>" + _e(json.dumps(man["settings"], indent=1, sort_keys=True)) + "</pre>"
        )
    if meta.get("params"):
        parts.append(
            "<h3>Model parameters</h3><pre>" + _e(json.dumps(meta["params"], indent=1, sort_keys=True)) + "</pre>"
        )
    if inp.warnings:
        parts.append(
            "<h3>Warnings while building this report</h3><ul>"
            + "".join(f"<li>{_e(w)}</li>" for w in inp.warnings)
            + "</ul>"
        )
    parts.append("</section>")
    return "".join(parts)


def _summary_html(inp: ReportInputs) -> str:
    cv = inp.meta.get("cv") if isinstance(inp.meta.get("cv"), dict) else {}
    n_call = int((inp.proba >= inp.threshold).sum())
    kp = [
        (str(len(inp.patients)), "patients in this report"),
        (
            f"{n_call} / {len(inp.patients) - n_call}",
            "called tumoral / reactive" + (" (in-sample: the model saw them)" if _in_sample_check(inp) else ""),
        ),
    ]
    from .model import refer_limits

    if refer_limits(inp.meta) is not None:
        kp.append((str(int(inp.uncertain.sum())), "uncertain: refer to flow cytometry"))
    if "balanced_accuracy_mean" in cv:
        kp.append((_pm(cv, "balanced_accuracy"), "CV balanced accuracy"))
    if "roc_auc_mean" in cv:
        kp.append((_pm(cv, "roc_auc"), "CV ROC AUC"))
    return _kpis(kp)


@dataclass
class ReportResult:
    """What :func:`write_report` wrote."""

    path: Path
    size_bytes: int
    n_patients: int
    n_thumbnails: int
    seconds: float
    warnings: list[str]


def build_html(inp: ReportInputs, generated: str | None = None) -> tuple[str, int]:
    """The whole report as one HTML string; also returns the number of cell thumbnails."""
    generated = generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    imp = global_importance(inp)
    thumbs = ThumbnailMaker(inp.data_dir, _segmentation_settings(inp.manifest))
    patients_table, pages = section_patients(inp, thumbs)
    if thumbs.missing:
        inp.warnings.append(f"{thumbs.missing} crop(s) could not be read from {inp.data_dir}")
    nav = (
        "<nav><ol><li><a href='#caveats'>Limits of this tool</a></li><li><a href='#cohort'>Cohort</a></li>"
        "<li><a href='#performance'>Performance</a></li><li><a href='#explanation'>What the model looks at</a></li>"
        "<li><a href='#patients'>Patients</a></li><li><a href='#provenance'>Provenance</a></li></ol></nav>"
    )
    body = "".join(
        [
            "<header><h1>lympho: reactive or tumoral lymphocytosis</h1>"
            f"<div class='sub'>Model report · {_e(generated)} · model <span class='mono'>{_e(inp.model_dir.name)}</span>"
            f" · features <span class='mono'>{_e(inp.features_dir.name)}</span></div></header>",
            _summary_html(inp),
            nav,
            section_caveats(inp, imp),
            section_cohort(inp),
            section_performance(inp),
            section_explanation(inp, imp),
            patients_table,
            section_provenance(inp, generated),
            pages,
        ]
    )
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>lympho report</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )
    return doc, len([v for v in thumbs.cache.values() if v])


def write_report(
    model_dir: str | Path,
    features_dir: str | Path,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
) -> ReportResult:
    """Write ``out_dir/index.html`` for a model and a features folder.

    Parameters
    ----------
    model_dir : path
        Folder written by ``lympho fit``.
    features_dir : path
        Folder written by ``lympho extract``: the patients to report on.
    out_dir : path
        Receives ``index.html`` (written atomically).
    data_dir : path, optional
        Folder of the crops; defaults to the ``data_dir`` recorded in the
        features' manifest.json. Without crops the galleries show placeholders.

    Raises
    ------
    ReportError
        Missing or incompatible model or features.
    """
    t0 = time.perf_counter()
    inp = load_inputs(model_dir, features_dir, data_dir)
    doc, n_thumbs = build_html(inp)
    out = Path(out_dir) / "index.html"
    try:
        with atomic_path(out) as tmp:
            Path(tmp).write_text(doc, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return ReportResult(out, out.stat().st_size, len(inp.patients), n_thumbs, time.perf_counter() - t0, inp.warnings)
