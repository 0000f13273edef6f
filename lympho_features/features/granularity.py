"""Granularity family (``granularity_``): size of the chromatin clumps (granulometry)."""

from __future__ import annotations

import cv2
import numpy as np

from ..segment import _disk
from .masks import _u8

GRANULARITY_RADII = (1, 2, 3, 4)
_GRANULARITY_COLUMNS = tuple(f"granularity_nucleus_r{r}" for r in GRANULARITY_RADII)


def granularity_features(od: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Granulometry of nuclear optical density: how much of it sits in clumps of each size.

    ``granularity_nucleus_r{r}`` is the share of the nucleus' OD (above its
    minimum) removed by a morphological opening with a disk of radius ``r``
    that the opening of radius ``r-1`` kept: dense clumps about ``2r``
    pixels wide.

    Examples
    --------
    A single dense clump 4 pixels wide is removed by the opening of radius 2:

    >>> import numpy as np
    >>> od = np.zeros((32, 32), np.float32)
    >>> od[10:14, 10:14] = 1.0
    >>> granularity_features(od, np.ones((32, 32), bool))
    {'granularity_nucleus_r1': 0.25, 'granularity_nucleus_r2': 0.75, 'granularity_nucleus_r3': 0.0, 'granularity_nucleus_r4': 0.0}
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
