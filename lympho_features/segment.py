"""Segmentation of the central lymphocyte of a blood-smear crop.

Each crop of the challenge layout is centred on one lymphocyte surrounded by
red blood cells on a pale background. :func:`segment_cell` returns the mask of
its nucleus and of the whole cell (nucleus + cytoplasm) and never raises on
image content: a crop it cannot segment comes back with ``qc_ok=False`` and a
named reason, so a long extraction never stops on one odd cell.

Colour cues (measured on the shared data):

* the nucleus is purple: high Lab a* (magenta) and dark, well separated from
  the pink red cells and the cream background by an Otsu threshold on a* in
  the central region;
* the cytoplasm is pale blue: in optical density (OD) it absorbs relatively
  more red than blue light, so ``(OD_red - OD_blue) / OD_sum`` is positive,
  while red cells (which absorb blue and green) sit well below zero. The red
  cells of the same crop serve as the reference, which makes the cut follow
  stain and scanner variation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

#: Reasons a crop can fail quality control, in the order they are checked.
QC_REASONS = (
    "ok",
    "bad_image",
    "no_nucleus",
    "nucleus_off_centre",
    "nucleus_at_border",
    "nucleus_too_small",
    "nucleus_too_large",
    "touching_cells",
    "not_lymphocyte",
    "smudge",
    "blur",
)


@dataclass(frozen=True)
class SegmentationSettings:
    """All tunable parameters of the segmentation, in one place.

    Distances are in pixels of the 224x224 challenge crops; they scale with
    the crop size (see :func:`segment_cell`).
    """

    central_fraction: float = 0.7  #: side of the central window used for thresholds
    min_nucleus_area: int = 300
    max_nucleus_area: int = 14000
    max_centre_offset: float = 0.22  #: nucleus centroid offset, as a fraction of crop side
    od_background: float = 0.45  #: OD sum below which a pixel is background
    cytoplasm_margin: float = 0.08  #: how far above the red-cell reference cytoplasm sits
    min_solidity_lymphocyte: float = 0.80  #: lobulated nuclei (granulocytes) fall below
    blur_threshold: float = 12.0  #: variance of the Laplacian inside the nucleus
    smudge_max_od: float = 0.85  #: mean nucleus OD below this looks like a smudge
    open_radius: int = 2
    close_radius: int = 3

    def scaled(self, side: int) -> SegmentationSettings:
        """Return settings whose areas are rescaled from a 224-pixel crop to ``side``."""
        if side == 224:
            return self
        k = (side / 224.0) ** 2
        return SegmentationSettings(
            **{
                **self.__dict__,
                "min_nucleus_area": max(10, int(self.min_nucleus_area * k)),
                "max_nucleus_area": max(20, int(self.max_nucleus_area * k)),
            }
        )


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
    """

    nucleus_mask: np.ndarray
    cell_mask: np.ndarray
    qc_ok: bool
    qc_reason: str
    flags: dict[str, bool] = field(default_factory=dict)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes of a binary mask (uint8 0/255) by flood-filling the outside."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 255)
    holes = cv2.bitwise_not(flood)[1:-1, 1:-1]
    return cv2.bitwise_or(mask, holes)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density ``-log((I + 1) / 256)`` per channel, float32."""
    return -np.log((rgb.astype(np.float32) + 1.0) / 256.0)


def _central_window(shape: tuple[int, int], fraction: float) -> tuple[slice, slice]:
    h, w = shape
    dh, dw = int(h * (1 - fraction) / 2), int(w * (1 - fraction) / 2)
    return slice(dh, h - dh), slice(dw, w - dw)


def _empty(shape: tuple[int, int], reason: str) -> Segmentation:
    z = np.zeros(shape, bool)
    return Segmentation(z, z.copy(), False, reason, {f"qc_{reason}": True})


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
        return _empty(rgb.shape[:2] if rgb.ndim >= 2 else (0, 0), "bad_image")
    h, w = rgb.shape[:2]
    side = min(h, w)
    s = (settings or SegmentationSettings()).scaled(side)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    win = _central_window((h, w), s.central_fraction)

    # --- nucleus: Otsu on Lab a* over the central window -----------------
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    a_star = lab[..., 1]
    lightness = lab[..., 0]
    t_a, _ = cv2.threshold(np.ascontiguousarray(a_star[win]), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # Otsu can split background from red cells when the nucleus is small;
    # the nucleus is also much darker than either, so require both cues.
    t_l, _ = cv2.threshold(np.ascontiguousarray(lightness[win]), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    nuc = ((a_star > t_a) & (lightness < t_l)).astype(np.uint8) * 255
    nuc = cv2.morphologyEx(nuc, cv2.MORPH_OPEN, _disk(s.open_radius))
    n_lab, labels, stats, centroids = cv2.connectedComponentsWithStats(nuc, connectivity=8)
    if n_lab <= 1:
        return _empty((h, w), "no_nucleus")
    areas = stats[1:, cv2.CC_STAT_AREA]
    big = np.flatnonzero(areas >= s.min_nucleus_area // 3) + 1
    if big.size == 0:
        return _empty((h, w), "no_nucleus")
    # The central lymphocyte: the component covering the centre, else the nearest one.
    centre_label = labels[int(round(cy)), int(round(cx))]
    if centre_label in big:
        chosen = int(centre_label)
    else:
        d = np.hypot(centroids[big, 0] - cx, centroids[big, 1] - cy)
        chosen = int(big[np.argmin(d)])
    nucleus = _fill_holes(((labels == chosen) * 255).astype(np.uint8))
    nucleus = cv2.morphologyEx(nucleus, cv2.MORPH_CLOSE, _disk(s.close_radius))
    nucleus_mask = nucleus > 0
    # Other large nuclei in the crop, touching the chosen one's cell, are counted below.
    other_nuclei = [int(b) for b in big if b != chosen and areas[b - 1] >= s.min_nucleus_area]

    # --- cytoplasm: OD ratio against the red-cell reference ----------------
    od = optical_density(rgb)
    od_sum = od.sum(axis=2)
    # log(B / R): positive where a pixel is bluer than it is red.
    blueness = od[..., 0] - od[..., 2]
    stained = od_sum > s.od_background
    rbc = stained & ~nucleus_mask
    ref = float(np.median(blueness[rbc])) if rbc.any() else -0.1
    cyto = (stained & (blueness > ref + s.cytoplasm_margin)) | nucleus_mask
    cyto = cv2.morphologyEx(cyto.astype(np.uint8) * 255, cv2.MORPH_OPEN, _disk(1))
    cyto = cv2.morphologyEx(cyto, cv2.MORPH_CLOSE, _disk(s.close_radius))
    n_c, clabels = cv2.connectedComponents(cyto, connectivity=8)
    touching = np.bincount(clabels[nucleus_mask], minlength=n_c)
    touching[0] = 0
    cell_label = int(np.argmax(touching))
    cell = _fill_holes(((clabels == cell_label) * 255).astype(np.uint8)) if touching.max() > 0 else nucleus
    cell_mask = (cell > 0) | nucleus_mask

    # --- quality control ---------------------------------------------------
    flags: dict[str, bool] = {}
    n_area = int(nucleus_mask.sum())
    ys, xs = np.nonzero(nucleus_mask)
    offset = float(np.hypot(ys.mean() - cy, xs.mean() - cx)) / side
    flags["qc_off_centre"] = offset > s.max_centre_offset
    flags["qc_at_border"] = bool(ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1)
    flags["qc_too_small"] = n_area < s.min_nucleus_area
    flags["qc_too_large"] = n_area > s.max_nucleus_area
    flags["qc_touching"] = any(np.any(cell_mask[labels == b]) for b in other_nuclei)
    contours, _ = cv2.findContours(nucleus, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    hull_area = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea))) if contours else 0.0
    solidity = n_area / hull_area if hull_area > 0 else 0.0
    flags["is_not_lymphocyte"] = solidity < s.min_solidity_lymphocyte
    nucleus_od = float(od_sum[nucleus_mask].mean())
    # A smudge cell is a broken, pale, spread-out nucleus with no cytoplasm around it.
    flags["is_smudge"] = nucleus_od < s.smudge_max_od and int(cell_mask.sum()) < 1.15 * n_area
    grey = lightness.astype(np.float32)
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    flags["qc_blur"] = float(lap[nucleus_mask].var()) < s.blur_threshold

    order = [
        ("nucleus_off_centre", "qc_off_centre"),
        ("nucleus_at_border", "qc_at_border"),
        ("nucleus_too_small", "qc_too_small"),
        ("nucleus_too_large", "qc_too_large"),
        ("touching_cells", "qc_touching"),
        ("not_lymphocyte", "is_not_lymphocyte"),
        ("smudge", "is_smudge"),
        ("blur", "qc_blur"),
    ]
    reason = next((r for r, k in order if flags[k]), "ok")
    return Segmentation(nucleus_mask, cell_mask, reason == "ok", reason, flags)
