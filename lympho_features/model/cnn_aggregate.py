"""Per-patient features from per-cell CNN embeddings (learned features).

A CNN embedding has hundreds of dimensions and a cohort has about a hundred
patients, so the embeddings are first reduced by a PCA fitted on the cells
of the *training* patients only (inside each cross-validation fold, never on
the patients a fold is scored on), then each patient's cells are summarised
by the mean and spread of each component: ``cnn_pc1__mean``,
``cnn_pc1__std``... These columns are learned features, to be reported
apart from the hand-made, explainable ones (:func:`lympho_features.feature_sets.is_learned_feature`).

No torch here: the aggregator needs only numpy, and is saved as plain JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from .._io import write_json
from ..errors import AggregatorError
from ..feature_sets import EMBEDDING_PREFIX
from ..folders import read_json
from .estimators import store_params

AGGREGATOR_FORMAT = 1

STATS = ("mean", "std")


def embedding_columns_of(cells: pd.DataFrame) -> list[str]:
    """The embedding columns (``cnn_0000``...) of a per-cell table, in order."""
    return [c for c in cells.columns if c.startswith(EMBEDDING_PREFIX) and c[len(EMBEDDING_PREFIX) :].isdigit()]


class EmbeddingAggregator(TransformerMixin, BaseEstimator):
    """PCA of per-cell embeddings, then per-patient mean and spread of each component.

    Parameters
    ----------
    n_components : int
        Principal components kept (at most the number of training cells and of embedding dimensions).
    stats : tuple of str
        Per-patient statistics of each component, from ``("mean", "std")``; ``std`` is the sample
        standard deviation (NaN for a patient with a single cell).
    standardize : bool
        Scale each embedding dimension to unit variance before the PCA (default: PCA of the raw,
        centred embeddings, where dimensions with more variance weigh more).
    qc_only : bool
        Use only the cells that passed segmentation quality control (``qc_ok``), when that column exists.
    random_state : int
        Seed of the randomised SVD used for large inputs.

    Attributes
    ----------
    columns_ : list of str
        Embedding columns seen in :meth:`fit`.
    mean_, scale_ : ndarray
        Centring and scaling of the embeddings (``scale_`` all ones unless ``standardize``).
    components_ : ndarray, shape (n_components, n_dims)
    explained_variance_ratio_ : ndarray
    feature_names_ : list of str
        Output columns, ``cnn_pc{k}__{stat}`` with k from 1.
    """

    def __init__(self, n_components=16, stats=STATS, standardize=False, qc_only=False, random_state=0):
        store_params(self, locals())

    def _cells(self, embeddings: pd.DataFrame) -> pd.DataFrame:
        if "patient_id" not in embeddings.columns:
            raise AggregatorError("embeddings table has no patient_id column")
        if self.qc_only and "qc_ok" in embeddings.columns:
            return embeddings[embeddings["qc_ok"].astype(bool)]
        return embeddings

    def fit(self, embeddings: pd.DataFrame, y=None):
        """Fit the PCA on every cell of ``embeddings`` (pass the training patients' cells only)."""
        from sklearn.decomposition import PCA

        bad = [s for s in self.stats if s not in STATS]
        if bad or not self.stats:
            raise AggregatorError(f"stats must be taken from {', '.join(STATS)}, got {list(self.stats)}")
        cells = self._cells(embeddings)
        cols = embedding_columns_of(cells)
        if not cols:
            raise AggregatorError("embeddings table has no cnn_* embedding column: was it written by `lympho embed`?")
        X = cells[cols].to_numpy(np.float64)
        if len(X) < 2:
            raise AggregatorError(f"need at least 2 cells to fit the PCA of embeddings, got {len(X)}")
        if not np.isfinite(X).all():
            raise AggregatorError("embeddings contain NaN or infinite values")
        k = int(self.n_components)
        if k < 1:
            raise AggregatorError("n_components must be at least 1")
        k = min(k, X.shape[0] - 1, X.shape[1])
        mean = X.mean(axis=0)
        scale = X.std(axis=0) if self.standardize else np.ones(X.shape[1])
        scale[scale == 0] = 1.0
        pca = PCA(n_components=k, svd_solver="auto", random_state=self.random_state)
        pca.fit((X - mean) / scale)
        self.columns_ = cols
        # The PCA's own mean is ~0 after centring; fold it in so transform is a single affine map.
        self.mean_ = mean + pca.mean_ * scale
        self.scale_ = scale
        self.components_ = pca.components_.copy()
        self.explained_variance_ratio_ = pca.explained_variance_ratio_.copy()
        self.feature_names_ = [f"{EMBEDDING_PREFIX}pc{j + 1}__{s}" for j in range(k) for s in self.stats]
        return self

    def cell_components(self, embeddings: pd.DataFrame) -> np.ndarray:
        """Principal-component scores of each cell, ``(n_cells, n_components)``."""
        missing = [c for c in self.columns_ if c not in embeddings.columns]
        if missing:
            raise AggregatorError(
                f"embeddings lack {len(missing)} column(s) the aggregator was fitted on (first: {missing[0]}): "
                "were they made with other weights?"
            )
        X = embeddings[self.columns_].to_numpy(np.float64)
        return ((X - self.mean_) / self.scale_) @ self.components_.T

    def transform(self, embeddings: pd.DataFrame, patient_ids=None) -> pd.DataFrame:
        """Per-patient features.

        Parameters
        ----------
        embeddings : DataFrame
            Per-cell table with ``patient_id`` and the embedding columns.
        patient_ids : sequence, optional
            Rows of the result, in this order; a patient without cells gets NaN.
            Default: the patients present in ``embeddings``, sorted.

        Returns
        -------
        DataFrame
            Index ``patient_id``, columns :attr:`feature_names_`.
        """
        cells = self._cells(embeddings)
        scores = self.cell_components(cells) if len(cells) else np.zeros((0, len(self.components_)))
        k = scores.shape[1]
        frame = pd.DataFrame(scores, columns=[f"pc{j + 1}" for j in range(k)])
        frame["patient_id"] = cells["patient_id"].astype(str).to_numpy()
        grouped = frame.groupby("patient_id", sort=True)
        parts = {}
        for s in self.stats:
            agg = grouped.mean() if s == "mean" else grouped.std(ddof=1)
            for j in range(k):
                parts[f"{EMBEDDING_PREFIX}pc{j + 1}__{s}"] = agg[f"pc{j + 1}"]
        out = pd.DataFrame(parts, index=grouped.mean().index)[self.feature_names_]
        if patient_ids is not None:
            out = out.reindex(pd.Index([str(p) for p in patient_ids], name="patient_id"))
        out.index.name = "patient_id"
        return out

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.feature_names_, dtype=object)

    # ------------------------------------------------------------ persistence (JSON, no pickle)

    def to_dict(self) -> dict:
        """Everything needed to transform new cells, as JSON-compatible lists and numbers."""
        return {
            "format": AGGREGATOR_FORMAT,
            "kind": "EmbeddingAggregator",
            "params": {
                "n_components": int(self.n_components),
                "stats": list(self.stats),
                "standardize": bool(self.standardize),
                "qc_only": bool(self.qc_only),
                "random_state": self.random_state,
            },
            "columns": list(self.columns_),
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "components": self.components_.tolist(),
            "explained_variance_ratio": self.explained_variance_ratio_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> EmbeddingAggregator:
        """Rebuild a fitted aggregator from :meth:`to_dict`'s output."""
        if not isinstance(d, dict) or d.get("kind") != "EmbeddingAggregator":
            raise AggregatorError("not a saved EmbeddingAggregator (missing kind)")
        if d.get("format") != AGGREGATOR_FORMAT:
            raise AggregatorError(f"aggregator format {d.get('format')} is not {AGGREGATOR_FORMAT}")
        try:
            p = d["params"]
            agg = cls(
                n_components=p["n_components"],
                stats=tuple(p["stats"]),
                standardize=p["standardize"],
                qc_only=p["qc_only"],
                random_state=p["random_state"],
            )
            agg.columns_ = list(d["columns"])
            agg.mean_ = np.asarray(d["mean"], np.float64)
            agg.scale_ = np.asarray(d["scale"], np.float64)
            agg.components_ = np.asarray(d["components"], np.float64)
            agg.explained_variance_ratio_ = np.asarray(d["explained_variance_ratio"], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise AggregatorError(f"saved aggregator is incomplete or malformed: {exc!r}") from None
        n = len(agg.columns_)
        if agg.mean_.shape != (n,) or agg.scale_.shape != (n,) or agg.components_.ndim != 2:
            raise AggregatorError("saved aggregator arrays have inconsistent shapes")
        if agg.components_.shape[1] != n:
            raise AggregatorError("saved aggregator arrays have inconsistent shapes")
        k = agg.components_.shape[0]
        agg.feature_names_ = [f"{EMBEDDING_PREFIX}pc{j + 1}__{s}" for j in range(k) for s in agg.stats]
        return agg

    def save(self, path: str | Path) -> None:
        """Write the fitted aggregator as JSON (atomically)."""
        write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingAggregator:
        """Read an aggregator written by :meth:`save`."""
        d = read_json(path, AggregatorError)
        try:
            return cls.from_dict(d)
        except AggregatorError as exc:
            raise AggregatorError(f"{path}: {exc}") from None


def fold_features(
    embeddings: pd.DataFrame, train_ids, patient_ids, n_components: int = 16, random_state: int = 0
) -> tuple[pd.DataFrame, EmbeddingAggregator]:
    """Learned features of one cross-validation fold, without leakage.

    Fits an :class:`EmbeddingAggregator` on the cells of ``train_ids`` only and
    returns the features of ``patient_ids`` (rows in that order, NaN for a
    patient without cells) with the fitted aggregator (to save next to a final model).
    """
    train = {str(p) for p in train_ids}
    cells = embeddings[embeddings["patient_id"].astype(str).isin(train)]
    agg = EmbeddingAggregator(n_components=n_components, random_state=random_state).fit(cells)
    return agg.transform(embeddings, patient_ids=patient_ids), agg
