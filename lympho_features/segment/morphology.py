"""Small morphology and geometry helpers shared by the segmentation phases."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np


@lru_cache(maxsize=64)
def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def solidity(mask: np.ndarray) -> float:
    """Pixels of a mask over the area of its largest piece's convex hull (about 1 for a convex shape; 0 when empty).

    As the nucleus solidity of the QC: the hull is a polygon through the
    boundary pixels' centres, so a small convex shape reads a little above 1.

    Examples
    --------
    >>> import cv2, numpy as np
    >>> disk = cv2.circle(np.zeros((40, 40), np.uint8), (20, 20), 15, 255, -1)
    >>> notched = disk.copy()
    >>> notched[5:21, 5:21] = 0  # a quarter cut out
    >>> round(solidity(disk), 2), round(solidity(notched), 2)
    (1.03, 0.87)
    """
    m = np.ascontiguousarray(mask, np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return 0.0
    hull_area = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea)))
    return cv2.countNonZero(m) / hull_area if hull_area > 0 else 0.0


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary mask (uint8 0/255) by flood-filling the outside.

    Examples
    --------
    >>> import cv2, numpy as np
    >>> ring = cv2.circle(np.zeros((20, 20), np.uint8), (10, 10), 7, 255, 2)
    >>> int(np.count_nonzero(ring)), int(np.count_nonzero(fill_holes(ring)))
    (128, 217)
    """
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    cv2.floodFill(padded, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 128)
    return np.where(padded[1:-1, 1:-1] == 128, 0, 255).astype(np.uint8)


def _central_window(shape: tuple[int, int], fraction: float) -> tuple[slice, slice]:
    h, w = shape
    dh, dw = int(h * (1 - fraction) / 2), int(w * (1 - fraction) / 2)
    return slice(dh, h - dh), slice(dw, w - dw)


def _window(box: list[int], margin: int, h: int, w: int) -> tuple[slice, slice]:
    """Slices of ``box`` = ``[x0, y0, x1, y1]`` grown by ``margin``, clipped to an ``h`` x ``w`` image."""
    return (
        slice(max(0, box[1] - margin), min(h, box[3] + margin)),
        slice(max(0, box[0] - margin), min(w, box[2] + margin)),
    )


def in_window(split, nucleus: np.ndarray, win: tuple[slice, slice], *args) -> tuple[int, np.ndarray]:
    """``split(nucleus, *args)`` (:func:`split_lobes`, :func:`split_merged`) computed in ``win`` only.

    ``win`` holds the nucleus with a margin wider than any erosion used, so the
    erosions, distance maps and components are those of the whole image: the
    labels are pasted back into an image of the nucleus' size.

    Examples
    --------
    >>> import cv2, numpy as np
    >>> from lympho_features.segment import split_merged
    >>> two = np.zeros((60, 90), np.uint8)
    >>> _ = cv2.circle(two, (30, 30), 18, 255, -1)
    >>> _ = cv2.circle(two, (60, 30), 18, 255, -1)
    >>> n, labels = in_window(split_merged, two, (slice(5, 55), slice(5, 85)), 40)
    >>> n, np.array_equal(labels, split_merged(two, 40)[1])
    (2, True)
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
