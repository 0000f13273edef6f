"""Names of ``lympho fit``'s feature sets, and the model stage's error.

What the command line needs from :mod:`lympho_features.model` without
importing the learning libraries (scikit-learn and LightGBM take about a
second to import, which every ``lympho extract`` would otherwise pay).
:mod:`lympho_features.model` re-exports all of it.
"""

from __future__ import annotations

from .errors import ModelError  # noqa: F401 (re-exported)

#: Blocks of model inputs; the cell-model blocks and ``cnn`` are fitted on data (inside each CV fold).
BLOCKS = ("clinical", "crops", "morphology", "cellscore", "cellmorph", "cellatyp", "cnn")
#: Blocks made of a cell model's score summaries (:data:`lympho_features.cellscore.CELL_MODEL_BLOCKS`).
CELL_SCORE_BLOCKS = ("cellscore", "cellmorph", "cellatyp")
FITTED_BLOCKS = (*CELL_SCORE_BLOCKS, "cnn")

#: Shorthands for groups of blocks. The images alone use the atypical-cell model: positive selection lifts
#: them from 0.821 to 0.837 balanced accuracy (5x20, same folds), but not beside the clinical values
#: (clinical+cellmorph 0.876, clinical+cellatyp 0.865): benchmarks/cv_accuracy_results.md.
ALIASES = {"image": ("crops", "cellatyp"), "all": ("clinical", "crops", "cellatyp")}

#: Named feature sets (any ``+``-joined list of blocks or shorthands; a trailing ``-n_cells`` also works).
FEATURE_SETS = (
    "clinical+cellmorph",
    "clinical+cellscore",
    "clinical",
    "image",
    "all",
    "all-n_cells",
    "morphology",
    "clinical+morphology",
    "cellscore",
    "cellmorph",
    "cellatyp",
    "clinical+cellatyp",
    "morphology+cellscore",
    "clinical+morphology+cellscore",
    "clinical+cnn",
    "clinical+morphology+cnn",
)

#: `lympho fit`'s default: clinical values + the summaries of the cell model without stain colour. Chosen
#: (benchmarks/cv_accuracy_results.md) because it ties ``clinical+cellscore`` in balanced accuracy (paired
#: difference [-0.019, +0.017], 10 repeats) with a better AUC, Brier score and spread, because the nested
#: selection picks it most often, and because stain colour depends on the stain and scanner of new patients.
DEFAULT_FEATURE_SET = "clinical+cellmorph"

