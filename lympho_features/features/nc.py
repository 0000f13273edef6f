"""Nucleus-to-cytoplasm family (``nc_``, and the contract columns ``nucleus_area``, ``cell_area``, ``nc_ratio``)."""

from __future__ import annotations

import cv2
import numpy as np

from .masks import _pad1, _u8, largest_contour


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

    Examples
    --------
    A nucleus of radius 20 centred in a cell of radius 28:

    >>> import cv2, numpy as np
    >>> nucleus = cv2.circle(np.zeros((64, 64), np.uint8), (32, 32), 20, 1, -1).astype(bool)
    >>> cell = cv2.circle(np.zeros((64, 64), np.uint8), (32, 32), 28, 1, -1).astype(bool)
    >>> f = nc_features(nucleus, cell)
    >>> f["nucleus_area"], f["cell_area"], round(f["nc_ratio"], 3), f["nc_nucleus_offset"]
    (1257.0, 2453.0, 0.512, 0.0)
    >>> round(f["nc_rim_width"], 2), f["nc_rim_width_max"]
    (7.94, 8.0)
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
    contour = largest_contour(n8) if nucleus_contour is None else nucleus_contour
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
