"""Per-cell measurements, grouped in families named as pyradiomics does.

Every feature is a column named ``family_feature`` (``shape_nucleus_area``,
``haralick_contrast_d1``, ``color_nucleus_od_red_mean``...), apart from the
few contract names every downstream tool relies on: ``nucleus_area``,
``cell_area`` and ``nc_ratio``. :func:`cell_features` computes all families
for one segmented crop; each family is a small pure function on arrays that
can be used on its own. ``docs/features.md`` explains each family to a
clinician; :func:`describe_feature` gives the plain-language meaning of one
column.

One module per family: :mod:`.shape` (``shape_``: size, outline, Fourier
irregularity, notches), :mod:`.nc` (``nc_``: nucleus vs cytoplasm),
:mod:`.haralick` (``haralick_``: 13 texture features at two distances),
:mod:`.lbp` (``lbp_``: local binary patterns), :mod:`.granularity`
(``granularity_``: size of chromatin clumps), :mod:`.radial` (``radial_``:
chromatin from rim to centre), :mod:`.nucleoli` (``nucleoli_``: pale spots),
:mod:`.color` (``color_``: optical density against the crop's background and
red cells). :mod:`.cell` chains them (:func:`cell_features`),
:mod:`.settings` holds :class:`FeatureSettings`, :mod:`.describe` the words
for each column.
"""

# ruff: noqa: F401  (re-exports: the names callers import from here, and those of the module this package replaced)

from ..segment import (  # noqa: F401  (names this module had before the split)
    FLAG_DESCRIPTIONS,
    Segmentation,
    _disk,
    background_rgb_fast,
    optical_density,
    optical_density_channels,
)
from .cell import _roi_od_sum, box_moments, cell_features
from .color import _COLOR_COLUMNS, background_reference, color_features
from .describe import _HARALICK_WORDS, _SHAPE_WORDS, CELL_FINDINGS, FEATURE_DESCRIPTIONS, describe_feature
from .granularity import _GRANULARITY_COLUMNS, GRANULARITY_RADII, granularity_features
from .haralick import (
    _ANGLES,
    _GLCM_CONSTANTS,
    _GREY_LEVELS,
    _HARALICK_COLUMNS,
    _QUANTILES,
    HARALICK_NAMES,
    _glcm_constants,
    _glcm_offsets,
    glcm_counts,
    haralick_features,
    haralick_from_glcm,
    haralick_from_glcms,
    masked_glcm,
    quantize,
)
from .lbp import (
    _LBP_COLUMNS,
    _LBP_GATHER,
    _LBP_OFFSETS,
    _LBP_SELECT,
    _LBP_TABLE,
    LBP_BINS,
    _lbp_table,
    lbp_features,
)
from .masks import _pad1, _u8, largest_contour
from .nc import nc_features
from .nucleoli import _mean_std, nucleoli_features
from .radial import _RADIAL_COLUMNS, RADIAL_RINGS, radial_features
from .settings import FeatureSettings
from .shape import _ARANGE64, _SHAPE_COLUMNS, SHAPE_NAMES, contour_irregularity, shape_features

# The names before they became public (benchmarks/profile_crop.py, older callers).
_largest_contour = largest_contour
_box_moments = box_moments

__all__ = [
    "CELL_FINDINGS",
    "FEATURE_DESCRIPTIONS",
    "GRANULARITY_RADII",
    "HARALICK_NAMES",
    "LBP_BINS",
    "RADIAL_RINGS",
    "SHAPE_NAMES",
    "FeatureSettings",
    "background_reference",
    "box_moments",
    "cell_features",
    "color_features",
    "contour_irregularity",
    "describe_feature",
    "glcm_counts",
    "granularity_features",
    "haralick_features",
    "haralick_from_glcm",
    "haralick_from_glcms",
    "largest_contour",
    "lbp_features",
    "masked_glcm",
    "nc_features",
    "nucleoli_features",
    "quantize",
    "radial_features",
    "shape_features",
]
