"""Segmentation of the central lymphocyte of a blood-smear crop.

Each crop of the challenge layout is centred on one lymphocyte surrounded by
red blood cells on a pale background. :func:`segment_cell` returns the mask of
its nucleus and of the whole cell (nucleus + cytoplasm), quality-control flags
and a cell-type guess, and never raises on image content: a crop it cannot
segment comes back with ``qc_ok=False`` and a named reason, so a long
extraction never stops on one odd cell.

The stages, one module each:

* :mod:`.settings`: :class:`SegmentationSettings`, :data:`QC_REASONS`,
  :data:`FLAG_DESCRIPTIONS`; :mod:`.result`: :class:`Segmentation`.
* :mod:`.optical_density`: background reference and optical density
  (``OD_c = log(I_ref,c / I_c)`` against the brightest pixels, the glass), and
  the red-cell reference.
* :mod:`.nucleus` (phase 1): darkest class of the green channel with a purple
  hue; the piece at the crop centre; merged nuclei split, lobes gathered.
* :mod:`.cytoplasm` (phase 2): cytoplasm bluer than the crop's red cells (or
  pale with a blue hue), the region holding the nucleus, split from a touching
  neighbour.
* :mod:`.qc` (phase 3): quality-control and cell-type flags, diagnostics.
* :mod:`.pipeline`: :func:`segment_cell` chaining the three phases, and
  again without red cells for a crop cut close around its cell
  (``qc_tight_crop``: another lab's tight export);
  :mod:`.morphology`: small shared helpers.
"""

# ruff: noqa: F401  (re-exports: the names callers import from here, and those of the module this package replaced)

from .cytoplasm import CellFound, cell_from_region, cytoplasm_mask, find_cell, pale_cytoplasm
from .morphology import (
    _box_gap,
    _central_window,
    _contour_centroid,
    _disk,
    _window,
    fill_holes,
    in_window,
    solidity,
)
from .nucleus import (
    _TRIU,
    NucleusFound,
    _central_piece,
    _multi_otsu3_bins,
    _split_by_seeds,
    _triu,
    dark_pieces,
    find_nucleus,
    multi_otsu3,
    nucleus_thresholds,
    split_lobes,
    split_merged,
    tight_crop_thresholds,
)
from .optical_density import (
    _OD_LUT,
    _hist_quantile,
    _masked_mean_u8,
    _red_cell_reference,
    _reference_od,
    _subsample,
    background_rgb,
    background_rgb_fast,
    od_tables,
    optical_density,
    optical_density_channels,
    red_cell_reference,
)
from .pipeline import segment_cell
from .qc import (
    first_failed_check,
    judge_focus_on,
    nucleus_box_moments,
    patient_blur,
    patient_smudge,
    quality_control,
    rejudge_qc_reason,
)
from .result import Segmentation, empty_segmentation
from .settings import (
    _DEFAULT_SETTINGS,
    _QC_ORDER,
    FLAG_DESCRIPTIONS,
    QC_REASONS,
    QC_REASONS_BEFORE_FLAGS,
    SegmentationSettings,
)

# The names before the split into a package.
_empty = empty_segmentation
_in_window = in_window

__all__ = [
    "FLAG_DESCRIPTIONS",
    "QC_REASONS",
    "QC_REASONS_BEFORE_FLAGS",
    "CellFound",
    "NucleusFound",
    "Segmentation",
    "SegmentationSettings",
    "background_rgb",
    "background_rgb_fast",
    "cell_from_region",
    "cytoplasm_mask",
    "dark_pieces",
    "empty_segmentation",
    "fill_holes",
    "find_cell",
    "find_nucleus",
    "first_failed_check",
    "in_window",
    "judge_focus_on",
    "multi_otsu3",
    "nucleus_box_moments",
    "nucleus_thresholds",
    "od_tables",
    "optical_density",
    "optical_density_channels",
    "pale_cytoplasm",
    "patient_blur",
    "patient_smudge",
    "quality_control",
    "red_cell_reference",
    "rejudge_qc_reason",
    "segment_cell",
    "solidity",
    "split_lobes",
    "split_merged",
    "tight_crop_thresholds",
]
