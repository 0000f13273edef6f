"""Phase 2 of the segmentation: the cytoplasm, and the whole cell around the nucleus.

Pale blue cytoplasm absorbs relatively more red than blue light, pink red cells
do not: ``OD_red - OD_blue`` above the median of the crop's red cells (plus a
margin) and stained (OD above the background) is cytoplasm. A cytoplasm too
pale to pass (thin, spread between red cells) is found by its hue instead: blue
chroma ``(OD_red - OD_blue) / OD_sum`` well above the red cells', at a density
below theirs. Only a region of interest around the nucleus is examined.

When the cytoplasm region holds another nucleus, it is split between the two
cells by distance to each nucleus; the cell is kept (flag
``qc_neighbour_split``) unless the cut makes up too much of its outline
(``qc_touching``, reason ``touching_cells``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .morphology import _disk
from .nucleus import NucleusFound
from .optical_density import _masked_mean_u8, _red_cell_reference, background_rgb_fast, od_tables
from .settings import SegmentationSettings


def pale_cytoplasm(
    blueness: np.ndarray, od_sum: np.ndarray, chroma_ref: float, min_od: float, max_od: float, margin: float
) -> np.ndarray:
    """Pixels of faintly stained cytoplasm: a blue hue, however pale (uint8 0/255).

    Some large lymphocytes have a cytoplasm nearly as pale as the glass, so
    thin that only its rims against the red cells reach the stain threshold;
    without this, their outline follows those rims and strands. What sets the
    pale cytoplasm apart is its hue, not its density: the blue chroma
    ``(OD_red - OD_blue) / OD_sum`` (red cells, mauve, sit near
    ``chroma_ref``; cytoplasm, grey-blue, well above). The chroma is smoothed
    (on every other pixel, then a 3x3 Gaussian: JPEG noise at low density);
    pixels fainter than ``min_od`` (the glass) or denser than ``max_od`` (a
    bluish, polychromatic red cell, a platelet) are left out. Isolated specks
    do no harm: the caller keeps only the region connected to the nucleus.

    Examples
    --------
    Two faint halves of the same density, the left one blue (chroma 0.5), the right one not:

    >>> import numpy as np
    >>> od_sum = np.full((20, 20), 0.3, np.float32)
    >>> blueness = np.zeros((20, 20), np.float32)
    >>> blueness[:, :10] = 0.15
    >>> pale = pale_cytoplasm(blueness, od_sum, 0.05, 0.08, 1.0, 0.12)
    >>> int(np.count_nonzero(pale[:, :10])), int(np.count_nonzero(pale[:, 10:]))
    (200, 0)
    """
    faint = cv2.bitwise_and(cv2.compare(od_sum, min_od, cv2.CMP_GT), cv2.compare(od_sum, max_od, cv2.CMP_LT))
    h, w = od_sum.shape
    # On every other pixel (the chroma is smooth): 4x fewer pixels, then back to full size.
    od2 = np.ascontiguousarray(od_sum[::2, ::2])
    chroma = cv2.divide(np.ascontiguousarray(blueness[::2, ::2]), cv2.max(od2, min_od))
    chroma = cv2.GaussianBlur(cv2.copyTo(chroma, np.ascontiguousarray(faint[::2, ::2])), (3, 3), 0)
    pale = cv2.resize(cv2.compare(chroma, chroma_ref + margin, cv2.CMP_GT), (w, h), interpolation=cv2.INTER_NEAREST)
    return cv2.bitwise_and(pale, faint)


def cell_from_region(region: np.ndarray, nucleus: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, bool, float]:
    """The whole cell of ``nucleus`` within the stained ``region`` that holds it.

    Parameters
    ----------
    region : ndarray uint8 (0/255)
        The connected stained region holding the nucleus.
    nucleus, others : ndarray uint8 (0/255)
        This cell's nucleus; the nuclei of neighbouring cells.

    Returns
    -------
    cell : ndarray uint8 (0/255)
        The outline of the region filled, plus the nucleus. When the region also
        holds another nucleus, it is first split between the nuclei, each pixel
        going to the nearest one.
    split : bool
        Whether the region was shared with a neighbour.
    touch_fraction : float
        Share of the cell outline that is a cut through the shared region (0 without a split).

    Examples
    --------
    A stained band holding this nucleus and a neighbour's is split between them:

    >>> import cv2, numpy as np
    >>> region = cv2.rectangle(np.zeros((30, 60), np.uint8), (2, 5), (57, 24), 255, -1)
    >>> nucleus = cv2.circle(np.zeros_like(region), (15, 15), 6, 255, -1)
    >>> neighbour = cv2.circle(np.zeros_like(region), (45, 15), 6, 255, -1)
    >>> cell, split, touch = cell_from_region(region, nucleus, neighbour)
    >>> split, round(touch, 3), int(np.count_nonzero(cell))
    (True, 0.213, 580)
    >>> cell_from_region(region, nucleus, np.zeros_like(region))[1:]
    (False, 0.0)
    """
    split = bool(cv2.countNonZero(cv2.bitwise_and(region, others)))
    if split:
        d_self = cv2.distanceTransform(cv2.bitwise_not(nucleus), cv2.DIST_L2, 3)
        d_other = cv2.distanceTransform(cv2.bitwise_not(others), cv2.DIST_L2, 3)
        mine = cv2.bitwise_and(region, cv2.compare(d_self, d_other, cv2.CMP_LE))
        contours, _ = cv2.findContours(mine, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    else:
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)
    cell = np.zeros(region.shape, np.uint8)
    cv2.drawContours(cell, [outline], 0, 255, -1)
    cell = cv2.bitwise_or(cell, nucleus)
    touch_fraction = 0.0
    if split:
        pts = outline.reshape(-1, 2)
        rest = cv2.dilate(cv2.bitwise_and(region, cv2.bitwise_not(cell)), _disk(1))
        touch_fraction = float(np.count_nonzero(rest[pts[:, 1], pts[:, 0]])) / max(1, len(pts))
    return cell, split, touch_fraction


@dataclass
class CellFound:
    """The whole cell found by :func:`find_cell`, in the nucleus' region of interest.

    Attributes
    ----------
    cell : ndarray uint8 (0/255)
        The cell (nucleus + cytoplasm).
    split : bool
        Whether the stained region was shared with a neighbour and split.
    touch_fraction : float
        Share of the cell outline cut along the neighbour.
    background : ndarray (3,) float32
        RGB reference of the unstained glass.
    od_sum : ndarray float32
        Total optical density of the ROI against ``background``.
    rbc_od : float
        Mean total OD of the crop's red cells (NaN without red cells).
    nucleus_contours : list of ndarray
        Outer contours (all points, ROI coordinates) of the nucleus.
    rbc_chroma : float
        Median blue chroma ``(OD_red - OD_blue) / OD_sum`` of the red cells: the stain's hue
        (0.0 without red cells; kept for the acquisition measurements).
    od_sum_every4 : ndarray float32, optional
        Total OD of every fourth pixel (in each direction) of the whole crop, on which the red-cell
        reference was measured (None for a tight crop, which has none): the cell-type gate reuses it.
    """

    cell: np.ndarray
    split: bool
    touch_fraction: float
    background: np.ndarray
    od_sum: np.ndarray
    rbc_od: float
    nucleus_contours: list
    rbc_chroma: float = math.nan
    od_sum_every4: np.ndarray | None = None


def find_cell(
    rgb: np.ndarray, channels, dark, t2: float, found: NucleusFound, s: SegmentationSettings, tight: bool = False
) -> CellFound:
    """The cell around ``found``'s nucleus: cytoplasm by OD chroma against the red-cell reference.

    ``channels`` are the crop's R, G, B planes, ``dark`` and ``t2`` the dark
    mask and background threshold of :func:`~.nucleus.dark_pieces`; ``tight``:
    the crop is cut close around its cell, so it has no red cells to refer to
    (:func:`cytoplasm_mask`).

    The phases are shown one by one in :mod:`lympho_features.segment.pipeline`.
    """
    green = channels[1]
    # Background: mean colour of the brightest class of the three-class Otsu.
    bright = cv2.compare(green, t2, cv2.CMP_GT)
    bg = _masked_mean_u8(rgb, bright) if cv2.countNonZero(bright) > 50 else background_rgb_fast(rgb)
    cyto, od_sum, rbc_od, rbc_chroma, od_sum_every4 = _cytoplasm_mask(channels, found.roi, dark, bg, s, tight)
    nucleus = found.nucleus
    cyto = cv2.bitwise_or(cyto, cv2.bitwise_or(nucleus, found.others))
    cyto = cv2.morphologyEx(cyto, cv2.MORPH_OPEN, _disk(1))
    cyto = cv2.morphologyEx(cyto, cv2.MORPH_CLOSE, _disk(s.close_radius))
    cyto = cv2.bitwise_or(cyto, nucleus)
    # The connected region holding the nucleus (flood fill from one of its pixels).
    ncont, _ = cv2.findContours(nucleus, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    seed_x, seed_y = ncont[0][0, 0].tolist()
    rh, rw = nucleus.shape
    comp = np.zeros((rh + 2, rw + 2), np.uint8)
    # Mask only: the image is not written to (no copy needed).
    cv2.floodFill(cyto, comp, (seed_x, seed_y), 128, flags=8 | (255 << 8) | cv2.FLOODFILL_MASK_ONLY)
    comp = comp[1:-1, 1:-1]
    cell, split, touch_fraction = cell_from_region(comp, nucleus, found.others)
    return CellFound(cell, split, touch_fraction, bg, od_sum, rbc_od, ncont, rbc_chroma, od_sum_every4)


def cytoplasm_mask(
    channels, roi, dark, bg, s: SegmentationSettings, tight: bool = False
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Stained cytoplasm pixels of the ROI (uint8 0/255), the ROI's total OD, the red cells' mean OD and median chroma.

    Stained and bluer than the red cells (``OD_red - OD_blue`` and, unless
    ``cytoplasm_chroma_margin`` is None, blue chroma), or pale but of a blue
    hue (:func:`pale_cytoplasm`). With ``tight`` (a crop cut close around its
    cell) the crop's stained pixels are this cell's own cytoplasm, not red
    cells: no reference is taken from them (as in a crop without red cells;
    the red cells' OD and chroma are NaN).

    The phases are shown one by one in :mod:`lympho_features.segment.pipeline`.
    """
    return _cytoplasm_mask(channels, roi, dark, bg, s, tight)[:4]


def _cytoplasm_mask(channels, roi, dark, bg, s: SegmentationSettings, tight: bool = False):
    """:func:`cytoplasm_mask`, and the total OD of every fourth pixel of the crop (None with ``tight``)."""
    red, green, blue = channels
    y0, y1, x0, x1 = roi
    # OD channels of the ROI (table look-ups on views of the channels: no copy, no split).
    tables = od_tables(bg)
    od_r, od_g, od_b = (cv2.LUT(ch[y0:y1, x0:x1], t) for ch, t in zip((red, green, blue), tables, strict=True))
    od_sum = cv2.add(cv2.add(od_r, od_g), od_b)
    blueness = cv2.subtract(od_r, od_b)  # OD_red - OD_blue: positive for blue cytoplasm
    stained = cv2.compare(od_sum, s.od_background, cv2.CMP_GT)
    # The red-cell reference, on every fourth pixel of the whole crop.
    if tight:
        ref, rbc_od, chroma_ref, od_sum_every4 = 0.0, math.nan, math.nan, None
    else:
        sub = [cv2.LUT(np.ascontiguousarray(ch[::4, ::4]), t) for ch, t in zip((red, green, blue), tables, strict=True)]
        od_sum_every4 = cv2.add(cv2.add(sub[0], sub[1]), sub[2])  # as _red_cell_reference adds them
        ref, rbc_od, chroma_ref = _red_cell_reference(*sub, dark, s.od_background, od_sum=od_sum_every4)
    # Without red cells the "reference" is the cytoplasm itself: cap it above any red cell's.
    ref = min(ref, s.max_rbc_blueness)
    cyto = cv2.bitwise_and(stained, cv2.compare(blueness, ref + s.cytoplasm_margin, cv2.CMP_GT))
    if math.isfinite(rbc_od):  # without red cells, no hue to compare with: stained cytoplasm only
        if s.cytoplasm_chroma_margin is not None:
            # Hue as well as blueness: OD_red - OD_blue grows with density, so the thick rims of red cells and
            # the overlap of two red cells passed the blueness test and the outline leaked into them as
            # crescents and strands; their chroma (OD_red - OD_blue) / OD_sum stays a red cell's at any density.
            chroma = cv2.divide(blueness, cv2.max(od_sum, s.od_background))
            cyto = cv2.bitwise_and(cyto, cv2.compare(chroma, chroma_ref + s.cytoplasm_chroma_margin, cv2.CMP_GT))
        pale = pale_cytoplasm(
            blueness, od_sum, chroma_ref, s.pale_min_od, s.pale_max_rbc_od * rbc_od, s.pale_chroma_margin
        )
        cyto = cv2.bitwise_or(cyto, pale)
    return cyto, od_sum, rbc_od, chroma_ref, od_sum_every4
