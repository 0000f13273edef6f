""":func:`segment_cell`: the three phases (nucleus, cell, quality control) chained.

Examples
--------
The phases one by one, as :func:`segment_cell` chains them:

>>> import cv2, numpy as np
>>> from lympho_features.segment import SegmentationSettings, dark_pieces, find_cell, find_nucleus, quality_control
>>> from lympho_features.synthetic import synthetic_crop
>>> crop = synthetic_crop(np.random.default_rng(0))
>>> s = SegmentationSettings()
>>> channels = cv2.split(crop.rgb)
>>> contours, dark, t2 = dark_pieces(channels, s)  # phase 1: dark purple pieces ...
>>> found = find_nucleus(contours, crop.rgb.shape[:2], s)  # ... and the central nucleus, lobes resolved
>>> found.roi, found.n_lobes, found.is_granulocyte, cv2.countNonZero(found.nucleus)
((21, 192, 24, 200), 1, False, 2915)
>>> cell = find_cell(crop.rgb, channels, dark, t2, found, s)  # phase 2: cytoplasm, whole cell
>>> cell.split, cv2.countNonZero(cell.cell), int(crop.cell_mask.sum()), round(cell.rbc_od, 3)
(False, 4445, 4409, 0.389)
>>> seg = quality_control(crop.rgb.shape[:2], found, cell, s)  # phase 3: flags, QC reason
>>> seg.qc_reason, [flag for flag, on in seg.flags.items() if on], seg.box
('ok', [], (74, 149, 69, 157))
>>> np.array_equal(seg.cell_mask, segment_cell(crop.rgb).cell_mask)
True
"""

from __future__ import annotations

import cv2
import numpy as np

from .cytoplasm import find_cell
from .morphology import solidity
from .nucleus import dark_pieces, find_nucleus
from .qc import quality_control
from .result import Segmentation, empty_segmentation
from .settings import _DEFAULT_SETTINGS, SegmentationSettings


def segment_cell(rgb: np.ndarray, settings: SegmentationSettings | None = None) -> Segmentation:
    """Segment the nucleus and the whole cell of the lymphocyte at the crop centre.

    Parameters
    ----------
    rgb : ndarray, shape (H, W, 3), uint8
        The crop, RGB order.
    settings : SegmentationSettings, optional
        Thresholds; defaults suit the 224x224 challenge crops and are
        rescaled for other sizes.

    Returns
    -------
    Segmentation
        Masks and quality-control outcome. Never raises on image content.

    Examples
    --------
    >>> import numpy as np
    >>> from lympho_features.synthetic import synthetic_crop
    >>> crop = synthetic_crop(np.random.default_rng(0))  # a drawn lymphocyte, with its true masks
    >>> seg = segment_cell(crop.rgb)
    >>> seg.qc_ok, seg.qc_reason
    (True, 'ok')
    >>> int(seg.nucleus_mask.sum()), int(crop.nucleus_mask.sum())
    (2915, 2915)
    >>> segment_cell(np.full((224, 224, 3), 240, np.uint8)).qc_reason  # blank glass
    'no_nucleus'

    The same cell cut close around it (another lab's export), at the canonical scale as ``lympho extract``
    segments it: no red cells, glass in the corners, the same nucleus:

    >>> ys, xs = np.nonzero(crop.cell_mask)  # the cell's box and 3 px around it
    >>> tight = crop.rgb[ys.min() - 3 : ys.max() + 4, xs.min() - 3 : xs.max() + 4]
    >>> seg = segment_cell(tight, SegmentationSettings(scale_with_side=False))
    >>> seg.flags["qc_tight_crop"], seg.qc_reason, int(seg.nucleus_mask.sum())
    (True, 'ok', 2918)
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 32:
        return empty_segmentation(rgb.shape[:2] if rgb.ndim >= 2 else (0, 0), "bad_image")
    shape = rgb.shape[:2]
    s = (settings or _DEFAULT_SETTINGS).scaled(min(shape))
    rgb = np.ascontiguousarray(rgb)
    channels = cv2.split(rgb)
    seg = _segment(rgb, channels, s, tight=False)
    # A crop cut close around its cell (another lab's export) has no red cells and little glass: the thresholds
    # and references that assume them split its chromatin and take its cytoplasm for red cells, so the cell
    # found may be too small to tell the crop is tight (or a piece of chromatin passes for the nucleus). Crops
    # that failed, whose cell fills much of them, or that are narrow, are segmented again as tight crops (1.8 % of
    # the challenge's crops get this second segmentation), and are tight when that cell fills the crop and is one convex
    # cell with a nucleus not too large: in an ordinary crop of a clump of large cells the tight segmentation,
    # without red cells to refer to, runs into the neighbours and red cells, or takes the clump's nuclei for one
    # (trainset, patient P42). The decision is free of the scale, so a crop whose scale is unknown is told
    # apart as well.
    area = shape[0] * shape[1]
    if (
        seg.qc_reason != "ok"
        or area < s.tight_crop_check_ratio * np.count_nonzero(seg.cell_mask)  # not .sum(): 10x the cost
        or min(shape) < s.tight_crop_check_side
    ):
        tight = _segment(rgb, channels, s, tight=True)
        cell_area = np.count_nonzero(tight.cell_mask)
        if (
            tight.qc_reason != "no_nucleus"
            and not tight.flags["qc_too_large"]
            and area < s.tight_crop_area_ratio * cell_area
            and solidity(tight.cell_mask) >= s.tight_crop_min_solidity
        ):
            tight.flags["qc_tight_crop"] = True
            return tight
    return seg


def _segment(rgb: np.ndarray, channels, s: SegmentationSettings, tight: bool) -> Segmentation:
    """The three phases on one crop; ``tight``: thresholds and references for a crop cut close around its cell."""
    shape = rgb.shape[:2]
    # Phase 1, nucleus: darkest class of green, purple hue, the piece at the centre and its lobes.
    contours, dark, t2 = dark_pieces(channels, s, tight)
    found = find_nucleus(contours, shape, s) if contours else None
    if found is None:
        return empty_segmentation(shape, "no_nucleus")
    # Phase 2, cytoplasm: OD chroma against the red-cell reference, split from touching neighbours.
    cell = find_cell(rgb, channels, dark, t2, found, s, tight)
    # Phase 3, quality control and cell type.
    return quality_control(shape, found, cell, s)
