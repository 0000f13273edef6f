"""Per-cell measurements, grouped in families named as pyradiomics does.

Every feature is a column named ``family_feature`` (``shape_nucleus_area``,
``haralick_contrast_d1``, ``color_nucleus_od_red_mean``...), apart from the
few contract names every downstream tool relies on: ``nucleus_area``,
``cell_area`` and ``nc_ratio``. :func:`cell_features` computes all families
for one segmented crop; each family is a small pure function on arrays that
can be used on its own. ``docs/features.md`` explains each family to a
clinician.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .segment import Segmentation, optical_density

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


@dataclass(frozen=True)
class FeatureSettings:
    """Extraction settings of every feature family, in one place."""

    haralick_levels: int = 32  #: grey levels after quantisation
    haralick_distances: tuple[int, ...] = (1, 3)
    background_od: float = 0.45  #: OD sum below which a pixel is background (colour reference)


# ---------------------------------------------------------------- shape ----
def _largest_contour(mask: np.ndarray) -> np.ndarray | None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    return max(contours, key=cv2.contourArea)


def shape_features(mask: np.ndarray, prefix: str) -> dict[str, float]:
    """Size and shape of one binary region.

    Parameters
    ----------
    mask : ndarray of bool
        The region (nucleus or whole cell).
    prefix : str
        Name of the region, used in the column names (``shape_{prefix}_area``...).

    Returns
    -------
    dict
        area, perimeter, equivalent diameter, major and minor axis, eccentricity,
        solidity, convexity, circularity, min and max Feret diameters. NaN when
        the mask is empty.
    """
    names = (
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
    )
    out = {f"shape_{prefix}_{n}": float("nan") for n in names}
    area = float(mask.sum())
    contour = _largest_contour(mask)
    if area == 0 or contour is None or len(contour) < 5:
        return out
    # Perimeter of the pixel outline; OpenCV's polygon through pixel centres
    # underestimates it for small regions, so use the mean of inner and hull-ish length.
    perimeter = float(cv2.arcLength(contour, closed=True))
    hull = cv2.convexHull(contour)
    hull_area = float(cv2.contourArea(hull))
    hull_perimeter = float(cv2.arcLength(hull, closed=True))
    m = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    mu20, mu02, mu11 = m["mu20"] / m["m00"], m["mu02"] / m["m00"], m["mu11"] / m["m00"]
    common = np.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)
    l1, l2 = (mu20 + mu02) / 2 + common, max((mu20 + mu02) / 2 - common, 0.0)
    hull_pts = hull.reshape(-1, 2).astype(np.float32)
    d = np.sqrt(((hull_pts[:, None, :] - hull_pts[None, :, :]) ** 2).sum(-1))
    (_, _), (rw, rh), _ = cv2.minAreaRect(contour)
    out.update(
        {
            f"shape_{prefix}_area": area,
            f"shape_{prefix}_perimeter": perimeter,
            f"shape_{prefix}_equivalent_diameter": float(np.sqrt(4 * area / np.pi)),
            f"shape_{prefix}_major_axis": float(4 * np.sqrt(l1)),
            f"shape_{prefix}_minor_axis": float(4 * np.sqrt(l2)),
            f"shape_{prefix}_eccentricity": float(np.sqrt(1 - l2 / l1)) if l1 > 0 else 0.0,
            f"shape_{prefix}_solidity": area / hull_area if hull_area > 0 else float("nan"),
            f"shape_{prefix}_convexity": hull_perimeter / perimeter if perimeter > 0 else float("nan"),
            # 4*pi*A/P^2 with the hull perimeter: 1 for a disk, robust to pixel staircase.
            f"shape_{prefix}_circularity": min(1.0, 4 * np.pi * area / hull_perimeter**2)
            if hull_perimeter > 0
            else float("nan"),
            f"shape_{prefix}_feret_max": float(d.max()) + 1.0,
            f"shape_{prefix}_feret_min": float(min(rw, rh)) + 1.0,
        }
    )
    return out


def nc_features(nucleus_mask: np.ndarray, cell_mask: np.ndarray) -> dict[str, float]:
    """Nucleus-to-cytoplasm relations.

    ``nc_ratio`` is nucleus area / whole-cell area, in (0, 1]. ``nc_rim_width``
    is the mean thickness of cytoplasm around the nucleus (equivalent radii
    difference); ``nc_nucleus_offset`` the distance between the nucleus and
    cell centroids divided by the cell's equivalent radius.
    """
    n_area = float(nucleus_mask.sum())
    c_area = float(cell_mask.sum())
    if n_area == 0 or c_area == 0:
        return {
            k: float("nan")
            for k in ("nucleus_area", "cell_area", "nc_ratio", "nc_cytoplasm_area", "nc_rim_width", "nc_nucleus_offset")
        }
    ny, nx = np.argwhere(nucleus_mask).mean(0)
    cy, cx = np.argwhere(cell_mask).mean(0)
    r_cell = np.sqrt(c_area / np.pi)
    return {
        "nucleus_area": n_area,
        "cell_area": c_area,
        "nc_ratio": min(1.0, n_area / c_area),
        "nc_cytoplasm_area": c_area - n_area,
        "nc_rim_width": float(r_cell - np.sqrt(n_area / np.pi)),
        "nc_nucleus_offset": float(np.hypot(ny - cy, nx - cx) / r_cell),
    }


# ------------------------------------------------------------- haralick ----
_ANGLES = ((0, 1), (1, 1), (1, 0), (1, -1))  # (dy, dx): 0, 45, 90, 135 degrees


def masked_glcm(levels_img: np.ndarray, mask: np.ndarray, distance: int, levels: int) -> np.ndarray:
    """Symmetric, normalised grey-level co-occurrence matrices inside a mask.

    Only pixel pairs whose both pixels lie inside ``mask`` are counted, so the
    background never enters the texture of the nucleus.

    Returns
    -------
    ndarray, shape (n_angles, levels, levels)
    """
    h, w = levels_img.shape
    out = np.zeros((len(_ANGLES), levels, levels), np.float64)
    for k, (dy, dx) in enumerate(_ANGLES):
        dy, dx = dy * distance, dx * distance
        y0, y1 = max(0, -dy), min(h, h - dy)
        x0, x1 = max(0, -dx), min(w, w - dx)
        a = levels_img[y0:y1, x0:x1]
        b = levels_img[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        valid = mask[y0:y1, x0:x1] & mask[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
        idx = a[valid].astype(np.int64) * levels + b[valid]
        counts = np.bincount(idx, minlength=levels * levels).reshape(levels, levels).astype(np.float64)
        counts += counts.T
        total = counts.sum()
        if total > 0:
            out[k] = counts / total
    return out


def haralick_from_glcm(p: np.ndarray) -> np.ndarray:
    """The 13 Haralick features of one normalised GLCM, in :data:`HARALICK_NAMES` order."""
    eps = 1e-12
    n = p.shape[0]
    i = np.arange(n, dtype=np.float64)
    px = p.sum(1)
    py = p.sum(0)
    mu_x = (i * px).sum()
    mu_y = (i * py).sum()
    sd_x = np.sqrt(((i - mu_x) ** 2 * px).sum())
    sd_y = np.sqrt(((i - mu_y) ** 2 * py).sum())
    ii, jj = np.meshgrid(i, i, indexing="ij")
    # p_{x+y}(k), k = 0..2n-2 and p_{x-y}(k), k = 0..n-1
    p_sum = np.bincount((ii + jj).astype(int).ravel(), weights=p.ravel(), minlength=2 * n - 1)
    p_diff = np.bincount(np.abs(ii - jj).astype(int).ravel(), weights=p.ravel(), minlength=n)
    k_sum = np.arange(2 * n - 1, dtype=np.float64)
    k_diff = np.arange(n, dtype=np.float64)
    asm = (p**2).sum()
    contrast = (k_diff**2 * p_diff).sum()
    correlation = ((ii * jj * p).sum() - mu_x * mu_y) / (sd_x * sd_y) if sd_x * sd_y > eps else 1.0
    sum_of_squares = ((ii - mu_x) ** 2 * p).sum()
    idm = (p / (1.0 + (ii - jj) ** 2)).sum()
    sum_average = (k_sum * p_sum).sum()
    sum_entropy = -(p_sum * np.log2(p_sum + eps)).sum()
    sum_variance = ((k_sum - sum_average) ** 2 * p_sum).sum()
    entropy = -(p * np.log2(p + eps)).sum()
    diff_mean = (k_diff * p_diff).sum()
    difference_variance = ((k_diff - diff_mean) ** 2 * p_diff).sum()
    difference_entropy = -(p_diff * np.log2(p_diff + eps)).sum()
    hx = -(px * np.log2(px + eps)).sum()
    hy = -(py * np.log2(py + eps)).sum()
    pxpy = np.outer(px, py)
    hxy1 = -(p * np.log2(pxpy + eps)).sum()
    hxy2 = -(pxpy * np.log2(pxpy + eps)).sum()
    imc1 = (entropy - hxy1) / max(hx, hy) if max(hx, hy) > eps else 0.0
    imc2 = np.sqrt(max(0.0, 1 - np.exp(-2.0 * (hxy2 - entropy))))
    return np.array(
        [
            asm,
            contrast,
            correlation,
            sum_of_squares,
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
    )


def haralick_features(
    grey: np.ndarray, mask: np.ndarray, settings: FeatureSettings = FeatureSettings()
) -> dict[str, float]:
    """Angle-averaged Haralick features of ``grey`` inside ``mask``.

    The grey levels are rescaled between the 1st and 99th percentile of the
    masked pixels before quantisation, so the texture measures chromatin
    pattern rather than overall stain intensity.

    Returns
    -------
    dict
        ``haralick_{name}_d{distance}`` for each of the 13 features and each
        distance in ``settings.haralick_distances``.
    """
    levels = settings.haralick_levels
    names = [f"haralick_{n}_d{d}" for d in settings.haralick_distances for n in HARALICK_NAMES]
    if mask.sum() < 16:
        return dict.fromkeys(names, float("nan"))
    vals = grey[mask].astype(np.float32)
    lo, hi = np.percentile(vals, [1, 99])
    scaled = np.clip((grey.astype(np.float32) - lo) / max(hi - lo, 1e-3), 0, 1)
    q = np.minimum((scaled * levels).astype(np.int64), levels - 1)
    out: dict[str, float] = {}
    for d in settings.haralick_distances:
        glcms = masked_glcm(q, mask, d, levels)
        feats = np.mean([haralick_from_glcm(g) for g in glcms if g.sum() > 0] or [np.full(13, np.nan)], axis=0)
        out.update({f"haralick_{n}_d{d}": float(v) for n, v in zip(HARALICK_NAMES, feats, strict=True)})
    return out


# ---------------------------------------------------------------- color ----
def background_reference(rgb: np.ndarray, settings: FeatureSettings = FeatureSettings()) -> np.ndarray:
    """Per-channel intensity of the unstained background (median of bright pixels)."""
    od_sum = optical_density(rgb).sum(-1)
    bg = od_sum < settings.background_od
    if bg.sum() < 50:
        # No clear background: use the brightest tenth of the crop.
        bg = od_sum <= np.percentile(od_sum, 10)
    return np.median(rgb[bg].astype(np.float32), axis=0)


def color_features(
    rgb: np.ndarray, nucleus_mask: np.ndarray, cell_mask: np.ndarray, settings: FeatureSettings = FeatureSettings()
) -> dict[str, float]:
    """Colour of nucleus and cytoplasm in optical density relative to the background.

    OD is computed as ``-log(I / I_background)`` with the crop's own background
    as reference, so a slide scanned brighter or stained lighter moves less.
    ``color_cytoplasm_basophilia`` is the cytoplasm's ``OD_red - OD_blue``
    (blue cytoplasm, rich in RNA, absorbs red light).
    """
    ref = background_reference(rgb, settings)
    od = -np.log((rgb.astype(np.float32) + 1.0) / (ref + 1.0))
    cyto_mask = cell_mask & ~nucleus_mask
    out: dict[str, float] = {}
    for region, m in (("nucleus", nucleus_mask), ("cytoplasm", cyto_mask)):
        px = od[m]
        for c, name in enumerate(("red", "green", "blue")):
            if px.shape[0] >= 3:
                out[f"color_{region}_od_{name}_mean"] = float(px[:, c].mean())
                out[f"color_{region}_od_{name}_std"] = float(px[:, c].std())
            else:
                out[f"color_{region}_od_{name}_mean"] = float("nan")
                out[f"color_{region}_od_{name}_std"] = float("nan")
        out[f"color_{region}_od_mean"] = float(px.sum(1).mean()) if px.shape[0] >= 3 else float("nan")
    cy = od[cyto_mask]
    out["color_cytoplasm_basophilia"] = float((cy[:, 0] - cy[:, 2]).mean()) if cy.shape[0] >= 3 else float("nan")
    return out


# ---------------------------------------------------------------- all -----
def cell_features(
    rgb: np.ndarray, seg: Segmentation, settings: FeatureSettings = FeatureSettings()
) -> dict[str, float]:
    """All feature families of one segmented crop.

    Features are computed on the bounding box of the cell (plus a margin for
    the background reference, taken from the whole crop), which keeps the cost
    independent of how many red cells surround it.
    """
    out: dict[str, float] = {}
    nucleus, cell = seg.nucleus_mask, seg.cell_mask
    out.update(nc_features(nucleus, cell))
    if not nucleus.any():
        for f in (shape_features(nucleus, "nucleus"), shape_features(cell, "cell")):
            out.update(f)
        out.update(haralick_features(np.zeros((1, 1)), np.zeros((1, 1), bool), settings))
        out.update(color_features(rgb, nucleus, cell, settings))
        return out
    ys, xs = np.nonzero(cell)
    y0, y1 = max(ys.min() - 2, 0), ys.max() + 3
    x0, x1 = max(xs.min() - 2, 0), xs.max() + 3
    n_box, c_box = nucleus[y0:y1, x0:x1], cell[y0:y1, x0:x1]
    out.update(shape_features(n_box, "nucleus"))
    out.update(shape_features(c_box, "cell"))
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    out.update(haralick_features(grey, n_box, settings))
    out.update(color_features(rgb, nucleus, cell, settings))
    return out
