"""Phase 1 of the segmentation: the nucleus of the central cell.

The nucleus is the darkest class of the green channel: a three-class Otsu
(nucleus / red cells and cytoplasm / background) on the central window gives
the cut; a purple-hue condition (blue well above green) removes dark debris.
The component at (or nearest to) the crop centre is the lymphocyte's nucleus.
Two nuclei merged into one component are split at their neck; a nucleus made
of several small lobes is a granulocyte.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .morphology import _box_gap, _central_window, _contour_centroid, _disk, _window, in_window
from .settings import SegmentationSettings

_TRIU: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _triu(bins: int) -> tuple[np.ndarray, np.ndarray]:
    if bins not in _TRIU:
        _TRIU[bins] = np.triu_indices(bins - 1, k=1)
    return _TRIU[bins]


def _multi_otsu3_bins(hist: np.ndarray) -> tuple[int, int]:
    """Bins ``(i, j)``, ``i < j``, ending the lower two classes of a histogram (float64), maximising between-class variance."""
    bins = len(hist)
    p = hist / hist.sum()
    w = np.cumsum(p)
    m = np.cumsum(p * np.arange(bins, dtype=np.float64))
    i, j = _triu(bins)  # class 0: [0, i], class 1: (i, j], class 2: (j, end]
    eps = 1e-12  # empty classes have zero mass and zero moment: their term vanishes
    # The terms of the first and last class depend on one threshold: computed per bin, then gathered.
    low = m * m / (w + eps)
    m2 = m[-1] - m
    high = m2 * m2 / (1.0 - w + eps)
    m1 = m.take(j) - m.take(i)
    den = w.take(j) - w.take(i)
    den += eps
    m1 *= m1
    m1 /= den
    var = low.take(i)  # low[i] + m1 * m1 / (w[j] - w[i] + eps) + high[j], in place
    var += m1
    var += high.take(j)
    k = int(np.argmax(var))
    return int(i[k]), int(j[k])


def multi_otsu3(values: np.ndarray, bins: int = 64) -> tuple[float, float]:
    """Two thresholds splitting ``values`` (uint8) into three classes, maximising between-class variance.

    The histogram is reduced to ``bins`` bins; thresholds are returned in the
    original 0-255 scale (a value ``<= t1`` is in the lowest class).

    Examples
    --------
    >>> import numpy as np
    >>> values = np.repeat(np.array([20, 120, 230], np.uint8), 100)
    >>> multi_otsu3(values)
    (23.0, 123.0)
    """
    step = 256 // bins
    hist = cv2.calcHist([np.ascontiguousarray(values)], [0], None, [bins], [0, 256]).ravel().astype(np.float64)
    if hist.sum() <= 0:
        return 0.0, 0.0
    i, j = _multi_otsu3_bins(hist)
    return float((i + 1) * step - 1), float((j + 1) * step - 1)


def split_lobes(nucleus: np.ndarray, erosion: int, min_area: int) -> tuple[int, np.ndarray]:
    """Pieces of a nucleus separated by thin strands.

    Parameters
    ----------
    nucleus : ndarray uint8 (0/255)
        One nucleus (one connected component).
    erosion : int
        Radius of the erosion that cuts strands thinner than ``2 * erosion``.
    min_area : int
        Pieces smaller than this after erosion are ignored.

    Returns
    -------
    n_lobes : int
        Number of pieces (1 for a round or notched nucleus).
    labels : ndarray int32
        Every nucleus pixel labelled ``1..n_lobes`` by its nearest piece (0 outside).

    Examples
    --------
    Three lobes joined by thin strands:

    >>> import cv2, numpy as np
    >>> lobed = np.zeros((120, 140), np.uint8)
    >>> for c in ((45, 50), (75, 50), (60, 85)):
    ...     _ = cv2.circle(lobed, c, 9, 255, -1)
    >>> _ = cv2.line(lobed, (45, 50), (75, 50), 255, 2)
    >>> _ = cv2.line(lobed, (75, 50), (60, 85), 255, 2)
    >>> n, labels = split_lobes(lobed, 4, 40)
    >>> n, sorted(np.unique(labels).tolist())
    (3, [0, 1, 2, 3])
    """
    return _split_by_seeds(nucleus, cv2.erode(nucleus, _disk(erosion)), min_area)


def split_merged(nucleus: np.ndarray, min_area: int, level: float = 0.55) -> tuple[int, np.ndarray]:
    """Pieces of a nucleus made of two round nuclei pressed together (a wide neck).

    The cores of the pieces are where the distance to the outline exceeds
    ``level`` times its maximum; every pixel goes to its nearest core.
    Returns ``(n_pieces, labels)`` as :func:`split_lobes`.

    Examples
    --------
    Two round nuclei pressed together:

    >>> import cv2, numpy as np
    >>> two = np.zeros((60, 90), np.uint8)
    >>> _ = cv2.circle(two, (30, 30), 18, 255, -1)
    >>> _ = cv2.circle(two, (60, 30), 18, 255, -1)
    >>> split_merged(two, 40)[0], split_lobes(two, 4, 40)[0]  # the wide neck is no strand
    (2, 1)
    """
    dt = cv2.distanceTransform(nucleus, cv2.DIST_L2, 3)
    cores = cv2.compare(dt, level * float(dt.max()), cv2.CMP_GT)
    return _split_by_seeds(nucleus, cores, min_area)


def _split_by_seeds(nucleus: np.ndarray, seeds_mask: np.ndarray, min_area: int) -> tuple[int, np.ndarray]:
    n, lab, stats, _ = cv2.connectedComponentsWithStats(seeds_mask, connectivity=8)
    keep = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_area) + 1
    if keep.size <= 1:
        return 1, (nucleus > 0).astype(np.int32)
    seeds = np.zeros_like(lab)
    for new, old in enumerate(keep, start=1):
        seeds[lab == old] = new
    # Nearest seed of every pixel: distance transform with labels of the seeds' complement.
    src = np.where(seeds > 0, 0, 255).astype(np.uint8)
    _, near = cv2.distanceTransformWithLabels(src, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_CCOMP)
    # Map connected-component labels of the zeros back to seed ids.
    lut = np.zeros(int(near.max()) + 1, np.int32)
    ys, xs = np.nonzero(seeds)
    lut[near[ys, xs]] = seeds[ys, xs]
    out = lut[near]
    out[nucleus == 0] = 0
    return int(keep.size), out


def nucleus_thresholds(green: np.ndarray, win: tuple[slice, slice]) -> tuple[float, float]:
    """The two thresholds of the green channel that split a crop into nuclei, cells and background.

    A three-class Otsu (:func:`multi_otsu3`) over the central window ``win``
    of ``green`` (uint8), on every other pixel (the same histogram, 4x fewer
    pixels). Without three distinct classes (no red cells, or a blank crop:
    thresholds closer than 12 grey levels, or a class under 0.5 % of the
    pixels) both thresholds are the two-class Otsu threshold. A value ``<= t1``
    is nuclear; ``> t2`` is background.

    Examples
    --------
    >>> import numpy as np
    >>> green = np.full((40, 40), 220, np.uint8)  # glass
    >>> green[15:25, 15:25] = 60  # a nucleus
    >>> green[30:38, 30:38] = 150  # a red cell
    >>> green[::2, :5] = 150
    >>> nucleus_thresholds(green, (slice(0, 40), slice(0, 40)))
    (63.0, 151.0)
    """
    sample = np.ascontiguousarray(green[win][::2, ::2])
    # multi_otsu3(sample), keeping its histogram: the thresholds fall on bin edges, so the
    # class sizes are sums of bins.
    hist = cv2.calcHist([sample], [0], None, [64], [0, 256]).ravel().astype(np.float64)
    if hist.sum() > 0:
        i, j = _multi_otsu3_bins(hist)
        t1, t2 = float((i + 1) * 4 - 1), float((j + 1) * 4 - 1)
        n_low, n_le_t2 = np.cumsum(hist)[[i, j]].tolist()  # exact: sums of integer counts
        n_mid = n_le_t2 - n_low
    else:
        t1 = t2 = 0.0
        n_low = n_mid = 0.0
    if t2 - t1 < 12 or min(n_low, n_mid) < 0.005 * sample.size:
        t1 = t2 = float(cv2.threshold(np.ascontiguousarray(green[win]), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])
    return t1, t2


def tight_crop_thresholds(green: np.ndarray, win: tuple[slice, slice]) -> tuple[float, float]:
    """:func:`nucleus_thresholds` for a crop cut close around its cell (no red cells, a little glass).

    Its pixels are nucleus, cytoplasm and a little glass: a three-class Otsu
    then splits the chromatin itself (dark clumps from pale chromatin) and
    the nucleus comes out in pieces. The nucleus is instead the darker class
    of a two-class Otsu of the central window (nucleus against the pale
    cytoplasm and glass), and the glass the brighter class of a two-class
    Otsu of the crop's outer ring of 2 pixels, where the glass is (a crop cut
    to the cell's box meets the cell in four short arcs). On the 200 PBC
    lymphocytes cut to their cell's box, the nucleus area is then that of the
    whole crop within 1 % (median).

    Examples
    --------
    >>> import numpy as np
    >>> green = np.full((40, 40), 225, np.uint8)  # glass in the corners
    >>> yy, xx = np.mgrid[:40, :40]
    >>> green[(yy - 20) ** 2 + (xx - 20) ** 2 < 20**2] = 170  # pale cytoplasm filling the crop
    >>> green[(yy - 20) ** 2 + (xx - 20) ** 2 < 14**2] = 70  # the nucleus
    >>> green[(yy - 20) ** 2 + (xx - 20) ** 2 < 5**2] = 40  # a dark chromatin clump
    >>> tight_crop_thresholds(green, (slice(6, 34), slice(6, 34)))
    (70.0, 170.0)
    """
    t1 = float(cv2.threshold(np.ascontiguousarray(green[win]), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])
    ring = np.concatenate([green[:2].ravel(), green[-2:].ravel(), green[2:-2, :2].ravel(), green[2:-2, -2:].ravel()])
    t2 = float(cv2.threshold(np.ascontiguousarray(ring[:, None]), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0])
    return t1, max(t1, t2)


def _central_piece(contours, areas: list[float], min_area: float, cx: float, cy: float) -> int | None:
    """Index of the piece holding the crop centre ``(cx, cy)`` among those of at least ``min_area``,
    else of the one whose centroid is nearest; None when no piece is that large."""
    big = [i for i, a in enumerate(areas) if a >= min_area]
    if not big:
        return None
    inside = [i for i in big if cv2.pointPolygonTest(contours[i], (cx, cy), False) >= 0]
    if inside:
        return inside[0]
    cents = {i: _contour_centroid(contours[i]) for i in big}  # only the big pieces' are needed
    return min(big, key=lambda i: np.hypot(cents[i][0] - cx, cents[i][1] - cy))


@dataclass
class NucleusFound:
    """The nucleus chosen by :func:`find_nucleus`, in the region of interest (ROI) around it.

    Attributes
    ----------
    nucleus, others : ndarray uint8 (0/255), shape of the ROI
        This cell's nucleus (all its lobes for a granulocyte); the nuclei of
        neighbouring cells (not overlapping ``nucleus``).
    roi : tuple of int
        ``(y0, y1, x0, x1)`` of the ROI in the crop: the nucleus' box plus ``roi_margin``.
    n_lobes : int
        Lobes found (1 for a round or notched nucleus).
    is_granulocyte, merged_split : bool
        Several small lobes; two merged nuclei split, the central one kept.
    """

    nucleus: np.ndarray
    others: np.ndarray
    roi: tuple[int, int, int, int]
    n_lobes: int
    is_granulocyte: bool
    merged_split: bool


def dark_pieces(channels, s: SegmentationSettings, tight: bool = False) -> tuple[list, np.ndarray, float]:
    """Outer contours of the dark, purple pieces of a crop (``channels``: its R, G, B uint8 planes).

    Returns the contours, the mask of dark pixels (green ``<= t1``, 0/255) and
    ``t2``, the green threshold above which a pixel is background. ``tight``:
    the crop is cut close around its cell (:func:`tight_crop_thresholds`).

    Examples
    --------
    >>> import cv2, numpy as np
    >>> from lympho_features.segment import SegmentationSettings
    >>> from lympho_features.synthetic import synthetic_crop
    >>> crop = synthetic_crop(np.random.default_rng(0))
    >>> s = SegmentationSettings()
    >>> channels = cv2.split(crop.rgb)
    >>> contours, dark, t2 = dark_pieces(channels, s)
    >>> len(contours), dark.shape, t2
    (1, (224, 224), 203.0)
    """
    red, green, blue = channels
    win = _central_window(green.shape, s.central_fraction)
    t1, t2 = (tight_crop_thresholds if tight else nucleus_thresholds)(green, win)
    dark = cv2.compare(green, t1, cv2.CMP_LE)
    purple = cv2.compare(cv2.subtract(blue, green), s.purple_min, cv2.CMP_GT)
    nuc = cv2.morphologyEx(cv2.bitwise_and(dark, purple), cv2.MORPH_OPEN, _disk(s.open_radius))
    contours, _ = cv2.findContours(nuc, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return contours, dark, t2


def find_nucleus(contours, shape: tuple[int, int], s: SegmentationSettings) -> NucleusFound | None:
    """The nucleus of the cell at the crop centre, from the dark pieces of :func:`dark_pieces`.

    None when no piece is large enough (``no_nucleus``).

    The phases are shown one by one in :mod:`lympho_features.segment.pipeline`.
    """
    h, w = shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    areas = [cv2.contourArea(c) for c in contours]
    chosen = _central_piece(contours, areas, s.min_nucleus_area // 3, cx, cy)
    if chosen is None:
        return None
    roi, nucleus, nb_box, nwin = _nucleus_in_roi(contours, chosen, shape, s)
    candidates, rects = _pieces_near_roi(contours, areas, chosen, roi, s)
    fragments = _lobe_fragments(contours, areas, candidates, rects, roi, nucleus, nb_box, s)
    y0, _, x0, _ = roi
    others = np.zeros(nucleus.shape, np.uint8)
    for i in candidates:
        if i not in fragments and areas[i] >= s.min_nucleus_area:
            cv2.drawContours(others, contours, i, 255, -1, offset=(-x0, -y0))
    found = _resolve_lobes(contours, areas, chosen, fragments, nucleus, others, nwin, roi, (cx, cy), s)
    if cv2.countNonZero(found.nucleus) == 0:
        return None
    found.others = cv2.subtract(found.others, found.nucleus)  # others and not nucleus (0/255, saturating)
    return found


def _nucleus_in_roi(contours, chosen: int, shape: tuple[int, int], s: SegmentationSettings):
    """The region of interest (the chosen nucleus' box plus a margin) and the nucleus drawn and closed in it.

    Returns ``roi`` (``y0, y1, x0, x1``), the nucleus (uint8 0/255, ROI-sized),
    its box grown by the closing (``[x0, y0, x1, y1]`` in the ROI) and the
    window of the ROI where its morphology is computed.
    """
    h, w = shape
    bx, by, bw, bh = cv2.boundingRect(contours[chosen])
    m = s.roi_margin
    y0, y1, x0, x1 = max(0, by - m), min(h, by + bh + m), max(0, bx - m), min(w, bx + bw + m)
    rh, rw = y1 - y0, x1 - x0
    nucleus = np.zeros((rh, rw), np.uint8)
    cv2.drawContours(nucleus, contours, chosen, 255, -1, offset=(-x0, -y0))
    # The nucleus' box in the ROI, grown by what the closing can add: morphology and
    # distances near the nucleus are computed in windows around it (same values as on
    # the whole ROI, whose other pixels are far from it and stay empty).
    nb_box = [
        bx - x0 - s.close_radius,
        by - y0 - s.close_radius,
        bx - x0 + bw + s.close_radius,
        by - y0 + bh + s.close_radius,
    ]
    nwin = _window(nb_box, s.close_radius + s.lobe_erosion + 2, rh, rw)
    # Nuclear pixels lost to the opening's corners or the purple cut are kept by a closing.
    nucleus[nwin] = cv2.morphologyEx(nucleus[nwin], cv2.MORPH_CLOSE, _disk(s.close_radius))
    return (y0, y1, x0, x1), nucleus, nb_box, nwin


def _pieces_near_roi(contours, areas, chosen: int, roi, s: SegmentationSettings) -> tuple[list[int], dict]:
    """Indices of the other pieces (at least a lobe large) whose box meets the ROI, and every such piece's box."""
    y0, y1, x0, x1 = roi
    candidates = []
    rects = {}
    for i in range(len(contours)):
        if i == chosen or areas[i] < s.min_lobe_area:
            continue
        x, y, ww, hh = rects[i] = cv2.boundingRect(contours[i])
        if x + ww >= x0 and x < x1 and y + hh >= y0 and y < y1:
            candidates.append(i)
    return candidates, rects


def _lobe_fragments(contours, areas, candidates, rects, roi, nucleus, nb_box, s: SegmentationSettings) -> list[int]:
    """Separate pieces close to the nucleus and smaller than a nucleus: lobes (granulocyte).

    A lobe close to a lobe counts too (up to three rounds).
    """
    y0, _, x0, _ = roi
    rh, rw = nucleus.shape
    off = (-x0, -y0)
    nb_box = list(nb_box)
    fragments: list[int] = []
    group = nucleus.copy()
    small = [i for i in candidates if areas[i] < s.min_merged_nucleus_area]
    for _ in range(3 if small else 0):
        # Pieces whose box is farther from the group's box than ``lobe_gap`` cannot join it:
        # the chamfer distance is at least 0.955 x the chessboard distance (one step costs
        # 0.955 or more). Without any piece left, no distance map is needed.
        near = [
            i for i in small if i not in fragments and _box_gap(rects[i], x0, y0, nb_box) * 0.955 <= s.lobe_gap + 0.01
        ]
        if not near:
            break
        # Distance to the group, in a window around it wide enough that any pixel outside
        # is farther than ``lobe_gap`` (chamfer distance >= 0.955 x chessboard distance).
        gwin = _window(nb_box, 2 * s.lobe_gap + 2, rh, rw)
        gap = cv2.distanceTransform(cv2.bitwise_not(group[gwin]), cv2.DIST_L2, 3)
        gh_, gw_ = gap.shape
        added = False
        wy, wx = gwin
        for i in near:
            fx, fy, fw, fh = rects[i]
            if (
                i in fragments
                or fx + fw <= wx.start + x0
                or fx >= wx.stop + x0
                or fy + fh <= wy.start + y0
                or fy >= wy.stop + y0
            ):
                continue  # already taken, or wholly outside the window (farther than lobe_gap)
            pts = contours[i].reshape(-1, 2) + np.array((off[0] - gwin[1].start, off[1] - gwin[0].start))
            pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < gw_) & (pts[:, 1] >= 0) & (pts[:, 1] < gh_)]
            if len(pts) and float(gap[pts[:, 1], pts[:, 0]].min()) <= s.lobe_gap:
                fragments.append(i)
                cv2.drawContours(group, contours, i, 255, -1, offset=off)
                nb_box[:] = [
                    min(nb_box[0], fx - x0),
                    min(nb_box[1], fy - y0),
                    max(nb_box[2], fx - x0 + fw),
                    max(nb_box[3], fy - y0 + fh),
                ]
                added = True
        if not added:
            break
    return fragments


def _resolve_lobes(
    contours, areas, chosen, fragments, nucleus, others, nwin, roi, centre, s: SegmentationSettings
) -> NucleusFound:
    """Lobes: a granulocyte (several small lobes) or two merged lymphocyte nuclei (two big ones).

    Two merged nuclei are split and the piece at (or nearest) the crop
    ``centre`` (``cx, cy``) kept, the other joins ``others``; a granulocyte's
    nucleus takes all its lobes.
    """
    y0, _, x0, _ = roi
    off = (-x0, -y0)
    cx, cy = centre
    eroded = cv2.erode(nucleus[nwin], _disk(s.lobe_erosion))  # areas only: the window is enough
    lobe_contours, _ = cv2.findContours(eroded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    n_lobes = sum(cv2.contourArea(c) >= s.min_lobe_area for c in lobe_contours)
    is_granulocyte = merged_split = False
    n_area0 = cv2.countNonZero(nucleus)
    lobe_lab = None
    if n_lobes < 2 and not fragments and n_area0 >= 2 * s.min_merged_nucleus_area:
        hull0 = cv2.contourArea(cv2.convexHull(contours[chosen]))
        if hull0 > 0 and n_area0 / hull0 < s.merged_max_solidity:
            n_split, split_lab = in_window(split_merged, nucleus, nwin, s.min_lobe_area)
            if n_split == 2:
                n_lobes, lobe_lab = n_split, split_lab
    if n_lobes >= 2 or fragments:
        if lobe_lab is None:
            n_lobes, lobe_lab = in_window(split_lobes, nucleus, nwin, s.lobe_erosion, s.min_lobe_area)
        lobe_areas = np.bincount(lobe_lab.ravel(), minlength=n_lobes + 1)[1:].astype(float)
        all_areas = np.concatenate([lobe_areas, [areas[f] for f in fragments]])
        if n_lobes == 2 and not fragments and (lobe_areas >= s.min_merged_nucleus_area).all():
            # Two nuclei merged (touching lymphocytes): keep the piece at (or nearest) the centre.
            dist = []
            for k in (1, 2):
                mk = cv2.moments((lobe_lab == k).astype(np.uint8), binaryImage=True)
                dist.append(np.hypot(mk["m10"] / mk["m00"] - off[0] - cx, mk["m01"] / mk["m00"] - off[1] - cy))
            keep = 1 + int(np.argmin(dist))
            others[lobe_lab == 3 - keep] = 255
            nucleus = np.where(lobe_lab == keep, 255, 0).astype(np.uint8)
            merged_split = True
        elif all_areas.size >= 2 and all_areas.max() < 0.7 * all_areas.sum():
            is_granulocyte = True
            for f in fragments:  # the whole lobulated nucleus
                cv2.drawContours(nucleus, contours, f, 255, -1, offset=off)
    return NucleusFound(nucleus, others, roi, n_lobes, is_granulocyte, merged_split)
