"""Plain language for the model's inputs: families, meanings and short labels a clinician can read.

The meanings of per-cell measurements come from :mod:`lympho_features.features`
(``describe_feature``); this module adds the patient-level words: the statistic
of an aggregate (``__mean``, ``__q90``...), the clinical inputs, the learned and
cell-score inputs, and the family each input belongs to.
"""

from __future__ import annotations

import re

from ..feature_sets import CELL_MODEL_BLOCKS, cell_model_block
from ..features import describe_feature as describe_cell_feature
from ..model import ModelError, parse_feature_set
from ..segment import FLAG_DESCRIPTIONS

#: Feature families: (name prefixes, key, title, meaning for a clinician). First match wins.
FAMILIES: tuple[tuple[tuple[str, ...], str, str, str], ...] = (
    (
        ("cnn_",),
        "learned",
        "Learned features (CNN embedding)",
        "not hand-made: a principal component of a neural network's (ImageNet-pretrained EfficientNet-Lite0) "
        "description of each cell; it has no plain-language meaning, look at the cells",
    ),
    (
        ("age", "gender_male", "log_lymph_count", "lymph_count", "gender"),
        "clinical",
        "Clinical values",
        "age, sex and blood lymphocyte count given with the request",
    ),
    (
        ("n_cells",),
        "acquisition",
        "Number of crops",
        "how many lymphocyte images were taken from the smear: reflects how the slide was scanned as much as the patient",
    ),
    (
        ("frac_qc_",),
        "quality",
        "Image quality",
        "share of crops failing a quality check (off-centre, touching cells, blur): mostly acquisition",
    ),
    (
        ("frac_is_", "frac_"),
        "cell_types",
        "Cell-type flags",
        "share of smudge (broken) cells and of cells that are not lymphocytes",
    ),
    (
        ("shape_", "nucleus_area", "cell_area"),
        "shape",
        "Size and shape",
        "size of nucleus and cell, roundness, notches and clefts of the outline",
    ),
    (
        ("nc_",),
        "nc",
        "Nucleus vs cytoplasm",
        "how much of the cell the nucleus fills, thickness of the cytoplasm rim",
    ),
    (
        ("haralick_",),
        "texture",
        "Chromatin texture",
        "how smooth, clumped or coarse the chromatin looks (Haralick texture)",
    ),
    (("lbp_",), "lbp", "Chromatin micro-pattern", "fine repeated patterns of the chromatin (local binary patterns)"),
    (("granularity_",), "granularity", "Chromatin granularity", "size of the chromatin clumps"),
    (
        ("radial_",),
        "radial",
        "Radial chromatin distribution",
        "whether chromatin is condensed at the rim or the centre of the nucleus",
    ),
    (("nucleoli_",), "nucleoli", "Nucleoli", "pale spots inside the nucleus (nucleoli), a sign of immature cells"),
    (
        ("color_",),
        "color",
        "Stain colour",
        "how dark and how blue nucleus and cytoplasm stain (optical density; also depends on stain and scanner)",
    ),
    (
        ("cell_score", "cellscore"),
        "cell_score",
        "Cell-level score",
        "a per-cell model's estimate of how tumoral each cell looks, summarised over the patient",
    ),
)
FAMILY_TITLE = {k: t for _, k, t, _ in FAMILIES} | {"other": "Other"}
FAMILY_MEANING = {k: m for _, k, _, m in FAMILIES} | {"other": ""}

#: Families that may reflect how the smear was acquired rather than the patient's biology.
ACQUISITION_FAMILIES = ("acquisition", "quality", "color")

_CLINICAL = {
    "age": "age at the reference date (years)",
    "gender_male": "sex (1 male, 0 female)",
    "log_lymph_count": "blood lymphocyte count (log of 10⁹/L)",
    "n_cells": "number of crops of the patient (readable images)",
    "n_cells_ok": "number of crops passing quality control",
}
#: Meaning of each QC outcome (``qc_reason``) of a crop.
QC_REASON = {
    "ok": "passing quality control",
    "bad_image": "unreadable or too small image",
    "no_nucleus": "no nucleus found",
    "tight_crop": "crop cut close around the cell, without a pixel size: no red cells or glass around it to judge "
    "its scale and focus by (give --pixel-size)",
    "nucleus_off_centre": "nucleus off centre: probably not the cell the crop was taken for",
    "nucleus_at_border": "nucleus cut by the crop border",
    "nucleus_too_small": "nucleus too small to measure",
    "nucleus_too_large": "nucleus too large (clump of cells?)",
    "touching_cells": "cell touching another cell: outlines unreliable",
    "not_lymphocyte": "another cell than a lymphocyte (granulocyte, monocyte, nucleated red cell, platelet clump): "
    "by the cell-type gate, or without it by the nucleus's lobes",
    "smudge": "smudge (broken) cell, frequent in chronic lymphocytic leukaemia",
    "blur": "blurred crop",
}
_STATS = {
    "mean": "average over the patient's cells",
    "std": "spread across the patient's cells (low: a uniform, monomorphic population)",
    "median": "median over the patient's cells",
}


def feature_family(name: str) -> str:
    """Family key of a model input (``shape``, ``texture``, ``clinical``...), ``other`` if unknown."""
    for prefixes, key, _, _ in FAMILIES:
        if name.startswith(prefixes):
            return key
    return "other"


def split_aggregate(name: str) -> tuple[str, str | None]:
    """``'nc_ratio__mean'`` -> ``('nc_ratio', 'mean')``; a non-aggregate name -> ``(name, None)``."""
    base, sep, stat = name.rpartition("__")
    return (base, stat) if sep and base else (name, None)


def _score_cutoff(stat: str | None) -> str | None:
    """The cut-off of a cell-score summary ``frac_gtNN`` (CellScoreAggregator's names) as ``0.NN``, else None."""
    m = re.fullmatch(r"frac_gt(\d{2})", stat or "")
    return f"0.{m.group(1)}" if m else None


def stat_words(stat: str | None) -> str:
    """What a per-patient statistic (``mean``, ``q90``, ``frac_gt50``...) summarises, in words ("" for None)."""
    if stat is None:
        return ""
    if stat in _STATS:
        return _STATS[stat]
    m = re.fullmatch(r"q(\d{1,2})", stat)
    if m:
        return f"{int(m.group(1))}th percentile over the patient's cells"
    cutoff = _score_cutoff(stat)
    if cutoff:
        return f"share of the patient's cells scoring above {cutoff}"
    return stat.replace("_", " ")


def _base_meaning(base: str) -> str:
    """Meaning of a model input that :mod:`lympho_features.features` does not describe (clinical, learned...)."""
    if base in _CLINICAL:
        return _CLINICAL[base]
    if base.startswith("cnn_"):
        return f"learned feature {base[len('cnn_') :]}, {FAMILY_MEANING['learned']}"
    if base.startswith("frac_"):
        flag = base[len("frac_") :]
        return "share of crops flagged: " + FLAG_DESCRIPTIONS.get(flag, flag.replace("_", " "))
    fam = feature_family(base)
    words = base.replace("_", " ")
    return f"{words}: {FAMILY_MEANING[fam]}" if FAMILY_MEANING.get(fam) else words


def _external_description(name: str) -> str | None:
    """The description of :func:`lympho_features.features.describe_feature`, with the statistic's words."""
    for candidate in (name, split_aggregate(name)[0]):
        text = describe_cell_feature(candidate)
        if text:
            if candidate != name:
                stat = stat_words(split_aggregate(name)[1])
                return f"{text}; {stat}" if stat else text
            return text
    return None


def describe_feature(name: str) -> str:
    """Plain-language meaning of a model input, e.g. ``haralick_contrast_d1__mean``.

    Uses the descriptions of :mod:`lympho_features.features` when it has them,
    else a mapping by family and feature name.
    """
    ext = _external_description(name)
    if ext:
        return ext
    base, stat = split_aggregate(name)
    block = cell_model_block(name)
    meaning = CELL_MODEL_BLOCKS[block].meaning if block else _base_meaning(base)
    return f"{meaning}; {stat_words(stat)}" if stat else meaning


def input_meaning(name: str) -> tuple[str, str]:
    """``(key, meaning)``: what an input measures, without its statistic.

    Inputs with the same key (the summaries of one cell measurement, of one cell
    model's scores) share the meaning, so a list of them can say it once.
    """
    block = cell_model_block(name)
    if block:
        return block, CELL_MODEL_BLOCKS[block].meaning
    base, _ = split_aggregate(name)
    return base, describe_cell_feature(base) or _base_meaning(base)


def short_label(name: str) -> str:
    """A compact readable label for plots: ``nucleus circularity · median``."""
    base, stat = split_aggregate(name)
    block = cell_model_block(name)
    if block:
        cutoff = _score_cutoff(stat)
        short = f"share > {cutoff}" if cutoff else stat
        return f"{CELL_MODEL_BLOCKS[block].label} · {short}" if short else CELL_MODEL_BLOCKS[block].label
    label = {
        "log_lymph_count": "lymphocyte count",
        "gender_male": "sex (male)",
        "age": "age",
        "n_cells": "number of crops",
        "n_cells_ok": "crops passing QC",
    }.get(base)
    if label is None:
        label = (
            base.replace("cnn_", "learned ")
            .replace("shape_", "")
            .replace("haralick_", "chromatin ")
            .replace("color_", "")
            .replace("_od_", " OD ")
            .replace("frac_is_", "share ")
            .replace("frac_qc_", "share QC ")
            .replace("_", " ")
        )
    return f"{label} · {stat}" if stat else label


def direction_words(r: float) -> str:
    """How an input's value relates to its contributions (a rank correlation ``r``), in words."""
    if r > 0.3:
        return "higher → more tumoral"
    if r < -0.3:
        return "higher → more reactive"
    return "mixed / non-monotone"


#: Plain words for the blocks of a configuration in the ablation table (cell-model blocks: their report label).
_BLOCK_WORDS = {
    "clinical": "age, sex, lymphocyte count",
    "crops": "number of crops",
    "morphology": "per-patient summaries of every cell measurement",
    "cnn": "CNN embeddings of the cells",
}


def configuration_words(name: str) -> str:
    """What a configuration of the ablation feeds the model, in plain words ("" when the name is not a feature set)."""
    try:
        blocks, drop = parse_feature_set(name)
    except ModelError:
        return ""
    words = {**_BLOCK_WORDS, **{b: spec.label for b, spec in CELL_MODEL_BLOCKS.items()}}
    if "n_cells" in drop and "crops" in blocks:  # the crop count is the `crops` block's only input
        return " + ".join(words.get(b, b) for b in blocks if b != "crops")
    text = " + ".join(words.get(b, b) for b in blocks)
    return text + (", without the number of crops" if "n_cells" in drop else "")
