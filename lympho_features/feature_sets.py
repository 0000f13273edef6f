"""The catalogue of ``lympho fit``'s model inputs: blocks, feature sets, and the column names each block makes.

What the command line and the readers of a model folder need to know about feature sets without
importing the learning libraries (scikit-learn and LightGBM take about a second to import, which every
``lympho extract`` would otherwise pay): plain names and data, no pandas. :mod:`lympho_features.model`
re-exports all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelError  # noqa: F401 (re-exported)

#: Blocks of model inputs; the cell-model blocks and ``cnn`` are fitted on data (inside each CV fold).
BLOCKS = ("clinical", "crops", "morphology", "cellscore", "cellmorph", "cellatyp", "cnn")
#: Blocks made of a cell model's score summaries (:data:`CELL_MODEL_BLOCKS`).
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

#: `lympho fit`'s default (and :class:`~lympho_features.model.FitSettings`'): clinical values + the summaries
#: of the cell model without stain colour. Chosen (benchmarks/cv_accuracy_results.md) because it ties
#: ``clinical+cellscore`` in balanced accuracy (paired difference [-0.019, +0.017], 10 repeats) with a better
#: AUC, Brier score and spread, because the nested selection picks it most often, and because stain colour
#: depends on the stain and scanner of new patients.
DEFAULT_FEATURE_SET = "clinical+cellmorph"

#: Model inputs derived from the clinical values (see :func:`lympho_features.model.model_matrix`).
CLINICAL_FEATURES = ("age", "gender_male", "log_lymph_count")


def parse_feature_set(feature_set: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Blocks of a feature set and the columns it drops.

    ``"clinical+morphology+cellscore"`` -> ``(("clinical", "morphology", "cellscore"), ())``;
    ``"all-n_cells"`` -> ``(("clinical", "crops", "cellatyp"), ("n_cells",))``.

    Raises
    ------
    ModelError
        For a name that is neither a block nor a shorthand.
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


def blocks_of(feature_sets) -> tuple[str, ...]:
    """The union of the blocks of several feature sets, in the order of :data:`BLOCKS`."""
    blocks: set[str] = set()
    for fs in feature_sets:
        blocks |= set(parse_feature_set(fs)[0])
    return tuple(b for b in BLOCKS if b in blocks)


# ---------------------------------------------------------------- the cell-model blocks

#: Prefix of the per-patient cell-score features.
CELLSCORE_PREFIX = "cellscore__"

#: Prefix of the per-patient summaries of the morphology-only cell model (block ``cellmorph``).
MORPH_PREFIX = "cellscore_morph__"

#: Per-cell feature families the morphology-only cell model leaves out: stain colour (optical density),
#: which varies with the staining and the scanner more than with the cell.
MORPH_EXCLUDE = ("color_",)

#: Per-cell feature families the morphology-only and atypical-cell models also leave out because another
#: laboratory's acquisition moves them more than cells differ: local binary patterns (a pixel against its 8
#: neighbours; still 0.3-1.7 interquartile ranges after a JPEG re-save at 50 or a soft focus of 1 px, with the
#: texture smoothing) and the radial profile (the rim's density mixes with the cytoplasm's under any blur: 0.3-1.1
#: IQR). Leaving them out cut the default's mean probability change under re-acquisition by a fifth to a third
#: and kept its unshifted CV accuracy (0.876 / 0.946 -> 0.883 / 0.948 BA / AUC, 5x5;
#: benchmarks/site_robustness_results.md). The finest chromatin clumps (granularity at radius 1 and 2 px, clumps
#: 2-4 px wide, the scale of a soft focus itself) moved 0.9-1.0 IQR under a blur of 1 px, more than any feature
#: the models kept: chosen on blur 1 px, nuclear stain x0.7 / x1.3 and magnification x1.25, then checked on 16
#: other shifts, leaving them out kept the default's movement (mean |dp| 0.025 -> 0.026 over the 20 shifts, within
#: the target on 14 instead of 12) and cut the image model's (0.057 -> 0.050, within on 13 instead of 10, confident
#: flips 2 -> 0), unshifted CV unchanged (0.884 / 0.949 -> 0.887 / 0.949 BA / AUC, 5x5; features version 8).
#: The outline's pixel-scale roughness (curvature spread, convexity, the high Fourier harmonics of the nucleus'
#: and the cell's outline) moved 0.2-0.5 IQR under a blur of 1 px or a JPEG re-save at 50, and the outline and
#: sizes carried most of the default's change under blur 1 px (restoring them left 0.034 of 0.058): left out,
#: the default's mean |dp| over the 20 shifts went 0.026 -> 0.023 (within the target on 14 instead of 12, blur
#: 1 px 0.056 -> 0.048), the image model's 0.045 -> 0.047 (within on 13 instead of 14, no confident flip either
#: way); unshifted CV 0.883 / 0.948 -> 0.889 / 0.950 (image 0.840 / 0.904 -> 0.838 / 0.908) BA / AUC, 5x5.
#: They stay in cells.parquet, the ``cellscore`` model, the cell-type gate and the reports.
ACQUISITION_FRAGILE = (
    "lbp_",
    "radial_",
    "granularity_nucleus_r1",
    "granularity_nucleus_r2",
    "shape_nucleus_curvature_std",
    "shape_nucleus_convexity",
    "shape_nucleus_fourier_high",
    "shape_cell_curvature_std",
    "shape_cell_convexity",
    "shape_cell_fourier_high",
)

#: Prefix of the per-patient summaries of the atypical-cell model (block ``cellatyp``).
ATYP_PREFIX = "cellscore_atyp__"

#: Positive selection of the atypical-cell model (see :class:`~lympho_features.model.CellScorer`'s
#: ``positive_quantile``): the tumoral patients' cells scoring above 90 % of the reactive cells. Chosen from a
#: sweep of the cell scores' patient AUC on the same 115 patients (0.85-0.98 all within 0.01 there: little room
#: for selection optimism), before any patient-level run; benchmarks/cv_accuracy_results.md has the sweep and
#: 0.8 / 0.9 / 0.95 at patient level. Choosing q by inner CV instead (nested, 0.75-0.95) scores `image` the
#: same (0.839 BA against 0.837).
ATYP_POSITIVE_QUANTILE = 0.9

#: The summaries of a cell model's scores (:class:`~lympho_features.model.CellScoreAggregator`'s statistics) that
#: the patient model takes: the centre of the patient's cells, not their tails. Another laboratory's acquisition
#: moves the tails (the 10th and 90th percentiles, the shares of cells above 0.5 and 0.7) more than the centre,
#: through the few cells near a cut-off, and the patient model's splits on them turned those moves into confident
#: calls flipping. With the mean and the median only (the same folds; 20 re-acquired crops a held-out patient; 9
#: shifts: blur 0.5-1 px, JPEG 50 / 60, nuclear stain x0.7 / x1.3, magnification x0.75 / x1.6; 3 repeats; seeds 0
#: and 1): the default's confident flips 9 + 9 -> 1 + 3 (of 3,105 shifted predictions a seed), its mean |dp|
#: 0.032 / 0.033 -> 0.027 / 0.029, within the whole target on 3 / 3 -> 6 / 4 shifts; the image model's flips
#: 25 + 24 -> 24 + 8, mean |dp| 0.057 / 0.062 -> 0.055 / 0.053. Unshifted 5x5 CV 0.880 / 0.948 -> 0.882 / 0.951
#: (image 0.835 / 0.907 -> 0.851 / 0.905) BA / AUC (benchmarks/site_robustness_results.md). The other summaries
#: stay computable for reports and for models fitted with them.
PATIENT_SUMMARIES = ("mean", "median")


@dataclass(frozen=True)
class CellModelBlock:
    """A block of patient inputs made of one cell model's score summaries.

    Attributes
    ----------
    prefix : str
        Prefix of its per-patient columns.
    exclude_prefixes : tuple of str
        Per-cell feature columns its cell model leaves out.
    positive_quantile : float or None
        Positive selection of its cell model (:class:`~lympho_features.model.CellScorer`).
    model_file, meta_file : str
        Its cell model's files in a model folder (LightGBM text, JSON).
    label, meaning : str
        A short name and a plain-language meaning of its scores, for reports.
    summaries : tuple of str
        The statistics of its per-patient score summaries (``mean``, ``median``, ``q90``, ``frac_gt50``...) that
        the patient model takes (:data:`PATIENT_SUMMARIES`).
    """

    prefix: str
    exclude_prefixes: tuple[str, ...]
    positive_quantile: float | None
    model_file: str
    meta_file: str
    label: str
    meaning: str
    summaries: tuple[str, ...] = PATIENT_SUMMARIES


#: The cell-model blocks, by name, in the order their models are fitted and their columns joined.
#: ``cellscore``: every per-cell feature; ``cellmorph``: no stain colour (nor :data:`ACQUISITION_FRAGILE`);
#: ``cellatyp``: the same inputs, and
#: learned from the tumoral patients' atypical-looking cells only (positive selection).
CELL_MODEL_BLOCKS = {
    "cellscore": CellModelBlock(
        CELLSCORE_PREFIX,
        (),
        None,
        "cell_model.txt",
        "cell_model.json",
        "cell score (all measurements)",
        "how tumoral each cell looks to a cell-level model trained on every measurement, stain colour included",
    ),
    "cellmorph": CellModelBlock(
        MORPH_PREFIX,
        MORPH_EXCLUDE + ACQUISITION_FRAGILE,
        None,
        "cellmorph_model.txt",
        "cellmorph_model.json",
        "cell score (no colour)",
        "how tumoral each cell looks to a cell-level model trained on size, shape, chromatin and cytoplasm "
        "(stain colour left out)",
    ),
    "cellatyp": CellModelBlock(
        ATYP_PREFIX,
        MORPH_EXCLUDE + ACQUISITION_FRAGILE,
        ATYP_POSITIVE_QUANTILE,
        "cellatyp_model.txt",
        "cellatyp_model.json",
        "atypical-cell score",
        "how much each cell looks like the atypical cells of tumoral patients (a cell-level model trained on "
        "those cells against every reactive patient's cells; stain colour left out)",
    ),
}


def cell_model_block(column: str) -> str | None:
    """The cell-model block whose summaries include ``column`` (by prefix), or None."""
    return next((b for b, spec in CELL_MODEL_BLOCKS.items() if column.startswith(spec.prefix)), None)


# ---------------------------------------------------------------- the learned (CNN) block

#: Prefix of the embedding columns of embeddings.parquet and of the learned features built from them.
EMBEDDING_PREFIX = "cnn_"


def is_learned_feature(name: str) -> bool:
    """True for a column derived from CNN embeddings (to label it as learned, not explainable)."""
    return name.startswith(EMBEDDING_PREFIX)
