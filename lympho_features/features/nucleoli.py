"""Nucleoli family (``nucleoli_``): pale spots inside the nucleus."""

from __future__ import annotations

import cv2
import numpy as np

from ..segment import _disk
from .masks import _u8
from .settings import FeatureSettings


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
    nucleus' OD spread, and at least ``settings.nucleoli_min_relative_depth`` times its mean OD (and
    ``settings.nucleoli_min_depth``). Every threshold scales with the stain: the same nucleus stained more
    weakly has the same spots. Spots touching the nucleus outline are ignored.

    Returns
    -------
    dict
        ``nucleoli_count``, ``nucleoli_area_fraction`` (of the nucleus) and
        ``nucleoli_contrast`` (mean depth of the spots over the nucleus mean OD; 0 without spots).

    Examples
    --------
    One pale 4x4 spot in an even nucleus:

    >>> import numpy as np
    >>> yy, xx = np.mgrid[:41, :41]
    >>> nucleus = np.hypot(yy - 20, xx - 20) <= 18
    >>> od = np.ones((41, 41), np.float32)
    >>> od[18:22, 18:22] = 0.2
    >>> f = nucleoli_features(od, nucleus)
    >>> f["nucleoli_count"], round(f["nucleoli_area_fraction"], 4)
    (1.0, 0.0159)
    >>> nucleoli_features(np.ones((41, 41), np.float32), nucleus)["nucleoli_count"]
    0.0
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
    cut = max(settings.nucleoli_depth * sd, settings.nucleoli_min_relative_depth * mean, settings.nucleoli_min_depth)
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
