"""Repeated, stratified, patient-level cross-validation of feature sets, leak-free.

Everything fitted on data is fitted on the training patients of each fold only: the patient
model, a ``--min-sensitivity`` decision threshold (from an inner cross-validation of the training
patients; the balanced threshold is a fixed 0.5, :data:`BALANCED_THRESHOLD`), and the stages that
build features from data (the cell models, the PCA of CNN embeddings), refitted inside every outer
fold by :class:`~lympho_features.model.FoldFeatures`. :func:`cross_validate_sets` is the one entry
point; :func:`learning_curve` and :func:`nested_selection` are built on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..errors import ModelError
from ..feature_sets import blocks_of, parse_feature_set
from .estimators import PatientClassifier
from .evaluation import BALANCED_THRESHOLD, CVResult, choose_threshold
from .inputs import Cohort, FoldFeatures

#: The few configurations that make sense a priori, among which :func:`nested_selection` chooses by default:
#: clinical values alone, with each cell model, and everything (clinical + image).
NESTED_CANDIDATES = ("clinical", "clinical+cellscore", "clinical+cellmorph", "all")

#: Called with ``(done, total)`` before the first outer fold and after each (a progress bar).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class OuterFold:
    """One outer fold of a repeated CV: its patients (row indices) and the seeds of what is fitted in it."""

    repeat: int
    index: int
    train: np.ndarray
    test: np.ndarray
    seed: int  # of every model fitted in the fold (patient model, cell models, PCA, the training share)
    inner_seed: int  # of the inner CV that chooses a --min-sensitivity threshold


def outer_folds(y: np.ndarray, folds: int, repeats: int, seed: int) -> list[OuterFold]:
    """The folds of ``repeats`` stratified ``folds``-fold splits; repeat r is shuffled with ``seed + r``."""
    counts = np.bincount(y, minlength=2)
    if counts.min() < folds:
        raise ModelError(f"too few patients of one class for {folds}-fold CV ({counts.tolist()} reactive/tumoral)")
    return [
        OuterFold(r, f, tr, te, seed + 1000 * r + f, seed + r)
        for r in range(repeats)
        for f, (tr, te) in enumerate(
            StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(np.zeros(len(y)), y)
        )
    ]


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


def _fold_task(
    cohort: Cohort,
    y: np.ndarray,
    fold: OuterFold,
    *,
    sets,
    classifier: PatientClassifier | None = None,
    inner_folds: int = 3,
    min_sensitivity: float | None = None,
    cell_params: dict | None = None,
    n_components: int = 16,
    train_fraction: float = 1.0,
) -> dict[str, tuple[np.ndarray, float, int]]:
    """One outer fold: fit on its training patients only (a stratified share of them), score its held-out ones.

    One :class:`FoldFeatures` holds the union of the blocks of ``sets``; returns, per feature set, the
    held-out probabilities, the fold's threshold and the number of inputs. The patient model is a clone of
    ``classifier`` (default :class:`PatientClassifier`) seeded with the fold's seed.
    """
    ids, tr, te = cohort.ids, fold.train, fold.test
    if train_fraction < 1:
        tr, _ = train_test_split(tr, train_size=train_fraction, stratify=y[tr], random_state=fold.seed)
    ff = FoldFeatures(blocks_of(sets), (), cell_params, n_components, fold.seed)
    ff.fit(cohort.subset(ids[tr]), y[tr])
    Xtr_all, Xte_all = ff.train_features_, ff.transform(cohort.subset(ids[te]))
    base = PatientClassifier() if classifier is None else classifier
    out = {}
    for fs in sets:
        cols = ff.columns_for(fs)
        # DataFrames: the patient model reads the inputs' names (monotone constraints).
        Xtr, Xte = Xtr_all[cols].astype(float), Xte_all[cols].astype(float)
        est = clone(base).set_params(random_state=fold.seed).fit(Xtr, y[tr])
        proba = est.predict_proba(Xte)[:, 1]
        thr = _inner_threshold(est, Xtr, y[tr], fold.inner_seed, inner_folds, min_sensitivity)
        out[fs] = (proba, thr, len(cols))
    return out


def _run_folds(task: Callable, folds: list[OuterFold], n_jobs: int, progress: Progress | None) -> list:
    """``task(fold)`` of every fold, ``n_jobs`` at once (threads), in the order of ``folds``."""
    from joblib import Parallel, delayed

    results = []
    if progress is not None:
        progress(0, len(folds))
    runs = Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")(delayed(task)(f) for f in folds)
    for res in runs:
        results.append(res)
        if progress is not None:
            progress(len(results), len(folds))
    return results


def _pool(folds: list[OuterFold], calls: list[tuple], cohort: Cohort, y: np.ndarray, seed: int) -> CVResult:
    """The :class:`CVResult` of each fold's held-out ``(probabilities, threshold)``, pooled per repeat."""
    repeats = max(f.repeat for f in folds) + 1
    rows = []
    for r in range(repeats):
        proba, thr, fold_of = np.zeros(len(y)), np.zeros(len(y)), np.zeros(len(y), int)
        for fold, (p, t) in zip(folds, calls, strict=True):
            if fold.repeat == r:
                proba[fold.test], thr[fold.test], fold_of[fold.test] = p, t, fold.index
        rows.append(
            pd.DataFrame(
                {
                    "patient_id": cohort.ids,
                    "repeat": r,
                    "fold": fold_of,
                    "label": y,
                    "probability": proba,
                    "threshold": thr,
                    "prediction": (proba >= thr).astype(int),
                }
            )
        )
    return CVResult.from_repeats(rows, y, len(folds) // repeats, repeats, seed)


def cross_validate_sets(
    cohort: Cohort,
    y,
    feature_sets,
    folds: int = 5,
    repeats: int = 5,
    seed: int = 0,
    *,
    inner_folds: int = 3,
    min_sensitivity: float | None = None,
    cell_params: dict | None = None,
    n_components: int = 16,
    classifier: PatientClassifier | None = None,
    n_jobs: int = 1,
    train_fraction: float = 1.0,
    progress: Progress | None = None,
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
    ``progress``, when given, is called with ``(folds done, folds in all)``: ``(0, total)`` before the first
    outer fold, then after each.
    """
    if not 0 < train_fraction <= 1:
        raise ModelError(f"train_fraction must be in (0, 1], got {train_fraction}")
    y = np.asarray(y, int)
    plan = outer_folds(y, folds, repeats, seed)
    sets = list(dict.fromkeys(feature_sets))
    for fs in sets:
        parse_feature_set(fs)
    options = {
        "sets": sets,
        "classifier": classifier,
        "inner_folds": inner_folds,
        "min_sensitivity": min_sensitivity,
        "cell_params": cell_params,
        "n_components": n_components,
        "train_fraction": train_fraction,
    }
    results = _run_folds(lambda fold: _fold_task(cohort, y, fold, **options), plan, n_jobs, progress)
    out = {}
    for fs in sets:
        out[fs] = _pool(plan, [res[fs][:2] for res in results], cohort, y, seed)
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
    fold_sizes = [len(f.train) for f in outer_folds(y, folds, 1, seed)]
    rows = []
    for fr in fractions:
        res = cross_validate_sets(
            cohort, y, feature_sets, folds, repeats, seed, classifier=classifier, n_jobs=n_jobs, train_fraction=fr
        )
        # train_test_split keeps floor(fraction x n) patients
        n_train = int(round(np.mean([n if fr >= 1 else np.floor(fr * n) for n in fold_sizes])))
        rows += [
            {"fraction": float(fr), "n_train": n_train, "configuration": fs, **cv.scores()} for fs, cv in res.items()
        ]
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
    y = np.asarray(y, int)
    plan = outer_folds(y, folds, repeats, seed)
    ids = cohort.ids

    def one(fold: OuterFold):
        inner = cross_validate_sets(
            cohort.subset(ids[fold.train]),
            y[fold.train],
            feature_sets,
            inner_folds,
            1,
            fold.seed,
            classifier=classifier,
        )
        best = min(
            inner,
            key=lambda fs: (-inner[fs].summary["balanced_accuracy_mean"], inner[fs].summary["n_features"]),
        )
        res = _fold_task(cohort, y, fold, sets=[best], classifier=classifier, inner_folds=inner_folds)
        return best, res[best], inner[best].summary["balanced_accuracy_mean"]

    results = _run_folds(one, plan, n_jobs, None)
    chosen = [
        {
            "repeat": fold.repeat,
            "fold": fold.index,
            "configuration": best,
            "inner_balanced_accuracy": float(inner_ba),
            "outer_balanced_accuracy": float(balanced_accuracy_score(y[fold.test], (p >= t).astype(int))),
        }
        for fold, (best, (p, t, _), inner_ba) in zip(plan, results, strict=True)
    ]
    return _pool(plan, [res[1][:2] for res in results], cohort, y, seed), pd.DataFrame(chosen)
