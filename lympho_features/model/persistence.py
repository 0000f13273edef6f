"""A fitted model on disk: what model.json holds, writing a model folder, and reading it back.

A saved model is LightGBM's own text format plus JSON metadata (and, when used, each cell model's
text + JSON files, named in :data:`~lympho_features.feature_sets.CELL_MODEL_BLOCKS`, and
``aggregator.json``): no pickle is ever written or read. model.json is laid out by one function,
:func:`model_metadata`, and written by one, :func:`save_model`; a model folder is read through
:class:`~lympho_features.folders.ModelFolder`, which checks model.json against its schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from .._io import atomic_path, dataframe_fingerprint, library_versions, write_csv, write_json
from ..errors import ModelFolderError
from ..feature_sets import CELL_MODEL_BLOCKS, CELL_SCORE_BLOCKS, parse_feature_set
from ..folders import ModelFolder
from ..schema import MODEL_FORMAT
from .cellscore import CellScorer
from .cnn_aggregate import EmbeddingAggregator
from .estimators import PatientClassifier
from .evaluation import CVResult, ablation_table, calibration_table, refer_band
from .inputs import Cohort, FoldFeatures, stage_errors
from .reference import reference_ranges, training_cell_counts

#: The embedding aggregator's file in a model folder (the cell models' files: ``CELL_MODEL_BLOCKS``).
AGGREGATOR_FILE = ModelFolder.AGGREGATOR


@dataclass
class FittedModel:
    """A final model with its metadata (what model.json holds)."""

    classifier: PatientClassifier
    features: list[str]
    threshold: float
    metadata: dict
    inputs: FoldFeatures | None = None  # the fitted input stages (cell model, embedding PCA)
    ablation: dict[str, CVResult] = field(default_factory=dict)


def model_metadata(
    settings,
    cohort: Cohort,
    y: np.ndarray,
    inputs: FoldFeatures,
    classifier: PatientClassifier,
    threshold: float,
    results: dict[str, CVResult],
) -> dict:
    """What model.json holds: how the model was fitted, its CV, reference ranges and the files of its stages.

    Parameters
    ----------
    settings : FitSettings
        The options of the fit.
    cohort, y : Cohort, array
        The training patients and their labels.
    inputs : FoldFeatures
        The input stages fitted on every training patient.
    classifier : PatientClassifier
        The final patient model (its parameters are recorded).
    threshold : float
        The decision threshold.
    results : dict of str to CVResult
        The CV of the model's feature set and, with more than one entry, of the ablation's.
    """
    feature_set = settings.feature_set
    cv = results[feature_set]
    feats = inputs.feature_names_
    matrix = cohort.patients
    meta = {
        "format": MODEL_FORMAT,
        "lympho_version": __version__,
        "feature_set": feature_set,
        "blocks": list(parse_feature_set(feature_set)[0]),
        "features": feats,
        "threshold": threshold,
        "min_sensitivity": settings.min_sensitivity,
        "params": classifier.get_params(),
        "cv": cv.summary | {"per_repeat": cv.per_repeat.to_dict(orient="records")},
        "calibration": calibration_table(cv.predictions["label"], cv.predictions["probability"]),
        "refer": refer_band(cv, settings.refer_error_rate, settings.refer_max_fraction),
        "library_versions": library_versions(),
        "training_data_fingerprint": dataframe_fingerprint(
            matrix[["patient_id", "label", *[c for c in feats if c in matrix.columns]]]
        ),
        "n_training_patients": int(len(y)),
        "reference": reference_ranges(inputs.train_features_[feats], y),
        "training_cells_ok": training_cell_counts(matrix),
    }
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
        meta["ablation"] = ablation_table(results, n_feat, n_boot=settings.n_boot, seed=settings.seed)
    return meta


def save_model(model: FittedModel, cv: CVResult, out_dir: str | Path) -> None:
    """Write model.txt (LightGBM text), model.json, cv_predictions.csv and the fitted input stages atomically."""
    folder = ModelFolder(out_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder.file(ModelFolder.MODEL_TXT)) as tmp:
        model.classifier.booster_.save_model(str(tmp))
    stages = model.inputs
    for block, scorer in (stages.cell_scorers_ if stages is not None else {}).items():
        spec = CELL_MODEL_BLOCKS[block]
        scorer.save(folder.file(spec.model_file), folder.file(spec.meta_file))
    if stages is not None and stages.embedding_aggregator_ is not None:
        stages.embedding_aggregator_.save(folder.file(AGGREGATOR_FILE))
    write_csv(cv.predictions, folder.file(ModelFolder.CV_PREDICTIONS))
    write_json(model.metadata, folder.file(ModelFolder.MODEL_JSON))


def load_model(model_dir: str | Path):
    """Load and validate a saved model: returns ``(lightgbm.Booster, metadata)``.

    Raises
    ------
    ModelFolderError
        (a :class:`~lympho_features.errors.ModelError`) naming the missing or invalid file.
    """
    folder = ModelFolder(model_dir)
    meta = folder.metadata()
    return folder.booster(meta), meta


def model_blocks(meta: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Blocks and dropped columns of a saved model (model.json ``blocks``; an ``image`` block there is
    what is now called ``morphology``: models written before the blocks were renamed)."""
    if "blocks" not in meta:
        return parse_feature_set(meta["feature_set"])
    blocks = tuple("morphology" if b == "image" else b for b in meta["blocks"])
    drop = ("n_cells",) if str(meta["feature_set"]).endswith("-n_cells") else ()
    return blocks, drop


def load_inputs(model_dir: str | Path, meta: dict) -> FoldFeatures:
    """The fitted input stages of a saved model (cell model, embedding aggregator) as a :class:`FoldFeatures`."""
    folder = ModelFolder(model_dir)
    blocks, drop = model_blocks(meta)
    scorers, aggregator = {}, None
    with stage_errors(ModelFolderError):
        for b in (b for b in CELL_SCORE_BLOCKS if b in blocks):
            spec = CELL_MODEL_BLOCKS[b]
            scorers[b] = CellScorer.load(folder.file(spec.model_file), folder.file(spec.meta_file))
        if "cnn" in blocks:
            aggregator = EmbeddingAggregator.load(folder.file(AGGREGATOR_FILE))
    return FoldFeatures.fitted(blocks, drop, meta["features"], scorers, aggregator)


def training_patient_ids(model_dir: str | Path) -> set[str] | None:
    """The patients a saved model was trained on, read from its ``cv_predictions.csv`` (None without it)."""
    return ModelFolder(model_dir).training_patient_ids()
