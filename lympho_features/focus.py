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
from functools import lru_cache

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
#: Largest squared Sobel magnitude of 8-bit levels (|gx|, |gy| <= 4 * 255): every square is an integer below 2^24,
#: exact in float32, and float32 square roots of distinct integers up to it are distinct (tests/test_focus.py).
_MAX_GRADIENT_SQ = 2 * 1020**2


@lru_cache(maxsize=64)
def _gaussian_weights_u8(sigma: float) -> tuple[int, ...]:
    """OpenCV's own weights for an 8-bit Gaussian blur of ``sigma``: integers in 1/256 that sum to 256.

    Read off ``cv2.GaussianBlur`` itself (its kernel size and error-diffused rounding are OpenCV's to choose): a
    column one pixel wide with a 255 in the middle comes out, at each tap, as ``round(255 * w / 256) = w`` for
    any weight under 128, which every weight but the centre's is (the weights are symmetric and sum to 256).
    """
    r = int(4 * sigma) + 2  # beyond OpenCV's 8-bit kernel radius (about 3 sigma): taps past it read 0
    probe = np.zeros((2 * r + 1, 1), np.uint8)
    probe[r, 0] = 255
    w = cv2.GaussianBlur(probe, (0, 0), sigma)[:, 0].astype(np.int64)
    w[r] = 256 - (w.sum() - w[r])
    return tuple(int(v) for v in np.trim_zeros(w))


def gaussian_blur_u8(img: np.ndarray, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur(img, (0, 0), sigma)`` of an 8-bit image, bit for bit, for less CPU.

    About a third of OpenCV's CPU for one channel, two thirds for three (224 x 224 crops, OpenCV 5.1, one thread).

    OpenCV blurs 8-bit images in fixed point: weights in 1/256 (:func:`_gaussian_weights_u8`), each row's sum
    kept exactly in 1/256, each column's in 1/65536, rounded half up to a level. Its float filter does the
    same sums faster, and exactly: the row sums are integers below 2^16, and with the column weights divided by
    65536 (a power of two) every partial column sum, 0.5 included, is a multiple of 2^-16 below 256 (24
    significant bits, as float32 has), so the order OpenCV adds them in does not matter; truncating the float
    then rounds half up as OpenCV does. Tested against ``cv2.GaussianBlur`` (tests/test_focus.py): an OpenCV
    that blurred otherwise would fail there.

    Parameters
    ----------
    img : ndarray (H, W) or (H, W, C) uint8
    sigma : float
        The Gaussian's sigma in pixels (the kernel size OpenCV derives from it, as with ``ksize=(0, 0)``).

    Returns
    -------
    ndarray uint8
        The blurred image, the shape of ``img`` (border: reflected, OpenCV's default).
    """
    w = np.array(_gaussian_weights_u8(float(sigma)), np.float32)
    rows, cols = w.reshape(1, -1), (w / 65536).reshape(-1, 1)
    out = cv2.sepFilter2D(img, cv2.CV_32F, rows, cols, delta=0.5, borderType=cv2.BORDER_REFLECT_101)
    return out.astype(np.uint8)


def _gradient_sq(x: np.ndarray) -> np.ndarray:
    # Integer Sobel of 8-bit levels and its squared magnitude, an integer exact in float32: the same value in any
    # process and with any number of OpenCV threads (OpenCV's float filters and cv2.magnitude differed between
    # processes), so a crop measures the same wherever it is extracted. Squared, not its root: the root is
    # monotone, so the strongest gradients and the ridges are the same pixels; it is taken at the ridge only.
    gx = cv2.Sobel(x, cv2.CV_16S, 1, 0, ksize=3).astype(np.float32)
    gy = cv2.Sobel(x, cv2.CV_16S, 0, 1, ksize=3).astype(np.float32)
    sq = cv2.multiply(gx, gx)
    cv2.accumulateSquare(gy, sq)
    return sq


def _kth_largest(values: np.ndarray, k: int) -> np.float32:
    """The ``k``-th largest of non-negative float32 ``values`` (1-D), as ``np.partition`` finds it.

    Non-negative floats are ordered as their bits read as integers, and NumPy partitions integers about twice as
    fast as floats (no NaN to order): the same element, found on the bits.
    """
    i = values.size - k
    return np.partition(values.view(np.int32), i)[i : i + 1].view(np.float32)[0]


def _median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D float32 array without NaN, bit for bit, without its general machinery (~25 us).

    The middle value, or for an even count the float32 mean of the two middle ones: their float32 sum halved.
    """
    h = values.size // 2
    if values.size % 2:
        return float(np.partition(values, h)[h])
    mid = np.partition(values, (h - 1, h))
    return float((mid[h - 1] + mid[h]) / np.float32(2))


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
    sq1 = _gradient_sq(green)
    sq2 = _gradient_sq(gaussian_blur_u8(green, REBLUR_SIGMA))  # 8-bit: OpenCV's fixed point, bit for bit
    flat = sq1.ravel()
    strong = _kth_largest(flat, max(1, int(EDGE_FRACTION * flat.size)))
    # Ridge pixels of the gradient (local maxima) among the strongest: one reading per edge crossing. The
    # squares are integers, so |g| >= MIN_EDGE_GRADIENT (an integer) is |g|^2 >= its square.
    peak = (sq1 >= cv2.dilate(sq1, _K3)) & (sq1 >= max(strong, MIN_EDGE_GRADIENT * MIN_EDGE_GRADIENT))
    at = np.flatnonzero(peak)
    if at.size < MIN_EDGE_PIXELS:
        return math.nan
    # The re-blurred ridge may sit a pixel away: its maximum over the 3x3 neighbourhood (the root of the
    # squares' maximum: the root is monotone).
    g1 = np.sqrt(flat[at])
    g2 = np.sqrt(cv2.dilate(sq2, _K3).ravel()[at])
    ratio = _median(g1 / np.maximum(g2, 1e-3))
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
    return gaussian_blur_u8(rgb, added), edge, added
