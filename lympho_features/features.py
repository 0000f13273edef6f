"""Per-cell measurements, grouped in families named as pyradiomics does.

Every feature is a column named ``family_feature`` (``shape_nucleus_area``,
``haralick_contrast_d1``, ``color_nucleus_od_red_mean``...), apart from the
few contract names every downstream tool relies on: ``nucleus_area``,
``cell_area`` and ``nc_ratio``. :func:`cell_features` computes all families
for one segmented crop; each family is a small pure function on arrays that
can be used on its own. ``docs/features.md`` explains each family to a
clinician; :func:`describe_feature` gives the plain-language meaning of one
column.

Families: ``shape_`` (size, outline, Fourier irregularity, notches),
``nc_`` (nucleus vs cytoplasm), ``haralick_`` (13 texture features at two
distances), ``lbp_`` (local binary patterns), ``granularity_`` (size of
chromatin clumps), ``radial_`` (chromatin from rim to centre),
``nucleoli_`` (pale spots), ``color_`` (optical density against the crop's
background and red cells).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import cv2
import numpy as np

from .segment import (
    FLAG_DESCRIPTIONS,
    Segmentation,
    _disk,
    background_rgb_fast,
    optical_density,
    optical_density_channels,
)

HARALICK_NAMES = (
    "asm",
    "contrast",
    "correlation",
    "sum_of_squares",
    "idm",
    "sum_average",
    "sum_variance",
    "sum_entropy",
    "entropy",
    "difference_variance",
    "difference_entropy",
    "imc1",
    "imc2",
)

SHAPE_NAMES = (
    "area",
    "perimeter",
    "equivalent_diameter",
    "major_axis",
    "minor_axis",
    "eccentricity",
    "solidity",
    "convexity",
    "circularity",
    "feret_max",
    "feret_min",
    "fourier_low",
    "fourier_high",
    "notch_depth",
    "curvature_std",
)

#: Uniform local-binary-pattern bins: 0..8 set neighbours (uniform patterns), 9 non-uniform.
LBP_BINS = 10
GRANULARITY_RADII = (1, 2, 3, 4)
RADIAL_RINGS = 4


@dataclass(frozen=True)
class FeatureSettings:
    """Extraction settings of every feature family, in one place."""

    haralick_levels: int = 16  #: grey levels after quantisation (16 keeps the matrices of a small nucleus well filled)
    haralick_distances: tuple[int, ...] = (1, 3)
    background_od: float = (
        0.45  #: unused since v2 (the segmentation's background reference is used); kept for old settings
    )
    nucleoli_radius: int = 4  #: largest radius of a pale spot counted as a nucleolus
    nucleoli_depth: float = 0.9  #: a nucleolus is paler than its surroundings by this many nucleus OD std
    nucleoli_min_depth: float = 0.3  #: ... and by at least this much OD (no spots in a flat, noisy nucleus)


# ---------------------------------------------------------------- shape ----
def _u8(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as uint8 0/1 without copying (OpenCV takes any non-zero as set)."""
    return mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)


def _pad1(m8: np.ndarray) -> np.ndarray:
    """``np.pad(m8, 1)`` (zeros around), by OpenCV: the same array at a fraction of the cost."""
    return cv2.copyMakeBorder(m8, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)


def _largest_contour(mask: np.ndarray) -> np.ndarray | None:
    contours, _ = cv2.findContours(_u8(mask), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    return max(contours, key=cv2.contourArea)


_ARANGE64 = np.arange(64, dtype=np.float64)


def contour_irregularity(contour: np.ndarray) -> dict[str, float]:
    """Irregularity of a closed outline (OpenCV contour, all points).

    Returns
    -------
    dict
        ``fourier_low``: energy of the outline's Fourier harmonics 2 to 7
        relative to the first (lobes, clefts, kidney shapes; 0 for a circle,
        below 0.1 for an ellipse); ``fourier_high``: same for harmonics 8 to 32 (fine
        projections, a hairy or crenated outline); ``curvature_std``: spread
        of the turning angle along the outline smoothed over 5 points
        (radians per point).
    """
    pts = contour.reshape(-1, 2)
    n = len(pts)
    out = {"fourier_low": float("nan"), "fourier_high": float("nan"), "curvature_std": float("nan")}
    if n < 16:
        return out
    # The closed outline as complex numbers x + iy (a float64 (x, y) array viewed as complex).
    z = np.concatenate((pts, pts[:1]), dtype=np.float64).view(np.complex128)[:, 0]
    t = np.zeros(n + 1)
    np.cumsum(np.abs(z[1:] - z[:-1]), out=t[1:])  # arc length; |dz| is hypot(dx, dy)
    length = float(t[-1])
    if length <= 0:
        return out
    # Resample to 64 points equally spaced along the outline (np.interp of x and y, at once).
    c = np.interp(_ARANGE64 * (length / 64), t, z)  # _ARANGE64 * step: np.linspace(0, length, 65)[:-1]
    f = cv2.dft(c.view(np.float64).reshape(1, 64, 2), flags=cv2.DFT_COMPLEX_OUTPUT)[0]  # np.fft.fft, 5x faster
    power = np.einsum("ij,ij->i", f, f).tolist()  # re^2 + im^2
    base = power[1] + power[-1]
    if base <= 0:
        return out
    out["fourier_low"] = math.sqrt((sum(power[2:8]) + sum(power[-7:-1])) / base)
    out["fourier_high"] = math.sqrt(sum(power[8:-7]) / base)
    # Turning angle between successive steps of the resampled outline.
    dz = c[1:] - c[:-1]
    w = dz[1:] * dz[:-1].conj()
    turn = np.arctan2(w.imag, w.real)  # np.angle(w)
    dev = turn - float(np.add.reduce(turn)) / len(turn)
    out["curvature_std"] = math.sqrt(float(np.dot(dev, dev)) / len(turn))
    return out


_SHAPE_COLUMNS: dict[str, tuple[str, ...]] = {}


def shape_features(
    mask: np.ndarray, prefix: str, contour: np.ndarray | None = None, moments: dict | None = None
) -> dict[str, float]:
    """Size and shape of one binary region.

    Parameters
    ----------
    mask : ndarray of bool
        The region (nucleus or whole cell).
    prefix : str
        Name of the region, used in the column names (``shape_{prefix}_area``...).
    contour : ndarray, optional
        The region's outer contour (``cv2.CHAIN_APPROX_NONE``), when already known.
    moments : dict, optional
        ``cv2.moments(mask, binaryImage=True)``, when already known.

    Returns
    -------
    dict
        area, perimeter, equivalent diameter, major and minor axis, eccentricity,
        solidity, convexity, circularity, min and max Feret diameters, Fourier
        irregularity (low and high harmonics), depth of the deepest notch
        (relative to the equivalent radius) and curvature spread. NaN when the
        mask is empty.
    """
    names = _SHAPE_COLUMNS.get(prefix)
    if names is None:
        names = _SHAPE_COLUMNS[prefix] = tuple(f"shape_{prefix}_{n}" for n in SHAPE_NAMES)
    m8 = _u8(mask)
    # The pixel count: m00 of binary-image moments, exactly.
    area = float(moments["m00"]) if moments is not None else float(cv2.countNonZero(m8))
    if contour is None:
        contour = _largest_contour(m8)
    if area == 0 or contour is None or len(contour) < 5:
        return dict.fromkeys(names, float("nan"))
    perimeter = cv2.arcLength(contour, closed=True)
    hull_idx = np.sort(cv2.convexHull(contour, returnPoints=False), axis=0)
    hull = contour[hull_idx[:, 0]]
    hull_area = cv2.contourArea(hull)
    hull_perimeter = cv2.arcLength(hull, closed=True)
    m = cv2.moments(m8, binaryImage=True) if moments is None else moments
    m00 = m["m00"]
    mu20, mu02, mu11 = m["mu20"] / m00, m["mu02"] / m00, m["mu11"] / m00
    common = math.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)
    l1, l2 = (mu20 + mu02) / 2 + common, max((mu20 + mu02) / 2 - common, 0.0)
    # Largest distance between hull points: integer coordinates, so the squared distances are
    # exact in any type; the root is taken in float32 as before.
    hp = hull[:, 0].astype(np.int32)
    d = hp[:, None, :] - hp[None, :, :]
    feret_max = float(np.sqrt(np.float32(np.einsum("ijk,ijk->ij", d, d).max())))
    (_, _), (rw, rh), _ = cv2.minAreaRect(hull)  # the same rectangle: it is computed on the hull
    r_eq = math.sqrt(area / math.pi)
    notch = 0.0
    if len(hull_idx) > 3:
        try:
            defects = cv2.convexityDefects(contour, hull_idx)
        except cv2.error:  # self-intersecting outlines: no defect measure
            defects = None
        if defects is not None and len(defects):
            notch = float(defects.reshape(-1, 4)[:, 3].max()) / 256.0 / r_eq
    irr = contour_irregularity(contour)
    nan = float("nan")
    return dict(
        zip(
            names,
            (
                area,
                perimeter,
                2 * r_eq,
                4 * math.sqrt(l1),
                4 * math.sqrt(l2),
                math.sqrt(1 - l2 / l1) if l1 > 0 else 0.0,
                min(1.0, area / hull_area) if hull_area > 0 else nan,
                min(1.0, hull_perimeter / perimeter) if perimeter > 0 else nan,
                # 4*pi*A/P^2 with the hull perimeter: 1 for a disk, robust to pixel staircase.
                min(1.0, 4 * math.pi * area / hull_perimeter**2) if hull_perimeter > 0 else nan,
                feret_max + 1.0,
                min(rw, rh) + 1.0,
                irr["fourier_low"],
                irr["fourier_high"],
                notch,
                irr["curvature_std"],
            ),
            strict=True,
        )
    )


def nc_features(
    nucleus_mask: np.ndarray,
    cell_mask: np.ndarray,
    nucleus_contour: np.ndarray | None = None,
    moments: tuple[dict, dict] | None = None,
) -> dict[str, float]:
    """Nucleus-to-cytoplasm relations.

    ``nc_ratio`` is nucleus area / whole-cell area, in (0, 1]. ``nc_rim_width``
    is the mean thickness of cytoplasm around the nucleus (equivalent radii
    difference); ``nc_rim_width_min`` and ``nc_rim_width_max`` the thinnest and
    thickest cytoplasm between the nucleus outline and the cell outline;
    ``nc_nucleus_offset`` the distance between the nucleus and cell centroids
    divided by the cell's equivalent radius. ``nucleus_contour`` and
    ``moments`` (binary-image moments of nucleus and cell) may be passed when
    already known.
    """
    names = (
        "nucleus_area",
        "cell_area",
        "nc_ratio",
        "nc_cytoplasm_area",
        "nc_rim_width",
        "nc_rim_width_min",
        "nc_rim_width_max",
        "nc_nucleus_offset",
    )
    n8, c8 = _u8(nucleus_mask), _u8(cell_mask)
    if moments is None:
        n_area = float(cv2.countNonZero(n8))
        c_area = float(cv2.countNonZero(c8))
    else:  # the pixel counts: m00 of binary-image moments, exactly
        n_area, c_area = float(moments[0]["m00"]), float(moments[1]["m00"])
    if n_area == 0 or c_area == 0:
        return dict.fromkeys(names, float("nan"))
    if moments is None:
        moments = cv2.moments(n8, binaryImage=True), cv2.moments(c8, binaryImage=True)
    mn, mc = moments
    ny, nx = mn["m01"] / mn["m00"], mn["m10"] / mn["m00"]
    cy, cx = mc["m01"] / mc["m00"], mc["m10"] / mc["m00"]
    r_cell = np.sqrt(c_area / np.pi)
    # Distance to the cell outline, read on the nucleus outline.
    dist = cv2.distanceTransform(_pad1(c8), cv2.DIST_L2, cv2.DIST_MASK_5)[1:-1, 1:-1]
    contour = _largest_contour(n8) if nucleus_contour is None else nucleus_contour
    pts = contour.reshape(-1, 2) if contour is not None else np.zeros((0, 2), int)
    rim = dist[pts[:, 1], pts[:, 0]] - 1.0 if len(pts) else np.array([0.0])
    return {
        "nucleus_area": n_area,
        "cell_area": c_area,
        "nc_ratio": min(1.0, n_area / c_area),
        "nc_cytoplasm_area": c_area - n_area,
        "nc_rim_width": float(r_cell - np.sqrt(n_area / np.pi)),
        "nc_rim_width_min": float(max(0.0, rim.min())),
        "nc_rim_width_max": float(max(0.0, rim.max())),
        "nc_nucleus_offset": float(np.hypot(ny - cy, nx - cx) / r_cell),
    }


# ------------------------------------------------------------- haralick ----
_ANGLES = ((0, 1), (1, 1), (1, 0), (1, -1))  # (dy, dx): 0, 45, 90, 135 degrees


def _glcm_offsets(distances: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(ay * d, ax * d) for d in distances for ay, ax in _ANGLES]


def glcm_counts(levels_img: np.ndarray, mask: np.ndarray, distances: tuple[int, ...], levels: int) -> np.ndarray:
    """Raw (not symmetrised) co-occurrence counts inside a mask, every offset in one array.

    Pixels outside ``mask`` (and outside the image) take the extra level
    ``levels``, whose pairs are dropped. The image is padded by the largest
    distance, so that every offset is a shift of the flattened image: the pair
    ``(p, p + shift)`` of a pixel near the right edge meets the padding, never
    the next row.

    Returns
    -------
    ndarray of float32, shape (n_distances * 4, levels, levels)
        Distance-major, angles in :data:`_ANGLES` order.
    """
    h, w = levels_img.shape
    side = levels + 1
    offsets = _glcm_offsets(distances)
    pad = max(distances)
    width = w + 2 * pad
    counts = np.zeros((len(offsets), side, side), np.float32)
    if h == 0 or w == 0:
        return counts[:, :levels, :levels]
    small = side <= 256  # codes fit in uint8: one OpenCV 2-D histogram per offset
    code = np.full((h + 2 * pad, width), levels, np.uint8 if small else np.intp)
    np.copyto(code[pad : pad + h, pad : pad + w], levels_img, where=mask, casting="unsafe")
    flat = code.ravel()
    shifts = [dy * width + dx for dy, dx in offsets]  # all >= 1: dy >= 0, and dx > 0 where dy = 0
    n = flat.size - max(shifts)
    k = len(shifts)
    if small and k * side <= 256:
        # One 2-D histogram for all offsets: first code offset * side + level of the first
        # pixel (still a byte), second code the level of the shifted pixel; pairs whose first
        # pixel is outside are skipped by the histogram's mask (fewer pixels to count).
        first = np.empty((k, n), np.uint8)
        np.add(flat[:n], (np.arange(k, dtype=np.uint8) * side)[:, None], out=first)
        second = np.empty((k, n), np.uint8)
        for i, s in enumerate(shifts):
            second[i] = flat[s : s + n]
        inside = np.repeat((flat[:n] < levels).view(np.uint8)[None], k, axis=0)
        hist = cv2.calcHist(
            [first.reshape(1, -1), second.reshape(1, -1)],
            [0, 1],
            inside.reshape(1, -1),
            [k * side, side],
            [0, k * side, 0, side],
        )
        return hist.reshape(k, side, side)[:, :levels, :levels]
    a = flat[:n].reshape(1, -1)
    for i, s in enumerate(shifts):
        b = flat[s : s + n].reshape(1, -1)
        if small:
            counts[i] = cv2.calcHist([a, b], [0, 1], None, [side, side], [0, side, 0, side])
        else:
            counts[i] = np.bincount((a * side + b).ravel(), minlength=side * side).reshape(side, side)
    return counts[:, :levels, :levels]


def masked_glcm(levels_img: np.ndarray, mask: np.ndarray, distance: int | tuple[int, ...], levels: int) -> np.ndarray:
    """Symmetric, normalised grey-level co-occurrence matrices inside a mask.

    Only pixel pairs whose both pixels lie inside ``mask`` are counted, so the
    background never enters the texture of the nucleus. All angles (and all
    distances, when ``distance`` is a tuple) are counted in one pass.

    Returns
    -------
    ndarray, shape (n_distances * n_angles, levels, levels)
        Distance-major: the 4 angles of the first distance, then of the next.
    """
    distances = (distance,) if np.isscalar(distance) else tuple(distance)
    counts = glcm_counts(np.asarray(levels_img), np.asarray(mask, bool), distances, levels).astype(np.float64)
    counts += counts.transpose(0, 2, 1)
    total = counts.sum((1, 2), keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


_GLCM_CONSTANTS: dict[int, tuple] = {}


def _glcm_constants(n: int) -> np.ndarray:
    """Weights of every linear statistic of an ``n``-level GLCM, computed once per ``n``.

    ``flat @ weights`` gives, per flattened matrix, the marginals ``px`` and
    ``py`` (``n`` each), the sum and difference distributions (``2n - 1`` and
    ``n``), then the expectations of i, j, i + j, |i - j| and of i^2, j^2,
    (i + j)^2, (i - j)^2, then of ij and 1 / (1 + (i - j)^2).
    """
    if n not in _GLCM_CONSTANTS:
        i = np.arange(n, dtype=np.float64)
        ii, jj = (a.ravel() for a in np.meshgrid(i, i, indexing="ij"))
        rows = np.arange(n * n)

        def onehot(index, width):
            out = np.zeros((n * n, width))
            out[rows, index.astype(int)] = 1
            return out

        first = np.stack([ii, jj, ii + jj, np.abs(ii - jj)], 1)
        weights = np.concatenate(
            [
                onehot(ii, n),
                onehot(jj, n),
                onehot(ii + jj, 2 * n - 1),
                onehot(np.abs(ii - jj), n),
                first,
                first * first,
                np.stack([ii * jj, 1.0 / (1.0 + (ii - jj) ** 2)], 1),
            ],
            axis=1,
        )
        _GLCM_CONSTANTS[n] = np.ascontiguousarray(weights)
    return _GLCM_CONSTANTS[n]


def haralick_from_glcms(p: np.ndarray) -> np.ndarray:
    """The 13 Haralick features of a stack of normalised GLCMs.

    Every linear statistic comes from one matrix product (variances as
    ``E[x^2] - E[x]^2``), every entropy from one logarithm of the concatenated
    distributions: a few calls for the whole stack.

    Parameters
    ----------
    p : ndarray, shape (n, levels, levels)

    Returns
    -------
    ndarray, shape (n, 13), in :data:`HARALICK_NAMES` order.
    """
    eps = 1e-12
    m, n = p.shape[0], p.shape[-1]
    nn = n * n
    flat = np.ascontiguousarray(p, np.float64).reshape(m, nn)
    lin = flat @ _glcm_constants(n)
    k = 5 * n - 1  # the distributions end here
    # Means of i, j, i + j, |i - j|; variances of the same (clipped at 0 against rounding).
    means = lin[:, k : k + 4]
    var = np.maximum(lin[:, k + 4 : k + 8] - means * means, 0.0)
    mu_x, mu_y, sum_average, diff_mean = means.T
    var_x, var_y, sum_variance, difference_variance = var.T
    contrast, exy, idm = lin[:, k + 7], lin[:, k + 8], lin[:, k + 9]
    sdp = np.sqrt(var_x * var_y)
    ok = sdp > eps
    correlation = np.where(ok, (exy - mu_x * mu_y) / np.where(ok, sdp, 1.0), 1.0)
    # Entropies of p, px * py, px, py and the sum and difference distributions: one logarithm.
    pxpy = (lin[:, :n, None] * lin[:, None, n : 2 * n]).reshape(m, nn)
    dist = np.concatenate([flat, pxpy, lin[:, :k]], axis=1)
    logs = np.log2(dist + eps)
    ent = np.add.reduceat(dist * logs, (0, nn, 2 * nn, 2 * nn + n, 2 * nn + 2 * n, 2 * nn + 4 * n - 1), axis=1)
    entropy, hxy2, hx, hy, sum_entropy, difference_entropy = -ent.T
    hxy1 = -np.einsum("ij,ij->i", flat, logs[:, nn : 2 * nn])
    hmax = np.maximum(hx, hy)
    ok = hmax > eps
    imc1 = np.where(ok, (entropy - hxy1) / np.where(ok, hmax, 1.0), 0.0)
    imc2 = np.sqrt(np.maximum(0.0, 1 - np.exp(-2.0 * (hxy2 - entropy))))
    asm = np.einsum("ij,ij->i", flat, flat)
    return np.array(
        [
            asm,
            contrast,
            correlation,
            var_x,  # sum of squares: sum over (i - mu_x)^2 p(i, j)
            idm,
            sum_average,
            sum_variance,
            sum_entropy,
            entropy,
            difference_variance,
            difference_entropy,
            imc1,
            imc2,
        ]
    ).T


def haralick_from_glcm(p: np.ndarray) -> np.ndarray:
    """The 13 Haralick features of one normalised GLCM, in :data:`HARALICK_NAMES` order."""
    return haralick_from_glcms(p[None])[0]


_GREY_LEVELS = np.arange(256, dtype=np.float32)
_QUANTILES = np.array([0.01, 0.99], np.float32)


def quantize(grey: np.ndarray, mask: np.ndarray, levels: int) -> np.ndarray:
    """Grey levels ``0..levels-1`` between the 1st and 99th percentile of the masked pixels.

    A uint8 image gives a uint8 result (through a 256-entry table), any other an int64 one.
    """
    if grey.dtype == np.uint8:
        hist = cv2.calcHist([np.ascontiguousarray(grey)], [0], _u8(mask), [256], [0, 256]).ravel()
        c = np.cumsum(hist)
        lo, hi = np.searchsorted(c, _QUANTILES * c[-1]).tolist()
        # The same arithmetic on the 256 possible grey levels, then a table look-up.
        scaled = np.clip((_GREY_LEVELS - float(lo)) / max(float(hi - lo), 1e-3), 0, 1)
        table = np.minimum((scaled * levels).astype(np.int64), levels - 1)
        if levels <= 256:
            return cv2.LUT(np.ascontiguousarray(grey), table.astype(np.uint8))
        return table[grey]
    else:
        lo, hi = np.percentile(grey[mask].astype(np.float32), [1, 99])
    scaled = np.clip((grey.astype(np.float32) - lo) / max(hi - lo, 1e-3), 0, 1)
    return np.minimum((scaled * levels).astype(np.int64), levels - 1)


_HARALICK_COLUMNS: dict[tuple[int, ...], list[str]] = {}


def haralick_features(
    grey: np.ndarray, mask: np.ndarray, settings: FeatureSettings = FeatureSettings(), q: np.ndarray | None = None
) -> dict[str, float]:
    """Angle-averaged Haralick features of ``grey`` inside ``mask``.

    The grey levels are rescaled between the 1st and 99th percentile of the
    masked pixels before quantisation, so the texture measures chromatin
    pattern rather than overall stain intensity.

    Parameters
    ----------
    q : ndarray of int, optional
        ``grey`` already quantised by :func:`quantize` (quantise once, reuse).

    Returns
    -------
    dict
        ``haralick_{name}_d{distance}`` for each of the 13 features and each
        distance in ``settings.haralick_distances``.
    """
    levels = settings.haralick_levels
    distances = tuple(settings.haralick_distances)
    names = _HARALICK_COLUMNS.get(distances)
    if names is None:
        names = _HARALICK_COLUMNS[distances] = [f"haralick_{n}_d{d}" for d in distances for n in HARALICK_NAMES]
    mask = np.asarray(mask, bool)
    if cv2.countNonZero(_u8(mask)) < 16:
        return dict.fromkeys(names, float("nan"))
    if q is None:
        q = quantize(grey, mask, levels)
    counts = glcm_counts(q, mask, distances, levels)
    total = counts.sum((1, 2), dtype=np.float64)  # exact: integer counts
    valid = total > 0
    if valid.all():  # the usual case: average the angles of every distance at once
        stack = counts.astype(np.float64)
        stack += stack.transpose(0, 2, 1)
        stack /= (2 * total)[:, None, None]
        means = haralick_from_glcms(stack).reshape(len(distances), len(_ANGLES), 13).mean(1)
        return dict(zip(names, means.ravel().tolist(), strict=True))
    stack = counts.astype(np.float64)
    stack += stack.transpose(0, 2, 1)
    feats = np.full((len(stack), 13), np.nan)
    if valid.any():
        feats[valid] = haralick_from_glcms(stack[valid] / (2 * total[valid])[:, None, None])
    out: dict[str, float] = {}
    for j, d in enumerate(distances):
        block = feats[j * len(_ANGLES) : (j + 1) * len(_ANGLES)]
        ok = ~np.isnan(block[:, 0])
        mean = block[ok].mean(0) if ok.any() else np.full(13, np.nan)
        out.update({f"haralick_{n}_d{d}": float(v) for n, v in zip(HARALICK_NAMES, mean, strict=True)})
    return out


# ------------------------------------------------------ chromatin texture ----
_LBP_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _lbp_table() -> np.ndarray:
    """Bin of each 8-bit neighbour code: its number of set bits if uniform (<= 2 transitions), else 9."""
    table = np.empty(256, np.intp)
    for v in range(256):
        b = [(v >> k) & 1 for k in range(8)]
        trans = sum(b[k] != b[(k + 1) % 8] for k in range(8))
        table[v] = sum(b) if trans <= 2 else 9
    return table


_LBP_TABLE = _lbp_table()
_LBP_COLUMNS = tuple([f"lbp_nucleus_u{k}" for k in range(9)] + ["lbp_nucleus_nonuniform", "lbp_nucleus_entropy"])
_LBP_SELECT = np.uint64(sum((1 << k) << (8 * k) for k in range(8)))
_LBP_GATHER = np.uint64(0x0101010101010101)


def lbp_features(grey: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Rotation-invariant uniform local binary patterns (8 neighbours, radius 1) inside ``mask``.

    Each pixel is coded by which of its 8 neighbours are at least as bright;
    uniform codes (at most two 0/1 transitions around the circle) are binned
    by their number of brighter neighbours (``lbp_nucleus_u0`` dark spot ...
    ``lbp_nucleus_u8`` bright spot, ``u4`` an edge), the rest in
    ``lbp_nucleus_nonuniform``. Also ``lbp_nucleus_entropy`` of the histogram.
    """
    names = _LBP_COLUMNS
    g = grey if grey.dtype == np.uint8 else np.asarray(grey, np.float64)  # types OpenCV compares exactly
    h, w = g.shape
    if h < 3 or w < 3:
        return dict.fromkeys(names, float("nan"))
    c = g[1:-1, 1:-1]
    # One bit per neighbour (at least as bright as the centre), packed into an 8-bit code
    # per pixel (bit k for neighbour k); a 256-entry table gives each code its bin.
    # The 8 comparisons (0 or 255) are the 8 bytes of one uint64 per pixel: keeping bit k of
    # byte k and multiplying by 0x0101010101010101 adds all bytes into the top one.
    bits = cv2.merge(
        [cv2.compare(g[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx], c, cv2.CMP_GE) for dy, dx in _LBP_OFFSETS]
    )
    word = bits.view(np.uint64)
    word &= _LBP_SELECT
    word *= _LBP_GATHER
    code = bits[..., 7]  # little-endian: the top byte
    counts = np.bincount(code[mask[1:-1, 1:-1]], minlength=256)
    hist = np.bincount(_LBP_TABLE, weights=counts, minlength=LBP_BINS)
    total = hist.sum()
    if total < 16:
        return dict.fromkeys(names, float("nan"))
    p = hist / total
    nz = p[p > 0]
    return dict(zip(names, [*p.tolist(), float(-(nz * np.log2(nz)).sum())], strict=True))


def granularity_features(od: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Granulometry of nuclear optical density: how much of it sits in clumps of each size.

    ``granularity_nucleus_r{r}`` is the share of the nucleus' OD (above its
    minimum) removed by a morphological opening with a disk of radius ``r``
    that the opening of radius ``r-1`` kept: dense clumps about ``2r``
    pixels wide.
    """
    names = _GRANULARITY_COLUMNS
    m8 = _u8(np.ascontiguousarray(mask))
    n = cv2.countNonZero(m8)
    if n < 16:
        return dict.fromkeys(names, float("nan"))
    floor, top, _, _ = cv2.minMaxLoc(od, mask=m8)
    if top - floor <= 1e-6:
        return dict.fromkeys(names, 0.0)
    # 8-bit image of OD above the nucleus minimum (OpenCV morphology is fastest on uint8).
    img = np.clip((od - floor) * (250.0 / (top - floor)), 0, 255).astype(np.uint8)
    # Exact integer sums of uint8 pixels inside the mask (copied onto zeros: masked reductions are slower).
    total = cv2.sumElems(cv2.copyTo(img, m8))[0]
    img[~mask] = int(total / n)  # the mean of the nucleus (outside pixels do not enter total)
    if total <= 0:
        return dict.fromkeys(names, 0.0)
    prev = total
    out = []
    for r in GRANULARITY_RADII:
        opened = cv2.morphologyEx(img, cv2.MORPH_OPEN, _disk(r))
        kept = cv2.sumElems(cv2.copyTo(opened, m8))[0]
        out.append(max(0.0, (prev - kept) / total))
        prev = kept
    return dict(zip(names, out, strict=True))


_GRANULARITY_COLUMNS = tuple(f"granularity_nucleus_r{r}" for r in GRANULARITY_RADII)


def radial_features(od: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Chromatin density from the rim of the nucleus to its centre.

    The nucleus is cut in :data:`RADIAL_RINGS` rings of equal relative depth
    (distance to the outline divided by its maximum); ``radial_nucleus_ring{k}``
    is the mean OD of ring ``k`` (1 = rim) divided by the nucleus mean, and
    ``radial_nucleus_rim_centre`` the rim's mean over the centre's.
    """
    names = [f"radial_nucleus_ring{k + 1}" for k in range(RADIAL_RINGS)] + ["radial_nucleus_rim_centre"]
    m8 = _u8(mask)
    if cv2.countNonZero(m8) < 16:
        return dict.fromkeys(names, float("nan"))
    dist = cv2.distanceTransform(_pad1(m8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    d = dist[mask]
    ring = np.minimum((d / d.max() * RADIAL_RINGS).astype(int), RADIAL_RINGS - 1)
    vals = od[mask].astype(np.float64)
    sums = np.bincount(ring, weights=vals, minlength=RADIAL_RINGS).tolist()
    counts = np.bincount(ring, minlength=RADIAL_RINGS).tolist()
    mean = float(vals.mean())
    nan = float("nan")
    means = [sm / c if c > 0 else nan for sm, c in zip(sums, counts, strict=True)]
    values = [v / mean if mean > 0 else nan for v in means]
    values.append(means[0] / means[-1] if means[-1] > 0 else nan)
    return dict(zip(_RADIAL_COLUMNS, values, strict=True))


_RADIAL_COLUMNS = tuple([f"radial_nucleus_ring{k + 1}" for k in range(RADIAL_RINGS)] + ["radial_nucleus_rim_centre"])


def _mean_std(vals: np.ndarray) -> tuple[float, float]:
    """``float(vals.mean()), float(vals.std())`` of a 1-D array: the same arithmetic as NumPy's, without its overhead."""
    n = np.intp(len(vals))
    t = vals.dtype.type
    mean = t(np.add.reduce(vals) / n)
    dev = vals - mean
    return float(mean), float(np.sqrt(t(np.add.reduce(dev * dev) / n)))


def nucleoli_features(
    od: np.ndarray, mask: np.ndarray, settings: FeatureSettings = FeatureSettings()
) -> dict[str, float]:
    """Pale spots inside the nucleus (nucleoli).

    A pixel belongs to a pale spot when a morphological closing of radius
    ``settings.nucleoli_radius`` (which fills pale holes narrower than the
    disk) raises its OD by more than ``settings.nucleoli_depth`` times the
    nucleus' OD spread and at least ``settings.nucleoli_min_depth``. Spots touching the nucleus outline are ignored.

    Returns
    -------
    dict
        ``nucleoli_count``, ``nucleoli_area_fraction`` (of the nucleus) and
        ``nucleoli_contrast`` (mean depth of the spots over the nucleus mean OD; 0 without spots).
    """
    names = ("nucleoli_count", "nucleoli_area_fraction", "nucleoli_contrast")
    m8 = _u8(mask)
    n = cv2.countNonZero(m8)
    if n < 30:
        return dict.fromkeys(names, float("nan"))
    mean, sd = _mean_std(od[mask])
    img = np.where(mask, od.astype(np.float32, copy=False), np.float32(mean))
    # Black top-hat: the closing minus the image, in one call.
    depth = cv2.morphologyEx(img, cv2.MORPH_BLACKHAT, _disk(settings.nucleoli_radius))
    inner = cv2.erode(m8, _disk(2))
    cut = max(settings.nucleoli_depth * sd, settings.nucleoli_min_depth)
    spots = cv2.bitwise_and(cv2.compare(depth, cut, cv2.CMP_GT), inner)
    spots = cv2.morphologyEx(spots, cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    if cv2.countNonZero(spots):
        contours, _ = cv2.findContours(spots, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        count = sum(1 for c in contours if cv2.contourArea(c) >= 3)
    else:  # most nuclei: no spot at all
        count = 0
    if not count:
        return {"nucleoli_count": 0.0, "nucleoli_area_fraction": 0.0, "nucleoli_contrast": 0.0}
    area = cv2.countNonZero(spots)
    return {
        "nucleoli_count": float(count),
        "nucleoli_area_fraction": area / n,
        "nucleoli_contrast": float(cv2.mean(depth, mask=spots)[0]) / mean if mean > 0 else float("nan"),
    }


# ---------------------------------------------------------------- color ----
def background_reference(rgb: np.ndarray, settings: FeatureSettings = FeatureSettings()) -> np.ndarray:
    """Per-channel intensity of the unstained background (95th percentile of each channel)."""
    return background_rgb_fast(rgb)


def color_features(
    rgb: np.ndarray,
    nucleus_mask: np.ndarray,
    cell_mask: np.ndarray,
    settings: FeatureSettings = FeatureSettings(),
    background: np.ndarray | None = None,
    rbc_od: float | None = None,
) -> dict[str, float]:
    """Colour of nucleus and cytoplasm in optical density relative to the background and red cells.

    OD is ``log(I_background / I)`` per channel with the crop's own background
    as reference, so a slide scanned brighter or stained lighter moves less.
    ``color_{region}_od_{channel}_fraction`` is that channel's share of the
    total OD (hue of the stain, independent of its density);
    ``color_{region}_od_rbc_ratio`` the total OD over the red cells' of the
    same crop (density relative to an internal standard).
    ``color_cytoplasm_basophilia`` is the cytoplasm's ``OD_red - OD_blue``
    (blue cytoplasm, rich in RNA, absorbs red light).

    Parameters
    ----------
    background : ndarray (3,), optional
        RGB of the background (default: :func:`background_reference` of ``rgb``).
    rbc_od : float, optional
        Mean total OD of the crop's red cells (from the segmentation); NaN ratios without it.
    """
    ref = background_reference(rgb, settings) if background is None else background
    od = optical_density(rgb, ref)
    n8 = _u8(nucleus_mask)
    cyto8 = cv2.subtract(_u8(cell_mask), n8)  # cell and not nucleus (0/1, saturating)
    ratio_ok = rbc_od is not None and np.isfinite(rbc_od) and rbc_od > 0
    nan = float("nan")
    values: list[float] = []
    for region, m8 in (("nucleus", n8), ("cytoplasm", cyto8)):
        if cv2.countNonZero(m8) >= 3:
            mu, sd = cv2.meanStdDev(od, mask=m8)
            means, sds = mu.ravel().tolist(), sd.ravel().tolist()
            total = means[0] + means[1] + means[2]  # float(np.sum) of three: the same additions
            fractions = [v / total for v in means] if total > 0 else [nan] * 3
            for c in range(3):
                values += (means[c], sds[c], fractions[c])
            values += (total, total / rbc_od if ratio_ok else nan)
            if region == "cytoplasm":
                values.append(means[0] - means[2])
        else:
            values += [nan] * (11 if region == "nucleus" else 12)
    return dict(zip(_COLOR_COLUMNS, values, strict=True))


_COLOR_COLUMNS = tuple(
    [
        f"color_{region}_{name}"
        for region in ("nucleus", "cytoplasm")
        for name in (
            *(f"od_{c}_{s}" for c in ("red", "green", "blue") for s in ("mean", "std", "fraction")),
            "od_mean",
            "od_rbc_ratio",
            *(("basophilia",) if region == "cytoplasm" else ()),
        )
    ]
)


# ---------------------------------------------------------------- all -----
def _box_moments(raw: tuple[float, ...], x0: int, y0: int) -> dict[str, float]:
    """``cv2.moments(mask[y0:, x0:], binaryImage=True)`` from the raw moments of ``mask``.

    ``raw`` is ``(m00, m10, m01, m20, m11, m02)``: integer sums, exact after the
    shift of origin; the central moments follow with OpenCV's own arithmetic.
    Only the moments the features read are returned.
    """
    m00, m10, m01, m20, m11, m02 = raw
    m20 = m20 - 2 * x0 * m10 + x0 * x0 * m00
    m11 = m11 - y0 * m10 - x0 * m01 + x0 * y0 * m00
    m02 = m02 - 2 * y0 * m01 + y0 * y0 * m00
    m10 = m10 - x0 * m00
    m01 = m01 - y0 * m00
    cx = cy = 0.0
    if abs(m00) > 2.220446049250313e-16:  # DBL_EPSILON, as OpenCV
        inv = 1.0 / m00
        cx, cy = m10 * inv, m01 * inv
    return {
        "m00": m00,
        "m10": m10,
        "m01": m01,
        "mu20": m20 - m10 * cx,
        "mu11": m11 - m10 * cy,
        "mu02": m02 - m01 * cy,
    }


def _roi_od_sum(seg: Segmentation, top: tuple[int, int, int], width: int) -> np.ndarray | None:
    """The segmentation's total OD over rows ``top[0]:top[1]``, columns ``top[2]:top[2] + width``, if it has them."""
    if seg.od_sum is None or seg.roi is None:
        return None
    ry0, ry1, rx0, rx1 = seg.roi
    y0, y1, x0 = top
    if y0 < ry0 or y1 > ry1 or x0 < rx0 or x0 + width > rx1 or seg.od_sum.shape != (ry1 - ry0, rx1 - rx0):
        return None
    return np.ascontiguousarray(seg.od_sum[y0 - ry0 : y1 - ry0, x0 - rx0 : x0 - rx0 + width])


def cell_features(
    rgb: np.ndarray, seg: Segmentation, settings: FeatureSettings = FeatureSettings()
) -> dict[str, float]:
    """All feature families of one segmented crop.

    Features are computed on the bounding box of the cell (the background and
    red-cell references come from the segmentation, measured on the whole
    crop), which keeps the cost independent of how many red cells surround it.
    """
    out: dict[str, float] = {}
    nucleus, cell = seg.nucleus_mask, seg.cell_mask
    if seg.box is not None and nucleus.any():
        y0, y1, x0, x1 = seg.box
    elif nucleus.any():
        ys, xs = np.nonzero(cell)
        y0, y1, x0, x1 = max(ys.min() - 2, 0), ys.max() + 3, max(xs.min() - 2, 0), xs.max() + 3
    else:
        y0, y1, x0, x1 = 0, 0, 0, 0
    if y1 > y0 and x1 > x0:
        n_box, c_box = nucleus[y0:y1, x0:x1], cell[y0:y1, x0:x1]
        rgb_box = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    else:  # nothing segmented: every family returns NaN
        n_box, c_box = np.zeros((1, 1), bool), np.zeros((1, 1), bool)
        rgb_box = np.zeros((1, 1, 3), np.uint8)
    if seg.nucleus_contour is not None and seg.nucleus_moments is not None and y1 > y0:
        # The segmentation's own trace of the nucleus and its moments, moved to the box.
        n_contour = seg.nucleus_contour - np.array((x0, y0), np.int32)
        mn = _box_moments(seg.nucleus_moments, x0, y0)
    else:
        n_contour = _largest_contour(n_box)
        mn = cv2.moments(_u8(n_box), binaryImage=True)
    c_contour = _largest_contour(c_box)
    mc = cv2.moments(_u8(c_box), binaryImage=True)
    out.update(nc_features(n_box, c_box, n_contour, (mn, mc)))
    out.update(shape_features(n_box, "nucleus", n_contour, mn))
    out.update(shape_features(c_box, "cell", c_contour, mc))
    bg = seg.background if seg.background is not None else background_reference(rgb, settings)
    rbc_od = seg.diagnostics.get("rbc_od") if seg.diagnostics else None
    if n_box.any():
        # Texture families work on the nucleus' own box (1-pixel margin): fewer pixels, same result.
        bx, by, bw, bh = cv2.boundingRect(_u8(n_box))
        ny0, nx0 = max(0, by - 1), max(0, bx - 1)
        sl = (slice(ny0, by + bh + 1), slice(nx0, bx + bw + 1))
        rgb_n = np.ascontiguousarray(rgb_box[sl])
        n_nuc = np.ascontiguousarray(n_box[sl])
        grey = cv2.cvtColor(rgb_n, cv2.COLOR_RGB2GRAY)
        od_sum = _roi_od_sum(seg, (y0 + sl[0].start, y0 + sl[0].start + len(rgb_n), x0 + sl[1].start), rgb_n.shape[1])
        if od_sum is None or seg.background is not bg:
            od_r, od_g, od_b = optical_density_channels(rgb_n, bg)
            od_sum = cv2.add(cv2.add(od_r, od_g), od_b)
        q = quantize(grey, n_nuc, settings.haralick_levels)
    else:
        grey = od_sum = np.zeros((1, 1), np.float32)
        n_nuc = np.zeros((1, 1), bool)
        q = None
    out.update(haralick_features(grey, n_nuc, settings, q=q))
    out.update(lbp_features(grey, n_nuc))
    out.update(granularity_features(od_sum, n_nuc))
    out.update(radial_features(od_sum, n_nuc))
    out.update(nucleoli_features(od_sum, n_nuc, settings))
    out.update(color_features(rgb_box, n_box, c_box, settings, bg, rbc_od))
    return out


# --------------------------------------------------------- descriptions ----
_SHAPE_WORDS = {
    "area": "size (area in pixels)",
    "perimeter": "outline length",
    "equivalent_diameter": "diameter of the disk of the same area",
    "major_axis": "length",
    "minor_axis": "width",
    "eccentricity": "elongation (0 round, 1 line-like)",
    "solidity": "fullness of the outline: below 1 with notches or clefts",
    "convexity": "smoothness of the outline: below 1 with indentations or projections",
    "circularity": "roundness (1 for a disk)",
    "feret_max": "largest caliper diameter",
    "feret_min": "smallest caliper diameter",
    "fourier_low": "irregularity of the outline at large scale (lobes, clefts, kidney shape; 0 for a circle)",
    "fourier_high": "irregularity of the outline at fine scale (small projections, hairy or crenated outline)",
    "notch_depth": "depth of the deepest notch or cleft, relative to the radius",
    "curvature_std": "how unevenly the outline bends (angular, wavy or notched outlines score high)",
}
_HARALICK_WORDS = {
    "asm": "uniformity of the chromatin (high when smooth and homogeneous)",
    "contrast": "chromatin contrast: how clumped the nucleus looks",
    "correlation": "how gradually chromatin intensity changes between neighbouring points",
    "sum_of_squares": "spread of chromatin intensity",
    "idm": "homogeneity: neighbouring points look alike (smooth chromatin)",
    "sum_average": "average brightness of neighbouring pairs of points",
    "sum_variance": "spread of the brightness of neighbouring pairs",
    "sum_entropy": "disorder of the brightness of neighbouring pairs",
    "entropy": "disorder of the chromatin pattern",
    "difference_variance": "variability of local chromatin contrast",
    "difference_entropy": "disorder of local chromatin contrast",
    "imc1": "information correlation of neighbouring points (structure of the chromatin pattern)",
    "imc2": "second information correlation of neighbouring points (structure of the chromatin pattern)",
}

#: Plain-language meaning of every per-cell feature column (base names, before the per-patient statistic).
FEATURE_DESCRIPTIONS: dict[str, str] = {
    "nucleus_area": "nucleus size (area in pixels)",
    "cell_area": "cell size (area in pixels)",
    "nc_ratio": "share of the cell occupied by the nucleus (N:C ratio)",
    "nc_cytoplasm_area": "amount of cytoplasm (area in pixels)",
    "nc_rim_width": "mean thickness of the cytoplasm rim around the nucleus",
    "nc_rim_width_min": "thinnest cytoplasm between nucleus and cell outline",
    "nc_rim_width_max": "thickest cytoplasm between nucleus and cell outline",
    "nc_nucleus_offset": "how far the nucleus sits from the centre of the cell",
    "lbp_nucleus_nonuniform": "share of irregular fine chromatin patterns (not spots, edges or flat areas)",
    "lbp_nucleus_entropy": "variety of fine chromatin patterns",
    "radial_nucleus_rim_centre": "chromatin density at the rim of the nucleus relative to its centre",
    "nucleoli_count": "number of pale spots (nucleoli) inside the nucleus",
    "nucleoli_area_fraction": "share of the nucleus taken by pale spots (nucleoli)",
    "nucleoli_contrast": "how much paler the nucleoli are than the chromatin around them",
    "color_cytoplasm_basophilia": "how blue the cytoplasm is (RNA-rich, activated or immature cells)",
}
for _region in ("nucleus", "cell"):
    for _k, _v in _SHAPE_WORDS.items():
        FEATURE_DESCRIPTIONS[f"shape_{_region}_{_k}"] = f"{_region} {_v}"
for _d, _scale in ((1, "fine scale"), (3, "3-pixel scale")):
    for _k, _v in _HARALICK_WORDS.items():
        FEATURE_DESCRIPTIONS[f"haralick_{_k}_d{_d}"] = f"{_v} ({_scale})"
for _k in range(9):
    _what = {0: "dark spots", 4: "edges", 8: "bright spots"}.get(_k, f"patterns with {_k} of 8 brighter neighbours")
    FEATURE_DESCRIPTIONS[f"lbp_nucleus_u{_k}"] = f"share of chromatin points forming {_what} (local binary pattern)"
for _r in GRANULARITY_RADII:
    FEATURE_DESCRIPTIONS[f"granularity_nucleus_r{_r}"] = (
        f"share of the chromatin in dense clumps about {2 * _r} pixels wide (granulometry)"
    )
for _k in range(1, RADIAL_RINGS + 1):
    _where = {1: "outermost ring (rim)", RADIAL_RINGS: "central core"}.get(_k, f"ring {_k} from the rim")
    FEATURE_DESCRIPTIONS[f"radial_nucleus_ring{_k}"] = (
        f"chromatin density of the nucleus' {_where}, relative to its mean"
    )
for _region in ("nucleus", "cytoplasm"):
    FEATURE_DESCRIPTIONS[f"color_{_region}_od_mean"] = f"overall stain density of the {_region} (how dark it looks)"
    FEATURE_DESCRIPTIONS[f"color_{_region}_od_rbc_ratio"] = (
        f"stain density of the {_region} relative to the red cells of the same image"
    )
    for _c in ("red", "green", "blue"):
        FEATURE_DESCRIPTIONS[f"color_{_region}_od_{_c}_mean"] = (
            f"how strongly the {_region} absorbs {_c} light (stain density)"
        )
        FEATURE_DESCRIPTIONS[f"color_{_region}_od_{_c}_std"] = (
            f"unevenness of {_c}-light absorption within the {_region} (patchy or uniform staining)"
        )
        FEATURE_DESCRIPTIONS[f"color_{_region}_od_{_c}_fraction"] = (
            f"share of the {_region}'s absorption in {_c} light (hue of the stain, whatever its density)"
        )

#: What a high or a low value of a per-cell feature looks like under the microscope, in a haematologist's
#: words (report captions of the cells the cell model finds most tumoral). Only features with a plain reading.
CELL_FINDINGS: dict[str, tuple[str, str]] = {
    "nucleus_area": ("large nucleus", "small nucleus"),
    "shape_nucleus_area": ("large nucleus", "small nucleus"),
    "shape_nucleus_equivalent_diameter": ("large nucleus", "small nucleus"),
    "shape_nucleus_feret_max": ("long nucleus", "short nucleus"),
    "shape_nucleus_major_axis": ("long nucleus", "short nucleus"),
    "shape_cell_area": ("large cell", "small cell"),
    "cell_area": ("large cell", "small cell"),
    "nc_ratio": ("high N:C ratio", "low N:C ratio"),
    "nc_cytoplasm_area": ("abundant cytoplasm", "scant cytoplasm"),
    "nc_rim_width": ("wide cytoplasm rim", "narrow cytoplasm rim"),
    "nc_rim_width_max": ("cytoplasm thick on one side", "scant cytoplasm all round"),
    "nucleoli_contrast": ("visible nucleoli", "no visible nucleoli"),
    "nucleoli_count": ("several nucleoli", "few or no nucleoli"),
    "haralick_sum_variance_d1": ("uneven, coarse chromatin", "even chromatin"),
    "haralick_sum_variance_d3": ("uneven, coarse chromatin", "even chromatin"),
    "haralick_contrast_d1": ("clumped chromatin", "smooth chromatin"),
    "haralick_contrast_d3": ("clumped chromatin", "smooth chromatin"),
    "haralick_idm_d1": ("smooth chromatin", "clumped chromatin"),
    "haralick_idm_d3": ("smooth chromatin", "clumped chromatin"),
    "shape_nucleus_notch_depth": ("notched or cleaved nucleus", "nucleus without notch"),
    "shape_nucleus_curvature_std": ("irregular nucleus outline", "smooth nucleus outline"),
    "shape_cell_fourier_high": ("ragged (villous or hairy) cell outline", "smooth cell outline"),
}

# Per-patient shares of each quality-control and cell-type flag (aggregate.py's ``frac_<flag>``).
FEATURE_DESCRIPTIONS["frac_qc_ok"] = "share of the patient's crops passing quality control"
for _flag, _meaning in FLAG_DESCRIPTIONS.items():
    FEATURE_DESCRIPTIONS[f"frac_{_flag}"] = f"share of the patient's crops flagged: {_meaning}"


def describe_feature(name: str) -> str | None:
    """Plain-language meaning of a per-cell feature column, or None when unknown.

    ``haralick_contrast_d5`` (a distance not in the table) is described from
    its base feature.
    """
    if name in FEATURE_DESCRIPTIONS:
        return FEATURE_DESCRIPTIONS[name]
    m = re.fullmatch(r"haralick_(.+)_d(\d+)", name)
    if m and m.group(1) in _HARALICK_WORDS:
        return f"{_HARALICK_WORDS[m.group(1)]} ({m.group(2)}-pixel scale)"
    return None
