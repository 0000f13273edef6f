""":func:`segment_cell`: the three phases (nucleus, cell, quality control) chained."""

from __future__ import annotations

import cv2
import numpy as np

from .cytoplasm import find_cell
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
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 32:
        return empty_segmentation(rgb.shape[:2] if rgb.ndim >= 2 else (0, 0), "bad_image")
    shape = rgb.shape[:2]
    s = (settings or _DEFAULT_SETTINGS).scaled(min(shape))
    rgb = np.ascontiguousarray(rgb)
    channels = cv2.split(rgb)
    # Phase 1, nucleus: darkest class of green, purple hue, the piece at the centre and its lobes.
    contours, dark, t2 = dark_pieces(channels, s)
    found = find_nucleus(contours, shape, s) if contours else None
    if found is None:
        return empty_segmentation(shape, "no_nucleus")
    # Phase 2, cytoplasm: OD chroma against the red-cell reference, split from touching neighbours.
    cell = find_cell(rgb, channels, dark, t2, found, s)
    # Phase 3, quality control and cell type.
    return quality_control(shape, found, cell, s)
