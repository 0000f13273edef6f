"""Mask helpers shared by the feature families."""

from __future__ import annotations

import cv2
import numpy as np


def _u8(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as uint8 0/1 without copying (OpenCV takes any non-zero as set)."""
    return mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8)


def _pad1(m8: np.ndarray) -> np.ndarray:
    """``np.pad(m8, 1)`` (zeros around), by OpenCV: the same array at a fraction of the cost."""
    return cv2.copyMakeBorder(m8, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)


def largest_contour(mask: np.ndarray) -> np.ndarray | None:
    """Outer contour (all points, ``cv2.CHAIN_APPROX_NONE``) of the largest piece of ``mask``; None when empty.

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((10, 10), bool)
    >>> mask[2:5, 2:5] = True  # a 3x3 square ...
    >>> mask[7, 7] = True  # ... and a single pixel
    >>> largest_contour(mask).reshape(-1, 2).min(0).tolist(), len(largest_contour(mask))
    ([2, 2], 8)
    >>> largest_contour(np.zeros((4, 4), bool)) is None
    True
    """
    contours, _ = cv2.findContours(_u8(mask), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    return max(contours, key=cv2.contourArea)


def smooth_inside(img: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """``img`` smoothed by a Gaussian of ``sigma`` pixels using only the pixels inside ``mask`` (float32).

    A normalised convolution: the blur of ``img * mask`` divided by the blur of
    ``mask``, so that pixels outside (cytoplasm, background) never bleed into the
    nucleus' rim. Outside the mask the result is the input. ``sigma`` 0 returns
    the input as float32.
    """
    return smooth_inside_all([img], mask, sigma)[0]


def smooth_inside_all(images: list[np.ndarray], mask: np.ndarray, sigma: float) -> list[np.ndarray]:
    """:func:`smooth_inside` of several images of the same ``mask``: the mask's blur is computed once.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.arange(36, dtype=np.float32).reshape(6, 6)
    >>> mask = np.zeros((6, 6), bool)
    >>> mask[1:5, 1:5] = True
    >>> a, b = smooth_inside_all([img, 2 * img], mask, 1.0)
    >>> np.array_equal(a, smooth_inside(img, mask, 1.0)), np.array_equal(b, smooth_inside(2 * img, mask, 1.0))
    (True, True)
    """
    images = [np.asarray(img, np.float32) for img in images]
    if sigma <= 0:
        return [img.copy() for img in images]
    m = mask.astype(np.float32)
    den = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    # The ratio only where it is kept (inside the mask, where the blurred mask is not ~0): one masked division
    # into a copy of the input instead of a guarded division, a where and a cast.
    inside = (mask & (den > 1e-6)).astype(bool, copy=False)
    out = []
    for img in images:
        num = cv2.GaussianBlur(img * m, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
        smoothed = img.copy()
        np.divide(num, den, out=smoothed, where=inside)
        out.append(smoothed)
    return out
