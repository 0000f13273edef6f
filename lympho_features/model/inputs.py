"""The patient model's inputs: the model matrix of a patients table, a cohort, and the fold-fitted blocks.

The table-read blocks (``clinical``, ``crops``, ``morphology``) are columns of ``patients.parquet``
(:func:`model_matrix` adds the clinical inputs). The fitted blocks (the cell models' score summaries,
the PCA of CNN embeddings) are fitted by :class:`FoldFeatures` on the training patients of a fold
only, and then transform any patients.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from ..aggregate import ACQUISITION_PREFIX
from ..errors import AggregatorError, CellScoreError, FeaturesFolderError, ModelError
from ..feature_sets import (
    BLOCKS,
    CELL_MODEL_BLOCKS,
    CELL_SCORE_BLOCKS,
    CLINICAL_FEATURES,
    blocks_of,
    cell_model_block,
    is_learned_feature,
    parse_feature_set,
)
from ..folders import FeaturesFolder
from .cellscore import CellScoreAggregator, CellScorer
from .cnn_aggregate import EmbeddingAggregator
from .estimators import store_params

#: What a block needs from the features folder besides patients.parquet, in error messages.
_NEEDS = {
    "cells": "cell scores but no per-cell table was given (FEATURES_DIR/cells.parquet)",
    "embeddings": "CNN features but no embeddings were given (run `lympho embed`)",
}

#: Columns of patients.parquet that are never model inputs.
#: ``um_per_px`` (the acquisition's pixel size) and its provenance describe the scanner, not the patient.
NON_FEATURE_COLUMNS = ("patient_id", "label", "gender", "lymph_count", "dob", "um_per_px", "n_red_cells")


def model_matrix(patients: pd.DataFrame) -> pd.DataFrame:
    """Numeric model inputs of a patients table.

    Adds ``gender_male`` (1/0/NaN) and ``log_lymph_count`` (log of the count in
    10^9/L, since it spans two orders of magnitude) to the numeric columns.
    """
    X = patients.copy()
    X["gender_male"] = X["gender"].map({"M": 1.0, "F": 0.0}).astype(float) if "gender" in X else np.nan
    X["log_lymph_count"] = np.log(X["lymph_count"].astype(float).clip(lower=0.01)) if "lymph_count" in X else np.nan
    return X


def _image_columns(X: pd.DataFrame) -> list[str]:
    # Acquisition medians (acq_*) describe the scanner and the stain, not the cells: never model inputs.
    return [
        c
        for c in X.columns
        if c not in NON_FEATURE_COLUMNS
        and c not in CLINICAL_FEATURES
        and not c.startswith(ACQUISITION_PREFIX)
        # share_<type>: the cell-type gate's shares of other cells, a QC signal of the lab's pre-classifier
        and not c.startswith("share_")
        and pd.api.types.is_numeric_dtype(X[c])
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
        """The cohort of these tables; with both ``cells`` and ``embeddings``, the crops ``cells`` flags
        ``is_not_lymphocyte`` leave the embeddings (:func:`lymphocyte_embeddings`)."""
        P = model_matrix(patients).reset_index(drop=True)
        P["patient_id"] = P["patient_id"].astype(str)
        if cells is not None:
            cells = cells.assign(patient_id=cells["patient_id"].astype(str))
        if embeddings is not None:
            embeddings = embeddings.assign(patient_id=embeddings["patient_id"].astype(str))
            if cells is not None:
                embeddings = lymphocyte_embeddings(embeddings, cells)
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


def lymphocyte_embeddings(embeddings: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``embeddings`` whose crop ``cells`` does not flag ``is_not_lymphocyte``.

    ``lympho embed`` runs the segmentation but not the cell-type gate, so its own ``qc_ok`` keeps the
    neutrophils and monocytes a lab's pre-classifier let through; cells.parquet knows them. Crops are matched
    on ``(patient_id, image)``; a crop absent from ``cells`` (or a table without the columns) stays.
    """
    keys = ["patient_id", "image"]
    if not {*keys, "is_not_lymphocyte"} <= set(cells.columns) or not set(keys) <= set(embeddings.columns):
        return embeddings
    flagged = cells.loc[cells["is_not_lymphocyte"].fillna(False).astype(bool), keys].astype(str)
    if flagged.empty:
        return embeddings
    drop = pd.MultiIndex.from_frame(embeddings[keys].astype(str)).isin(pd.MultiIndex.from_frame(flagged))
    return embeddings[~drop]


@contextmanager
def stage_errors(error: type[ModelError] = ModelError):
    """Errors of the fitted stages (cell model, embedding aggregator) as ``error``, a :class:`ModelError`."""
    try:
        yield
    except (CellScoreError, AggregatorError) as exc:
        raise error(str(exc)) from None


class FoldFeatures(BaseEstimator):
    """Patient-level model inputs of some blocks, fitted on training patients only.

    Parameters
    ----------
    blocks : tuple of str
        Blocks from :data:`BLOCKS`.
    drop : tuple of str
        Columns left out (e.g. ``("n_cells",)``).
    cell_params : dict, optional
        Parameters of the :class:`~lympho_features.model.CellScorer` (every cell model). Each block
        adds its own left-out features, and has its own positive selection unless ``cell_params`` sets
        ``positive_quantile`` (:data:`~lympho_features.feature_sets.CELL_MODEL_BLOCKS`).
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
        store_params(self, locals())

    @classmethod
    def fitted(cls, blocks, drop, feature_names, cell_scorers: dict, embedding_aggregator) -> FoldFeatures:
        """Fitted stages read back from a model folder (:func:`~lympho_features.model.load_inputs`)."""
        ff = cls(blocks, drop)
        ff.feature_names_ = list(feature_names)
        ff.static_ = [c for c in ff.feature_names_ if cell_model_block(c) is None and not is_learned_feature(c)]
        ff.cell_scorers_ = dict(cell_scorers)
        ff.embedding_aggregator_ = embedding_aggregator
        return ff

    def _cell_scorer(self, block: str) -> CellScorer:
        spec = CELL_MODEL_BLOCKS[block]
        params = {"random_state": self.random_state, "positive_quantile": spec.positive_quantile}
        params.update(self.cell_params or {})
        params["exclude_prefixes"] = tuple(params.get("exclude_prefixes") or ()) + spec.exclude_prefixes
        return CellScorer(**params)

    def _scorers(self):
        """``(prefix, fitted cell model)`` of the cell-model blocks in use."""
        return [(CELL_MODEL_BLOCKS[b].prefix, m) for b, m in self.cell_scorers_.items()]

    def fit(self, cohort: Cohort, y=None) -> FoldFeatures:
        """Fit the data-fitted blocks on ``cohort`` (the training patients only) and label ``y``."""
        unknown = [b for b in self.blocks if b not in BLOCKS]
        if unknown:
            raise ModelError(f"unknown block(s) {unknown}")
        ids = cohort.ids
        self.static_ = _static_columns(cohort.patients, self.blocks, self.drop)
        self.cell_scorers_ = {}
        self.embedding_aggregator_ = None
        parts = [cohort.patients.set_index("patient_id")[self.static_]]
        with stage_errors():
            cell_blocks = [b for b in CELL_SCORE_BLOCKS if b in self.blocks]
            if cell_blocks:
                self._require(cohort.cells, "feature set", "cells")
                labels = pd.Series(np.asarray(y, int), index=ids)
                for b in cell_blocks:
                    self.cell_scorers_[b] = self._cell_scorer(b).fit(cohort.cells, labels)
                for b, scorer in self.cell_scorers_.items():
                    spec = CELL_MODEL_BLOCKS[b]
                    summary = CellScoreAggregator(prefix=spec.prefix).transform(scorer.oof_scores_, ids)
                    # The patient model takes the block's summaries only; transform computes them all and keeps
                    # feature_names_, so that a model fitted with other summaries still reads new patients.
                    parts.append(summary[[spec.prefix + stat for stat in spec.summaries]])
            if "cnn" in self.blocks:
                self._require(cohort.embeddings, "feature set", "embeddings")
                self.embedding_aggregator_ = EmbeddingAggregator(self.n_components, random_state=self.random_state)
                self.embedding_aggregator_.fit(cohort.embeddings)
                parts.append(self.embedding_aggregator_.transform(cohort.embeddings, patient_ids=ids))
        self.train_features_ = self._join(parts, ids)
        self.feature_names_ = list(self.train_features_.columns)
        return self

    @staticmethod
    def _require(table, who: str, kind: str) -> None:
        """A clear error when the table of ``kind`` (``cells`` or ``embeddings``) a block needs was not given."""
        if table is None:
            raise ModelError(f"{who} uses {_NEEDS[kind]}")

    @staticmethod
    def _join(parts, ids) -> pd.DataFrame:
        frames = [p.reindex(pd.Index(ids, name="patient_id")) for p in parts]
        return pd.concat(frames, axis=1).astype(float)

    def transform(self, cohort: Cohort) -> pd.DataFrame:
        """Inputs of any patients (index ``patient_id``, columns :attr:`feature_names_`)."""
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
        with stage_errors():
            for prefix, scorer in self._scorers():
                self._require(cohort.cells, "the model", "cells")
                parts.append(CellScoreAggregator(prefix=prefix).transform(scorer.score_cells(cohort.cells), ids))
            if self.embedding_aggregator_ is not None:
                self._require(cohort.embeddings, "the model", "embeddings")
                parts.append(self.embedding_aggregator_.transform(cohort.embeddings, patient_ids=ids))
        return self._join(parts, ids)[self.feature_names_]

    def columns_for(self, feature_set: str) -> list[str]:
        """The columns of :attr:`feature_names_` that a feature set uses."""
        blocks, drop = parse_feature_set(feature_set)
        return [c for c in self.feature_names_ if c not in drop and _column_block_in(c, blocks)]


def _column_block_in(column: str, blocks) -> bool:
    """Whether a model input belongs to one of ``blocks`` (``n_cells`` to ``crops`` and ``morphology``)."""
    if column in CLINICAL_FEATURES:
        return "clinical" in blocks
    if (block := cell_model_block(column)) is not None:
        return block in blocks
    if is_learned_feature(column):
        return "cnn" in blocks
    if column == "n_cells":
        return "crops" in blocks or "morphology" in blocks
    return "morphology" in blocks


def load_patients(features_dir: str | Path) -> pd.DataFrame:
    """Read ``FEATURES_DIR/patients.parquet`` with a clear error when absent (see :class:`FeaturesFolder`)."""
    return FeaturesFolder(features_dir).patients()


def load_cohort_tables(
    features_dir: str | Path, feature_sets, embeddings_dir: str | Path | None = None, optional: bool = False
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Cells and embeddings that some feature sets need, read from a features folder.

    With ``optional``, a missing table is returned as None instead of raising
    :class:`~lympho_features.errors.FeaturesFolderError`.
    """
    folder = FeaturesFolder(features_dir, embeddings_dir)
    blocks = blocks_of(feature_sets)

    def read(table, needed: bool):
        if not needed:
            return None
        try:
            return table()
        except FeaturesFolderError:
            if optional:
                return None
            raise

    cells = read(folder.cells, bool(set(blocks) & set(CELL_SCORE_BLOCKS)))
    embeddings = read(folder.embeddings, "cnn" in blocks)
    if embeddings is not None and cells is None:
        # The embeddings keep lymphocytes only (Cohort.from_tables): cells.parquet says which crops are not.
        try:
            embeddings = lymphocyte_embeddings(embeddings, folder.cells())
        except FeaturesFolderError:
            pass  # no per-cell table: every embedded crop is used
    return cells, embeddings
