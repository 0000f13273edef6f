"""The model stage: patient-level LightGBM under repeated, stratified patient-level CV.

Everything fitted on data is fitted on the training patients of each fold
only: the patient model, a ``--min-sensitivity`` decision threshold (from
an inner cross-validation of the training patients; the balanced threshold
is a fixed 0.5, :data:`BALANCED_THRESHOLD`), and the stages that build
features from data, namely the weakly supervised cell models of the
``cellscore`` blocks (:mod:`~lympho_features.model.cellscore`) and the PCA of CNN
embeddings of the ``cnn`` block (:mod:`~lympho_features.model.cnn_aggregate`). They
are refitted inside every outer fold by :class:`FoldFeatures`, which only
ever receives the training patients' rows.

A feature set is a ``+``-joined list of blocks: ``clinical`` (age, sex, log
lymphocyte count), ``crops`` (the number of crops, ``n_cells``),
``morphology`` (the ~565 per-patient aggregates of the hand-made cell features,
with ``n_cells`` and the QC/flag fractions), ``cellscore`` (distribution of
the scores of a cell model on every per-cell feature), ``cellmorph`` (the same
with a cell model that leaves out stain colour, see
:data:`~lympho_features.feature_sets.MORPH_EXCLUDE`), ``cellatyp`` (the same
again, learned from the tumoral patients' atypical-looking cells only:
positive selection, see :class:`CellScorer`),
``cnn`` (learned embedding features). Shorthands: ``image`` is
``crops+cellatyp`` (everything derived from the images, no clinical value),
``all`` is ``clinical+image``; a trailing ``-n_cells`` drops the number of
crops. (Until this change ``image`` meant the aggregates now called
``morphology``, and ``all`` ``clinical+morphology``.)

The modules, each importing only those above it:

- :mod:`lympho_features.feature_sets` (outside the package, cheap for the command line): blocks, feature
  sets, the cell-model blocks and their column prefixes;
- :mod:`~lympho_features.model.estimators`: the LightGBM wrappers' shared settings, :class:`PatientClassifier`;
- :mod:`~lympho_features.model.cellscore`, :mod:`~lympho_features.model.cnn_aggregate`: the fitted input stages;
- :mod:`~lympho_features.model.inputs`: model matrix, :class:`Cohort`, :class:`FoldFeatures`, reading a features
  folder's tables;
- :mod:`~lympho_features.model.evaluation`: metrics, thresholds, calibration, refer band, ablation table;
- :mod:`~lympho_features.model.validation`: :func:`cross_validate_sets`, learning curve, nested selection;
- :mod:`~lympho_features.model.reference`: what model.json remembers of the training patients;
- :mod:`~lympho_features.model.persistence`: model.json's content, writing and reading a model folder
  (through :class:`lympho_features.folders.ModelFolder`, schema in :mod:`lympho_features.schema`);
- :mod:`~lympho_features.model.prediction`: calls of a saved model, and the warnings about them;
- :mod:`~lympho_features.model.fit`: :class:`FitSettings`, :func:`fit_model`, :func:`fit_features_dir`.

Every public name of these modules is importable from here.
"""

from ..errors import AggregatorError, CellScoreError, ModelError, ModelFolderError, ModelMetadataError
from ..feature_sets import (
    ALIASES,
    ATYP_POSITIVE_QUANTILE,
    ATYP_PREFIX,
    BLOCKS,
    CELL_MODEL_BLOCKS,
    CELL_SCORE_BLOCKS,
    CELLSCORE_PREFIX,
    CLINICAL_FEATURES,
    DEFAULT_FEATURE_SET,
    EMBEDDING_PREFIX,
    FEATURE_SETS,
    FITTED_BLOCKS,
    MORPH_EXCLUDE,
    MORPH_PREFIX,
    PATIENT_SUMMARIES,
    CellModelBlock,
    blocks_of,
    cell_model_block,
    is_learned_feature,
    parse_feature_set,
)
from ..folders import load_cells
from ..schema import MODEL_FORMAT, validate_model_metadata
from .cellscore import CELLSCORE_FORMAT, CellScoreAggregator, CellScorer, cell_weights, usable_cells
from .cnn_aggregate import AGGREGATOR_FORMAT, EmbeddingAggregator, embedding_columns_of, fold_features
from .estimators import TREE_PARAMS, PatientClassifier, lightgbm_params, monotone_direction
from .evaluation import (
    BALANCED_THRESHOLD,
    CVResult,
    ablation_table,
    binary_metrics,
    calibration_table,
    choose_threshold,
    format_ablation,
    in_refer_band,
    labelled_metrics,
    refer_band,
    refer_limits,
    uncertain_calls,
)
from .fit import ABLATION_SETS, FitSettings, fit_features_dir, fit_model, sets_with_inputs
from .inputs import (
    NON_FEATURE_COLUMNS,
    Cohort,
    FoldFeatures,
    feature_columns,
    load_cohort_tables,
    load_patients,
    model_matrix,
)
from .persistence import (
    AGGREGATOR_FILE,
    FittedModel,
    load_inputs,
    load_model,
    model_blocks,
    model_metadata,
    save_model,
    training_patient_ids,
)
from .prediction import (
    calls_table,
    cell_scores,
    domain_reasons,
    few_cells_reasons,
    few_cells_warnings,
    input_warnings,
    missing_value_reasons,
    missing_value_warnings,
    model_inputs,
    predict,
)
from .reference import (
    REFERENCE_PERCENTILES,
    fill_missing_inputs,
    reference_percentile,
    reference_ranges,
    training_cell_counts,
)
from .validation import (
    NESTED_CANDIDATES,
    OuterFold,
    Progress,
    cross_validate_sets,
    learning_curve,
    nested_selection,
    outer_folds,
)

__all__ = [
    "ABLATION_SETS",
    "AGGREGATOR_FILE",
    "AGGREGATOR_FORMAT",
    "ALIASES",
    "ATYP_POSITIVE_QUANTILE",
    "ATYP_PREFIX",
    "BALANCED_THRESHOLD",
    "BLOCKS",
    "CELL_MODEL_BLOCKS",
    "CELL_SCORE_BLOCKS",
    "CELLSCORE_FORMAT",
    "CELLSCORE_PREFIX",
    "CLINICAL_FEATURES",
    "DEFAULT_FEATURE_SET",
    "EMBEDDING_PREFIX",
    "FEATURE_SETS",
    "FITTED_BLOCKS",
    "MODEL_FORMAT",
    "MORPH_EXCLUDE",
    "MORPH_PREFIX",
    "NESTED_CANDIDATES",
    "NON_FEATURE_COLUMNS",
    "PATIENT_SUMMARIES",
    "REFERENCE_PERCENTILES",
    "TREE_PARAMS",
    "ablation_table",
    "AggregatorError",
    "binary_metrics",
    "blocks_of",
    "calibration_table",
    "calls_table",
    "cell_model_block",
    "cell_scores",
    "domain_reasons",
    "cell_weights",
    "CellModelBlock",
    "CellScoreAggregator",
    "CellScoreError",
    "CellScorer",
    "choose_threshold",
    "Cohort",
    "cross_validate_sets",
    "CVResult",
    "embedding_columns_of",
    "EmbeddingAggregator",
    "feature_columns",
    "few_cells_reasons",
    "few_cells_warnings",
    "fill_missing_inputs",
    "fit_features_dir",
    "fit_model",
    "FitSettings",
    "FittedModel",
    "fold_features",
    "FoldFeatures",
    "format_ablation",
    "in_refer_band",
    "input_warnings",
    "is_learned_feature",
    "labelled_metrics",
    "learning_curve",
    "lightgbm_params",
    "load_cells",
    "load_cohort_tables",
    "load_inputs",
    "load_model",
    "load_patients",
    "missing_value_reasons",
    "missing_value_warnings",
    "model_blocks",
    "model_inputs",
    "model_matrix",
    "model_metadata",
    "ModelError",
    "ModelFolderError",
    "ModelMetadataError",
    "monotone_direction",
    "nested_selection",
    "outer_folds",
    "OuterFold",
    "parse_feature_set",
    "PatientClassifier",
    "predict",
    "Progress",
    "refer_band",
    "refer_limits",
    "reference_percentile",
    "reference_ranges",
    "save_model",
    "sets_with_inputs",
    "training_cell_counts",
    "training_patient_ids",
    "uncertain_calls",
    "usable_cells",
    "validate_model_metadata",
]
