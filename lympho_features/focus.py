"""Every crop brought to one focus before it is segmented and measured.

Another microscope's focus, optics, resampling or compression changes how sharp a crop's edges are, and
chromatin texture, nucleoli, granularity and even the outlines read that sharpness: a soft slide looked
different to the cell models than a sharp one of the same cells (benchmarks/site_robustness_results.md). A
blur can be added but not taken away, so every crop is blurred to a focus a little softer than any the
model should meet: a crop's edge blur is measured (:func:`edge_sigma`) and the Gaussian blur that brings
it to :attr:`~lympho_features.segment.SegmentationSettings.focus_edge_sigma` is added
(:func:`equalise_focus`). A sharp crop and the same crop re-imaged with a blur of 1 px are then nearly the
same pixels. A crop already softer than the target is measured as it is; its edge blur
(``acq_edge_sigma``) is part of the acquisition profile that ``lympho predict`` checks.

The edge blur is read by re-blurring, which needs no knowledge of the edges' contrast: at a step edge
blurred by a Gaussian of sigma ``s``, the peak gradient falls as ``1 / s``; blurred again by a known
``r``, as ``1 / sqrt(s^2 + r^2)``. The ratio ``R`` of the two peaks at the crop's strongest edges (the
rims of red cells and of the cell against the glass) gives ``s = r / sqrt(R^2 - 1)``. The Sobel operator
and the pixel grid add their own width, so the value is in the estimator's units: a further Gaussian blur
of ``b`` pixels adds about :data:`FOCUS_GAIN` ``* b^2`` to ``s^2`` (measured on 40 challenge crops blurred
by 0.5 to 1.4 px; stain strength, white balance and JPEG move ``s^2`` by under 0.07).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: Known blur (pixels) the crop is blurred by again to read its own.
REBLUR_SIGMA = 1.5
#: Share of the crop's pixels, the strongest gradients, that count as edges.
EDGE_FRACTION = 0.02
#: Weakest gradient (Sobel, 0-255 levels) an edge may have: flat glass never counts.
MIN_EDGE_GRADIENT = 20.0
#: Fewest edge pixels a reading needs (fewer: NaN, the crop is left as it is).
MIN_EDGE_PIXELS = 20
#: How much of a further Gaussian blur's ``sigma^2`` the estimator reads (0.86 on the challenge crops).
FOCUS_GAIN = 0.86

_K3 = np.ones((3, 3), np.uint8)


def _gradient(x: np.ndarray) -> np.ndarray:
    # Integer Sobel of 8-bit levels, then numpy's IEEE-exact square root: the same value in any process and with
    # any number of OpenCV threads (OpenCV's float filters and cv2.magnitude differed between processes), so a
    # crop measures the same wherever it is extracted.
    gx = cv2.Sobel(x, cv2.CV_16S, 1, 0, ksize=3).astype(np.float32)
    gy = cv2.Sobel(x, cv2.CV_16S, 0, 1, ksize=3).astype(np.float32)
    return np.sqrt(gx * gx + gy * gy)


def edge_sigma(rgb: np.ndarray) -> float:
    """The blur of a crop's strongest edges, read by re-blurring (estimator units, see the module).

    Parameters
    ----------
    rgb : ndarray (H, W, 3) uint8
        The crop (at the canonical scale for a value comparable between crops).

    Returns
    -------
    float
        About 0.86 for the challenge crops as acquired, 1.25 once blurred by a Gaussian of 1 px; NaN when
        the crop has too few edges, or none that re-blurring lowers.

    Examples
    --------
    >>> import numpy as np, cv2
    >>> from lympho_features.synthetic import synthetic_crop
    >>> rgb = synthetic_crop(np.random.default_rng(0)).rgb
    >>> edge_sigma(cv2.GaussianBlur(rgb, (0, 0), 1.0)) > edge_sigma(rgb)
    True
    """
    green = np.ascontiguousarray(rgb[..., 1])
    g1 = _gradient(green)
    g2 = _gradient(cv2.GaussianBlur(green, (0, 0), REBLUR_SIGMA))  # 8-bit: OpenCV's bit-exact fixed point
    flat = g1.ravel()
    k = max(1, int(EDGE_FRACTION * flat.size))
    strong = np.partition(flat, flat.size - k)[flat.size - k]
    # Ridge pixels of the gradient (local maxima) among the strongest: one reading per edge crossing.
    peak = (g1 >= cv2.dilate(g1, _K3)) & (g1 >= max(strong, MIN_EDGE_GRADIENT))
    if np.count_nonzero(peak) < MIN_EDGE_PIXELS:
        return math.nan
    # The re-blurred ridge may sit a pixel away: its maximum over the 3x3 neighbourhood.
    ratio = float(np.median(g1[peak] / np.maximum(cv2.dilate(g2, _K3)[peak], 1e-3)))
    return math.nan if ratio <= 1.0001 else REBLUR_SIGMA / math.sqrt(ratio * ratio - 1.0)


def focus_blur(edge: float, target: float, gain: float = FOCUS_GAIN) -> float:
    """The Gaussian sigma (pixels) that brings a crop whose edges read ``edge`` to ``target``; 0 if none.

    >>> round(focus_blur(0.86, 1.27), 2), focus_blur(1.4, 1.27), focus_blur(float("nan"), 1.27)
    (1.01, 0.0, 0.0)
    """
    if not math.isfinite(edge) or edge >= target:
        return 0.0
    return math.sqrt((target * target - edge * edge) / gain)


def equalise_focus(rgb: np.ndarray, target: float | None) -> tuple[np.ndarray, float, float]:
    """The crop blurred to the focus ``target`` (:func:`edge_sigma`'s units).

    Parameters
    ----------
    rgb : ndarray (H, W, 3) uint8
        The crop at the canonical scale.
    target : float or None
        The edge blur every crop is brought to; None: the crop as it is (its edges still read).

    Returns
    -------
    (crop, edge, added) : ndarray, float, float
        The crop (``rgb`` itself when nothing is added), its edge blur as given, and the Gaussian sigma added
        in pixels (0 when the crop is already as soft as ``target``, has too few edges, or ``target`` is None).
    """
    edge = edge_sigma(rgb)
    added = focus_blur(edge, target) if target is not None else 0.0
    if added < 0.05:  # a blur this small moves no pixel by a level
        return rgb, edge, 0.0
    return cv2.GaussianBlur(rgb, (0, 0), added), edge, added
