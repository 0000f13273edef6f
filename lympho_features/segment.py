"""Segmentation of the central lymphocyte of a blood-smear crop.

Each crop of the challenge layout is centred on one lymphocyte surrounded by
red blood cells on a pale background. :func:`segment_cell` returns the mask of
its nucleus and of the whole cell (nucleus + cytoplasm), quality-control flags
and a cell-type guess, and never raises on image content: a crop it cannot
segment comes back with ``qc_ok=False`` and a named reason, so a long
extraction never stops on one odd cell.

How (measured on the shared data):

* **Background reference.** The brightest pixels of the crop (95th percentile
  per channel) are the unstained glass; optical density (OD) is measured
  against them, ``OD_c = log(I_ref,c / I_c)``, so stain and scanner variation
  move the thresholds less.
* **Nucleus.** The nucleus is the darkest class of the green channel: a
  three-class Otsu (nucleus / red cells and cytoplasm / background) on the
  central window gives the cut; a purple-hue condition (blue well above
  green) removes dark debris. The component at (or nearest to) the crop
  centre is the lymphocyte's nucleus. Two nuclei merged into one component
  are split at their neck; a nucleus made of several small lobes is a
  granulocyte.
* **Cytoplasm.** Pale blue cytoplasm absorbs relatively more red than blue
  light, pink red cells do not: ``OD_red - OD_blue`` above the median of the
  crop's red cells (plus a margin) and stained (OD above the background) is
  cytoplasm. A cytoplasm too pale to pass (thin, spread between red cells) is
  found by its hue instead: blue chroma ``(OD_red - OD_blue) / OD_sum`` well
  above the red cells', at a density below theirs. Only a region of interest
  around the nucleus is examined.
* **Touching neighbour.** When the cytoplasm region holds another nucleus, it
  is split between the two cells by distance to each nucleus; the cell is
  kept (flag ``qc_neighbour_split``) unless the cut makes up too much of its
  outline (``qc_touching``, reason ``touching_cells``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

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

#: Every boolean flag of :attr:`Segmentation.flags`, with its meaning.
FLAG_DESCRIPTIONS = {
    "qc_off_centre": "nucleus centre far from the crop centre: probably not the cell the crop was taken for",
    "qc_at_border": "nucleus touches the crop border: cut",
    "qc_too_small": "nucleus smaller than any lymphocyte's (debris, platelet clump)",
    "qc_too_large": "nucleus larger than any lymphocyte's (clump of cells)",
    "qc_touching": "another cell touches this one over much of its outline: outline unreliable",
    "qc_neighbour_split": "a touching neighbour was split off along a short cut (cell kept)",
    "is_pyknotic": "small, very dense, structureless nucleus (nucleated red cell or dying cell)",
    "is_granulocyte": "nucleus of several lobes joined by thin strands (neutrophil, eosinophil)",
    "is_monocyte": "large cell with a folded nucleus and abundant grey cytoplasm",
    "is_not_lymphocyte": "granulocyte, monocyte or pyknotic cell",
    "is_smudge": "smudge (broken) cell: pale, spread nucleus without cytoplasm",
    "qc_blur": "nucleus out of focus",
}

#: The checks behind each QC reason, in the order of :data:`QC_REASONS` (the first failed one is reported).
_QC_ORDER = (
    ("nucleus_off_centre", "qc_off_centre"),
    ("nucleus_at_border", "qc_at_border"),
    ("nucleus_too_small", "qc_too_small"),
    ("nucleus_too_large", "qc_too_large"),
    ("touching_cells", "qc_touching"),
    ("not_lymphocyte", "is_not_lymphocyte"),
    ("smudge", "is_smudge"),
    ("blur", "qc_blur"),
)

_OD_LUT = np.log(256.0 / (np.arange(256, dtype=np.float32) + 1.0)).astype(np.float32)


@dataclass(frozen=True)
class SegmentationSettings:
    """All tunable parameters of the segmentation, in one place.

    Distances and areas are for the 224x224 challenge crops; they scale with
    the crop size (see :meth:`scaled`).
    """

    central_fraction: float = 0.7  #: side of the central window used for thresholds
    min_nucleus_area: int = 300
    max_nucleus_area: int = 14000
    max_centre_offset: float = 0.22  #: nucleus centroid offset, as a fraction of crop side
    purple_min: int = 25  #: nucleus pixels have blue - green above this (uint8 levels)
    od_background: float = 0.15  #: OD sum above the background reference that counts as stained
    cytoplasm_margin: float = 0.08  #: how far above the red-cell reference cytoplasm sits
    max_rbc_blueness: float = 0.22  #: cap of the red-cell reference (real crops: 0.04 to 0.21)
    pale_min_od: float = 0.08  #: OD sum above the background of the faintest (pale) cytoplasm counted
    pale_chroma_margin: float = 0.12  #: how far above the red cells' blue chroma pale cytoplasm sits
    pale_max_rbc_od: float = 1.0  #: pale cytoplasm is less dense than this times the red cells' mean OD
    #: cytoplasm's blue chroma sits this far above the red cells' (None: no hue test for stained cytoplasm)
    cytoplasm_chroma_margin: float | None = 0.05
    roi_margin: int = 56  #: pixels around the nucleus box examined for cytoplasm
    max_touch_fraction: float = 0.3  #: cut along a neighbour, as a fraction of the cell outline
    lobe_erosion: int = 4  #: erosion radius that separates granulocyte lobes (thin strands)
    min_lobe_area: int = 40  #: smallest area of a lobe after erosion
    min_merged_nucleus_area: int = 1000  #: each of two merged nuclei is at least this large (else: lobes)
    lobulated_max_solidity: float = 0.85  #: a nucleus less solid than this is checked for thick-stranded lobes
    lobe_erosion_fraction: float = 0.14  #: ... by an erosion of this fraction of its equivalent diameter
    merged_max_solidity: float = 0.9  #: a large nucleus less solid than this may be two merged nuclei
    lobe_gap: int = 12  #: separate pieces this close to the nucleus may be its lobes
    blur_threshold: float = 1.0  #: std of the Laplacian of nucleus OD over its std below this is blur
    smudge_max_od: float = 2.4  #: mean nucleus OD (above background) below this looks washed out
    smudge_max_cytoplasm: float = 0.15  #: ... and cytoplasm below this fraction of the cell
    pyknotic_min_od: float = 3.9  #: a nucleus denser than this and structureless (OD std
    pyknotic_max_od_sd: float = 0.38  #: below this) is pyknotic: nucleated red cell or dying cell
    monocyte_min_diameter: float = 100.0  #: cell equivalent diameter above which a folded nucleus is a monocyte
    monocyte_max_solidity: float = 0.88
    open_radius: int = 2
    close_radius: int = 3

    def scaled(self, side: int) -> SegmentationSettings:
        """Return settings whose lengths and areas are rescaled from a 224-pixel crop to ``side``."""
        if side == 224:
            return self
        k = side / 224.0
        d = dict(self.__dict__)
        for a in ("min_nucleus_area", "max_nucleus_area", "min_lobe_area", "min_merged_nucleus_area"):
            d[a] = max(4, int(round(getattr(self, a) * k * k)))
        d["roi_margin"] = max(8, int(round(self.roi_margin * k)))
        d["lobe_gap"] = max(2, int(round(self.lobe_gap * k)))
        d["lobe_erosion"] = max(1, int(round(self.lobe_erosion * k)))
        d["monocyte_min_diameter"] = self.monocyte_min_diameter * k
        d["open_radius"] = max(1, int(round(self.open_radius * k)))
        d["close_radius"] = max(1, int(round(self.close_radius * k)))
        return SegmentationSettings(**d)


_DEFAULT_SETTINGS = SegmentationSettings()


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


@lru_cache(maxsize=64)
def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary mask (uint8 0/255) by flood-filling the outside."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    cv2.floodFill(padded, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 128)
    return np.where(padded[1:-1, 1:-1] == 128, 0, 255).astype(np.uint8)


def _reference_od(reference) -> np.ndarray:
    """OD of an RGB reference: ``_OD_LUT`` at its values rounded half to even and clipped to 0..255."""
    vals = np.asarray(reference, np.float32).tolist()
    if all(math.isfinite(v) for v in vals):  # plain Python on 3 numbers: np.clip/np.rint cost more
        return _OD_LUT[[min(255, max(0, round(v))) for v in vals]]
    return _OD_LUT[np.clip(np.rint(np.asarray(reference, np.float32)), 0, 255).astype(np.uint8)]


def optical_density(rgb: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Optical density per channel, float32.

    ``log(256 / (I + 1))``, minus that of ``reference`` (an RGB triple, e.g. the
    background from :func:`background_rgb`) when given: 0 on unstained glass,
    positive where the stain absorbs.
    """
    rgb = np.ascontiguousarray(rgb)
    if reference is None:
        return cv2.LUT(rgb, _OD_LUT)
    ref = _reference_od(reference)
    # One table per channel: the same values as :func:`optical_density_channels`, merged.
    return cv2.LUT(rgb, np.stack([_OD_LUT - ref[c] for c in range(3)], axis=-1)[None])


def optical_density_channels(rgb: np.ndarray, reference: np.ndarray) -> list[np.ndarray]:
    """:func:`optical_density` against ``reference``, as three single-channel float32 images (R, G, B)."""
    rgb = np.ascontiguousarray(rgb)
    return [cv2.LUT(ch, t) for ch, t in zip(cv2.split(rgb), od_tables(reference), strict=True)]


def od_tables(reference) -> list[np.ndarray]:
    """The three float32 tables (R, G, B) of :func:`optical_density_channels`: OD of each level minus the reference's."""
    # One subtraction for the three (float32 table minus float32 value, as per channel).
    return list(_OD_LUT[None, :] - _reference_od(reference)[:, None])


def background_rgb(rgb: np.ndarray, percentile: float = 95.0) -> np.ndarray:
    """RGB of the unstained background: a high percentile of each channel (subsampled)."""
    sample = rgb[::3, ::3].reshape(-1, 3)
    return np.percentile(sample, percentile, axis=0).astype(np.float32)


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
    """
    step = 256 // bins
    hist = cv2.calcHist([np.ascontiguousarray(values)], [0], None, [bins], [0, 256]).ravel().astype(np.float64)
    if hist.sum() <= 0:
        return 0.0, 0.0
    i, j = _multi_otsu3_bins(hist)
    return float((i + 1) * step - 1), float((j + 1) * step - 1)


def _central_window(shape: tuple[int, int], fraction: float) -> tuple[slice, slice]:
    h, w = shape
    dh, dw = int(h * (1 - fraction) / 2), int(w * (1 - fraction) / 2)
    return slice(dh, h - dh), slice(dw, w - dw)


def _empty(shape: tuple[int, int], reason: str) -> Segmentation:
    z = np.zeros(shape, bool)
    flags = dict.fromkeys(FLAG_DESCRIPTIONS, False)
    return Segmentation(z, z.copy(), False, reason, flags)


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
    """
    return _split_by_seeds(nucleus, cv2.erode(nucleus, _disk(erosion)), min_area)


def split_merged(nucleus: np.ndarray, min_area: int, level: float = 0.55) -> tuple[int, np.ndarray]:
    """Pieces of a nucleus made of two round nuclei pressed together (a wide neck).

    The cores of the pieces are where the distance to the outline exceeds
    ``level`` times its maximum; every pixel goes to its nearest core.
    Returns ``(n_pieces, labels)`` as :func:`split_lobes`.
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


def _hist_quantile(hist: np.ndarray, q: float, lo: float, hi: float) -> float:
    """Quantile ``q`` of values whose histogram over ``[lo, hi)`` is ``hist``."""
    c = np.cumsum(hist.ravel())
    if c[-1] <= 0:
        return float("nan")
    k = int(np.searchsorted(c, q * c[-1]))
    return lo + (k + 0.5) * (hi - lo) / len(c)


def background_rgb_fast(rgb: np.ndarray, q: float = 0.95) -> np.ndarray:
    """Like :func:`background_rgb` (quantile ``q`` per channel), from OpenCV histograms."""
    sub = np.ascontiguousarray(rgb[::3, ::3])
    return np.array(
        [_hist_quantile(cv2.calcHist([sub], [c], None, [256], [0, 256]), q, 0, 256) - 0.5 for c in range(3)],
        np.float32,
    )


def _subsample(rgb: np.ndarray, k: int) -> np.ndarray:
    """``rgb[::k, ::k]`` as a contiguous array, copied pixel by pixel (3 bytes at once), 3x faster."""
    rgb = np.ascontiguousarray(rgb)
    return np.ascontiguousarray(rgb.view(f"V{rgb.shape[2]}")[::k, ::k]).view(np.uint8)


def red_cell_reference(
    rgb: np.ndarray, background: np.ndarray, dark: np.ndarray, od_background: float
) -> tuple[float, float]:
    """Median ``OD_red - OD_blue`` and mean OD of the crop's stained, non-nuclear pixels (mostly red cells).

    Computed on every fourth pixel (in each direction) of the whole crop, where red cells
    outnumber any cytoplasm, so a large lymphocyte does not bias it. Returns
    ``(0.0, nan)`` when the crop has almost no stained pixel.
    """
    sub = _subsample(rgb, 4)
    od_r, od_g, od_b = optical_density_channels(sub, background)
    return _red_cell_reference(od_r, od_g, od_b, dark, od_background)[:2]


def _red_cell_reference(
    od_r: np.ndarray, od_g: np.ndarray, od_b: np.ndarray, dark: np.ndarray, od_background: float
) -> tuple[float, float, float]:
    """:func:`red_cell_reference` from the OD channels of the crop's every fourth pixel.

    Also returns the median blue chroma ``(OD_red - OD_blue) / OD_sum`` of the
    same pixels (0.0 when too few are stained): the hue of the red cells,
    whatever their density.
    """
    od_sum = cv2.add(cv2.add(od_r, od_g), od_b)
    stained = cv2.compare(od_sum, od_background, cv2.CMP_GT)
    stained = cv2.bitwise_and(stained, cv2.bitwise_not(np.ascontiguousarray(dark[::4, ::4])))
    if cv2.countNonZero(stained) < 10:
        return 0.0, float("nan"), 0.0
    blueness = cv2.subtract(od_r, od_b)
    med = _hist_quantile(cv2.calcHist([blueness], [0], stained, [200], [-1.0, 1.0]), 0.5, -1.0, 1.0)
    # Stained pixels have od_sum > od_background > 0: the ratio is defined where it is counted.
    chroma = cv2.divide(blueness, cv2.max(od_sum, od_background))
    chroma_med = _hist_quantile(cv2.calcHist([chroma], [0], stained, [200], [-1.0, 1.0]), 0.5, -1.0, 1.0)
    return med, float(cv2.mean(od_sum, mask=stained)[0]), chroma_med


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
    """
    faint = cv2.bitwise_and(cv2.compare(od_sum, min_od, cv2.CMP_GT), cv2.compare(od_sum, max_od, cv2.CMP_LT))
    h, w = od_sum.shape
    # On every other pixel (the chroma is smooth): 4x fewer pixels, then back to full size.
    od2 = np.ascontiguousarray(od_sum[::2, ::2])
    chroma = cv2.divide(np.ascontiguousarray(blueness[::2, ::2]), cv2.max(od2, min_od))
    chroma = cv2.GaussianBlur(cv2.copyTo(chroma, np.ascontiguousarray(faint[::2, ::2])), (3, 3), 0)
    pale = cv2.resize(cv2.compare(chroma, chroma_ref + margin, cv2.CMP_GT), (w, h), interpolation=cv2.INTER_NEAREST)
    return cv2.bitwise_and(pale, faint)


def _window(box: list[int], margin: int, h: int, w: int) -> tuple[slice, slice]:
    """Slices of ``box`` = ``[x0, y0, x1, y1]`` grown by ``margin``, clipped to an ``h`` x ``w`` image."""
    return (
        slice(max(0, box[1] - margin), min(h, box[3] + margin)),
        slice(max(0, box[0] - margin), min(w, box[2] + margin)),
    )


def _masked_mean_u8(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``cv2.mean(img, mask)`` of a uint8 image as float32 (the first three channels), without a masked reduction.

    The sums of uint8 pixels are exact integers whichever way they are added, and
    OpenCV scales them by ``1 / count`` as here; masked reductions are several
    times slower than copying the masked pixels onto zeros and summing all.
    """
    n = cv2.countNonZero(mask)
    scale = 1.0 / n if n else 0.0
    sums = cv2.sumElems(cv2.copyTo(img, mask))
    return np.array([v * scale for v in sums[:3]], np.float32)


def _in_window(split, nucleus: np.ndarray, win: tuple[slice, slice], *args) -> tuple[int, np.ndarray]:
    """``split(nucleus, *args)`` (:func:`split_lobes`, :func:`split_merged`) computed in ``win`` only.

    ``win`` holds the nucleus with a margin wider than any erosion used, so the
    erosions, distance maps and components are those of the whole image: the
    labels are pasted back into an image of the nucleus' size.
    """
    n, lab = split(np.ascontiguousarray(nucleus[win]), *args)
    out = np.zeros(nucleus.shape, np.int32)
    out[win] = lab
    return n, out


def _box_gap(rect: tuple[int, int, int, int], x0: int, y0: int, box: list[int]) -> int:
    """Chessboard distance between the pixels of ``rect`` (``x, y, w, h`` in the crop) and ``box``.

    ``box`` is ``[x0, y0, x1, y1]`` in the ROI whose origin is ``(x0, y0)`` in the crop,
    taken as inclusive of ``x1`` and ``y1`` (a lower bound of the distance to any pixel in it).
    """
    fx, fy, fw, fh = rect
    px0, py0 = fx - x0, fy - y0
    gx = max(0, px0 - box[2], box[0] - (px0 + fw - 1))
    gy = max(0, py0 - box[3], box[1] - (py0 + fh - 1))
    return max(gx, gy)


def _contour_centroid(c: np.ndarray) -> tuple[float, float]:
    m = cv2.moments(c)
    if m["m00"] > 0:
        return m["m10"] / m["m00"], m["m01"] / m["m00"]
    x, y = c.reshape(-1, 2).mean(0)
    return float(x), float(y)


def nucleus_thresholds(green: np.ndarray, win: tuple[slice, slice]) -> tuple[float, float]:
    """The two thresholds of the green channel that split a crop into nuclei, cells and background.

    A three-class Otsu (:func:`multi_otsu3`) over the central window ``win``
    of ``green`` (uint8), on every other pixel (the same histogram, 4x fewer
    pixels). Without three distinct classes (no red cells, or a blank crop:
    thresholds closer than 12 grey levels, or a class under 0.5 % of the
    pixels) both thresholds are the two-class Otsu threshold. A value ``<= t1``
    is nuclear; ``> t2`` is background.
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
    s = (settings or _DEFAULT_SETTINGS).scaled(side)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    rgb = np.ascontiguousarray(rgb)

    # --- nucleus: darkest class of green, purple hue ----------------------
    red, green, blue = cv2.split(rgb)
    win = _central_window((h, w), s.central_fraction)
    t1, t2 = nucleus_thresholds(green, win)
    dark = cv2.compare(green, t1, cv2.CMP_LE)
    purple = cv2.compare(cv2.subtract(blue, green), s.purple_min, cv2.CMP_GT)
    nuc = cv2.morphologyEx(cv2.bitwise_and(dark, purple), cv2.MORPH_OPEN, _disk(s.open_radius))
    contours, _ = cv2.findContours(nuc, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return _empty((h, w), "no_nucleus")
    areas = [cv2.contourArea(c) for c in contours]
    chosen = _central_piece(contours, areas, s.min_nucleus_area // 3, cx, cy)
    if chosen is None:
        return _empty((h, w), "no_nucleus")

    # Region of interest: the chosen nucleus' box plus a margin.
    bx, by, bw, bh = cv2.boundingRect(contours[chosen])
    m = s.roi_margin
    y0, y1, x0, x1 = max(0, by - m), min(h, by + bh + m), max(0, bx - m), min(w, bx + bw + m)
    rh, rw = y1 - y0, x1 - x0
    off = (-x0, -y0)
    nucleus = np.zeros((rh, rw), np.uint8)
    cv2.drawContours(nucleus, contours, chosen, 255, -1, offset=off)
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
    others = np.zeros((rh, rw), np.uint8)
    candidates = []
    rects = {}
    for i in range(len(contours)):
        if i == chosen or areas[i] < s.min_lobe_area:
            continue
        x, y, ww, hh = rects[i] = cv2.boundingRect(contours[i])
        if x + ww >= x0 and x < x1 and y + hh >= y0 and y < y1:
            candidates.append(i)
    # Separate pieces close to the nucleus and smaller than a nucleus are lobes (granulocyte);
    # a lobe close to a lobe counts too.
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
                nb_box = [
                    min(nb_box[0], fx - x0),
                    min(nb_box[1], fy - y0),
                    max(nb_box[2], fx - x0 + fw),
                    max(nb_box[3], fy - y0 + fh),
                ]
                added = True
        if not added:
            break
    for i in candidates:
        if i not in fragments and areas[i] >= s.min_nucleus_area:
            cv2.drawContours(others, contours, i, 255, -1, offset=off)

    # Lobes: granulocyte (several small lobes) or two merged lymphocyte nuclei (two big ones).
    eroded = cv2.erode(nucleus[nwin], _disk(s.lobe_erosion))  # areas only: the window is enough
    lobe_contours, _ = cv2.findContours(eroded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    n_lobes = sum(cv2.contourArea(c) >= s.min_lobe_area for c in lobe_contours)
    is_granulocyte = merged_split = False
    n_area0 = cv2.countNonZero(nucleus)
    lobe_lab = None
    if n_lobes < 2 and not fragments and n_area0 >= 2 * s.min_merged_nucleus_area:
        hull0 = cv2.contourArea(cv2.convexHull(contours[chosen]))
        if hull0 > 0 and n_area0 / hull0 < s.merged_max_solidity:
            n_split, split_lab = _in_window(split_merged, nucleus, nwin, s.min_lobe_area)
            if n_split == 2:
                n_lobes, lobe_lab = n_split, split_lab
    if n_lobes >= 2 or fragments:
        if lobe_lab is None:
            n_lobes, lobe_lab = _in_window(split_lobes, nucleus, nwin, s.lobe_erosion, s.min_lobe_area)
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
    n_area = cv2.countNonZero(nucleus)
    if n_area == 0:
        return _empty((h, w), "no_nucleus")
    others = cv2.subtract(others, nucleus)  # others and not nucleus (0/255, saturating)

    # --- cytoplasm: OD chroma against the red-cell reference -------------
    # Background: mean colour of the brightest class of the three-class Otsu.
    bright = cv2.compare(green, t2, cv2.CMP_GT)
    bg = _masked_mean_u8(rgb, bright) if cv2.countNonZero(bright) > 50 else background_rgb_fast(rgb)
    # OD channels of the ROI (table look-ups on views of the channels: no copy, no split).
    tables = od_tables(bg)
    od_r, od_g, od_b = (cv2.LUT(ch[y0:y1, x0:x1], t) for ch, t in zip((red, green, blue), tables, strict=True))
    od_sum = cv2.add(cv2.add(od_r, od_g), od_b)
    blueness = cv2.subtract(od_r, od_b)  # OD_red - OD_blue: positive for blue cytoplasm
    stained = cv2.compare(od_sum, s.od_background, cv2.CMP_GT)
    # The red-cell reference, on every fourth pixel of the whole crop.
    ref, rbc_od, chroma_ref = _red_cell_reference(
        *(cv2.LUT(np.ascontiguousarray(ch[::4, ::4]), t) for ch, t in zip((red, green, blue), tables, strict=True)),
        dark,
        s.od_background,
    )
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
    cyto = cv2.bitwise_or(cyto, cv2.bitwise_or(nucleus, others))
    cyto = cv2.morphologyEx(cyto, cv2.MORPH_OPEN, _disk(1))
    cyto = cv2.morphologyEx(cyto, cv2.MORPH_CLOSE, _disk(s.close_radius))
    cyto = cv2.bitwise_or(cyto, nucleus)
    # The connected region holding the nucleus (flood fill from one of its pixels).
    ncont, _ = cv2.findContours(nucleus, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    seed_x, seed_y = ncont[0][0, 0].tolist()
    comp = np.zeros((rh + 2, rw + 2), np.uint8)
    # Mask only: the image is not written to (no copy needed).
    cv2.floodFill(cyto, comp, (seed_x, seed_y), 128, flags=8 | (255 << 8) | cv2.FLOODFILL_MASK_ONLY)
    comp = comp[1:-1, 1:-1]
    cell, split, touch_fraction = cell_from_region(comp, nucleus, others)

    nucleus_mask = np.zeros((h, w), bool)
    cell_mask = np.zeros((h, w), bool)
    np.greater(nucleus, 0, out=nucleus_mask[y0:y1, x0:x1])
    np.greater(cell, 0, out=cell_mask[y0:y1, x0:x1])

    # --- quality control ---------------------------------------------------
    flags = dict.fromkeys(FLAG_DESCRIPTIONS, False)
    nbx, nby, nbw, nbh = cv2.boundingRect(nucleus)
    nb = (slice(nby, nby + nbh), slice(nbx, nbx + nbw))  # the nucleus' own box
    mom = cv2.moments(nucleus[nb], binaryImage=True)  # on its box: same centroid, fewer pixels
    ncy, ncx = mom["m01"] / mom["m00"] + nby + y0, mom["m10"] / mom["m00"] + nbx + x0
    # The same raw moments in crop coordinates (integer sums: exact after the shift).
    ox, oy = nbx + x0, nby + y0
    m00, m10, m01 = mom["m00"], mom["m10"], mom["m01"]
    nucleus_moments = (
        m00,
        m10 + ox * m00,
        m01 + oy * m00,
        mom["m20"] + 2 * ox * m10 + ox * ox * m00,
        mom["m11"] + oy * m10 + ox * m01 + ox * oy * m00,
        mom["m02"] + 2 * oy * m01 + oy * oy * m00,
    )
    flags["qc_off_centre"] = float(np.hypot(ncy - cy, ncx - cx)) / side > s.max_centre_offset
    flags["qc_at_border"] = bool(nbx + x0 == 0 or nby + y0 == 0 or nbx + nbw + x0 >= w or nby + nbh + y0 >= h)
    flags["qc_too_small"] = n_area < s.min_nucleus_area
    flags["qc_too_large"] = n_area > s.max_nucleus_area
    flags["qc_neighbour_split"] = split or merged_split
    flags["qc_touching"] = touch_fraction > s.max_touch_fraction
    c_area = cv2.countNonZero(cell)
    hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(ncont))) if ncont else 0.0
    solidity = n_area / hull_area if hull_area > 0 else 1.0
    cell_diameter = float(np.sqrt(4 * c_area / np.pi))
    if not is_granulocyte and not merged_split and solidity < s.lobulated_max_solidity:
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
    nucleus_od, nucleus_od_sd = (float(v[0, 0]) for v in cv2.meanStdDev(od_sum[nb], mask=nucleus[nb]))
    lap = cv2.Laplacian(od_sum[nb], cv2.CV_32F, ksize=1)
    inner = cv2.erode(nucleus[nb], _disk(2))
    if cv2.countNonZero(inner) < 20:
        inner = np.ascontiguousarray(nucleus[nb])
    # Sharpness: fine (Laplacian) over overall variation of the chromatin, so it
    # does not depend on how contrasted the chromatin is.
    sharp = float(cv2.meanStdDev(lap, mask=inner)[1][0, 0]) / max(nucleus_od_sd, 1e-3)
    dense = nucleus_od > s.pyknotic_min_od
    flags["is_pyknotic"] = dense and nucleus_od_sd < s.pyknotic_max_od_sd
    flags["is_not_lymphocyte"] = flags["is_granulocyte"] or flags["is_monocyte"] or flags["is_pyknotic"]
    flags["is_smudge"] = nucleus_od < s.smudge_max_od and (c_area - n_area) < s.smudge_max_cytoplasm * c_area
    flags["qc_blur"] = sharp < s.blur_threshold and not dense

    flags = {k: bool(v) for k, v in flags.items()}
    reason = next((r for r, k in _QC_ORDER if flags[k]), "ok")
    # Box of the whole cell (for the features), with a 2-pixel margin.
    cbx, cby, cbw, cbh = cv2.boundingRect(cell)
    box = (max(0, cby + y0 - 2), min(h, cby + cbh + y0 + 2), max(0, cbx + x0 - 2), min(w, cbx + cbw + x0 + 2))
    diagnostics = {
        "nucleus_od": nucleus_od,
        "nucleus_od_sd": nucleus_od_sd,
        "sharpness": sharp,
        "touch_fraction": touch_fraction,
        "solidity": solidity,
        "n_lobes": float(n_lobes),
        "cell_diameter": cell_diameter,
        "rbc_od": rbc_od,
        "rbc_chroma": chroma_ref,
    }
    largest = ncont[0] if len(ncont) == 1 else max(ncont, key=cv2.contourArea)
    return Segmentation(
        nucleus_mask,
        cell_mask,
        reason == "ok",
        reason,
        flags,
        box,
        bg,
        diagnostics,
        (y0, y1, x0, x1),
        od_sum,
        largest + np.array((x0, y0), np.int32),
        nucleus_moments,
    )
