"""Weakly supervised cell scores: a cell-level model trained with the patient's label.

Each cell of a training patient inherits its patient's label (reactive 0,
tumoral 1) and a LightGBM learns, from the per-cell features of
``cells.parquet``, how tumoral a cell looks. Each patient weighs the same
whatever its number of cells, and both classes weigh the same. A patient is
then summarised by the distribution of its cells' scores (mean, quantiles,
share of cells above fixed cut-offs): ``cellscore__mean``, ``cellscore__q90``...

Leak-free by construction when used inside a cross-validation: the
:class:`CellScorer` only ever sees the cells it is given in :meth:`CellScorer.fit`
(pass the training patients' cells), and the scores of the *training* patients
that the patient-level model learns from are out-of-fold scores from an inner
cross-validation grouped by patient, so that they look like the scores of new
patients (not the over-confident in-sample ones).

Only cells that passed quality control (``qc_ok``) are used. The cell model
is saved in LightGBM's text format with JSON metadata: no pickle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import StratifiedGroupKFold

from .._io import atomic_path, write_json
from ..aggregate import cell_feature_columns
from ..errors import CellScoreError
from ..feature_sets import CELLSCORE_PREFIX
from ..folders import read_json, read_lightgbm
from .estimators import lightgbm_params, store_params

CELLSCORE_FORMAT = 1


def usable_cells(cells: pd.DataFrame, qc_only: bool = True) -> pd.DataFrame:
    """The cells a cell model may learn from or score: those that passed QC when ``qc_only``."""
    if qc_only and "qc_ok" in cells.columns:
        return cells[cells["qc_ok"].fillna(False).astype(bool)]
    return cells


def cell_weights(patient_ids, patient_labels) -> np.ndarray:
    """Per-cell weights: each patient sums to the same, each class sums to the same; mean 1.

    Parameters
    ----------
    patient_ids : array of str, one per cell
    patient_labels : array of int (0/1), one per cell (its patient's label)
    """
    pid = pd.Series(np.asarray(patient_ids))
    y = np.asarray(patient_labels, int)
    per_patient = 1.0 / pid.map(pid.value_counts()).to_numpy(float)
    n_pat = pd.Series(y).groupby(pid.to_numpy()).first()
    n_by_class = np.bincount(n_pat.to_numpy(int), minlength=2).astype(float)
    w = per_patient / np.where(n_by_class[y] > 0, n_by_class[y], 1.0)
    return w * (len(w) / w.sum()) if len(w) else w


class CellScorer(BaseEstimator):
    """Cell-level LightGBM trained with each cell's patient label (weak supervision).

    Parameters
    ----------
    n_estimators, learning_rate, num_leaves, min_child_samples, subsample, colsample_bytree, reg_lambda, max_bin
        LightGBM's.
    inner_folds : int
        Folds of the inner cross-validation, grouped by patient and stratified by label, that gives the
        training patients their out-of-fold cell scores (:attr:`oof_scores_`).
    qc_only : bool
        Learn from and score only the cells that passed quality control.
    exclude_prefixes : tuple of str
        Per-cell feature columns starting with one of these are left out (e.g. ``("color_",)``: stain
        colour, which depends on the stain and the scanner more than on the cell).
    positive_quantile : float or None
        Positive selection (multiple-instance learning): a tumoral patient's blood keeps normal lymphocytes,
        and labelled tumoral with their patient they teach the model that normal cells look somewhat
        tumoral. The final model (and each inner model) learns only from the tumoral patients' cells whose
        out-of-fold score is above this quantile of the reactive cells' scores (all reactive cells kept).
        The scores that select an inner fold's training cells come from models that saw neither that fold
        nor the cells' own fold, so the out-of-fold scores stay free of the fold's labels. None: every
        cell of every patient (plain weak supervision; one model per inner fold instead of about three).
        Needs ``inner_folds`` >= 3 (and as many patients of each class); with fewer, none is selected.
    random_state : int

    Attributes
    ----------
    features_ : list of str
        Per-cell feature columns the model uses.
    patient_ids_ : list of str
        The patients whose cells the model was fitted on (sorted).
    oof_scores_ : DataFrame
        ``patient_id, score``: out-of-fold score of every training cell.
    booster_ : lightgbm.Booster
        The model fitted on every training cell.
    feature_medians_ : dict of str to float
        Median of each feature over the training cells (a typical cell; empty for models saved without it).
    """

    def __init__(
        self,
        n_estimators=120,
        learning_rate=0.05,
        num_leaves=15,
        min_child_samples=40,
        subsample=0.7,
        colsample_bytree=0.5,
        reg_lambda=1.0,
        max_bin=63,
        inner_folds=4,
        qc_only=True,
        exclude_prefixes=(),
        positive_quantile=None,
        random_state=0,
    ):
        store_params(self, locals())

    def _lgb_params(self, seed: int) -> dict:
        return {"objective": "binary", **lightgbm_params(self, seed), "max_bin": self.max_bin}

    def _train(self, data, seed):
        import lightgbm as lgb

        return lgb.train(self._lgb_params(seed), data, num_boost_round=self.n_estimators)

    @staticmethod
    def _subset(data, rows):
        """The training cells ``rows`` of the constructed Dataset of every training cell, with their weights.

        The cells keep the weights of :func:`cell_weights` over every training cell: each patient of an inner
        fold weighs the same, and a tumoral patient whose cells are left out by positive selection weighs in
        proportion to the cells kept. (LightGBM copies the parent's weights into a subset and ignores a
        ``set_weight`` before the subset is constructed: the reweighting this used to ask for never applied,
        and every number measured so far is with these weights.)
        """
        return data.subset(np.asarray(rows).tolist())

    def fit(self, cells: pd.DataFrame, labels) -> CellScorer:
        """Fit on the cells of the labelled patients of ``labels``.

        Parameters
        ----------
        cells : DataFrame
            Per-cell table (``patient_id``, ``qc_ok``, features). Pass the training patients' cells only;
            cells of patients absent from ``labels`` are ignored.
        labels : Series or dict
            Patient label (0 reactive, 1 tumoral) by patient ID.
        """
        labels = pd.Series(labels, dtype="float64")
        labels.index = labels.index.astype(str)
        labels = labels.dropna().astype(int)
        cells = usable_cells(cells, self.qc_only)
        cells = cells[cells["patient_id"].astype(str).isin(labels.index)]
        if cells.empty:
            raise CellScoreError("no usable cell (qc_ok) among the training patients: cannot fit a cell model")
        excluded = tuple(self.exclude_prefixes or ())
        self.features_ = [c for c in cell_feature_columns(cells) if not (excluded and c.startswith(excluded))]
        if not self.features_:
            raise CellScoreError("the cells table has no numeric feature column (after exclude_prefixes)")
        pid = cells["patient_id"].astype(str).to_numpy()
        y = labels.reindex(pid).to_numpy(int)
        if len(np.unique(y)) < 2:
            raise CellScoreError("the training cells come from one class only: cannot fit a cell model")
        X = cells[self.features_].to_numpy(np.float64)
        # A typical training cell, to say whether a cell's value is high or low (report captions).
        medians = cells[self.features_].median()
        self.feature_medians_ = {f: (float(v) if np.isfinite(v) else None) for f, v in medians.items()}
        w = cell_weights(pid, y)
        self.patient_ids_ = sorted(set(pid))
        oof = np.full(len(y), np.nan)
        n_pat_min = int(np.bincount(labels.reindex(self.patient_ids_).to_numpy(int), minlength=2).min())
        k = min(int(self.inner_folds), n_pat_min)
        import lightgbm as lgb

        # One binning of the training cells (unsupervised), shared by the inner models; one thread (see
        # lightgbm_params).
        data = lgb.Dataset(
            X,
            label=y,
            weight=w,
            params={"max_bin": self.max_bin, "verbosity": -1, "num_threads": 1},
            free_raw_data=False,
        )
        data.construct()
        splits = []
        if k >= 2:
            splitter = StratifiedGroupKFold(k, shuffle=True, random_state=self.random_state)
            splits = list(splitter.split(X, y, groups=pid))
            for i, (tr, te) in enumerate(splits):
                oof[te] = self._train(self._subset(data, tr), self.random_state + 1 + i).predict(X[te], num_threads=1)
        if self.positive_quantile is not None and k >= 3:
            oof = self._fit_selected(data, X, y, splits, oof)
        else:
            self.booster_ = self._train(data, self.random_state)
        if k < 2:  # too few patients for an inner CV: fall back to in-sample scores (optimistic)
            oof = self.booster_.predict(X, num_threads=1)
        self.oof_scores_ = pd.DataFrame({"patient_id": pid, "score": oof})
        return self

    def _selected(self, rows: np.ndarray, scores: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``rows`` without the tumoral cells scoring below the reactive cells' ``positive_quantile``.

        All of ``rows`` when a score is missing or when the selection would leave one class only.
        """
        s, yr = scores[rows], y[rows]
        if np.isnan(s).any() or yr.min() == yr.max():
            return rows
        keep = (yr == 0) | (s > np.quantile(s[yr == 0], float(self.positive_quantile)))
        return rows[keep] if yr[keep].max() == 1 else rows

    def _fit_selected(self, data, X, y, splits, oof) -> np.ndarray:
        """Positive selection (see ``positive_quantile``): sets :attr:`booster_`, returns the out-of-fold scores.

        The final model learns from the cells that the first out-of-fold scores ``oof`` select. Inner fold
        i's model learns from the cells of the other folds selected by scores from models that saw neither
        fold i nor the cell's own fold j: the model of the folds other than i and j (one per pair, shared by
        both orders), so fold i's labels never reach the scores of fold i. Needs three inner folds or more.
        """
        k = len(splits)
        fold = np.empty(len(y), int)
        for i, (_, te) in enumerate(splits):
            fold[te] = i
        sel = np.full((k, len(y)), np.nan)  # row i: selection scores for inner fold i's training cells
        for i in range(k):
            for j in range(i + 1, k):
                rows = np.flatnonzero((fold != i) & (fold != j))
                if y[rows].min() == y[rows].max():
                    continue  # one class only: no selection for folds i and j
                pair = self._train(self._subset(data, rows), self.random_state + 100 + i * k + j)
                for a, b in ((i, j), (j, i)):
                    sel[a, fold == b] = pair.predict(X[fold == b], num_threads=1)
        out = np.full(len(y), np.nan)
        for i, (tr, te) in enumerate(splits):
            inner = self._train(self._subset(data, self._selected(tr, sel[i], y)), self.random_state + 1 + i)
            out[te] = inner.predict(X[te], num_threads=1)
        final = self._selected(np.arange(len(y)), oof, y)
        self.booster_ = self._train(self._subset(data, final), self.random_state)
        return out

    def score_cells(self, cells: pd.DataFrame) -> pd.DataFrame:
        """Score of each usable cell by the model fitted on all training cells: ``patient_id, score``."""
        cells = usable_cells(cells, self.qc_only)
        missing = [c for c in self.features_ if c not in cells.columns]
        if missing:
            raise CellScoreError(
                f"cells lack {len(missing)} feature column(s) the cell model uses (first: {missing[0]}): "
                "re-run `lympho extract` with the same lympho version as the training data"
            )
        scores = (
            self.booster_.predict(cells[self.features_].to_numpy(np.float64), num_threads=1)
            if len(cells)
            else np.zeros(0)
        )
        return pd.DataFrame({"patient_id": cells["patient_id"].astype(str).to_numpy(), "score": scores})

    def explain_cells(self, cells: pd.DataFrame) -> pd.DataFrame:
        """Why the cell model scores each usable cell as it does: SHAP contributions, log-odds.

        One row per usable cell (index of ``cells`` kept), one column per
        feature of :attr:`features_`; with the model's expected value, a row
        sums to the logit of the cell's score. Positive pushes toward tumoral.
        """
        cells = usable_cells(cells, self.qc_only)
        if not len(cells):
            return pd.DataFrame(columns=self.features_, dtype=float)
        contrib = self.booster_.predict(cells[self.features_].to_numpy(np.float64), pred_contrib=True, num_threads=1)
        return pd.DataFrame(contrib[:, :-1], index=cells.index, columns=self.features_)

    # ------------------------------------------------------------ persistence (text + JSON, no pickle)

    def save(self, model_path: str | Path, meta_path: str | Path) -> None:
        """Write the cell model (LightGBM text) and its metadata (JSON), atomically."""
        with atomic_path(model_path) as tmp:
            self.booster_.save_model(str(tmp))
        write_json(
            {
                "format": CELLSCORE_FORMAT,
                "kind": "CellScorer",
                "params": self.get_params(),
                "features": list(self.features_),
                "n_training_patients": len(self.patient_ids_),
                "feature_medians": getattr(self, "feature_medians_", {}),
            },
            meta_path,
        )

    @classmethod
    def load(cls, model_path: str | Path, meta_path: str | Path) -> CellScorer:
        """Read a cell model written by :meth:`save`."""
        model_path, meta_path = Path(model_path), Path(meta_path)
        for p in (model_path, meta_path):
            if not p.is_file():
                raise CellScoreError(f"{p} not found: the model folder lacks its cell model")
        meta = read_json(meta_path, CellScoreError)
        if not isinstance(meta, dict) or meta.get("kind") != "CellScorer" or meta.get("format") != CELLSCORE_FORMAT:
            raise CellScoreError(f"{meta_path} is not a cell-model description of format {CELLSCORE_FORMAT}")
        try:
            params = dict(meta["params"])
            if "exclude_prefixes" in params:  # a JSON list; the parameter is a tuple
                params["exclude_prefixes"] = tuple(params["exclude_prefixes"] or ())
            scorer = cls(**params)
            scorer.features_ = list(meta["features"])
            medians = meta.get("feature_medians") or {}  # cell models saved before them: none
            scorer.feature_medians_ = {f: v for f, v in dict(medians).items() if isinstance(v, int | float)}
        except (KeyError, TypeError, ValueError) as exc:
            raise CellScoreError(f"{meta_path} is incomplete: {exc!r}") from None
        scorer.booster_ = read_lightgbm(model_path, CellScoreError)
        if scorer.booster_.num_feature() != len(scorer.features_):
            raise CellScoreError(f"{model_path} does not match {meta_path} (feature count)")
        scorer.patient_ids_ = []
        return scorer


class CellScoreAggregator(TransformerMixin, BaseEstimator):
    """Per-patient summary of cell scores: mean, quantiles and share of cells above cut-offs.

    Nothing is learned (the cut-offs are fixed), so it is safe anywhere in a cross-validation.

    Parameters
    ----------
    quantiles : tuple of float
    cutoffs : tuple of float
        Shares of cells whose score is above each cut-off: ``cellscore__frac_gt50`` for 0.5.
    prefix : str
        Prefix of the output columns (one per cell model, e.g. ``cellscore_morph__`` for the model of
        :data:`~lympho_features.feature_sets.MORPH_PREFIX`).
    """

    def __init__(self, quantiles=(0.1, 0.25, 0.5, 0.75, 0.9), cutoffs=(0.5, 0.7), prefix=CELLSCORE_PREFIX):
        store_params(self, locals())

    def fit(self, scores=None, y=None):
        return self

    def get_feature_names_out(self, input_features=None):
        p = self.prefix
        names = [f"{p}mean"]
        names += [f"{p}{'median' if q == 0.5 else f'q{int(round(q * 100)):02d}'}" for q in self.quantiles]
        names += [f"{p}frac_gt{int(round(c * 100)):02d}" for c in self.cutoffs]
        return np.asarray(names, dtype=object)

    def transform(self, scores: pd.DataFrame, patient_ids=None) -> pd.DataFrame:
        """Per-patient features from ``patient_id, score`` rows.

        Parameters
        ----------
        scores : DataFrame
        patient_ids : sequence, optional
            Rows of the result in this order (NaN for a patient without scored cells); default: sorted IDs.

        Returns
        -------
        DataFrame
            Index ``patient_id``, columns :meth:`get_feature_names_out`.
        """
        names = list(self.get_feature_names_out())
        s = scores.dropna(subset=["score"])
        g = s.groupby(s["patient_id"].astype(str), sort=True)["score"]
        cols = [g.mean()]
        cols += [g.quantile(q) for q in self.quantiles]
        cols += [g.apply(lambda v, c=c: float((v > c).mean())) for c in self.cutoffs]
        out = pd.concat(cols, axis=1) if len(s) else pd.DataFrame(columns=names, dtype=float)
        out.columns = names
        if patient_ids is not None:
            out = out.reindex(pd.Index([str(p) for p in patient_ids]))
        out.index.name = "patient_id"
        return out.astype(float)
