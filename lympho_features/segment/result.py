"""The result of :func:`~lympho_features.segment.segment_cell`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .settings import FLAG_DESCRIPTIONS


@dataclass
class Segmentation:
    """Result of :func:`segment_cell`.

    Attributes
    ----------
    nucleus_mask, cell_mask : ndarray of bool, shape (H, W)
        Masks of the central lymphocyte. ``cell_mask`` contains ``nucleus_mask``.
        Both are empty when no nucleus was found.
    qc_ok : bool
        True when the crop passed every check and its morphology can be trusted.
    qc_reason : str
        ``"ok"`` or the first failed check, one of :data:`QC_REASONS`.
    flags : dict of str to bool
        Every check's outcome (``is_smudge``, ``qc_touching``...), so that a crop
        failing several checks is still counted in each.
    box : tuple of int, optional
        ``(y0, y1, x0, x1)`` of a box holding the whole cell (features are
        computed inside it).
    background : ndarray (3,), optional
        RGB reference of the unstained background.
    diagnostics : dict of str to float
        Measurements behind the flags (nucleus OD, sharpness, share of the
        outline cut along a neighbour, nucleus solidity, lobes...).
    roi : tuple of int, optional
        ``(y0, y1, x0, x1)`` of the region examined around the nucleus.
    od_sum : ndarray of float32, optional
        Total optical density (R + G + B, against ``background``) of ``roi``,
        kept so that the features do not compute it again.
    nucleus_contour : ndarray of int32, optional
        Outer contour (all points, crop coordinates) of the nucleus' largest
        piece, as ``cv2.findContours`` traces it on ``nucleus_mask``.
    nucleus_moments : tuple of float, optional
        Raw binary-image moments ``(m00, m10, m01, m20, m11, m02)`` of
        ``nucleus_mask`` in crop coordinates (exact integers), so that the
        features need not compute contour and moments again.
    od_sum_every4 : ndarray of float32, optional
        Total optical density of every fourth pixel (in each direction) of the
        whole crop, on which the red-cell reference was measured (None for a
        tight crop), kept so that the cell-type gate does not compute it again.
    """

    nucleus_mask: np.ndarray
    cell_mask: np.ndarray
    qc_ok: bool
    qc_reason: str
    flags: dict[str, bool] = field(default_factory=dict)
    box: tuple[int, int, int, int] | None = None
    background: np.ndarray | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)
    roi: tuple[int, int, int, int] | None = None
    od_sum: np.ndarray | None = None
    nucleus_contour: np.ndarray | None = None
    nucleus_moments: tuple[float, ...] | None = None
    od_sum_every4: np.ndarray | None = None


def empty_segmentation(shape: tuple[int, int], reason: str) -> Segmentation:
    """A failed segmentation: empty masks, every flag False, ``qc_reason`` set to ``reason``.

    Examples
    --------
    >>> seg = empty_segmentation((4, 4), "no_nucleus")
    >>> seg.qc_ok, seg.qc_reason, seg.nucleus_mask.shape, any(seg.flags.values())
    (False, 'no_nucleus', (4, 4), False)
    """
    z = np.zeros(shape, bool)
    flags = dict.fromkeys(FLAG_DESCRIPTIONS, False)
    return Segmentation(z, z.copy(), False, reason, flags)
