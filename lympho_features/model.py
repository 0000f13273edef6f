"""Patient-level classifier: LightGBM under repeated, stratified patient-level CV.

Everything fitted on data is fitted on the training patients of each fold
only: the patient model, a ``--min-sensitivity`` decision threshold (from
an inner cross-validation of the training patients; the balanced threshold
is a fixed 0.5, :data:`BALANCED_THRESHOLD`), and the stages that build
features from data, namely the weakly supervised cell model of the
``cellscore`` block (:mod:`lympho_features.cellscore`) and the PCA of CNN
embeddings of the ``cnn`` block (:mod:`lympho_features.cnn_aggregate`). They
are refitted inside every outer fold by :class:`FoldFeatures`, which only
ever receives the training patients' rows.

A feature set is a ``+``-joined list of blocks: ``clinical`` (age, sex, log
lymphocyte count), ``crops`` (the number of crops, ``n_cells``),
``morphology`` (the ~565 per-patient aggregates of the hand-made cell features,
with ``n_cells`` and the QC/flag fractions), ``cellscore`` (distribution of
the scores of a cell model on every per-cell feature), ``cellmorph`` (the same
with a cell model that leaves out stain colour, see
:data:`~lympho_features.cellscore.MORPH_EXCLUDE`), ``cellatyp`` (the same
again, learned from the tumoral patients' atypical-looking cells only:
positive selection, see :class:`~lympho_features.cellscore.CellScorer`),
``cnn`` (learned embedding features). Shorthands: ``image`` is
``crops+cellatyp`` (everything derived from the images, no clinical value),
``all`` is ``clinical+image``; a trailing ``-n_cells`` drops the number of
crops. (Until this change ``image`` meant the aggregates now called
``morphology``, and ``all`` ``clinical+morphology``.)
A saved model is LightGBM's own text format plus JSON metadata (and, when
used, each cell model's text + JSON files, named in
:data:`~lympho_features.cellscore.CELL_MODEL_BLOCKS`, and ``aggregator.json``):
no pickle is ever written or read.
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from . import __version__
from ._io import atomic_path, dataframe_fingerprint, library_versions, write_csv, write_json
from .feature_sets import (  # noqa: F401 - re-exported: they were defined here
    ALIASES,
    BLOCKS,
    CELL_SCORE_BLOCKS,
    DEFAULT_FEATURE_SET,
    FEATURE_SETS,
    FITTED_BLOCKS,
    ModelError,
)

#: Configurations compared by the ablation stored in model.json (those whose inputs exist).
#: ``morphology`` and ``clinical+morphology`` are what ``image`` and ``all`` meant before.
ABLATION_SETS = (
    "clinical",
    "image",
    "image-n_cells",
    "all",
    "morphology",
    "clinical+morphology",
    "cellscore",
    "cellmorph",
    "clinical+cellscore",
    "clinical+cellmorph",
    "all-n_cells",  # = clinical+cellatyp: "all without the cell count"
    "clinical+cnn",
    "clinical+morphology+cnn",
    "all+cnn",
)

#: The few configurations that make sense a priori, among which :func:`nested_selection` chooses by default:
#: clinical values alone, with each cell model, and everything (clinical + image).
NESTED_CANDIDATES = ("clinical", "clinical+cellscore", "clinical+cellmorph", "all")

#: Model inputs derived from the clinical values (see :func:`model_matrix`).
CLINICAL_FEATURES = ("age", "gender_male", "log_lymph_count")

#: Columns of patients.parquet that are never model inputs.
#: ``um_per_px`` (the acquisition's pixel size) and its provenance describe the scanner, not the patient.
NON_FEATURE_COLUMNS = ("patient_id", "label", "gender", "lymph_count", "dob", "um_per_px", "n_red_cells")

MODEL_FORMAT = 1

#: Files of a model folder besides model.txt / model.json.
#: (The cell models' files: :data:`lympho_features.cellscore.CELL_MODEL_BLOCKS`.)
AGGREGATOR_FILE = "aggregator.json"


def model_matrix(patients: pd.DataFrame) -> pd.DataFrame:
    """Numeric model inputs of a patients table.

    Adds ``gender_male`` (1/0/NaN) and ``log_lymph_count`` (log of the count in
    10^9/L, since it spans two orders of magnitude) to the numeric columns.
    """
    X = patients.copy()
    X["gender_male"] = X["gender"].map({"M": 1.0, "F": 0.0}).astype(float) if "gender" in X else np.nan
    X["log_lymph_count"] = np.log(X["lymph_count"].astype(float).clip(lower=0.01)) if "lymph_count" in X else np.nan
    return X


def parse_feature_set(feature_set: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Blocks of a feature set and the columns it drops.

    ``"clinical+morphology+cellscore"`` -> ``(("clinical", "morphology", "cellscore"), ())``;
    ``"all-n_cells"`` -> ``(("clinical", "crops", "cellatyp"), ("n_cells",))``.
    """
    if not isinstance(feature_set, str) or not feature_set:
        raise ModelError(f"unknown feature set {feature_set!r} (choose from {', '.join(FEATURE_SETS)})")
    base, drop = feature_set, ()
    if base.endswith("-n_cells"):
        base, drop = base[: -len("-n_cells")], ("n_cells",)
    blocks: set[str] = set()
    for token in base.split("+"):
        if token in ALIASES:
            blocks |= set(ALIASES[token])
        elif token in BLOCKS:
            blocks.add(token)
        else:
            raise ModelError(
                f"unknown feature set {feature_set!r} (choose from {', '.join(FEATURE_SETS)}, "
                f"or join blocks {', '.join((*BLOCKS, *ALIASES))} with '+')"
            )
    return tuple(b for b in BLOCKS if b in blocks), drop


def _image_columns(X: pd.DataFrame) -> list[str]:
    return [
        c
        for c in X.columns
        if c not in NON_FEATURE_COLUMNS and c not in CLINICAL_FEATURES and pd.api.types.is_numeric_dtype(X[c])
    ]


def _static_columns(P: pd.DataFrame, blocks, drop=()) -> list[str]:
    """Columns of the table-read blocks (clinical, crops, morphology) of a model matrix."""
    cols: list[str] = list(CLINICAL_FEATURES) if "clinical" in blocks else []
    if "crops" in blocks and "n_cells" in P.columns:
        cols.append("n_cells")
    if "morphology" in blocks:
        cols += _image_columns(P)
    return [c for c in dict.fromkeys(cols) if c not in drop]


def feature_columns(patients: pd.DataFrame, feature_set: str) -> list[str]:
    """Model input columns of a feature set found in the patients table.

    The columns of fitted blocks (``cellscore``, ``cellmorph``, ``cnn``) do not
    come from the table: :class:`FoldFeatures` adds them.
    """
    blocks, drop = parse_feature_set(feature_set)
    return _static_columns(model_matrix(patients), blocks, drop)


def monotone_direction(name: str) -> int:
    """Direction an input may move the probability of tumoral: +1 (never down), 0 (free).

    A higher lymphocyte count or age, or a higher cell-model score summary,
    never makes tumoral less likely: what haematology expects (CLL is a
    disease of older adults with high counts; the cell model scores how
    tumoral each cell looks), so a small cohort's noise cannot fit the
    opposite in some range, and explanations stay coherent. The number of
    crops (``n_cells``) too: more lymphocytes on the smear, more of them
    photographed (tumoral median 85 crops, reactive 51); constraining it
    moved `image` from 0.814 to 0.821 BA (5x20, same folds) and left `all`
    unchanged.
    """
    if name in ("log_lymph_count", "age", "n_cells"):
        return 1
    from .cellscore import cell_model_block

    if cell_model_block(name) is not None:
        return 1
    return 0


class PatientClassifier(ClassifierMixin, BaseEstimator):
    """Small-tree LightGBM for a few hundred patients, classes balanced.

    Parameters are LightGBM's; the defaults favour shallow, heavily
    regularised trees because the cohorts are small. With ``monotone``, a
    DataFrame's columns get LightGBM monotone constraints by
    :func:`monotone_direction` (arrays have no names: unconstrained).
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
        monotone=True,
        random_state=0,
    ):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.monotone = monotone
        self.random_state = random_state

    def fit(self, X, y):
        import lightgbm as lgb

        names = list(X.columns) if hasattr(X, "columns") else None
        constraints = [monotone_direction(n) for n in names] if self.monotone and names else None
        self.monotone_constraints_ = constraints
        extra = {"monotone_constraints": constraints} if constraints and any(constraints) else {}
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
            **extra,
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
    tumoral patients). Thresholds are midpoints between distinct scores;
    0.5 when no threshold beats chance.
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
    if ba.max() <= 0.5:
        # No threshold does better than chance (uninformative or inverted scores, as an inner CV on a
        # few patients can give): the classes are weighted equally, so 0.5 is the neutral choice, where
        # a tie between "everyone tumoral" (0.0) and "no one" (1.0) would pick one of them.
        return 0.5
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


#: The balanced operating point. The patient model weighs both classes equally (``class_weight="balanced"``),
#: so 0.5 is where it puts the balance between sensitivity and specificity. A threshold tuned by an inner CV
#: on the ~90 training patients of a fold moved between 0.37 and 0.89 from fold to fold and gave the same or
#: lower balanced accuracy in every configuration measured (benchmarks/cv_accuracy_results.md): nothing is
#: tuned for it. Only ``--min-sensitivity`` thresholds are chosen from (inner) CV predictions.
BALANCED_THRESHOLD = 0.5


def _inner_threshold(estimator, X, y, seed, inner_folds, min_sensitivity):
    """Threshold of one outer fold: :data:`BALANCED_THRESHOLD`, or with ``min_sensitivity`` the one chosen
    from out-of-fold probabilities of an inner CV on the fold's training patients only."""
    if min_sensitivity is None:
        return BALANCED_THRESHOLD
    k = int(min(inner_folds, np.bincount(y).min()))
    if k < 2:
        return 0.5
    oof = np.zeros(len(y))
    rows = X.iloc if hasattr(X, "iloc") else X
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        m = clone(estimator).fit(rows[tr], y[tr])
        oof[te] = m.predict_proba(rows[te])[:, 1]
    return choose_threshold(y, oof, min_sensitivity)


@dataclass
class CVResult:
    """Out-of-fold predictions and metrics of a repeated cross-validation."""

    predictions: pd.DataFrame  # patient_id, repeat, fold, label, probability, threshold, prediction
    per_repeat: pd.DataFrame  # one row of metrics per repeat
    summary: dict = field(default_factory=dict)


def _summarise(rows: list[pd.DataFrame], y: np.ndarray, folds: int, repeats: int, seed: int) -> CVResult:
    """Score pooled out-of-fold predictions per repeat; mean and std over repeats."""
    per_repeat = []
    pos, neg = y == 1, y == 0
    for r, frame in enumerate(rows):
        proba, pred = frame["probability"].to_numpy(), frame["prediction"].to_numpy()
        m = binary_metrics(y, proba, 0.5)
        m.update(
            balanced_accuracy=float(balanced_accuracy_score(y, pred)),
            sensitivity=float(pred[pos].mean()),
            specificity=float(1 - pred[neg].mean()),
            brier=float(np.mean((proba - y) ** 2)),
        )
        per_repeat.append({"repeat": r, **m})
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


def _check_classes(y: np.ndarray, folds: int) -> None:
    counts = np.bincount(y, minlength=2)
    if counts.min() < folds:
        raise ModelError(f"too few patients of one class for {folds}-fold CV ({counts.tolist()} reactive/tumoral)")


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
    """Repeated stratified patient-level CV of fixed inputs, with leak-free thresholds.

    In each outer fold the estimator and its threshold are fitted on the
    training patients only. Out-of-fold predictions are pooled per repeat and
    scored; the summary gives mean and std over repeats. (For inputs that are
    themselves fitted on data, see :func:`cross_validate_sets`.)
    """
    estimator = estimator if estimator is not None else PatientClassifier(random_state=seed)
    X = np.asarray(X, float)
    y = np.asarray(y, int)
    patient_ids = np.asarray(patient_ids)
    _check_classes(y, folds)
    rows = []
    for r in range(repeats):
        skf = StratifiedKFold(folds, shuffle=True, random_state=seed + r)
        proba, thr, fold_of = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y), int)
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
        rows.append(_prediction_frame(patient_ids, r, fold_of, y, proba, thr))
    return _summarise(rows, y, folds, repeats, seed)


def _prediction_frame(patient_ids, r, fold_of, y, proba, thr) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": patient_ids,
            "repeat": r,
            "fold": fold_of,
            "label": y,
            "probability": proba,
            "threshold": thr,
            "prediction": (proba >= thr).astype(int),
        }
    )


# ---------------------------------------------------------------- cohort and fold-fitted features


@dataclass
class Cohort:
    """Everything known about a set of patients: the patients table and, optionally, cells and embeddings.

    ``patients`` is the model matrix (:func:`model_matrix`) with ``patient_id`` as strings.
    """

    patients: pd.DataFrame
    cells: pd.DataFrame | None = None
    embeddings: pd.DataFrame | None = None

    @classmethod
    def from_tables(cls, patients, cells=None, embeddings=None) -> Cohort:
        P = model_matrix(patients).reset_index(drop=True)
        P["patient_id"] = P["patient_id"].astype(str)
        if cells is not None:
            cells = cells.assign(patient_id=cells["patient_id"].astype(str))
        if embeddings is not None:
            embeddings = embeddings.assign(patient_id=embeddings["patient_id"].astype(str))
        return cls(P, cells, embeddings)

    @property
    def ids(self) -> np.ndarray:
        return self.patients["patient_id"].to_numpy()

    def subset(self, ids) -> Cohort:
        """The same cohort restricted to ``ids`` (rows of every table of any other patient removed)."""
        keep = pd.Index([str(i) for i in ids])
        P = self.patients.set_index("patient_id").loc[keep].reset_index()

        def cut(t):
            return None if t is None else t[t["patient_id"].isin(keep)]

        return Cohort(P, cut(self.cells), cut(self.embeddings))


@contextmanager
def _stage_errors():
    """Errors of the fitted stages (cell model, embedding aggregator) as :class:`ModelError`."""
    from .cellscore import CellScoreError
    from .cnn_aggregate import AggregatorError

    try:
        yield
    except (CellScoreError, AggregatorError) as exc:
        raise ModelError(str(exc)) from None


class FoldFeatures(BaseEstimator):
    """Patient-level model inputs of some blocks, fitted on training patients only.

    Parameters
    ----------
    blocks : tuple of str
        Blocks from :data:`BLOCKS`.
    drop : tuple of str
        Columns left out (e.g. ``("n_cells",)``).
    cell_params : dict, optional
        Parameters of the :class:`~lympho_features.cellscore.CellScorer` (every cell model). Each block
        adds its own left-out features, and has its own positive selection unless ``cell_params`` sets
        ``positive_quantile`` (:data:`~lympho_features.cellscore.CELL_MODEL_BLOCKS`).
    n_components : int
        Principal components of the CNN-embedding aggregator.
    random_state : int

    Attributes
    ----------
    feature_names_ : list of str
    train_features_ : DataFrame
        Inputs of the training patients (index ``patient_id``). Their cell-score
        features come from the cell model's *out-of-fold* scores, so that the
        patient model learns from scores like those of new patients.
    cell_scorers_ : dict of str to CellScorer
        The fitted cell model of each cell-model block in use (``cellscore``, ``cellmorph``, ``cellatyp``).
    embedding_aggregator_ : fitted stage, or None
    """

    def __init__(self, blocks=("clinical", "morphology"), drop=(), cell_params=None, n_components=16, random_state=0):
        self.blocks = blocks
        self.drop = drop
        self.cell_params = cell_params
        self.n_components = n_components
        self.random_state = random_state

    def _static(self, P: pd.DataFrame) -> list[str]:
        return _static_columns(P, self.blocks, self.drop)

    def _cell_scorer(self, block: str):
        from .cellscore import CELL_MODEL_BLOCKS, CellScorer

        spec = CELL_MODEL_BLOCKS[block]
        params = {"random_state": self.random_state, "positive_quantile": spec.positive_quantile}
        params.update(self.cell_params or {})
        params["exclude_prefixes"] = tuple(params.get("exclude_prefixes") or ()) + spec.exclude_prefixes
        return CellScorer(**params)

    def _scorers(self):
        """``(prefix, fitted cell model)`` of the cell-model blocks in use."""
        from .cellscore import CELL_MODEL_BLOCKS

        return [(CELL_MODEL_BLOCKS[b].prefix, m) for b, m in self.cell_scorers_.items()]

    def fit(self, cohort: Cohort, y=None) -> FoldFeatures:
        """Fit the data-fitted blocks on ``cohort`` (the training patients only) and label ``y``."""
        with _stage_errors():
            return self._fit(cohort, y)

    def _fit(self, cohort: Cohort, y) -> FoldFeatures:
        from .cellscore import CellScoreAggregator
        from .cnn_aggregate import EmbeddingAggregator

        unknown = [b for b in self.blocks if b not in BLOCKS]
        if unknown:
            raise ModelError(f"unknown block(s) {unknown}")
        ids = cohort.ids
        self.static_ = self._static(cohort.patients)
        self.cell_scorers_ = {}
        self.embedding_aggregator_ = None
        parts = [cohort.patients.set_index("patient_id")[self.static_]]
        cell_blocks = [b for b in CELL_SCORE_BLOCKS if b in self.blocks]
        if cell_blocks:
            if cohort.cells is None:
                raise ModelError(
                    "feature set uses cell scores but no per-cell table was given (FEATURES_DIR/cells.parquet)"
                )
            labels = pd.Series(np.asarray(y, int), index=ids)
            for b in cell_blocks:
                self.cell_scorers_[b] = self._cell_scorer(b).fit(cohort.cells, labels)
            for prefix, scorer in self._scorers():
                parts.append(CellScoreAggregator(prefix=prefix).transform(scorer.oof_scores_, ids))
        if "cnn" in self.blocks:
            if cohort.embeddings is None:
                raise ModelError("feature set uses CNN features but no embeddings were given (run `lympho embed`)")
            self.embedding_aggregator_ = EmbeddingAggregator(self.n_components, random_state=self.random_state)
            self.embedding_aggregator_.fit(cohort.embeddings)
            parts.append(self.embedding_aggregator_.transform(cohort.embeddings, patient_ids=ids))
        self.train_features_ = self._join(parts, ids)
        self.feature_names_ = list(self.train_features_.columns)
        return self

    @staticmethod
    def _join(parts, ids) -> pd.DataFrame:
        frames = [p.reindex(pd.Index(ids, name="patient_id")) for p in parts]
        return pd.concat(frames, axis=1).astype(float)

    def transform(self, cohort: Cohort) -> pd.DataFrame:
        """Inputs of any patients (index ``patient_id``, columns :attr:`feature_names_`)."""
        with _stage_errors():
            return self._transform(cohort)

    def _transform(self, cohort: Cohort) -> pd.DataFrame:
        from .cellscore import CellScoreAggregator

        ids = cohort.ids
        P = cohort.patients.set_index("patient_id")
        missing = [c for c in self.static_ if c not in P.columns]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ModelError(
                f"missing {len(missing)} column(s): {shown}. Re-run `lympho extract` with the same lympho version "
                "and settings as the training data."
            )
        parts = [P[self.static_]]
        for prefix, scorer in self._scorers():
            if cohort.cells is None:
                raise ModelError(
                    "the model uses cell scores but no per-cell table was given (FEATURES_DIR/cells.parquet)"
                )
            parts.append(CellScoreAggregator(prefix=prefix).transform(scorer.score_cells(cohort.cells), ids))
        if self.embedding_aggregator_ is not None:
            if cohort.embeddings is None:
                raise ModelError("the model uses CNN features but no embeddings were given (run `lympho embed`)")
            parts.append(self.embedding_aggregator_.transform(cohort.embeddings, patient_ids=ids))
        return self._join(parts, ids)[self.feature_names_]

    def columns_for(self, feature_set: str) -> list[str]:
        """The columns of :attr:`feature_names_` that a feature set uses."""
        from .cellscore import cell_model_block
        from .cnn_aggregate import is_learned_feature

        blocks, drop = parse_feature_set(feature_set)
        out = []
        for c in self.feature_names_:
            if c in drop:
                continue
            if c in CLINICAL_FEATURES:
                keep = "clinical" in blocks
            elif (block := cell_model_block(c)) is not None:
                keep = block in blocks
            elif is_learned_feature(c):
                keep = "cnn" in blocks
            elif c == "n_cells":
                keep = "crops" in blocks or "morphology" in blocks
            else:
                keep = "morphology" in blocks
            if keep:
                out.append(c)
        return out


def _fold_task(
    cohort,
    y,
    tr,
    te,
    sets,
    blocks,
    cell_params,
    n_components,
    base,
    state,
    inner_seed,
    inner_folds,
    min_sensitivity,
    train_fraction=1.0,
):
    """One outer fold of :func:`cross_validate_sets`: fit on ``tr`` only (a stratified share of it), score ``te``."""
    ids = cohort.ids
    if train_fraction < 1:
        tr, _ = train_test_split(tr, train_size=train_fraction, stratify=y[tr], random_state=state)
    ff = FoldFeatures(blocks, (), cell_params, n_components, state)
    ff.fit(cohort.subset(ids[tr]), y[tr])
    Xtr_all, Xte_all = ff.train_features_, ff.transform(cohort.subset(ids[te]))
    out = {}
    for fs in sets:
        cols = ff.columns_for(fs)
        # DataFrames: the patient model reads the inputs' names (monotone constraints).
        Xtr, Xte = Xtr_all[cols].astype(float), Xte_all[cols].astype(float)
        est = clone(base).set_params(random_state=state).fit(Xtr, y[tr])
        proba = est.predict_proba(Xte)[:, 1]
        thr = _inner_threshold(est, Xtr, y[tr], inner_seed, inner_folds, min_sensitivity)
        out[fs] = (proba, thr, len(cols))
    return out


def cross_validate_sets(
    cohort: Cohort,
    y,
    feature_sets,
    folds: int = 5,
    repeats: int = 5,
    seed: int = 0,
    inner_folds: int = 3,
    min_sensitivity: float | None = None,
    cell_params: dict | None = None,
    n_components: int = 16,
    classifier: PatientClassifier | None = None,
    n_jobs: int = 1,
    train_fraction: float = 1.0,
) -> dict[str, CVResult]:
    """Repeated stratified patient-level CV of several feature sets on the same folds.

    In every outer fold, one :class:`FoldFeatures` holding the union of the
    blocks is fitted on the training patients (cell model, embedding PCA),
    then each feature set's patient model (and a ``min_sensitivity`` threshold, by inner CV) are fitted
    on the training patients' inputs and score the held-out patients. Sharing
    the folds makes the comparison between feature sets paired. ``n_jobs``
    outer folds run at once (threads; results do not depend on it). With ``train_fraction`` below 1,
    everything of a fold is fitted on that stratified share of its training patients (drawn with the fold's
    seed) while its held-out patients stay whole: a point of a learning curve (:func:`learning_curve`).
    """
    if not 0 < train_fraction <= 1:
        raise ModelError(f"train_fraction must be in (0, 1], got {train_fraction}")
    from joblib import Parallel, delayed

    y = np.asarray(y, int)
    _check_classes(y, folds)
    sets = list(dict.fromkeys(feature_sets))
    blocks: set[str] = set()
    for fs in sets:
        blocks |= set(parse_feature_set(fs)[0])
    blocks = tuple(b for b in BLOCKS if b in blocks)
    base = classifier if classifier is not None else PatientClassifier(random_state=seed)
    splits = [
        (r, f, tr, te)
        for r in range(repeats)
        for f, (tr, te) in enumerate(
            StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(np.zeros(len(y)), y)
        )
    ]
    results = Parallel(n_jobs=n_jobs, backend="threading")(
        delayed(_fold_task)(
            cohort,
            y,
            tr,
            te,
            sets,
            blocks,
            cell_params,
            n_components,
            base,
            seed + 1000 * r + f,
            seed + r,
            inner_folds,
            min_sensitivity,
            train_fraction,
        )
        for r, f, tr, te in splits
    )
    ids = cohort.ids
    out = {}
    for fs in sets:
        rows = []
        for r in range(repeats):
            proba, thr, fold_of = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y), int)
            for (rr, f, _, te), res in zip(splits, results, strict=True):
                if rr == r:
                    proba[te], thr[te], fold_of[te] = res[fs][0], res[fs][1], f
            rows.append(_prediction_frame(ids, r, fold_of, y, proba, thr))
        out[fs] = _summarise(rows, y, folds, repeats, seed)
        out[fs].summary["n_features"] = results[-1][fs][2]
    return out


def learning_curve(
    cohort: Cohort,
    y,
    feature_sets,
    fractions=(0.4, 0.6, 0.8, 1.0),
    folds: int = 5,
    repeats: int = 5,
    seed: int = 0,
    classifier: PatientClassifier | None = None,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Cross-validated accuracy against the number of training patients: do more patients help?

    For each fraction, :func:`cross_validate_sets` on the same outer folds with every fitted stage trained on
    that stratified share of each training fold (held-out folds whole). One row per fraction and feature set:
    ``fraction, n_train`` (training patients of a fold), ``configuration``, balanced accuracy and ROC AUC
    (mean and std over repeats).
    """
    y = np.asarray(y, int)
    fold_sizes = [len(tr) for tr, _ in StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)]
    rows = []
    for fr in fractions:
        res = cross_validate_sets(
            cohort, y, feature_sets, folds, repeats, seed, classifier=classifier, n_jobs=n_jobs, train_fraction=fr
        )
        for fs, cv in res.items():
            s = cv.summary
            rows.append(
                {
                    "fraction": float(fr),
                    # train_test_split keeps floor(fraction x n) patients
                    "n_train": int(round(np.mean([n if fr >= 1 else np.floor(fr * n) for n in fold_sizes]))),
                    "configuration": fs,
                    "balanced_accuracy": s["balanced_accuracy_mean"],
                    "balanced_accuracy_std": s["balanced_accuracy_std"],
                    "roc_auc": s["roc_auc_mean"],
                    "roc_auc_std": s["roc_auc_std"],
                }
            )
    return pd.DataFrame(rows)


def nested_selection(
    cohort: Cohort,
    y,
    feature_sets,
    folds: int = 5,
    repeats: int = 2,
    seed: int = 0,
    inner_folds: int = 3,
    n_jobs: int = 1,
    classifier: PatientClassifier | None = None,
) -> tuple[CVResult, pd.DataFrame]:
    """Honest estimate of "pick the best configuration, then fit it": selection inside each outer fold.

    In every outer fold, the configurations are compared by an inner
    cross-validation of the training patients only (balanced accuracy; ties go
    to the one with fewer inputs), and the winner is fitted on the training
    patients and scores the held-out ones. The returned CV result measures the
    whole procedure, free of the optimism of choosing the best of many on the
    same folds; the table lists which configuration each outer fold chose, with its inner-CV balanced
    accuracy and the balanced accuracy on the outer fold's held-out patients.
    """
    from joblib import Parallel, delayed

    y = np.asarray(y, int)
    _check_classes(y, folds)
    ids = cohort.ids
    base = classifier if classifier is not None else PatientClassifier(random_state=seed)
    splits = [
        (r, f, tr, te)
        for r in range(repeats)
        for f, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(ids, y))
    ]

    def one(r, f, tr, te):
        state = seed + 1000 * r + f
        inner = cross_validate_sets(cohort.subset(ids[tr]), y[tr], feature_sets, inner_folds, 1, state, classifier=base)
        best = min(
            inner,
            key=lambda fs: (-inner[fs].summary["balanced_accuracy_mean"], inner[fs].summary["n_features"]),
        )
        blocks = parse_feature_set(best)[0]
        res = _fold_task(cohort, y, tr, te, [best], blocks, None, 16, base, state, seed + r, inner_folds, None)
        return best, res[best], inner[best].summary["balanced_accuracy_mean"]

    results = Parallel(n_jobs=n_jobs, backend="threading")(delayed(one)(*s) for s in splits)
    rows, chosen = [], []
    for r in range(repeats):
        proba, thr, fold_of = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y), int)
        for (rr, f, _, te), (best, (p, t, _), inner_ba) in zip(splits, results, strict=True):
            if rr == r:
                proba[te], thr[te], fold_of[te] = p, t, f
                chosen.append(
                    {
                        "repeat": r,
                        "fold": f,
                        "configuration": best,
                        "inner_balanced_accuracy": float(inner_ba),
                        "outer_balanced_accuracy": float(balanced_accuracy_score(y[te], (p >= t).astype(int))),
                    }
                )
        rows.append(_prediction_frame(ids, r, fold_of, y, proba, thr))
    return _summarise(rows, y, folds, repeats, seed), pd.DataFrame(chosen)


# ---------------------------------------------------------------- calibration, refer band, ablation


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


#: Blocks whose inputs are computed from the patient's cells (their reliability depends on how many there are).
_CELL_BLOCKS = ("crops", "morphology", *CELL_SCORE_BLOCKS, "cnn")


def training_cell_counts(patients: pd.DataFrame) -> dict | None:
    """Crops passing QC per training patient: the fewest and the median (None without the column)."""
    if "n_cells_ok" not in patients:
        return None
    n = pd.to_numeric(patients["n_cells_ok"], errors="coerce").dropna().to_numpy(float)
    if not n.size:
        return None
    return {"min": float(n.min()), "median": float(np.median(n))}


def few_cells_warnings(meta: dict, patients: pd.DataFrame) -> list[str]:
    """Warnings for patients with fewer crops passing QC than any training patient had.

    A model whose inputs come from the cells (cell-score summaries, morphology aggregates) has
    only seen patients with at least ``meta["training_cells_ok"]["min"]`` QC-passing crops; a
    summary over fewer cells is noisier than anything it learned from. One line per such
    patient; none for clinical-only models or models saved without the training counts.
    """
    ref = meta.get("training_cells_ok")
    if not ref or "n_cells_ok" not in patients or not set(_meta_blocks(meta)[0]) & set(_CELL_BLOCKS):
        return []
    out = []
    for pid, n in zip(patients["patient_id"], patients["n_cells_ok"], strict=True):
        if pd.notna(n) and n < ref["min"]:
            rest = (
                "its cell-based inputs could not be measured" if n == 0 else "its cell-based inputs rest on few cells"
            )
            out.append(
                f"{pid}: {int(n)} crop(s) passed QC, fewer than any training patient had (at least "
                f"{ref['min']:.0f}; median {ref['median']:.0f}): {rest}; treat its call as uncertain"
            )
    return out


#: What the clinical inputs are called in warnings.
_CLINICAL_WORDS = {"age": "age (date of birth)", "gender_male": "sex", "log_lymph_count": "lymphocyte count"}


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


def missing_value_warnings(meta: dict, patients: pd.DataFrame) -> list[str]:
    """Patients missing a clinical input the model uses: one line each.

    The model then takes the training median for it (:func:`fill_missing_inputs`):
    the call rests on the other inputs.
    """
    used = [c for c in CLINICAL_FEATURES if c in meta.get("features", ())]
    if not used:
        return []
    out = []
    X = model_matrix(patients)
    for pid, row in zip(patients["patient_id"], X[used].to_numpy(float), strict=True):
        missing = [_CLINICAL_WORDS[c] for c, v in zip(used, row, strict=True) if not np.isfinite(v)]
        if missing:
            out.append(
                f"{pid}: {', '.join(missing)} missing: the call rests on the other inputs; treat it as uncertain"
            )
    return out


def input_warnings(meta: dict, patients: pd.DataFrame) -> list[str]:
    """Why some patients' calls deserve less trust than the CV says: :func:`missing_value_warnings`, then
    :func:`few_cells_warnings` (``lympho predict`` prints them)."""
    return missing_value_warnings(meta, patients) + few_cells_warnings(meta, patients)


def calibration_table(y_true, proba, n_bins: int = 5) -> dict:
    """Reliability-diagram data and Brier score of pooled out-of-fold probabilities.

    Returns ``{"brier": ..., "bins": [{"lower", "upper", "mean_predicted", "observed", "count"}...]}``
    over equal-width bins (empty bins left out).
    """
    y_true = np.asarray(y_true, float)
    proba = np.asarray(proba, float)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(proba, edges[1:-1]), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            bins.append(
                {
                    "lower": float(edges[b]),
                    "upper": float(edges[b + 1]),
                    "mean_predicted": float(proba[m].mean()),
                    "observed": float(y_true[m].mean()),
                    "count": int(m.sum()),
                }
            )
    return {"brier": float(np.mean((proba - y_true) ** 2)), "n_bins": n_bins, "bins": bins}


def _side_width(dist: np.ndarray, wrong: np.ndarray, min_error_rate: float, max_fraction: float) -> float:
    """Width of one side of the refer band: see :func:`refer_band`.

    ``dist`` are the distances to the threshold of the CV calls on that side, ``wrong`` whether each was wrong.
    """
    if not len(dist):
        return 0.0
    order = np.argsort(dist, kind="stable")
    d, w = dist[order], wrong[order]
    rate = np.cumsum(w) / np.arange(1, len(w) + 1)
    last_of_tie = np.r_[d[1:] > d[:-1], True]  # a band edge never splits equal distances
    cap = int(np.floor(max_fraction * len(d)))  # the band holds at most this many of the side's calls
    ok = np.flatnonzero((rate >= min_error_rate) & last_of_tie & (np.arange(len(d)) < cap))
    if not ok.size:
        return 0.0
    i = int(ok.max())
    return float((d[i] + d[i + 1]) / 2) if i + 1 < len(d) else float(d[i] + 1e-9)


def refer_band(cv: CVResult, min_error_rate: float = 0.3, max_fraction: float = 0.25) -> dict:
    """Band of probabilities around the threshold where the CV calls are unreliable, one width per side.

    Below the threshold (calls "reactive", whose errors are missed tumoral
    patients) and above it (calls "tumoral", whose errors are false alarms)
    separately: the side's width is the largest distance ``h`` to the fold's
    threshold such that, among that side's CV calls closer than ``h``, at least
    ``min_error_rate`` were wrong, and such that they are at most
    ``max_fraction`` of that side's calls. A patient whose probability lies in
    ``[threshold - below, threshold + above)`` is flagged ``uncertain``: refer
    to flow cytometry rather than trust the call.

    Two sides, because a threshold far from 0.5 (``--min-sensitivity``) has
    many more wrong calls on one side: with one symmetric width the band grew
    over most of [0, 1]; the cap keeps it meaningful at any threshold (it then
    refers the least certain calls, not every call of the crowded side).
    Errors far from the threshold exist too and no band catches them; the CV
    error rates inside and outside the band and the share of the errors it
    holds are recorded. ``half_width`` (the larger side) is kept for older readers.
    """
    p = cv.predictions
    signed = (p["probability"] - p["threshold"]).to_numpy(float)
    wrong = (p["prediction"] != p["label"]).to_numpy()
    above = signed >= 0
    below_w = _side_width(-signed[~above], wrong[~above], min_error_rate, max_fraction)
    above_w = _side_width(signed[above], wrong[above], min_error_rate, max_fraction)
    inside = in_refer_band(signed, below_w, above_w)
    return {
        "below": below_w,
        "above": above_w,
        "half_width": max(below_w, above_w),
        "min_error_rate": min_error_rate,
        "max_fraction": max_fraction,
        "cv_fraction_referred": float(inside.mean()),
        "cv_error_rate_referred": float(wrong[inside].mean()) if inside.any() else None,
        "cv_error_rate_not_referred": float(wrong[~inside].mean()) if (~inside).any() else None,
        "cv_share_of_errors_referred": float(wrong[inside].sum() / wrong.sum()) if wrong.any() else None,
    }


def in_refer_band(signed_margin, below: float, above: float) -> np.ndarray:
    """Whether probabilities at ``signed_margin = probability - threshold`` lie in the refer band."""
    m = np.asarray(signed_margin, float)
    return ((m < 0) & (-m < below)) | ((m >= 0) & (m < above))


def refer_limits(meta: dict) -> tuple[float, float] | None:
    """The refer band's widths below and above the threshold in a model's metadata (None: the model has none).

    Models written before the band had two sides store one ``half_width``.
    """
    refer = meta.get("refer")
    if not isinstance(refer, dict):
        return None
    half = float(refer.get("half_width", 0.0))
    return float(refer.get("below", half)), float(refer.get("above", half))


def uncertain_calls(proba, meta: dict) -> np.ndarray:
    """Which probabilities fall in the model's refer band (``predict``'s ``uncertain``); all False without one."""
    limits = refer_limits(meta)
    proba = np.asarray(proba, float)
    if limits is None:
        return np.zeros(proba.shape, bool)
    return in_refer_band(proba - float(meta["threshold"]), *limits)


def _weighted_auc(counts: np.ndarray, score: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """AUC of one score vector under many patient resamplings (``counts``: bootstrap × patients)."""
    sp, sn = score[pos], score[~pos]
    M = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
    cp, cn = counts[:, pos], counts[:, ~pos]
    num = np.einsum("bi,ij,bj->b", cp, M, cn)
    den = cp.sum(1) * cn.sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _bootstrap_metrics(cv: CVResult, counts: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BA and AUC (averaged over repeats) of a CV result under each patient resampling."""
    p = cv.predictions
    bas, aucs = [], []
    for _, g in p.groupby("repeat", sort=True):
        g = g.set_index("patient_id").loc[order]
        y = g["label"].to_numpy(int) == 1
        pred = g["prediction"].to_numpy(int)
        tp = counts[:, y] @ pred[y]
        tn = counts[:, ~y] @ (1 - pred[~y])
        sens = tp / np.maximum(counts[:, y].sum(1), 1)
        spec = tn / np.maximum(counts[:, ~y].sum(1), 1)
        bas.append((sens + spec) / 2)
        aucs.append(_weighted_auc(counts, g["probability"].to_numpy(float), y))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # resamplings without one class (tiny cohorts)
        return np.mean(bas, axis=0), np.nanmean(aucs, axis=0)


def ablation_table(
    results: dict[str, CVResult],
    n_features: dict[str, int] | None = None,
    reference: str = "clinical",
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """One row per feature set: CV metrics and a paired bootstrap interval of the difference to ``reference``.

    The bootstrap resamples patients (the same resampling for every
    configuration, whose out-of-fold predictions come from the same folds) and
    recomputes balanced accuracy and ROC AUC, averaged over repeats; the 95%
    percentile interval of the difference to the reference is reported as
    ``delta_ba_vs_<reference>`` / ``delta_auc_vs_<reference>``, and
    ``p_better_ba`` is the share of resamplings where the configuration beats the reference.
    """
    n_features = n_features or {}
    first = next(iter(results.values()))
    order = first.predictions.loc[first.predictions["repeat"] == 0, "patient_id"].to_numpy()
    n = len(order)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    boot = {fs: _bootstrap_metrics(cv, counts, order) for fs, cv in results.items()}
    ref = boot.get(reference)
    rows = []
    for fs, cv in results.items():
        s = cv.summary
        row = {
            "configuration": fs,
            "n_features": n_features.get(fs),
            "balanced_accuracy": s["balanced_accuracy_mean"],
            "balanced_accuracy_std": s["balanced_accuracy_std"],
            "roc_auc": s["roc_auc_mean"],
            "roc_auc_std": s["roc_auc_std"],
            "sensitivity": s["sensitivity_mean"],
            "specificity": s["specificity_mean"],
        }
        if ref is not None and fs != reference:
            dba, dauc = boot[fs][0] - ref[0], boot[fs][1] - ref[1]
            row[f"delta_ba_vs_{reference}"] = [float(np.quantile(dba, 0.025)), float(np.quantile(dba, 0.975))]
            row[f"delta_auc_vs_{reference}"] = [float(np.nanquantile(dauc, 0.025)), float(np.nanquantile(dauc, 0.975))]
            row["p_better_ba"] = float((dba > 0).mean())
        row["brier"] = s["brier_mean"]
        rows.append(row)
    return rows


def format_ablation(rows: list[dict], reference: str = "clinical") -> str:
    """The ablation table as fixed-width text (what benchmarks/cv_accuracy.py prints)."""
    head = (
        f"{'configuration':<20} {'n':>4} {'balanced acc':>14} {'ROC AUC':>14} {'sens':>6} {'spec':>6} {'brier':>6}"
        f"  {'ΔBA vs ' + reference + ' [95%]':>24} {'ΔAUC [95%]':>18} {'P(better)':>9}"
    )
    lines = [head]
    for r in rows:
        dba, dauc = r.get(f"delta_ba_vs_{reference}"), r.get(f"delta_auc_vs_{reference}")
        lines.append(
            f"{r['configuration']:<20} {r.get('n_features') or 0:>4} "
            f"{r['balanced_accuracy']:>6.3f} ± {r['balanced_accuracy_std']:.3f} {r['roc_auc']:>6.3f} ± {r['roc_auc_std']:.3f} "
            f"{r['sensitivity']:>6.3f} {r['specificity']:>6.3f} {r['brier']:>6.3f}  "
            + (
                f"{'[' + format(dba[0], '+.3f') + ', ' + format(dba[1], '+.3f') + ']':>24} "
                if dba
                else f"{'(reference)':>24} "
            )
            + (f"{'[' + format(dauc[0], '+.3f') + ', ' + format(dauc[1], '+.3f') + ']':>18} " if dauc else f"{'':>18} ")
            + (f"{r['p_better_ba']:>9.2f}" if "p_better_ba" in r else f"{'':>9}")
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- fit, save, load, predict


def load_patients(features_dir: str | Path) -> pd.DataFrame:
    """Read ``FEATURES_DIR/patients.parquet`` with a clear error when absent."""
    path = Path(features_dir) / "patients.parquet"
    if not path.is_file():
        raise ModelError(f"{path} not found: run `lympho extract` first")
    return pd.read_parquet(path)


def load_cohort_tables(
    features_dir: str | Path, feature_sets, embeddings_dir: str | Path | None = None, optional: bool = False
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Cells and embeddings that some feature sets need, read from a features folder.

    With ``optional``, a missing table is returned as None instead of raising.
    """
    from .cellscore import CellScoreError, load_cells

    blocks: set[str] = set()
    for fs in feature_sets:
        blocks |= set(parse_feature_set(fs)[0])
    cells = embeddings = None
    if blocks & set(CELL_SCORE_BLOCKS):
        try:
            cells = load_cells(features_dir)
        except CellScoreError as exc:
            if not optional:
                raise ModelError(str(exc)) from None
    if "cnn" in blocks:
        from .dataset import DatasetError
        from .embed import load_embeddings  # torch stays unimported: embed imports it only to run a network

        try:
            embeddings = load_embeddings(embeddings_dir or features_dir)
        except DatasetError as exc:
            if not optional:
                raise ModelError(str(exc)) from None
    return cells, embeddings


@dataclass
class FittedModel:
    """A final model with its metadata (what model.json holds)."""

    classifier: PatientClassifier
    features: list[str]
    threshold: float
    metadata: dict
    inputs: FoldFeatures | None = None  # the fitted input stages (cell model, embedding PCA)
    ablation: dict[str, CVResult] = field(default_factory=dict)


def _available_sets(cells, embeddings, extra=()) -> list[str]:
    out = []
    for fs in (*ABLATION_SETS, *extra):
        blocks, _ = parse_feature_set(fs)
        if (set(blocks) & set(CELL_SCORE_BLOCKS) and cells is None) or ("cnn" in blocks and embeddings is None):
            continue
        out.append(fs)
    return list(dict.fromkeys(out))


def fit_model(
    patients: pd.DataFrame,
    feature_set: str = "clinical+morphology",
    folds: int = 5,
    repeats: int = 5,
    seed: int = 0,
    min_sensitivity: float | None = None,
    cells: pd.DataFrame | None = None,
    embeddings: pd.DataFrame | None = None,
    ablation: bool | tuple = False,
    refer_error_rate: float = 0.3,
    refer_max_fraction: float = 0.25,
    n_boot: int = 2000,
    n_jobs: int = 1,
    monotone: bool = True,
) -> tuple[FittedModel, CVResult]:
    """Cross-validate, then fit the final model on all labeled patients.

    Parameters
    ----------
    patients : DataFrame
        patients.parquet.
    feature_set : str
        See :data:`FEATURE_SETS`; ``cellscore`` sets need ``cells``, ``cnn`` sets ``embeddings``.
        (``lympho fit``'s default is :data:`DEFAULT_FEATURE_SET`; this function's is ``clinical+morphology``
        (``all`` before the blocks were renamed), which needs the patients table only. :func:`fit_features_dir` is ``lympho fit`` with its defaults.)
    cells, embeddings : DataFrame, optional
        cells.parquet and embeddings.parquet of the same patients.
    ablation : bool or tuple of str
        Also cross-validate the other configurations on the same folds (True: those of
        :data:`ABLATION_SETS` whose inputs are given) and store the table under ``ablation``
        (``lympho fit`` does by default).
    refer_error_rate, refer_max_fraction : float
        CV error rate that marks the ``uncertain`` band around the threshold, and the largest share of each
        side's CV calls it may hold (see :func:`refer_band`).
    n_jobs : int
        Outer folds run at once (threads).
    monotone : bool
        Constrain the patient model to be monotone in lymphocyte count, age and cell-score
        summaries (:func:`monotone_direction`); False: unconstrained (the models before).

    The final threshold is chosen on the pooled out-of-fold probabilities of
    the CV (each patient scored by models that never saw it).
    """
    labeled = patients[patients["label"].notna()].reset_index(drop=True)
    if labeled.empty:
        raise ModelError("no labeled patient (LABEL 0 or 1) to fit on")
    blocks, drop = parse_feature_set(feature_set)
    if set(blocks) & set(CELL_SCORE_BLOCKS) and cells is None:
        raise ModelError(f"feature set {feature_set!r} needs the per-cell table (FEATURES_DIR/cells.parquet)")
    if "cnn" in blocks and embeddings is None:
        raise ModelError(f"feature set {feature_set!r} needs CNN embeddings (run `lympho embed`)")
    if not [c for c in feature_columns(labeled, feature_set)] and not set(blocks) & set(FITTED_BLOCKS):
        raise ModelError(f"feature set {feature_set!r} has no column in this table")
    cohort = Cohort.from_tables(labeled, cells, embeddings)
    y = labeled["label"].astype(int).to_numpy()
    sets = [feature_set]
    if ablation:
        sets += list(ablation) if isinstance(ablation, tuple | list) else _available_sets(cells, embeddings)
    sets = list(dict.fromkeys(sets))
    est = PatientClassifier(monotone=monotone, random_state=seed)
    results = cross_validate_sets(
        cohort, y, sets, folds, repeats, seed, min_sensitivity=min_sensitivity, classifier=est, n_jobs=n_jobs
    )
    cv = results[feature_set]
    threshold = (
        BALANCED_THRESHOLD
        if min_sensitivity is None
        else choose_threshold(cv.predictions["label"], cv.predictions["probability"], min_sensitivity)
    )
    inputs = FoldFeatures(blocks, drop, random_state=seed).fit(cohort, y)
    feats = inputs.feature_names_
    final = clone(est).fit(inputs.train_features_[feats].astype(float), y)
    matrix = cohort.patients
    meta = {
        "format": MODEL_FORMAT,
        "lympho_version": __version__,
        "feature_set": feature_set,
        "blocks": list(blocks),
        "features": feats,
        "threshold": threshold,
        "min_sensitivity": min_sensitivity,
        "params": est.get_params(),
        "cv": cv.summary | {"per_repeat": cv.per_repeat.to_dict(orient="records")},
        "calibration": calibration_table(cv.predictions["label"], cv.predictions["probability"]),
        "refer": refer_band(cv, refer_error_rate, refer_max_fraction),
        "library_versions": library_versions(),
        "training_data_fingerprint": dataframe_fingerprint(
            matrix[["patient_id", "label", *[c for c in feats if c in matrix.columns]]]
        ),
        "n_training_patients": int(len(y)),
        "reference": reference_ranges(inputs.train_features_[feats], y),
        "training_cells_ok": training_cell_counts(labeled),
    }
    from .cellscore import CELL_MODEL_BLOCKS

    for block, scorer in inputs.cell_scorers_.items():
        spec = CELL_MODEL_BLOCKS[block]
        meta[Path(spec.model_file).stem] = {  # cell_model, cellmorph_model, cellatyp_model
            "file": spec.model_file,
            "meta": spec.meta_file,
            "n_cells": int(len(scorer.oof_scores_)),
        }
    if inputs.embedding_aggregator_ is not None:
        meta["embedding_aggregator"] = {"file": AGGREGATOR_FILE}
    if len(results) > 1:
        n_feat = {fs: res.summary.get("n_features") for fs, res in results.items()}
        meta["ablation"] = ablation_table(results, n_feat, n_boot=n_boot, seed=seed)
    return FittedModel(final, feats, threshold, meta, inputs, results), cv


def fit_features_dir(
    features_dir: str | Path,
    out_dir: str | Path | None = None,
    feature_set: str = DEFAULT_FEATURE_SET,
    folds: int = 5,
    repeats: int = 5,
    seed: int = 0,
    min_sensitivity: float | None = None,
    embeddings_dir: str | Path | None = None,
    ablation: bool = True,
    refer_error_rate: float = 0.3,
    refer_max_fraction: float = 0.25,
    n_jobs: int = 2,
    monotone: bool = True,
) -> tuple[FittedModel, CVResult]:
    """``lympho fit`` from Python: read a features folder, cross-validate, fit, and save when ``out_dir`` is given.

    Same defaults as the command: :data:`DEFAULT_FEATURE_SET` and the ablation table. The cells and
    embeddings the chosen feature set (and the ablation) need are read from ``features_dir`` (embeddings from
    ``embeddings_dir`` when given); CNN configurations join the ablation only when embeddings are used or
    ``embeddings_dir`` is given, so that a plain fit stays fast.
    """
    patients = load_patients(features_dir)
    parse_feature_set(feature_set)
    cells, emb = load_cohort_tables(features_dir, [feature_set], embeddings_dir)
    if ablation:
        sets = ABLATION_SETS if (emb is not None or embeddings_dir is not None) else ("clinical+cellscore",)
        # (the cells table, which every cell-model configuration of the ablation needs)
        extra_cells, extra_emb = load_cohort_tables(features_dir, sets, embeddings_dir, optional=True)
        cells = cells if cells is not None else extra_cells
        emb = emb if emb is not None else extra_emb
    model, cv = fit_model(
        patients,
        feature_set,
        folds,
        repeats,
        seed,
        min_sensitivity,
        cells=cells,
        embeddings=emb,
        ablation=ablation,
        refer_error_rate=refer_error_rate,
        refer_max_fraction=refer_max_fraction,
        n_jobs=n_jobs,
        monotone=monotone,
    )
    if out_dir is not None:
        save_model(model, cv, out_dir)
    return model, cv


def save_model(model: FittedModel, cv: CVResult, out_dir: str | Path) -> None:
    """Write model.txt (LightGBM text), model.json, cv_predictions.csv and the fitted input stages atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.txt") as tmp:
        model.classifier.booster_.save_model(str(tmp))
    from .cellscore import CELL_MODEL_BLOCKS

    for block, scorer in (model.inputs.cell_scorers_ if model.inputs is not None else {}).items():
        scorer.save(out_dir / CELL_MODEL_BLOCKS[block].model_file, out_dir / CELL_MODEL_BLOCKS[block].meta_file)
    if model.inputs is not None and model.inputs.embedding_aggregator_ is not None:
        model.inputs.embedding_aggregator_.save(out_dir / AGGREGATOR_FILE)
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


def _meta_blocks(meta: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Blocks and dropped columns of a saved model (model.json ``blocks``; an ``image`` block there is
    what is now called ``morphology``: models written before the blocks were renamed)."""
    blocks, drop = parse_feature_set(meta["feature_set"]) if "blocks" not in meta else ((), ())
    if "blocks" in meta:
        blocks = tuple("morphology" if b == "image" else b for b in meta["blocks"])
        drop = ("n_cells",) if str(meta["feature_set"]).endswith("-n_cells") else ()
    return blocks, drop


def load_inputs(model_dir: str | Path, meta: dict) -> FoldFeatures:
    """The fitted input stages of a saved model (cell model, embedding aggregator) as a :class:`FoldFeatures`."""
    from .cellscore import CellScoreError, CellScorer
    from .cnn_aggregate import AggregatorError, EmbeddingAggregator

    model_dir = Path(model_dir)
    blocks, drop = _meta_blocks(meta)
    ff = FoldFeatures(blocks, drop)
    ff.feature_names_ = list(meta["features"])
    ff.cell_scorers_ = {}
    ff.embedding_aggregator_ = None
    from .cellscore import CELL_MODEL_BLOCKS, cell_model_block
    from .cnn_aggregate import is_learned_feature

    ff.static_ = [c for c in ff.feature_names_ if cell_model_block(c) is None and not is_learned_feature(c)]
    try:
        for b in (b for b in CELL_SCORE_BLOCKS if b in blocks):
            spec = CELL_MODEL_BLOCKS[b]
            ff.cell_scorers_[b] = CellScorer.load(model_dir / spec.model_file, model_dir / spec.meta_file)
    except CellScoreError as exc:
        raise ModelError(str(exc)) from None
    if "cnn" in blocks:
        try:
            ff.embedding_aggregator_ = EmbeddingAggregator.load(model_dir / AGGREGATOR_FILE)
        except AggregatorError as exc:
            raise ModelError(str(exc)) from None
    return ff


def model_inputs(
    model_dir: str | Path,
    meta: dict,
    features_dir: str | Path,
    patients: pd.DataFrame | None = None,
    embeddings_dir: str | Path | None = None,
) -> pd.DataFrame:
    """The model's input matrix for the patients of a features folder (rows in the order of ``patients``).

    Inputs missing for a patient but complete in training take the training median (:func:`fill_missing_inputs`).

    Raises
    ------
    ModelError
        When the features folder lacks what the model needs (columns, cells, embeddings).
    """
    patients = load_patients(features_dir) if patients is None else patients
    ff = load_inputs(model_dir, meta)
    cells, embeddings = load_cohort_tables(features_dir, ["+".join(_meta_blocks(meta)[0])], embeddings_dir)
    cohort = Cohort.from_tables(patients, cells, embeddings)
    try:
        X = ff.transform(cohort)
    except ModelError as exc:
        raise ModelError(f"features in {features_dir} do not match the model in {model_dir}: {exc}") from None
    return fill_missing_inputs(X.reset_index(drop=True), meta)


def cell_scores(
    model_dir: str | Path, meta: dict, cells: pd.DataFrame, contributions: bool = False
) -> pd.Series | tuple[pd.Series, pd.DataFrame, dict] | None:
    """Each cell's score by a saved model's cell model (NaN for cells it does not score), or None without one.

    With several cell models, the first of ``cellscore`` (every per-cell feature), ``cellmorph``, ``cellatyp``.
    With ``contributions``, also why: ``(scores, contributions, medians)`` with the cell model's SHAP
    contributions (log-odds, one column per per-cell feature, rows of the scored cells; see
    :meth:`CellScorer.explain_cells`) and its training cells' median of each feature (a typical cell).
    """
    if not set(_meta_blocks(meta)[0]) & set(CELL_SCORE_BLOCKS):
        return None
    ff = load_inputs(model_dir, meta)
    scorer = next(iter(ff.cell_scorers_.values()))
    out = pd.Series(np.nan, index=cells.index, name="cell_score")
    from .cellscore import usable_cells

    usable = usable_cells(cells, scorer.qc_only)
    with _stage_errors():
        out.loc[usable.index] = scorer.score_cells(usable)["score"].to_numpy()
        if contributions:
            return out, scorer.explain_cells(usable), dict(scorer.feature_medians_)
    return out


def predict(model_dir: str | Path, features_dir: str | Path, embeddings_dir: str | Path | None = None) -> pd.DataFrame:
    """Probability of tumoral, 0/1 decision and ``uncertain`` flag for every patient of a features folder.

    ``uncertain`` is 1 when the probability lies in the band around the
    threshold where the cross-validation's wrong calls concentrate (model.json
    ``refer``): refer such a patient to flow cytometry rather than trust the call.

    Raises
    ------
    ModelError
        When the features folder lacks what the model was trained on.
    """
    booster, meta = load_model(model_dir)
    patients = load_patients(features_dir)
    X = model_inputs(model_dir, meta, features_dir, patients, embeddings_dir)
    return calls_table(patients["patient_id"], booster.predict(X[meta["features"]].to_numpy(float)), meta)


def calls_table(patient_ids, proba, meta: dict) -> pd.DataFrame:
    """``patient_id, probability, prediction, uncertain`` of :func:`predict` for probabilities of a saved model."""
    proba = np.asarray(proba, float)
    return pd.DataFrame(
        {
            "patient_id": patient_ids,
            "probability": proba,
            "prediction": (proba >= meta["threshold"]).astype(int),
            "uncertain": uncertain_calls(proba, meta).astype(int),
        }
    )


def training_patient_ids(model_dir: str | Path) -> set[str] | None:
    """The patients a saved model was trained on, read from its ``cv_predictions.csv`` (None without it)."""
    path = Path(model_dir) / "cv_predictions.csv"
    try:
        ids = pd.read_csv(path, usecols=["patient_id"], dtype={"patient_id": str})["patient_id"]
    except (OSError, ValueError):
        return None
    return set(ids.dropna())


def labelled_metrics(
    predictions: pd.DataFrame, patients: pd.DataFrame, threshold: float, training_ids: set[str] | None = None
) -> dict | None:
    """How ``predict``'s calls compare with the labels a features folder records (held-out patients, say).

    Parameters
    ----------
    predictions : DataFrame
        :func:`predict`'s output (``patient_id, probability, prediction, uncertain``).
    patients : DataFrame
        The features folder's patients table; its ``label`` (0 reactive, 1 tumoral, missing unknown).
    threshold : float
        The model's decision threshold.
    training_ids : set of str, optional
        The model's training patients (:func:`training_patient_ids`): those among the labelled ones are counted,
        since their figures are in-sample.

    Returns
    -------
    dict or None
        None when no patient has a label; else ``n``, ``n_tumoral``, ``n_reactive``, the
        :func:`binary_metrics` at ``threshold`` (ROC AUC NaN with one class), the confusion counts
        ``n_found``, ``n_missed`` (tumoral called tumoral / reactive), ``n_false_alarms``, ``n_cleared``
        (reactive called tumoral / reactive), ``n_uncertain`` and
        ``balanced_accuracy_confident`` (the calls outside the refer band; NaN when they miss a class) and
        ``n_in_training`` (None when ``training_ids`` is None).
    """
    if "label" not in patients:
        return None
    labels = patients.set_index(patients["patient_id"].astype(str))["label"]
    merged = predictions.assign(label=predictions["patient_id"].astype(str).map(labels)).dropna(subset=["label"])
    if merged.empty:
        return None
    y = merged["label"].astype(int).to_numpy()
    proba = merged["probability"].to_numpy(float)
    out = {"n": len(y), "n_tumoral": int(y.sum()), "n_reactive": int((y == 0).sum())}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scikit-learn's warning for a single class
        out.update(binary_metrics(y, proba, threshold))
    if not (y == 1).any() or not (y == 0).any():
        out["balanced_accuracy"] = float("nan")  # one class: sensitivity or specificity alone says it
    called = proba >= threshold
    out["n_found"], out["n_missed"] = int((called & (y == 1)).sum()), int((~called & (y == 1)).sum())
    out["n_false_alarms"], out["n_cleared"] = int((called & (y == 0)).sum()), int((~called & (y == 0)).sum())
    sure = merged["uncertain"].to_numpy(int) == 0
    out["n_uncertain"] = int((~sure).sum())
    ys = y[sure]
    out["balanced_accuracy_confident"] = (
        float(balanced_accuracy_score(ys, proba[sure] >= threshold))
        if (ys == 1).any() and (ys == 0).any()
        else float("nan")
    )
    in_training = None if training_ids is None else int(merged["patient_id"].astype(str).isin(training_ids).sum())
    out["n_in_training"] = in_training
    return out
