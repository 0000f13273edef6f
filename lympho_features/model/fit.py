"""``lympho fit``: cross-validate a feature set (and the ablation's), then fit the final model on every patient.

:class:`FitSettings` holds every option of the fit, checked once; :func:`fit_model` fits from tables in
memory, :func:`fit_features_dir` reads a features folder and saves the model folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sklearn.base import clone

from ..errors import ModelError
from ..feature_sets import CELL_SCORE_BLOCKS, DEFAULT_FEATURE_SET, FITTED_BLOCKS, parse_feature_set
from .estimators import PatientClassifier
from .evaluation import BALANCED_THRESHOLD, CVResult, choose_threshold
from .inputs import Cohort, FoldFeatures, feature_columns, load_cohort_tables, load_patients
from .persistence import FittedModel, model_metadata, save_model
from .validation import Progress, cross_validate_sets

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


@dataclass(frozen=True)
class FitSettings:
    """Every option of ``lympho fit``, with the command's defaults; checked when built.

    Parameters
    ----------
    feature_set : str
        See :data:`~lympho_features.feature_sets.FEATURE_SETS`; cell-model sets need the per-cell table,
        ``cnn`` sets the embeddings.
    folds, repeats, seed : int
        The repeated stratified patient-level CV (``folds`` at least 2).
    min_sensitivity : float, optional
        Pick the threshold keeping the CV sensitivity at least this, in (0, 1]; None: the balanced 0.5.
    ablation : bool or tuple of str
        Also cross-validate other configurations on the same folds (True: those of :data:`ABLATION_SETS`
        whose inputs are given) and store the table in model.json (``ablation``).
    refer_error_rate, refer_max_fraction : float
        CV error rate that marks the ``uncertain`` band around the threshold, in (0, 1), and the largest share
        of each side's CV calls it may hold, in [0, 1] (see :func:`~lympho_features.model.refer_band`).
    n_boot : int
        Bootstrap resamplings of the ablation's intervals.
    n_jobs : int
        Outer folds fitted at once (threads; results do not depend on it).
    monotone : bool
        Constrain the patient model to be monotone in lymphocyte count, age, crop count and cell-score
        summaries (:func:`~lympho_features.model.monotone_direction`); False: unconstrained.
    embeddings_dir : Path, optional
        Folder of ``embeddings.parquet`` when not the features folder (:func:`fit_features_dir`).

    Raises
    ------
    ModelError
        Naming the option whose value is out of range.
    """

    feature_set: str = DEFAULT_FEATURE_SET
    folds: int = 5
    repeats: int = 5
    seed: int = 0
    min_sensitivity: float | None = None
    ablation: bool | tuple[str, ...] = True
    refer_error_rate: float = 0.3
    refer_max_fraction: float = 0.25
    n_boot: int = 2000
    n_jobs: int = 2
    monotone: bool = True
    embeddings_dir: Path | None = None

    def __post_init__(self):
        parse_feature_set(self.feature_set)
        if isinstance(self.ablation, list | tuple):
            object.__setattr__(self, "ablation", tuple(self.ablation))
            for fs in self.ablation:
                parse_feature_set(fs)
        if self.embeddings_dir is not None:
            object.__setattr__(self, "embeddings_dir", Path(self.embeddings_dir))
        checks = (
            ("folds", "--folds", self.folds >= 2, "at least 2"),
            ("repeats", "--repeats", self.repeats >= 1, "at least 1"),
            (
                "min_sensitivity",
                "--min-sensitivity",
                self.min_sensitivity is None or 0 < self.min_sensitivity <= 1,
                "in (0, 1]",
            ),
            ("refer_error_rate", "--refer-error-rate", 0 < self.refer_error_rate < 1, "in (0, 1)"),
            ("refer_max_fraction", "--refer-max-fraction", 0 <= self.refer_max_fraction <= 1, "in [0, 1]"),
            ("n_boot", None, self.n_boot >= 1, "at least 1"),
            ("n_jobs", "--jobs", self.n_jobs >= 1, "at least 1"),
        )
        for name, option, ok, rule in checks:
            if not ok:
                shown = f"{option} ({name})" if option else name
                raise ModelError(f"{shown} must be {rule}, got {getattr(self, name)!r}")

    @classmethod
    def build(cls, settings: FitSettings | str | None = None, **options) -> FitSettings:
        """Settings from keyword ``options`` (this class's fields) over ``settings`` (or over a feature set's name)."""
        if isinstance(settings, str):
            settings, options = None, {"feature_set": settings, **options}
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown fit option(s): {', '.join(unknown)}")
        return dataclasses.replace(settings or cls(), **options)

    def ablation_sets(self, cells, embeddings) -> list[str]:
        """The configurations cross-validated besides :attr:`feature_set` (those of the ablation)."""
        if not self.ablation:
            return []
        if isinstance(self.ablation, tuple):
            return list(self.ablation)
        return sets_with_inputs(ABLATION_SETS, cells, embeddings)


def sets_with_inputs(feature_sets, cells, embeddings) -> list[str]:
    """The feature sets whose inputs are given: cell-model sets need ``cells``, ``cnn`` sets ``embeddings``."""
    out = []
    for fs in feature_sets:
        blocks, _ = parse_feature_set(fs)
        if (set(blocks) & set(CELL_SCORE_BLOCKS) and cells is None) or ("cnn" in blocks and embeddings is None):
            continue
        out.append(fs)
    return out


def _check_inputs(settings: FitSettings, labeled: pd.DataFrame, cells, embeddings) -> None:
    """A clear error before any fitting when the feature set's inputs are missing."""
    feature_set = settings.feature_set
    if labeled.empty:
        raise ModelError("no labeled patient (LABEL 0 or 1) to fit on")
    blocks, _ = parse_feature_set(feature_set)
    if set(blocks) & set(CELL_SCORE_BLOCKS) and cells is None:
        raise ModelError(f"feature set {feature_set!r} needs the per-cell table (FEATURES_DIR/cells.parquet)")
    if "cnn" in blocks and embeddings is None:
        raise ModelError(f"feature set {feature_set!r} needs CNN embeddings (run `lympho embed`)")
    if not feature_columns(labeled, feature_set) and not set(blocks) & set(FITTED_BLOCKS):
        raise ModelError(f"feature set {feature_set!r} has no column in this table")


def fit_model(
    patients: pd.DataFrame,
    settings: FitSettings | str | None = None,
    cells: pd.DataFrame | None = None,
    embeddings: pd.DataFrame | None = None,
    *,
    progress: Progress | None = None,
    **options,
) -> tuple[FittedModel, CVResult]:
    """Cross-validate, then fit the final model on all labeled patients.

    Parameters
    ----------
    patients : DataFrame
        patients.parquet.
    settings : FitSettings or str, optional
        The options of the fit (default :class:`FitSettings`'s, those of ``lympho fit``), or just a feature
        set's name; keyword ``options`` (``folds=3``...) replace single fields.
    cells, embeddings : DataFrame, optional
        cells.parquet and embeddings.parquet of the same patients (cell-model and ``cnn`` feature sets).
    progress : callable, optional
        Called with ``(folds done, folds in all)`` during the cross-validation.

    The final threshold is chosen on the pooled out-of-fold probabilities of
    the CV (each patient scored by models that never saw it).
    """
    settings = FitSettings.build(settings, **options)
    labeled = patients[patients["label"].notna()].reset_index(drop=True)
    _check_inputs(settings, labeled, cells, embeddings)
    cohort = Cohort.from_tables(labeled, cells, embeddings)
    y = labeled["label"].astype(int).to_numpy()
    sets = list(dict.fromkeys([settings.feature_set, *settings.ablation_sets(cells, embeddings)]))
    est = PatientClassifier(monotone=settings.monotone, random_state=settings.seed)
    results = cross_validate_sets(
        cohort,
        y,
        sets,
        settings.folds,
        settings.repeats,
        settings.seed,
        min_sensitivity=settings.min_sensitivity,
        classifier=est,
        n_jobs=settings.n_jobs,
        progress=progress,
    )
    cv = results[settings.feature_set]
    threshold = (
        BALANCED_THRESHOLD
        if settings.min_sensitivity is None
        else choose_threshold(cv.predictions["label"], cv.predictions["probability"], settings.min_sensitivity)
    )
    inputs = FoldFeatures(*parse_feature_set(settings.feature_set), random_state=settings.seed).fit(cohort, y)
    feats = inputs.feature_names_
    final = clone(est).fit(inputs.train_features_[feats].astype(float), y)
    meta = model_metadata(settings, cohort, y, inputs, est, threshold, results)
    return FittedModel(final, feats, threshold, meta, inputs, results), cv


def fit_features_dir(
    features_dir: str | Path,
    out_dir: str | Path | None = None,
    settings: FitSettings | str | None = None,
    *,
    progress: Progress | None = None,
    **options,
) -> tuple[FittedModel, CVResult]:
    """``lympho fit`` from Python: read a features folder, cross-validate, fit, and save when ``out_dir`` is given.

    ``settings`` and ``options`` as for :func:`fit_model` (the command's defaults). The cells and embeddings the
    chosen feature set (and the ablation) need are read from ``features_dir`` (embeddings from
    ``settings.embeddings_dir`` when given); CNN configurations join the ablation only when embeddings are used
    or ``embeddings_dir`` is given, so that a plain fit stays fast.
    """
    settings = FitSettings.build(settings, **options)
    patients = load_patients(features_dir)
    cells, emb = load_cohort_tables(features_dir, [settings.feature_set], settings.embeddings_dir)
    if settings.ablation:
        with_cnn = emb is not None or settings.embeddings_dir is not None
        # (the cells table, which every cell-model configuration of the ablation needs)
        sets = ABLATION_SETS if with_cnn else ("clinical+cellscore",)
        extra_cells, extra_emb = load_cohort_tables(features_dir, sets, settings.embeddings_dir, optional=True)
        cells = cells if cells is not None else extra_cells
        emb = emb if emb is not None else extra_emb
    model, cv = fit_model(patients, settings, cells, emb, progress=progress)
    if out_dir is not None:
        save_model(model, cv, out_dir)
    return model, cv
