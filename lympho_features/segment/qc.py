"""Phase 3 of the segmentation: quality control and cell type of the segmented cell.

Every check of :data:`~.settings.FLAG_DESCRIPTIONS` is computed (so a crop
failing several is counted in each); the first failed one, in the order of
:data:`~.settings.QC_REASONS`, is the crop's ``qc_reason``.
"""

from __future__ import annotations

import cv2
import numpy as np

from .cytoplasm import CellFound
from .morphology import _disk
from .nucleus import NucleusFound
from .optical_density import optical_density_channels
from .result import Segmentation
from .settings import _QC_ORDER, FLAG_DESCRIPTIONS, QC_REASONS_BEFORE_FLAGS, SegmentationSettings


def quality_control(
    shape: tuple[int, int], found: NucleusFound, cell: CellFound, s: SegmentationSettings
) -> Segmentation:
    """Flags, QC reason and diagnostics of a segmented cell, and the :class:`Segmentation` of the crop.

    The phases are shown one by one in :mod:`lympho_features.segment.pipeline`.
    """
    h, w = shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    nucleus, y0, y1, x0, x1 = found.nucleus, *found.roi
    n_area = cv2.countNonZero(nucleus)
    nb, (ncy, ncx), nucleus_moments = nucleus_box_moments(nucleus, y0, x0)
    flags = dict.fromkeys(FLAG_DESCRIPTIONS, False)
    flags["qc_off_centre"] = float(np.hypot(ncy - cy, ncx - cx)) / min(h, w) > s.max_centre_offset
    flags["qc_at_border"] = bool(
        nb[1].start + x0 == 0 or nb[0].start + y0 == 0 or nb[1].stop + x0 >= w or nb[0].stop + y0 >= h
    )
    flags["qc_too_small"] = n_area < s.min_nucleus_area
    flags["qc_too_large"] = n_area > s.max_nucleus_area
    flags["qc_neighbour_split"] = cell.split or found.merged_split
    flags["qc_touching"] = cell.touch_fraction > s.max_touch_fraction
    shape_diag = _cell_type_flags(flags, found, cell, n_area, s)
    density = _density_flags(flags, cell.od_sum, nucleus, nb, cv2.countNonZero(cell.cell), n_area, s)
    flags = {k: bool(v) for k, v in flags.items()}
    reason = first_failed_check(flags)
    # Box of the whole cell (for the features), with a 2-pixel margin.
    cbx, cby, cbw, cbh = cv2.boundingRect(cell.cell)
    box = (max(0, cby + y0 - 2), min(h, cby + cbh + y0 + 2), max(0, cbx + x0 - 2), min(w, cbx + cbw + x0 + 2))
    diagnostics = {
        **density,
        "touch_fraction": cell.touch_fraction,
        **shape_diag,
        "rbc_od": cell.rbc_od,
        "rbc_chroma": cell.rbc_chroma,
    }
    nucleus_mask = np.zeros((h, w), bool)
    cell_mask = np.zeros((h, w), bool)
    np.greater(nucleus, 0, out=nucleus_mask[y0:y1, x0:x1])
    np.greater(cell.cell, 0, out=cell_mask[y0:y1, x0:x1])
    ncont = cell.nucleus_contours
    largest = ncont[0] if len(ncont) == 1 else max(ncont, key=cv2.contourArea)
    return Segmentation(
        nucleus_mask,
        cell_mask,
        reason == "ok",
        reason,
        flags,
        box,
        cell.background,
        diagnostics,
        (y0, y1, x0, x1),
        cell.od_sum,
        largest + np.array((x0, y0), np.int32),
        nucleus_moments,
        cell.od_sum_every4,
    )


def nucleus_box_moments(nucleus: np.ndarray, y0: int, x0: int):
    """The nucleus' own box in the ROI, its centroid and raw moments in crop coordinates.

    ``(y0, x0)`` is the ROI's origin in the crop. Returns the box as slices of
    the ROI, the centroid ``(y, x)`` in the crop and the raw moments ``(m00,
    m10, m01, m20, m11, m02)`` in crop coordinates (integer sums: exact after
    the shift).

    Examples
    --------
    >>> import numpy as np
    >>> nucleus = np.zeros((10, 10), np.uint8)
    >>> nucleus[2:4, 3:7] = 255
    >>> box, (y, x), moments = nucleus_box_moments(nucleus, 100, 50)  # the ROI starts at row 100, column 50
    >>> box, (y, x), moments[:3]
    ((slice(2, 4, None), slice(3, 7, None)), (102.5, 54.5), (8.0, 436.0, 820.0))
    """
    nbx, nby, nbw, nbh = cv2.boundingRect(nucleus)
    nb = (slice(nby, nby + nbh), slice(nbx, nbx + nbw))  # the nucleus' own box
    mom = cv2.moments(nucleus[nb], binaryImage=True)  # on its box: same centroid, fewer pixels
    ncy, ncx = mom["m01"] / mom["m00"] + nby + y0, mom["m10"] / mom["m00"] + nbx + x0
    ox, oy = nbx + x0, nby + y0
    m00, m10, m01 = mom["m00"], mom["m10"], mom["m01"]
    moments = (
        m00,
        m10 + ox * m00,
        m01 + oy * m00,
        mom["m20"] + 2 * ox * m10 + ox * ox * m00,
        mom["m11"] + oy * m10 + ox * m01 + ox * oy * m00,
        mom["m02"] + 2 * oy * m01 + oy * oy * m00,
    )
    return nb, (ncy, ncx), moments


def _cell_type_flags(flags: dict, found: NucleusFound, cell: CellFound, n_area: int, s: SegmentationSettings) -> dict:
    """Set ``is_granulocyte`` (thick-stranded lobes too) and ``is_monocyte``; return the shape diagnostics."""
    nucleus = found.nucleus
    is_granulocyte, n_lobes = found.is_granulocyte, found.n_lobes
    ncont = cell.nucleus_contours
    c_area = cv2.countNonZero(cell.cell)
    hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(ncont))) if ncont else 0.0
    solidity = n_area / hull_area if hull_area > 0 else 1.0
    cell_diameter = float(np.sqrt(4 * c_area / np.pi))
    if not is_granulocyte and not found.merged_split and solidity < s.lobulated_max_solidity:
        # Thick strands: erode in proportion to the nucleus size and count the lobes left.
        r = max(s.lobe_erosion, int(round(s.lobe_erosion_fraction * np.sqrt(4 * n_area / np.pi))))
        pieces, _ = cv2.findContours(cv2.erode(nucleus, _disk(r)), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        n_big = sum(cv2.contourArea(c) >= s.min_lobe_area for c in pieces)
        if n_big >= 2:
            is_granulocyte = True
            n_lobes = max(n_lobes, n_big)
    flags["is_granulocyte"] = is_granulocyte
    flags["is_monocyte"] = bool(
        not is_granulocyte
        and cell_diameter > s.monocyte_min_diameter
        and solidity < s.monocyte_max_solidity
        and n_area < 0.6 * c_area
    )
    return {"solidity": solidity, "n_lobes": float(n_lobes), "cell_diameter": cell_diameter}


def _density_flags(flags: dict, od_sum, nucleus, nb, c_area: int, n_area: int, s: SegmentationSettings) -> dict:
    """Set the flags read on the nucleus' density (pyknotic, smudge, blur, not a lymphocyte); return its diagnostics."""
    nucleus_od, nucleus_od_sd = (float(v[0, 0]) for v in cv2.meanStdDev(od_sum[nb], mask=nucleus[nb]))
    sharp = _sharpness(od_sum[nb], nucleus[nb], nucleus_od_sd)
    dense = nucleus_od > s.pyknotic_min_od
    flags["is_pyknotic"] = dense and nucleus_od_sd < s.pyknotic_max_od_sd
    flags["is_not_lymphocyte"] = flags["is_granulocyte"] or flags["is_monocyte"] or flags["is_pyknotic"]
    flags["is_smudge"] = nucleus_od < s.smudge_max_od and (c_area - n_area) < s.smudge_max_cytoplasm * c_area
    flags["qc_blur"], focus_sharp = _blur_verdict(sharp, dense, s)
    return {
        "nucleus_od": nucleus_od,
        "nucleus_od_sd": nucleus_od_sd,
        "sharpness": sharp,
        "focus_sharpness": focus_sharp,
        "cytoplasm_fraction": (c_area - n_area) / c_area if c_area > 0 else float("nan"),
    }


def _blur_verdict(sharp: float, dense: bool, s: SegmentationSettings) -> tuple[bool, float]:
    """The blur check on a nucleus' sharpness: ``(qc_blur, focus_sharpness)``.

    Two readings of one measure: ``sharpness`` describes the acquisition (acq_sharpness: every nucleus), and
    ``focus_sharpness`` is what the blur check judges (qc_sharpness): NaN for a dense nucleus, which has no
    texture to judge focus by and is never blur.
    """
    return sharp < s.blur_threshold and not dense, float("nan") if dense else sharp


def _sharpness(od_box: np.ndarray, nucleus_box: np.ndarray, nucleus_od_sd: float) -> float:
    """Fine (Laplacian) over overall variation of the nucleus' density: a sharpness that does not depend on how
    contrasted the chromatin is."""
    lap = cv2.Laplacian(od_box, cv2.CV_32F, ksize=1)
    inner = cv2.erode(nucleus_box, _disk(2))
    if cv2.countNonZero(inner) < 20:
        inner = np.ascontiguousarray(nucleus_box)
    return float(cv2.meanStdDev(lap, mask=inner)[1][0, 0]) / max(nucleus_od_sd, 1e-3)


def judge_focus_on(seg: Segmentation, rgb: np.ndarray, s: SegmentationSettings) -> None:
    """Judge a segmented crop's focus on ``rgb``, the same crop before it was blurred to one focus, in place.

    :func:`lympho_features.measure.segment_at_canonical` segments and measures a crop blurred to a common
    focus (:mod:`lympho_features.focus`); on those pixels every crop reads about as sharp. Whether the crop
    was in focus is a property of the crop as acquired: its nucleus sharpness (``diagnostics["sharpness"]``,
    ``["focus_sharpness"]``), the ``qc_blur`` flag and the QC reason are read again on ``rgb`` within the
    same nucleus, so the blur check and ``acq_sharpness`` mean what they meant before the common focus.
    """
    if seg.roi is None or seg.background is None or not seg.diagnostics or "sharpness" not in seg.diagnostics:
        return
    y0, y1, x0, x1 = seg.roi
    nucleus = np.ascontiguousarray(seg.nucleus_mask[y0:y1, x0:x1], dtype=np.uint8)
    if not cv2.countNonZero(nucleus):
        return
    bx, by, bw, bh = cv2.boundingRect(nucleus)
    nb = (slice(by, by + bh), slice(bx, bx + bw))
    od_r, od_g, od_b = optical_density_channels(rgb[y0:y1, x0:x1][nb], seg.background)
    od_box = cv2.add(cv2.add(od_r, od_g), od_b)
    nucleus_od_sd = float(cv2.meanStdDev(od_box, mask=nucleus[nb])[1][0, 0])
    sharp = _sharpness(od_box, nucleus[nb], nucleus_od_sd)
    blur, focus_sharp = _blur_verdict(sharp, seg.diagnostics["nucleus_od"] > s.pyknotic_min_od, s)
    seg.diagnostics = {**seg.diagnostics, "sharpness": sharp, "focus_sharpness": focus_sharp}
    seg.flags = {**seg.flags, "qc_blur": bool(blur)}
    if seg.qc_reason not in QC_REASONS_BEFORE_FLAGS:
        seg.qc_reason = first_failed_check(seg.flags)
        seg.qc_ok = seg.qc_reason == "ok"


def first_failed_check(flags: dict) -> str:
    """The QC reason of a crop's flags: the first failed check of :data:`QC_REASONS` with a flag, else ``"ok"``."""
    return next((reason for reason, flag in _QC_ORDER if flags.get(flag)), "ok")


def rejudge_qc_reason(row: dict) -> None:
    """Set a measured row's ``qc_reason`` and ``qc_ok`` from its flags again, in place.

    For the checks made after segmentation (the cell-type gate, blur and smudge
    judged against the patient's crops), which change a flag: the reason stays
    the first failed check, as the segmentation reports it. Reasons that come
    before any flag (:data:`QC_REASONS_BEFORE_FLAGS`) stay.
    """
    if row.get("qc_reason") in QC_REASONS_BEFORE_FLAGS:
        return
    row["qc_reason"] = first_failed_check(row)
    row["qc_ok"] = row["qc_reason"] == "ok"


def patient_smudge(nucleus_od, cytoplasm_fraction, settings: SegmentationSettings) -> np.ndarray:
    """Which of one patient's crops are smudge cells, their paleness judged against the patient's own crops.

    A smudge (basket) cell is a broken cell: a nucleus paler than intact ones,
    spread, without cytoplasm. How pale a nucleus is depends on the slide's
    nuclear stain as much as on the cell: with a fixed optical-density limit,
    a stain 30 % weaker than the trainset's made 9 % of intact lymphocytes
    smudge cells (those with scant cytoplasm). So the limit is
    ``smudge_patient_ratio`` times the median nucleus OD of the patient's crops
    (a weaker stain lowers both), or ``smudge_floor_od`` at any rate (a nucleus
    that pale is washed out on any slide); with fewer than ``blur_min_crops``
    measured crops, the fixed ``smudge_max_od``. The cytoplasm test
    (below ``smudge_max_cytoplasm`` of the cell) is the crop's own.

    Parameters
    ----------
    nucleus_od : array of float
        Mean nucleus OD (sum of the three channels, above the crop's glass) of each crop
        (``diagnostics["nucleus_od"]``); NaN where not measured (never smudge).
    cytoplasm_fraction : array of float
        Cytoplasm's share of each crop's cell area (``diagnostics["cytoplasm_fraction"]``).
    settings : SegmentationSettings

    Returns
    -------
    ndarray of bool
        The ``is_smudge`` flag of each crop.

    Examples
    --------
    Twenty crops of a weakly stained slide (nucleus OD 2.2, under the fixed 2.4), one of them paler (1.4):
    only that one is a smudge cell, and only with scant cytoplasm.

    >>> import numpy as np
    >>> from lympho_features.segment import SegmentationSettings
    >>> od = np.r_[np.full(19, 2.2), 1.4]
    >>> patient_smudge(od, np.full(20, 0.1), SegmentationSettings()).nonzero()[0].tolist()
    [19]
    >>> patient_smudge(od, np.full(20, 0.3), SegmentationSettings()).any()
    np.False_
    """
    od = np.asarray(nucleus_od, np.float64)
    scant = np.asarray(cytoplasm_fraction, np.float64) < settings.smudge_max_cytoplasm
    finite = np.isfinite(od)
    if finite.sum() >= settings.blur_min_crops:
        limit = max(settings.smudge_floor_od, settings.smudge_patient_ratio * float(np.median(od[finite])))
    else:
        limit = settings.smudge_max_od
    out = np.zeros(od.shape, bool)
    out[finite] = (od[finite] < limit) & scant[finite]
    return out


def patient_blur(sharpness, settings: SegmentationSettings) -> np.ndarray:
    """Which of one patient's crops are out of focus, judged against the patient's own crops.

    A soft slide (stain, smear thickness, focus of the scanner) softens all
    of a patient's crops: an absolute threshold rejected them wholesale (72 %
    of the crops of a slide blurred by a Gaussian of 0.7 px). A crop is blur
    when its sharpness is below ``blur_patient_ratio`` times the median of
    the patient's crops, or below ``blur_floor`` at any rate (a slide blurred
    throughout). With fewer than ``blur_min_crops`` measurable crops only the
    floor applies.

    Parameters
    ----------
    sharpness : array of float
        ``diagnostics["sharpness"]`` of each crop at the canonical scale; NaN
        where not measured (no nucleus, dense nucleus: never blur).
    settings : SegmentationSettings

    Returns
    -------
    ndarray of bool
        The ``qc_blur`` flag of each crop.
    """
    sharp = np.asarray(sharpness, np.float64)
    finite = np.isfinite(sharp)
    limit = settings.blur_floor
    if finite.sum() >= settings.blur_min_crops:
        limit = max(limit, settings.blur_patient_ratio * float(np.median(sharp[finite])))
    out = np.zeros(sharp.shape, bool)
    out[finite] = sharp[finite] < limit
    return out
