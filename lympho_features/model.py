"""Patient-level classifier: LightGBM under repeated, stratified patient-level CV.

Everything fitted on data (the model, its decision threshold) is fitted on
the training patients of each fold only; the threshold is chosen from an
inner cross-validation of the training patients, never on the patients a fold
is scored on. A saved model is LightGBM's own text format plus JSON metadata:
no pickle is ever written or read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from . import __version__
from ._io import atomic_path, dataframe_fingerprint, library_versions, write_csv, write_json

FEATURE_SETS = ("all", "clinical", "image")

#: Model inputs derived from the clinical values (see :func:`model_matrix`).
CLINICAL_FEATURES = ("age", "gender_male", "log_lymph_count")

#: Columns of patients.parquet that are never model inputs.
NON_FEATURE_COLUMNS = ("patient_id", "label", "gender", "lymph_count", "dob")

MODEL_FORMAT = 1


class ModelError(Exception):
    """A model folder or a features table that cannot be used; the message says why."""


def model_matrix(patients: pd.DataFrame) -> pd.DataFrame:
    """Numeric model inputs of a patients table.

    Adds ``gender_male`` (1/0/NaN) and ``log_lymph_count`` (log of the count in
    10^9/L, since it spans two orders of magnitude) to the numeric columns.
    """
    X = patients.copy()
    X["gender_male"] = X["gender"].map({"M": 1.0, "F": 0.0}).astype(float) if "gender" in X else np.nan
    X["log_lymph_count"] = np.log(X["lymph_count"].astype(float).clip(lower=0.01)) if "lymph_count" in X else np.nan
    return X


def feature_columns(patients: pd.DataFrame, feature_set: str) -> list[str]:
    """Model input columns for a feature set: ``clinical``, ``image`` or ``all``."""
    if feature_set not in FEATURE_SETS:
        raise ModelError(f"unknown feature set {feature_set!r} (choose from {', '.join(FEATURE_SETS)})")
    X = model_matrix(patients)
    image = [
        c
        for c in X.columns
        if c not in NON_FEATURE_COLUMNS and c not in CLINICAL_FEATURES and pd.api.types.is_numeric_dtype(X[c])
    ]
    if feature_set == "clinical":
        return list(CLINICAL_FEATURES)
    if feature_set == "image":
        return image
    return list(CLINICAL_FEATURES) + image


class PatientClassifier(ClassifierMixin, BaseEstimator):
    """Small-tree LightGBM for a few hundred patients, classes balanced.

    Parameters are LightGBM's; the defaults favour shallow, heavily
    regularised trees because the cohorts are small.
    """

    def __init__(
        self,
        n_estimators=200,
        learning_rate=0.03,
        num_leaves=4,
        min_child_samples=8,
        subsample=0.8,
        colsample_bytree=0.5,
        reg_lambda=1.0,
        random_state=0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.random_state = random_state

    def fit(self, X, y):
        import lightgbm as lgb

        self.model_ = lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            learning_rate=self.learning_rate,
            num_leaves=self.num_leaves,
            min_child_samples=self.min_child_samples,
            subsample=self.subsample,
            subsample_freq=1,
            colsample_bytree=self.colsample_bytree,
            reg_lambda=self.reg_lambda,
            class_weight="balanced",
            random_state=self.random_state,
            deterministic=True,
            force_row_wise=True,
            n_jobs=1,
            verbose=-1,
        )
        self.model_.fit(np.asarray(X, dtype=float), np.asarray(y, dtype=int))
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(np.asarray(X, dtype=float))

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    @property
    def booster_(self):
        return self.model_.booster_


def choose_threshold(y_true, proba, min_sensitivity: float | None = None) -> float:
    """Decision threshold on the probability of tumoral.

    Maximises balanced accuracy; with ``min_sensitivity``, the highest
    threshold whose sensitivity is at least that (a triage tool must not miss
    tumoral patients). Thresholds are midpoints between distinct scores.
    """
    y_true = np.asarray(y_true, int)
    proba = np.asarray(proba, float)
    u = np.unique(proba)
    cands = np.concatenate([[0.0], (u[:-1] + u[1:]) / 2, [1.0]]) if len(u) > 1 else np.array([0.5])
    pos, neg = y_true == 1, y_true == 0
    sens = np.array([(proba[pos] >= t).mean() if pos.any() else 0.0 for t in cands])
    spec = np.array([(proba[neg] < t).mean() if neg.any() else 0.0 for t in cands])
    if min_sensitivity is not None:
        ok = np.flatnonzero(sens >= min_sensitivity)
        return float(cands[ok.max()]) if ok.size else 0.0
    ba = (sens + spec) / 2
    best = np.flatnonzero(ba == ba.max())
    # Among ties, the middle one: most margin on both sides.
    return float(cands[best[len(best) // 2]])


def binary_metrics(y_true, proba, threshold: float) -> dict[str, float]:
    """Balanced accuracy, ROC AUC, sensitivity and specificity at a threshold."""
    y_true = np.asarray(y_true, int)
    pred = (np.asarray(proba) >= threshold).astype(int)
    pos, neg = y_true == 1, y_true == 0
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "roc_auc": float(roc_auc_score(y_true, proba)) if pos.any() and neg.any() else float("nan"),
        "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
        "specificity": float(1 - pred[neg].mean()) if neg.any() else float("nan"),
    }


def _inner_threshold(estimator, X, y, seed, inner_folds, min_sensitivity):
    """Threshold from out-of-fold probabilities of an inner CV on training patients only."""
    k = int(min(inner_folds, np.bincount(y).min()))
    if k < 2:
        return 0.5
    oof = np.zeros(len(y))
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y):
        m = clone(estimator).fit(X[tr], y[tr])
        oof[te] = m.predict_proba(X[te])[:, 1]
    return choose_threshold(y, oof, min_sensitivity)


@dataclass
class CVResult:
    """Out-of-fold predictions and metrics of a repeated cross-validation."""

    predictions: pd.DataFrame  # patient_id, repeat, fold, label, probability, threshold, prediction
    per_repeat: pd.DataFrame  # one row of metrics per repeat
    summary: dict = field(default_factory=dict)


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    patient_ids,
    estimator=None,
    folds: int = 5,
    repeats: int = 5,
    seed: int = 0,
    inner_folds: int = 3,
    min_sensitivity: float | None = None,
) -> CVResult:
    """Repeated stratified patient-level CV with leak-free thresholds.

    In each outer fold the estimator and its threshold are fitted on the
    training patients only. Out-of-fold predictions are pooled per repeat and
    scored; the summary gives mean and std over repeats.
    """
    estimator = estimator if estimator is not None else PatientClassifier(random_state=seed)
    X = np.asarray(X, float)
    y = np.asarray(y, int)
    patient_ids = np.asarray(patient_ids)
    if np.bincount(y, minlength=2).min() < folds:
        raise ModelError(
            f"too few patients of one class for {folds}-fold CV ({np.bincount(y, minlength=2).tolist()} reactive/tumoral)"
        )
    rows, per_repeat = [], []
    for r in range(repeats):
        skf = StratifiedKFold(folds, shuffle=True, random_state=seed + r)
        proba = np.zeros(len(y))
        thr = np.zeros(len(y))
        fold_of = np.zeros(len(y), int)
        for f, (tr, te) in enumerate(skf.split(X, y)):
            est = (
                clone(estimator).set_params(random_state=seed + 1000 * r + f)
                if "random_state" in estimator.get_params()
                else clone(estimator)
            )
            est.fit(X[tr], y[tr])
            proba[te] = est.predict_proba(X[te])[:, 1]
            thr[te] = _inner_threshold(est, X[tr], y[tr], seed + r, inner_folds, min_sensitivity)
            fold_of[te] = f
        pred = (proba >= thr).astype(int)
        m = binary_metrics(y, proba, 0.5)
        pos, neg = y == 1, y == 0
        m.update(
            balanced_accuracy=float(balanced_accuracy_score(y, pred)),
            sensitivity=float(pred[pos].mean()),
            specificity=float(1 - pred[neg].mean()),
            brier=float(np.mean((proba - y) ** 2)),
        )
        per_repeat.append({"repeat": r, **m})
        rows.append(
            pd.DataFrame(
                {
                    "patient_id": patient_ids,
                    "repeat": r,
                    "fold": fold_of,
                    "label": y,
                    "probability": proba,
                    "threshold": thr,
                    "prediction": pred,
                }
            )
        )
    per = pd.DataFrame(per_repeat)
    summary = {
        "folds": folds,
        "repeats": repeats,
        "seed": seed,
        "n_patients": int(len(y)),
        "n_tumoral": int(y.sum()),
        "n_reactive": int((y == 0).sum()),
    }
    for k in ("balanced_accuracy", "roc_auc", "sensitivity", "specificity", "brier"):
        summary[f"{k}_mean"] = float(per[k].mean())
        summary[f"{k}_std"] = float(per[k].std(ddof=1)) if len(per) > 1 else 0.0
    return CVResult(pd.concat(rows, ignore_index=True), per, summary)


def load_patients(features_dir: str | Path) -> pd.DataFrame:
    """Read ``FEATURES_DIR/patients.parquet`` with a clear error when absent."""
    path = Path(features_dir) / "patients.parquet"
    if not path.is_file():
        raise ModelError(f"{path} not found: run `lympho extract` first")
    return pd.read_parquet(path)


@dataclass
class FittedModel:
    """A final model with its metadata (what model.json holds)."""

    classifier: PatientClassifier
    features: list[str]
    threshold: float
    metadata: dict


def fit_model(
    patients: pd.DataFrame,
    feature_set: str = "all",
    folds: int = 5,
    repeats: int = 5,
    seed: int = 0,
    min_sensitivity: float | None = None,
) -> tuple[FittedModel, CVResult]:
    """Cross-validate, then fit the final model on all labeled patients.

    The final threshold is chosen on the pooled out-of-fold probabilities of
    the CV (each patient scored by models that never saw it).
    """
    labeled = patients[patients["label"].notna()].reset_index(drop=True)
    if labeled.empty:
        raise ModelError("no labeled patient (LABEL 0 or 1) to fit on")
    feats = feature_columns(labeled, feature_set)
    if not feats:
        raise ModelError(f"feature set {feature_set!r} has no column in this table")
    matrix = model_matrix(labeled)
    X = matrix[feats].to_numpy(float)
    y = labeled["label"].astype(int).to_numpy()
    est = PatientClassifier(random_state=seed)
    cv = cross_validate(X, y, labeled["patient_id"], est, folds, repeats, seed, min_sensitivity=min_sensitivity)
    threshold = choose_threshold(cv.predictions["label"], cv.predictions["probability"], min_sensitivity)
    final = clone(est).fit(X, y)
    meta = {
        "format": MODEL_FORMAT,
        "lympho_version": __version__,
        "feature_set": feature_set,
        "features": feats,
        "threshold": threshold,
        "min_sensitivity": min_sensitivity,
        "params": est.get_params(),
        "cv": cv.summary | {"per_repeat": cv.per_repeat.to_dict(orient="records")},
        "library_versions": library_versions(),
        "training_data_fingerprint": dataframe_fingerprint(matrix[["patient_id", "label", *feats]]),
        "n_training_patients": int(len(y)),
    }
    return FittedModel(final, feats, threshold, meta), cv


def save_model(model: FittedModel, cv: CVResult, out_dir: str | Path) -> None:
    """Write model.txt (LightGBM text), model.json and cv_predictions.csv atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.txt") as tmp:
        model.classifier.booster_.save_model(str(tmp))
    write_csv(cv.predictions, out_dir / "cv_predictions.csv")
    write_json(model.metadata, out_dir / "model.json")


_REQUIRED_META = {"format": int, "features": list, "threshold": float, "feature_set": str}


def load_model(model_dir: str | Path):
    """Load and validate a saved model: returns ``(lightgbm.Booster, metadata)``."""
    import lightgbm as lgb

    model_dir = Path(model_dir)
    meta_path, txt_path = model_dir / "model.json", model_dir / "model.txt"
    for p in (meta_path, txt_path):
        if not p.is_file():
            raise ModelError(f"{p} not found: is {model_dir} a folder written by `lympho fit`?")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta_path} is not valid JSON: {exc}") from None
    from .schema import validate_model_metadata  # checks model.json against its schema before any use

    meta = validate_model_metadata(meta, meta_path)
    for k, t in _REQUIRED_META.items():
        if not isinstance(meta.get(k), t if t is not float else (int, float)):
            raise ModelError(f"{meta_path}: key {k!r} missing or not a {t.__name__}")
    if meta["format"] != MODEL_FORMAT:
        raise ModelError(
            f"{meta_path} has model format {meta['format']}, this lympho ({__version__}) reads format {MODEL_FORMAT}"
        )
    try:
        booster = lgb.Booster(model_file=str(txt_path))
    except Exception as exc:
        raise ModelError(f"{txt_path} is not a LightGBM model: {exc}") from None
    if booster.num_feature() != len(meta["features"]):
        raise ModelError(
            f"{txt_path} has {booster.num_feature()} features but model.json lists {len(meta['features'])}"
        )
    return booster, meta


def predict(model_dir: str | Path, features_dir: str | Path) -> pd.DataFrame:
    """Probability of tumoral and 0/1 decision for every patient of a features folder.

    Raises
    ------
    ModelError
        When the features table lacks columns the model was trained on.
    """
    booster, meta = load_model(model_dir)
    patients = load_patients(features_dir)
    X = model_matrix(patients)
    missing = [c for c in meta["features"] if c not in X.columns]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ModelError(
            f"features in {features_dir} do not match the model in {model_dir}: missing {len(missing)} column(s): {shown}. "
            "Re-run `lympho extract` with the same lympho version and settings as the training data."
        )
    proba = booster.predict(X[meta["features"]].to_numpy(float))
    return pd.DataFrame(
        {
            "patient_id": patients["patient_id"],
            "probability": proba,
            "prediction": (proba >= meta["threshold"]).astype(int),
        }
    )
