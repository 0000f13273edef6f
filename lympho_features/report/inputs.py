"""What the report is built from: the model, the patients' features and cells, their SHAP values, read once.

Explanations are LightGBM's own SHAP values (``Booster.predict(..., pred_contrib=True)``):
per patient, each feature's additive contribution to the log-odds of tumoral, so the
contributions plus the base value give the model's score exactly.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from .._io import dataframe_fingerprint
from ..domain import check_settings
from ..errors import FeaturesFolderError, ReportError
from ..feature_sets import cell_model_block, is_learned_feature
from ..folders import FeaturesFolder
from ..model import (
    ModelError,
    cell_scores,
    domain_reasons,
    fill_missing_inputs,
    load_model,
    load_patients,
    model_inputs,
    model_matrix,
    reference_percentile,
    uncertain_calls,
)
from ..scale import CANONICAL_UM_PER_PX, RESAMPLE_TOLERANCE
from ..segment import SegmentationSettings


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


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, float)))


def logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def design_matrix(
    patients: pd.DataFrame,
    features: list[str],
    where: str,
    model_dir=None,
    meta: dict | None = None,
    embeddings_dir: str | Path | None = None,
) -> pd.DataFrame:
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


def segmentation_settings(manifest: dict):
    """The segmentation settings recorded at extraction (defaults when absent or unreadable)."""
    recorded = (manifest.get("settings") or {}).get("segmentation")
    if not isinstance(recorded, dict):
        return SegmentationSettings()
    known = {f.name for f in fields(SegmentationSettings)}
    try:
        return SegmentationSettings(**{k: v for k, v in recorded.items() if k in known})
    except (TypeError, ValueError):
        return SegmentationSettings()


def resampling(manifest: dict) -> tuple[float, float]:
    """The extraction's canonical scale and resampling tolerance (the package's defaults when not recorded)."""
    recorded = manifest.get("settings") or {}
    out = []
    for key, default in (("canonical_um_per_px", CANONICAL_UM_PER_PX), ("resample_tolerance", RESAMPLE_TOLERANCE)):
        value = recorded.get(key) if isinstance(recorded, dict) else None
        out.append(float(value) if isinstance(value, int | float) and math.isfinite(value) else default)
    return out[0], out[1]


def measured_scales(cells: pd.DataFrame | None) -> dict[str, float]:
    """Image -> the ``um_per_px`` its crop was measured at (cells.parquet; empty for older features)."""
    if cells is None or not {"image", "um_per_px"} <= set(cells.columns):
        return {}
    known = cells[cells["um_per_px"].notna()]
    return dict(zip(known["image"].astype(str), known["um_per_px"].astype(float), strict=True))


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
        return uncertain_calls(self.proba, self.meta)

    @functools.cached_property
    def domain_reasons(self) -> dict[str, list[dict]]:
        """Why each patient lies outside the model's training profile (``lympho predict``'s ``domain_warning``).

        Patient ID to its reasons, empty when in profile; each reason a dict of
        :func:`lympho_features.model.domain_reasons` (``label``, ``value``, ``low``, ``high``, ``text``...).
        """
        return domain_reasons(self.meta, self.patients, pd.DataFrame(self.X, columns=self.features))

    @functools.cached_property
    def in_sample(self) -> bool | None:
        """Whether FEATURES_DIR holds exactly the model's training table (None when it cannot be told)."""
        return in_sample_check(self)

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


def _read_cells(features_dir: Path, model_dir: Path, meta: dict, warnings: list[str]):
    """cells.parquet, scored by the model's cell model when it has one: ``(cells, contributions, medians)``."""
    try:
        cells = FeaturesFolder(features_dir).cells()
    except FeaturesFolderError as exc:
        cells = None
        warnings.append(f"{exc}: cell counts and galleries left out")
    cell_contrib, cell_medians = None, {}
    if cells is not None and "cell_score" not in cells.columns:
        try:  # a model with a cell model scores each cell (galleries of the most tumoral-looking cells)
            scored = cell_scores(model_dir, meta, cells, contributions=True)
        except ModelError as exc:
            scored = None
            warnings.append(f"cells could not be scored by the cell model ({exc})")
        if scored is not None:
            scores, cell_contrib, cell_medians = scored
            cells = cells.assign(cell_score=scores)
    return cells, cell_contrib, cell_medians


def _read_manifest(features_dir: Path, warnings: list[str]) -> dict:
    """The features folder's manifest.json ({} when absent or unreadable)."""
    man_path = features_dir / "manifest.json"
    if man_path.is_file():
        try:
            return json.loads(man_path.read_text())
        except (OSError, ValueError) as exc:
            warnings.append(f"{man_path} unreadable ({exc})")
    return {}


def _crop_folder(data_dir, manifest: dict, has_cells: bool, warnings: list[str]) -> Path | None:
    """The crop folder: the one given, else the one recorded at extraction; None when it is not there."""
    if data_dir is None and manifest.get("data_dir"):
        data_dir = manifest["data_dir"]
    data_dir = Path(data_dir) if data_dir else None
    if has_cells and (data_dir is None or not data_dir.is_dir()):
        warnings.append(
            f"crop folder {data_dir} not found: galleries show no images (use --data-dir)"
            if data_dir
            else "no crop folder recorded in manifest.json: galleries show no images (use --data-dir)"
        )
        return None
    return data_dir


def _read_cv_predictions(model_dir: Path, warnings: list[str]) -> pd.DataFrame | None:
    """The model's out-of-fold predictions (cv_predictions.csv), None when absent or unusable."""
    cvp_path = model_dir / "cv_predictions.csv"
    if not cvp_path.is_file():
        warnings.append(f"{cvp_path} not found: ROC, calibration and CV probabilities left out")
        return None
    try:
        cvp = pd.read_csv(cvp_path, dtype={"patient_id": str})
    except Exception as exc:
        warnings.append(f"{cvp_path} unreadable ({exc}): CV plots left out")
        return None
    if not {"patient_id", "label", "probability"} <= set(cvp.columns):
        warnings.append(f"{cvp_path} lacks patient_id/label/probability: CV plots left out")
        return None
    return cvp


def load_inputs(model_dir: str | Path, features_dir: str | Path, data_dir: str | Path | None = None) -> ReportInputs:
    """Read model, features, cells, manifest and CV predictions; compute probabilities and SHAP values."""
    model_dir, features_dir = Path(model_dir), Path(features_dir)
    try:
        booster, meta = load_model(model_dir)
        # Features measured otherwise than the model's training features are refused, as by `lympho predict`;
        # differences in the user's own choices (reference date of ages) are reported.
        warnings: list[str] = check_settings(meta, features_dir, model_dir)
        patients = load_patients(features_dir)
    except ModelError as exc:
        raise ReportError(str(exc)) from None
    if patients.empty:
        raise ReportError(f"{features_dir / 'patients.parquet'} has no patient")
    patients = patients.iloc[sorted(range(len(patients)), key=lambda i: _natural_key(patients["patient_id"].iat[i]))]
    patients = patients.reset_index(drop=True)
    feats = list(meta["features"])
    X = design_matrix(patients, feats, str(features_dir), model_dir, meta)[feats].to_numpy(float)
    contrib, base = shap_contributions(booster, X)
    proba = sigmoid(base + contrib.sum(1))
    cells, cell_contrib, cell_medians = _read_cells(features_dir, model_dir, meta, warnings)
    manifest = _read_manifest(features_dir, warnings)
    data_dir = _crop_folder(data_dir, manifest, cells is not None, warnings)
    cvp = _read_cv_predictions(model_dir, warnings)
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


def in_sample_check(inp: ReportInputs) -> bool | None:
    """Whether FEATURES_DIR holds exactly the model's training table (None when it cannot be told)."""
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
