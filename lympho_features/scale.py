"""Physical pixel scale: the red cells of a crop used as a ruler, and resampling to one canonical scale.

lympho measures cells in micrometres so that a lab scanning at another
magnification gets the same numbers. The scale (um per pixel) of a run comes,
in this order of precedence, from ``lympho extract --pixel-size``, from an
optional column of the clinical CSV (``PIXEL_SIZE_UM``, per patient), or from
the red cells around each lymphocyte: a normal red cell on a dried smear is
about 7.5 um across (:data:`RED_CELL_DIAMETER_UM`).

The ruler (:func:`red_cell_diameters`) keeps only isolated, round, convex red
cells (overlapping pairs, red cells cut by the crop edge and the lymphocyte
itself are left out), and a patient's estimate is the median of many such
diameters (:func:`estimate_from_diameters`), so a few abnormal red cells
(schistocytes, spherocytes) do not move it. A patient's own red cells vary
with its red-cell disorders (micro- or macrocytes of an anaemia move the
median diameter by 10-20 %), so :func:`pool_run` gives every patient of a run
the run's pooled scale when the patient's red cells agree with it within what
red-cell size disorders explain, and the patient's own estimate, flagged,
when they do not (another acquisition mixed into the run). A patient without
enough red cells, or whose diameters spread too much, gets a named flag and
the run's scale, never a silent guess.

Segmentation and QC run at one canonical scale (:data:`CANONICAL_UM_PER_PX`,
the scale of the lymphocytosis challenge's crops): :func:`to_canonical`
resamples a crop to it, unless it is already within
:data:`RESAMPLE_TOLERANCE`, so every pixel setting of the segmentation holds
at any magnification.

Everything here is a pure function of arrays: no file is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

#: Diameter of a normal red cell on a dried, stained smear (um): the ruler's length.
RED_CELL_DIAMETER_UM = 7.5

#: Median diameter, in pixels, that :func:`red_cell_diameters` measures on the red cells of the lymphocytosis
#: challenge's 224x224 crops (trainset, 115 patients, 16 crops each: median of the patients' medians 46.1 px,
#: 5-95 % of patients 43.4-49.7 px; see docs/features.md).
CHALLENGE_RED_CELL_DIAMETER_PX = 46.1

#: The scale (um per pixel) at which segmentation and QC run: the challenge crops' own, so that their pixel
#: settings keep their meaning and those crops are not resampled.
CANONICAL_UM_PER_PX = round(RED_CELL_DIAMETER_UM / CHALLENGE_RED_CELL_DIAMETER_PX, 4)

#: A crop whose scale is within this relative distance of the canonical one is not resampled: the
#: segmentation's thresholds do not notice a few per cent, and sizes are converted with the crop's own scale.
RESAMPLE_TOLERANCE = 0.04

#: A patient needs at least this many ruler red cells for its own estimate to count (their diameters' spread,
#: about 6 % of the median, puts the median of 15 within about 2 %).
MIN_RED_CELLS = 15

#: ... and their diameters' interquartile range below this fraction of the median (measured: 0.05-0.12 on the
#: challenge's patients; overlapping or crenated red cells that pass the shape tests widen it).
MAX_RED_CELL_SPREAD = 0.25

#: A patient whose red cells give a scale within this relative distance of the run's gets the run's scale
#: (red-cell size disorders move the median diameter by up to about 15-20 %); farther, its own (flagged).
RUN_AGREEMENT = 0.2

#: When fewer than this share of a run's patients have a reliable scale of their own, the run's scale comes from
#: every patient's red cells read together (:func:`pool_run`'s ``run_estimate``), not from the few patients'.
MIN_RELIABLE_SHARE = 0.5

#: Where a patient's um/px came from (``scale_source`` of cells.parquet and patients.parquet).
SCALE_SOURCES = ("option", "csv", "red_cells_run", "red_cells_patient", "canonical_assumed")

#: Named flags of a patient's scale (``scale_flag``; empty string when none).
SCALE_FLAGS = {
    "": "scale given, or the patient's red cells agree with the run's",
    "few_red_cells": "too few isolated round red cells to measure the patient's scale: the run's scale is used",
    "red_cells_spread": "the patient's red cells vary too much in size to measure its scale: the run's scale is used",
    "differs_from_run": "the patient's red cells disagree with the run's by more than red-cell disorders explain: "
    "its own scale is used (another magnification?)",
    "no_scale": "no scale given and no reliable red cells in the whole run: the canonical scale is assumed",
}


@dataclass(frozen=True)
class RulerSettings:
    """Thresholds of :func:`red_cell_diameters` (scale-free: fractions and shape ratios, no pixel lengths)."""

    min_solidity: float = 0.95  #: area / convex-hull area: overlapping red cells make notched outlines
    min_roundness: float = 0.85  #: 4 pi area / hull perimeter^2 (1 for a disk)
    min_axis_ratio: float = 0.8  #: minor / major axis of the second moments (a pair side by side is elongated)
    min_area_fraction: float = 0.004  #: smallest red cell, as a fraction of the crop's area (platelets, debris)
    max_area_fraction: float = 0.15  #: largest, as a fraction of the crop's area (clumps)
    max_nuclear_fraction: float = 0.01  #: share of nucleus-dark pixels above which a region is not a red cell
    #: Also read red cells cut by one crop edge, from the circle through their outline (see
    #: :func:`red_cell_diameters`); without them, at a high magnification the few red cells that fit whole
    #: between the lymphocyte and the crop's edge are the smallest.
    cut_cells: bool = True
    max_fit_residual: float = 0.03  #: RMS distance of a cut red cell's outline to its circle, over the radius
    #: Weigh each red cell by the inverse of the room its centre had in the crop (see :func:`red_cell_sample`).
    room_weights: bool = True


_DEFAULT_RULER = RulerSettings()


_PAIRS = np.triu_indices(63, k=1)  #: the (t1, t2) bin pairs of a 64-bin three-class Otsu, computed once


def _otsu3(values: np.ndarray) -> tuple[float, float]:
    """Two thresholds of a three-class Otsu on uint8 values (64 bins): nucleus / red cells / glass."""
    hist = cv2.calcHist([np.ascontiguousarray(values)], [0], None, [64], [0, 256]).ravel().astype(np.float64)
    total = hist.sum()
    if total <= 0:
        return 0.0, 0.0
    p = hist / total
    w = np.cumsum(p)
    m = np.cumsum(p * np.arange(64))
    # 64 bins: the 2,000 pairs in a vectorised sweep.
    i, j = _PAIRS
    w0, w1, w2 = w[i], w[j] - w[i], 1.0 - w[j]
    m0, m1, m2 = m[i], m[j] - m[i], m[-1] - m[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(w0 > 0, m0 * m0 / w0, 0) + np.where(w1 > 0, m1 * m1 / w1, 0) + np.where(w2 > 0, m2 * m2 / w2, 0)
    k = int(np.argmax(var))
    return float((int(i[k]) + 1) * 4 - 1), float((int(j[k]) + 1) * 4 - 1)


def red_cell_diameters(rgb: np.ndarray, settings: RulerSettings = _DEFAULT_RULER) -> np.ndarray:
    """Equivalent diameters (pixels) of the isolated, round red cells of one crop (:func:`red_cell_sample`)."""
    return red_cell_sample(rgb, settings)[0]


def red_cell_sample(rgb: np.ndarray, settings: RulerSettings = _DEFAULT_RULER) -> tuple[np.ndarray, np.ndarray]:
    """Equivalent diameters (pixels) of the isolated, round red cells of one crop.

    Stained regions are the darker classes of a three-class Otsu of the green
    channel; the pale centre of each red cell is filled. A region counts as
    one red cell when it does not touch the crop edge, holds no nucleus-dark
    pixel (the lymphocyte, a platelet clump), is convex, round and not
    elongated (:class:`RulerSettings`): overlapping red cells, pairs side by
    side and cut red cells are left out. Never raises on image content.

    Parameters
    ----------
    rgb : ndarray, shape (H, W, 3), uint8
        The crop, RGB order.
    settings : RulerSettings, optional
        Shape and size tests.

    Returns
    -------
    ndarray of float64
        ``sqrt(4 area / pi)`` of each red cell kept (possibly empty).
    """
    none = (np.zeros(0), np.zeros(0))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 32:
        return none
    h, w = rgb.shape[:2]
    green = np.ascontiguousarray(rgb[:, :, 1])
    t1, t2 = _otsu3(green[::2, ::2])
    if t2 - t1 < 12:  # no three classes (blank crop, or no glass between cells): no ruler
        return none
    stained = cv2.compare(green, t2, cv2.CMP_LE)
    nuclear = cv2.compare(green, t1, cv2.CMP_LE)
    # Fill the pale centres: holes of the stained mask that do not reach the edge.
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = stained
    cv2.floodFill(padded, None, (0, 0), 128)
    filled = cv2.compare(padded[1:-1, 1:-1], 128, cv2.CMP_NE)  # 255 but where the flood reached (0)
    # A light opening (1 px) cuts the one-pixel bridges of JPEG noise between neighbours.
    filled = cv2.morphologyEx(filled, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    # 16-bit labels (the same labelling, a third faster) when even a checkerboard of isolated pixels fits.
    ltype = cv2.CV_16U if ((h + 1) // 2) * ((w + 1) // 2) < 2**16 - 1 else cv2.CV_32S
    n, labels, stats, _ = cv2.connectedComponentsWithStats(filled, connectivity=8, ltype=ltype)
    if n <= 1:
        return none
    nuclear_counts = np.bincount(labels[nuclear > 0], minlength=n)
    min_area, max_area = settings.min_area_fraction * h * w, settings.max_area_fraction * h * w
    x, y, bw, bh, area = (stats[:, c] for c in range(5))
    # Cheap tests on the components' boxes first: a disk fills pi/4 of its square box; the outline tests
    # below run on the few candidates left.
    candidate = (
        (area >= min_area)
        & (area <= max_area)
        & (x > 0)
        & (y > 0)
        & (x + bw < w)
        & (y + bh < h)
        & (nuclear_counts <= settings.max_nuclear_fraction * area)
        & (np.minimum(bw, bh) >= settings.min_axis_ratio * 0.9 * np.maximum(bw, bh))
        & (area >= 0.6 * bw * bh)
    )
    candidate[0] = False
    out = []
    if settings.cut_cells:
        out.extend(_cut_red_cells(labels, stats, nuclear_counts, settings, min_area, max_area))
    for k in np.flatnonzero(candidate).tolist():
        area = int(stats[k, 4])
        comp, contour = _component_outline(labels, stats, k)
        if contour is None:
            continue
        hull = cv2.convexHull(contour)
        hull_area, hull_perimeter = cv2.contourArea(hull), cv2.arcLength(hull, True)
        if hull_area <= 0 or hull_perimeter <= 0:
            continue
        if area / hull_area < settings.min_solidity or 4 * math.pi * area / hull_perimeter**2 < settings.min_roundness:
            continue
        mom = cv2.moments(comp, binaryImage=True)
        mu20, mu02, mu11 = mom["mu20"] / area, mom["mu02"] / area, mom["mu11"] / area
        common = math.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)
        l1, l2 = (mu20 + mu02) / 2 + common, (mu20 + mu02) / 2 - common
        if l1 <= 0 or l2 <= 0 or math.sqrt(l2 / l1) < settings.min_axis_ratio:
            continue
        out.append(math.sqrt(4.0 * area / math.pi))
    d = np.asarray(out, np.float64)
    if d.size == 0 or not settings.room_weights:
        return d, np.ones(d.size)
    # Room left for a red cell's centre: pixels farther than its radius from the lymphocyte (and any region
    # holding nucleus-dark pixels) and not in a corner the cell would overflow on two edges.
    blocking = nuclear_counts > settings.max_nuclear_fraction * stats[:, 4]
    blocking[0] = False
    open_px = np.take(np.where(blocking, 0, 255).astype(np.uint8), labels)  # a look-up of the labels
    free = cv2.distanceTransform(open_px, cv2.DIST_L2, 5)
    room = cv2.min(free, _edge_room(h, w))
    space = np.array([_count_at_least(room, r) for r in (d / 2).tolist()], np.float64)
    return d, 1.0 / np.maximum(space, 1)


@lru_cache(maxsize=16)
def _edge_room(h: int, w: int) -> np.ndarray:
    """Room (pixels, float32) a red cell's centre has before overflowing two edges of an ``h`` x ``w`` crop.

    The larger of the distances to the nearer vertical and the nearer
    horizontal edge; made once per crop shape (read-only: shared by the calls).
    """
    yy, xx = np.ogrid[:h, :w]
    to_edge = np.maximum(np.minimum(xx, w - 1 - xx), np.minimum(yy, h - 1 - yy)).astype(np.float32)
    to_edge.flags.writeable = False
    return to_edge


def _count_at_least(room: np.ndarray, r: float) -> int:
    """``np.count_nonzero(room >= r)`` for a float32 ``room``: compared in float32, as NumPy compares it.

    NumPy 2 converts the Python float ``r`` to float32 (NEP 50: a Python
    float is weak), rounding to nearest; OpenCV's comparison gets that
    float32 value, exactly.
    """
    return cv2.countNonZero(cv2.compare(room, float(np.float32(r)), cv2.CMP_GE))


def _component_outline(labels: np.ndarray, stats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Connected component ``k`` cut to its box (uint8, 1 inside) and its largest outer outline (box pixels; None
    when it has none), from ``cv2.connectedComponentsWithStats``' labels and stats."""
    x, y, bw, bh = stats[k, :4].tolist()
    comp = (labels[y : y + bh, x : x + bw] == k).astype(np.uint8)
    contours, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return comp, (max(contours, key=cv2.contourArea) if contours else None)


def _clipped_disk_area(r: float, h: float) -> float:
    """Area of a disk of radius ``r`` whose centre lies ``h`` (0 <= h) inside a straight edge: the part inside."""
    if h >= r:
        return math.pi * r * r
    if h <= -r:
        return 0.0
    return math.pi * r * r - (r * r * math.acos(h / r) - h * math.sqrt(r * r - h * h))


def _radius_from_clipped_area(area: float, h: float, r0: float) -> float:
    """The radius whose disk, cut by an edge ``h`` from its centre, keeps ``area`` inside (bisection)."""
    lo, hi = 0.5 * r0, 2.0 * r0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if _clipped_disk_area(mid, h) < area:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _cut_red_cells(labels, stats, nuclear_counts, settings: RulerSettings, min_area: float, max_area: float):
    """Equivalent diameters of the round red cells cut by exactly one crop edge, their centre inside the crop.

    The circle through the outline left inside the crop (least squares, the
    points on the edge left out) gives the red cell's centre and roundness; the
    diameter is that of the disk which, cut by the same edge, covers the
    region's area: the same area-equivalent diameter as a whole red cell's.
    Regions whose outline strays from its circle (two red cells touching, a
    crenated or elongated one) or whose centre lies outside the crop (less than
    half the cell seen) are left out.
    """
    h, w = labels.shape
    x, y, bw, bh, area = (stats[:, c] for c in range(5))
    edges = np.stack([x == 0, y == 0, x + bw == w, y + bh == h], axis=1)
    candidate = (
        (edges.sum(axis=1) == 1)
        & (area >= 0.5 * min_area)
        & (area <= max_area)
        & (nuclear_counts <= settings.max_nuclear_fraction * area)
    )
    candidate[0] = False
    out = []
    for k in np.flatnonzero(candidate).tolist():
        x0, y0, _, _, area_k = stats[k].tolist()
        _, contour = _component_outline(labels, stats, k)
        if contour is None:
            continue
        hull_area = cv2.contourArea(cv2.convexHull(contour))
        if hull_area <= 0 or area_k / hull_area < settings.min_solidity:
            continue
        pts = contour.reshape(-1, 2).astype(np.float64) + (x0, y0)
        # The outline along the crop's edge (and the pixel next to it, where the outline turns) is the cut.
        arc = pts[(pts[:, 0] > 1) & (pts[:, 1] > 1) & (pts[:, 0] < w - 2) & (pts[:, 1] < h - 2)]
        if len(arc) < 12:
            continue
        a = np.column_stack([2 * arc[:, 0], 2 * arc[:, 1], np.ones(len(arc))])
        try:  # least squares through the normal equations (3 x 3): the arc's points are many, well spread
            cx, cy, c = np.linalg.solve(a.T @ a, a.T @ (arc**2).sum(axis=1))
        except np.linalg.LinAlgError:
            continue
        r2 = c + cx * cx + cy * cy
        if r2 <= 0:
            continue
        r_fit = math.sqrt(r2)
        residual = float(np.sqrt(np.mean((np.hypot(arc[:, 0] - cx, arc[:, 1] - cy) - r_fit) ** 2)))
        if residual > settings.max_fit_residual * r_fit:
            continue
        # Distance from the centre to the cut edge (the crop's border lies half a pixel beyond its last pixels).
        side = int(np.argmax(edges[k]))
        depth = (cx + 0.5, cy + 0.5, w - 0.5 - cx, h - 0.5 - cy)[side]
        if depth <= 0:
            continue
        r = _radius_from_clipped_area(float(area_k), depth, r_fit)
        if not (min_area <= math.pi * r * r <= max_area):
            continue
        out.append(2.0 * r)
    return out


@dataclass(frozen=True)
class ScaleEstimate:
    """The red-cell ruler's reading of one patient (or one run).

    Attributes
    ----------
    um_per_px : float
        ``RED_CELL_DIAMETER_UM / median diameter``; NaN without any red cell.
    n_red_cells : int
        Red cells measured.
    spread : float
        Interquartile range of the diameters over their median (NaN without red cells).
    flag : str
        ``""`` when reliable, else ``"few_red_cells"`` or ``"red_cells_spread"`` (:data:`SCALE_FLAGS`).
    """

    um_per_px: float
    n_red_cells: int
    spread: float
    flag: str

    @property
    def reliable(self) -> bool:
        """True when the estimate may be used as it is."""
        return self.flag == "" and math.isfinite(self.um_per_px)


def estimate_from_diameters(
    diameters_px,
    min_red_cells: int = MIN_RED_CELLS,
    max_spread: float = MAX_RED_CELL_SPREAD,
    red_cell_um: float = RED_CELL_DIAMETER_UM,
    weights=None,
) -> ScaleEstimate:
    """Robust scale of one patient from its red cells' diameters (pixels, from :func:`red_cell_diameters`).

    The median diameter is the ruler (a few abnormal red cells do not move
    it); its reliability is judged by the count and the relative
    interquartile range of the diameters.
    """
    d = np.asarray(diameters_px, np.float64)
    wt = np.ones(d.size) if weights is None else np.asarray(weights, np.float64)
    keep = np.isfinite(d) & (d > 0) & np.isfinite(wt) & (wt > 0)
    d, wt = d[keep], wt[keep]
    if d.size == 0:
        return ScaleEstimate(float("nan"), 0, float("nan"), "few_red_cells")
    if weights is None:
        q25, med, q75 = np.percentile(d, [25, 50, 75])
    else:
        q25, med, q75 = weighted_quantiles(d, wt, (0.25, 0.5, 0.75))
    spread = float((q75 - q25) / med)
    flag = "few_red_cells" if d.size < min_red_cells else ("red_cells_spread" if spread > max_spread else "")
    return ScaleEstimate(float(red_cell_um / med), int(d.size), spread, flag)


def weighted_quantiles(values, weights, qs) -> np.ndarray:
    """Quantiles of ``values`` with ``weights`` (the midpoint rule: equal weights give the usual quantiles)."""
    v, w = np.asarray(values, np.float64), np.asarray(weights, np.float64)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cum = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(np.asarray(qs, np.float64), cum, v)


@dataclass(frozen=True)
class PatientScale:
    """The scale a patient's crops are measured at, and why (one row per patient in the outputs)."""

    um_per_px: float
    source: str  #: one of :data:`SCALE_SOURCES`
    flag: str = ""  #: one of :data:`SCALE_FLAGS`
    own_um_per_px: float = float("nan")  #: the patient's own red-cell estimate (NaN when not measured)
    n_red_cells: int = 0


def pool_run(
    estimates: dict[str, ScaleEstimate],
    agreement: float = RUN_AGREEMENT,
    canonical: float = CANONICAL_UM_PER_PX,
    run_estimate: ScaleEstimate | None = None,
    min_reliable_share: float = MIN_RELIABLE_SHARE,
) -> tuple[float, dict[str, PatientScale]]:
    """The run's pooled red-cell scale and the scale each patient is measured at.

    The run's scale is the median of the reliable patients' estimates (each
    patient weighing the same, however many crops it has), when at least
    ``min_reliable_share`` of the patients are reliable. A reliable patient
    within ``agreement`` (relative) of it gets the run's scale: one lab, one
    scanner, and the patient's red cells are merely small or large (anaemia).
    A reliable patient farther away keeps its own estimate, flagged
    ``differs_from_run``. An unreliable patient gets the run's scale with its
    own flag. Without any reliable patient, the red cells of the whole run
    read together (``run_estimate``, from every patient's diameters; at a
    high magnification a crop holds few whole red cells, so no patient has
    enough on its own: 105 red cells over 115 patients at x1.6 of the
    trainset's 224-pixel crops) give every patient the run's scale with its
    own flag, when they are reliable; else every patient gets ``canonical``,
    flagged ``no_scale``. The red cells read together are also the run's
    ruler when reliable patients are fewer than ``min_reliable_share``: the
    few are then a selection (at x1.6 of the trainset's crops, 2 patients of
    115 were measurable on their own: those whose crops held the smallest red
    cells whole).

    Returns
    -------
    run_um_per_px : float
        NaN when no patient is reliable.
    scales : dict of str to PatientScale
    """
    good = [e.um_per_px for e in estimates.values() if e.reliable]
    pooled_ok = run_estimate is not None and run_estimate.reliable
    if not good or (pooled_ok and len(good) < min_reliable_share * len(estimates)):
        # Too few patients measurable on their own: they are a selection (at a high magnification, those whose
        # crops happen to hold the smallest red cells whole), so every red cell of the run is read together.
        run = run_estimate.um_per_px if pooled_ok else float("nan")
    else:
        # Median of the agreeing majority: the median of all, then of those within ``agreement`` of it, so that
        # a block of patients from another lab pulls the run's scale less.
        run = float(np.median(good))
        close = [g for g in good if abs(g / run - 1) <= agreement]
        run = float(np.median(close)) if close else run
    out = {}
    for pid, e in estimates.items():
        if not math.isfinite(run):
            out[pid] = PatientScale(canonical, "canonical_assumed", "no_scale", e.um_per_px, e.n_red_cells)
        elif not e.reliable:
            out[pid] = PatientScale(run, "red_cells_run", e.flag, e.um_per_px, e.n_red_cells)
        elif abs(e.um_per_px / run - 1) > agreement:
            out[pid] = PatientScale(e.um_per_px, "red_cells_patient", "differs_from_run", e.um_per_px, e.n_red_cells)
        else:
            out[pid] = PatientScale(run, "red_cells_run", "", e.um_per_px, e.n_red_cells)
    return run, out


def resample_factor(
    um_per_px: float, canonical: float = CANONICAL_UM_PER_PX, tolerance: float = RESAMPLE_TOLERANCE
) -> float:
    """Zoom that brings a crop of ``um_per_px`` to the canonical scale; 1.0 within ``tolerance`` (no resampling)."""
    if not (math.isfinite(um_per_px) and um_per_px > 0):
        return 1.0
    factor = um_per_px / canonical
    return 1.0 if abs(factor - 1.0) <= tolerance else factor


def to_canonical(
    rgb: np.ndarray,
    um_per_px: float,
    canonical: float = CANONICAL_UM_PER_PX,
    tolerance: float = RESAMPLE_TOLERANCE,
) -> tuple[np.ndarray, float]:
    """Resample a crop to the canonical scale.

    Shrinking uses area averaging (no aliasing of the chromatin's fine
    texture), enlarging bicubic interpolation. Within ``tolerance`` the crop
    is returned as it is.

    Returns
    -------
    rgb : ndarray
        The crop at (or within ``tolerance`` of) the canonical scale.
    um_per_px : float
        The scale of the returned crop: ``canonical`` if resampled (up to the
        rounding of its side), else the crop's own.
    """
    factor = resample_factor(um_per_px, canonical, tolerance)
    if factor == 1.0 or rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        return rgb, float(um_per_px) if math.isfinite(um_per_px) and um_per_px > 0 else canonical
    h, w = rgb.shape[:2]
    nh, nw = max(1, int(round(h * factor))), max(1, int(round(w * factor)))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(rgb), (nw, nh), interpolation=interp)
    # The side is rounded to whole pixels: the scale actually reached, per axis, averaged.
    reached = um_per_px * 0.5 * (w / nw + h / nh)
    return out, float(reached)


#: Shape measurements that are lengths (``shape_{nucleus,cell}_{name}``).
_SHAPE_LENGTHS = ("perimeter", "equivalent_diameter", "major_axis", "minor_axis", "feret_max", "feret_min")

#: Per-cell columns that are lengths: um in cells.parquet (pixels times the crop's um/px).
LENGTH_COLUMNS = (
    *(f"shape_{r}_{n}" for r in ("nucleus", "cell") for n in _SHAPE_LENGTHS),
    "nc_rim_width",
    "nc_rim_width_min",
    "nc_rim_width_max",
)

#: Per-cell columns that are areas: um^2 in cells.parquet. Every other column is free of the pixel scale
#: (ratios, shape indices) or measured at the canonical scale (texture, colour).
AREA_COLUMNS = ("nucleus_area", "cell_area", "nc_cytoplasm_area", "shape_nucleus_area", "shape_cell_area")


def to_physical(row: dict, um_per_px: float) -> dict:
    """Convert the size columns of one measured crop from pixels to um and um^2, in place; returns ``row``."""
    k2 = um_per_px * um_per_px
    for name in LENGTH_COLUMNS:
        if name in row:
            row[name] = row[name] * um_per_px
    for name in AREA_COLUMNS:
        if name in row:
            row[name] = row[name] * k2
    return row
