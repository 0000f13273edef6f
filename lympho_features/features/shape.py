"""Shape family (``shape_``): size, outline, Fourier irregularity and notches of the nucleus and the cell."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .masks import _u8, largest_contour

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

    Examples
    --------
    A disk's outline has almost no energy beyond the first harmonic:

    >>> import cv2, numpy as np
    >>> disk = cv2.circle(np.zeros((64, 64), np.uint8), (32, 32), 20, 1, -1)
    >>> contours, _ = cv2.findContours(disk, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    >>> irr = contour_irregularity(contours[0])
    >>> irr["fourier_low"] < 0.01, irr["fourier_high"] < 0.02
    (True, True)
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

    Examples
    --------
    >>> import cv2, numpy as np
    >>> disk = np.zeros((64, 64), np.uint8)
    >>> disk = cv2.circle(disk, (32, 32), 20, 1, -1).astype(bool)
    >>> f = shape_features(disk, "nucleus")
    >>> f["shape_nucleus_area"], f["shape_nucleus_eccentricity"], f["shape_nucleus_circularity"]
    (1257.0, 0.0, 1.0)
    >>> round(f["shape_nucleus_equivalent_diameter"], 2)
    40.01
    """
    names = _SHAPE_COLUMNS.get(prefix)
    if names is None:
        names = _SHAPE_COLUMNS[prefix] = tuple(f"shape_{prefix}_{n}" for n in SHAPE_NAMES)
    m8 = _u8(mask)
    # The pixel count: m00 of binary-image moments, exactly.
    area = float(moments["m00"]) if moments is not None else float(cv2.countNonZero(m8))
    if contour is None:
        contour = largest_contour(m8)
    if area == 0 or contour is None or len(contour) < 5:
        return dict.fromkeys(names, float("nan"))
    perimeter = cv2.arcLength(contour, closed=True)
    hull_idx = np.sort(cv2.convexHull(contour, returnPoints=False), axis=0)
    hull = contour[hull_idx[:, 0]]
    hull_area = cv2.contourArea(hull)
    hull_perimeter = cv2.arcLength(hull, closed=True)
    l1, l2 = _inertia_eigenvalues(cv2.moments(m8, binaryImage=True) if moments is None else moments)
    feret_max, feret_min = _feret_diameters(hull)
    r_eq = math.sqrt(area / math.pi)
    notch = _deepest_notch(contour, hull_idx) / r_eq
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
                feret_max,
                feret_min,
                irr["fourier_low"],
                irr["fourier_high"],
                notch,
                irr["curvature_std"],
            ),
            strict=True,
        )
    )


def _inertia_eigenvalues(m: dict) -> tuple[float, float]:
    """Eigenvalues ``(l1, l2)``, ``l1 >= l2 >= 0``, of a region's inertia matrix from its binary-image moments."""
    m00 = m["m00"]
    mu20, mu02, mu11 = m["mu20"] / m00, m["mu02"] / m00, m["mu11"] / m00
    common = math.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)
    return (mu20 + mu02) / 2 + common, max((mu20 + mu02) / 2 - common, 0.0)


def _feret_diameters(hull: np.ndarray) -> tuple[float, float]:
    """Largest and smallest caliper diameters of a convex hull (OpenCV points), counted in pixels (+1)."""
    # Largest distance between hull points: integer coordinates, so the squared distances are
    # exact in any type; the root is taken in float32 as before.
    hp = hull[:, 0].astype(np.int32)
    d = hp[:, None, :] - hp[None, :, :]
    feret_max = float(np.sqrt(np.float32(np.einsum("ijk,ijk->ij", d, d).max())))
    (_, _), (rw, rh), _ = cv2.minAreaRect(hull)  # the same rectangle: it is computed on the hull
    return feret_max + 1.0, min(rw, rh) + 1.0


def _deepest_notch(contour: np.ndarray, hull_idx: np.ndarray) -> float:
    """Depth in pixels of the deepest convexity defect of an outline (0 without one)."""
    if len(hull_idx) > 3:
        try:
            defects = cv2.convexityDefects(contour, hull_idx)
        except cv2.error:  # self-intersecting outlines: no defect measure
            defects = None
        if defects is not None and len(defects):
            return float(defects.reshape(-1, 4)[:, 3].max()) / 256.0
    return 0.0
