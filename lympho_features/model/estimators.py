"""The LightGBM models of the stage: their shared settings, and the patient-level classifier.

Two models are fitted here, both small LightGBM ensembles: the patient model
(:class:`PatientClassifier`, a few hundred patients) and each cell model
(:class:`~lympho_features.model.cellscore.CellScorer`, tens of thousands of cells). They take
the same hyper-parameters under the same names, passed to LightGBM by one function,
:func:`lightgbm_params`, with the settings every model here needs: bagging at every
iteration, results that do not depend on the machine, one thread, no log.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ..feature_sets import cell_model_block

#: Hyper-parameters both wrappers take, under LightGBM's scikit-learn names (LightGBM reads them in both APIs).
TREE_PARAMS = ("learning_rate", "num_leaves", "min_child_samples", "subsample", "colsample_bytree", "reg_lambda")


def lightgbm_params(model: BaseEstimator, seed: int) -> dict:
    """LightGBM parameters of a wrapper: its :data:`TREE_PARAMS`, and what every model here shares.

    One thread, like every LightGBM call here: LightGBM keeps its thread count in a process-wide setting
    that each call resets, so a call with another count in a parallel CV fold resized the bin buffers under
    a concurrent binning (segfault in SparseBin::Push). ``deterministic`` and ``force_row_wise`` make the
    trees the same on any machine.
    """
    return {name: getattr(model, name) for name in TREE_PARAMS} | {
        "subsample_freq": 1,
        "random_state": seed,
        "deterministic": True,
        "force_row_wise": True,
        "n_jobs": 1,
        "verbose": -1,
    }


def store_params(model: BaseEstimator, arguments: dict) -> None:
    """Keep an ``__init__``'s arguments (its ``locals()``) as attributes, unchanged: scikit-learn's convention,
    which ``get_params`` and ``clone`` read (and model.json's ``params``)."""
    for name, value in arguments.items():
        if name not in ("self", "__class__"):
            setattr(model, name, value)


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
    if name in ("log_lymph_count", "age", "n_cells") or cell_model_block(name) is not None:
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
        store_params(self, locals())

    def fit(self, X, y):
        import lightgbm as lgb

        names = list(X.columns) if hasattr(X, "columns") else None
        constraints = [monotone_direction(n) for n in names] if self.monotone and names else None
        self.monotone_constraints_ = constraints
        extra = {"monotone_constraints": constraints} if constraints and any(constraints) else {}
        self.model_ = lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            class_weight="balanced",
            **lightgbm_params(self, self.random_state),
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
