"""Plain-language meaning of every per-cell feature column (:func:`describe_feature`) and what a high or low value looks like (:data:`CELL_FINDINGS`)."""

from __future__ import annotations

import re

from ..segment import FLAG_DESCRIPTIONS
from .granularity import GRANULARITY_RADII
from .radial import RADIAL_RINGS

_SHAPE_WORDS = {
    "area": "size (area in um²)",
    "perimeter": "outline length (um)",
    "equivalent_diameter": "diameter of the disk of the same area (um)",
    "major_axis": "length (um)",
    "minor_axis": "width (um)",
    "eccentricity": "elongation (0 round, 1 line-like)",
    "solidity": "fullness of the outline: below 1 with notches or clefts",
    "convexity": "smoothness of the outline: below 1 with indentations or projections",
    "circularity": "roundness (1 for a disk)",
    "feret_max": "largest caliper diameter (um)",
    "feret_min": "smallest caliper diameter (um)",
    "fourier_low": "irregularity of the outline at large scale (lobes, clefts, kidney shape; 0 for a circle)",
    "fourier_high": "irregularity of the outline at fine scale (small projections, hairy or crenated outline)",
    "notch_depth": "depth of the deepest notch or cleft, relative to the radius",
    "curvature_std": "how unevenly the outline bends (angular, wavy or notched outlines score high)",
}
_HARALICK_WORDS = {
    "asm": "uniformity of the chromatin (high when smooth and homogeneous)",
    "contrast": "chromatin contrast: how clumped the nucleus looks",
    "correlation": "how gradually chromatin density changes between neighbouring points",
    "sum_of_squares": "spread of chromatin density",
    "idm": "homogeneity: neighbouring points look alike (smooth chromatin)",
    "sum_average": "average density of neighbouring pairs of points (relative to the nucleus' own range)",
    "sum_variance": "spread of the density of neighbouring pairs",
    "sum_entropy": "disorder of the density of neighbouring pairs",
    "entropy": "disorder of the chromatin pattern",
    "difference_variance": "variability of local chromatin contrast",
    "difference_entropy": "disorder of local chromatin contrast",
    "imc1": "information correlation of neighbouring points (structure of the chromatin pattern)",
    "imc2": "second information correlation of neighbouring points (structure of the chromatin pattern)",
}

#: Plain-language meaning of every per-cell feature column (base names, before the per-patient statistic).
FEATURE_DESCRIPTIONS: dict[str, str] = {
    "nucleus_area": "nucleus size (area in um²)",
    "cell_area": "cell size (area in um²)",
    "nc_ratio": "share of the cell occupied by the nucleus (N:C ratio)",
    "nc_cytoplasm_area": "amount of cytoplasm (area in um²)",
    "nc_rim_width": "mean thickness of the cytoplasm rim around the nucleus (um)",
    "nc_rim_width_min": "thinnest cytoplasm between nucleus and cell outline (um)",
    "nc_rim_width_max": "thickest cytoplasm between nucleus and cell outline (um)",
    "nc_nucleus_offset": "how far the nucleus sits from the centre of the cell",
    "lbp_nucleus_nonuniform": "share of irregular fine chromatin patterns (not spots, edges or flat areas)",
    "lbp_nucleus_entropy": "variety of fine chromatin patterns",
    "radial_nucleus_rim_centre": "chromatin density at the rim of the nucleus relative to its centre",
    "nucleoli_count": "number of pale spots (nucleoli) inside the nucleus",
    "nucleoli_area_fraction": "share of the nucleus taken by pale spots (nucleoli)",
    "nucleoli_contrast": "how much paler the nucleoli are than the chromatin around them",
    "color_cytoplasm_basophilia": "how blue the cytoplasm is (RNA-rich, activated or immature cells)",
}
for _region in ("nucleus", "cell"):
    for _k, _v in _SHAPE_WORDS.items():
        FEATURE_DESCRIPTIONS[f"shape_{_region}_{_k}"] = f"{_region} {_v}"
for _d, _scale in ((1, "fine scale"), (3, "3-pixel scale")):
    for _k, _v in _HARALICK_WORDS.items():
        FEATURE_DESCRIPTIONS[f"haralick_{_k}_d{_d}"] = f"{_v} ({_scale})"
for _k in range(9):
    _what = {0: "dark spots", 4: "edges", 8: "bright spots"}.get(_k, f"patterns with {_k} of 8 brighter neighbours")
    FEATURE_DESCRIPTIONS[f"lbp_nucleus_u{_k}"] = f"share of chromatin points forming {_what} (local binary pattern)"
for _r in GRANULARITY_RADII:
    FEATURE_DESCRIPTIONS[f"granularity_nucleus_r{_r}"] = (
        f"share of the chromatin in dense clumps about {2 * _r} pixels wide (granulometry)"
    )
for _k in range(1, RADIAL_RINGS + 1):
    _where = {1: "outermost ring (rim)", RADIAL_RINGS: "central core"}.get(_k, f"ring {_k} from the rim")
    FEATURE_DESCRIPTIONS[f"radial_nucleus_ring{_k}"] = (
        f"chromatin density of the nucleus' {_where}, relative to its mean"
    )
for _region in ("nucleus", "cytoplasm"):
    FEATURE_DESCRIPTIONS[f"color_{_region}_od_mean"] = f"overall stain density of the {_region} (how dark it looks)"
    FEATURE_DESCRIPTIONS[f"color_{_region}_od_rbc_ratio"] = (
        f"stain density of the {_region} relative to the red cells of the same image"
    )
    for _c in ("red", "green", "blue"):
        FEATURE_DESCRIPTIONS[f"color_{_region}_od_{_c}_mean"] = (
            f"how strongly the {_region} absorbs {_c} light (stain density)"
        )
        FEATURE_DESCRIPTIONS[f"color_{_region}_od_{_c}_std"] = (
            f"unevenness of {_c}-light absorption within the {_region} (patchy or uniform staining)"
        )
        FEATURE_DESCRIPTIONS[f"color_{_region}_od_{_c}_fraction"] = (
            f"share of the {_region}'s absorption in {_c} light (hue of the stain, whatever its density)"
        )

#: What a high or a low value of a per-cell feature looks like under the microscope, in a haematologist's
#: words (report captions of the cells the cell model finds most tumoral). Only features with a plain reading.
CELL_FINDINGS: dict[str, tuple[str, str]] = {
    "nucleus_area": ("large nucleus", "small nucleus"),
    "shape_nucleus_area": ("large nucleus", "small nucleus"),
    "shape_nucleus_equivalent_diameter": ("large nucleus", "small nucleus"),
    "shape_nucleus_feret_max": ("long nucleus", "short nucleus"),
    "shape_nucleus_major_axis": ("long nucleus", "short nucleus"),
    "shape_cell_area": ("large cell", "small cell"),
    "cell_area": ("large cell", "small cell"),
    "nc_ratio": ("high N:C ratio", "low N:C ratio"),
    "nc_cytoplasm_area": ("abundant cytoplasm", "scant cytoplasm"),
    "nc_rim_width": ("wide cytoplasm rim", "narrow cytoplasm rim"),
    "nc_rim_width_max": ("cytoplasm thick on one side", "scant cytoplasm all round"),
    "nucleoli_contrast": ("visible nucleoli", "no visible nucleoli"),
    "nucleoli_count": ("several nucleoli", "few or no nucleoli"),
    "haralick_sum_variance_d1": ("uneven, coarse chromatin", "even chromatin"),
    "haralick_sum_variance_d3": ("uneven, coarse chromatin", "even chromatin"),
    "haralick_contrast_d1": ("clumped chromatin", "smooth chromatin"),
    "haralick_contrast_d3": ("clumped chromatin", "smooth chromatin"),
    "haralick_idm_d1": ("smooth chromatin", "clumped chromatin"),
    "haralick_idm_d3": ("smooth chromatin", "clumped chromatin"),
    "shape_nucleus_notch_depth": ("notched or cleaved nucleus", "nucleus without notch"),
    "shape_nucleus_curvature_std": ("irregular nucleus outline", "smooth nucleus outline"),
    "shape_cell_fourier_high": ("ragged (villous or hairy) cell outline", "smooth cell outline"),
}

# Per-patient shares of each quality-control and cell-type flag (aggregate.py's ``frac_<flag>``).
FEATURE_DESCRIPTIONS["frac_qc_ok"] = "share of the patient's crops passing quality control"
for _flag, _meaning in FLAG_DESCRIPTIONS.items():
    FEATURE_DESCRIPTIONS[f"frac_{_flag}"] = f"share of the patient's crops flagged: {_meaning}"


def describe_feature(name: str) -> str | None:
    """Plain-language meaning of a per-cell feature column, or None when unknown.

    ``haralick_contrast_d5`` (a distance not in the table) is described from
    its base feature.

    Examples
    --------
    >>> describe_feature("nc_ratio")
    'share of the cell occupied by the nucleus (N:C ratio)'
    >>> describe_feature("haralick_contrast_d5")
    'chromatin contrast: how clumped the nucleus looks (5-pixel scale)'
    >>> describe_feature("no_such_column") is None
    True
    """
    if name in FEATURE_DESCRIPTIONS:
        return FEATURE_DESCRIPTIONS[name]
    m = re.fullmatch(r"haralick_(.+)_d(\d+)", name)
    if m and m.group(1) in _HARALICK_WORDS:
        return f"{_HARALICK_WORDS[m.group(1)]} ({m.group(2)}-pixel scale)"
    return None
