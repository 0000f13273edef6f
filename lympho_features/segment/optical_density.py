"""Optical density against the crop's background, and the red-cell reference.

The brightest pixels of a crop are the unstained glass; optical density (OD) is
measured against them, ``OD_c = log(I_ref,c / I_c)``, so stain and scanner
variation move the thresholds less.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_OD_LUT = np.log(256.0 / (np.arange(256, dtype=np.float32) + 1.0)).astype(np.float32)


def _reference_od(reference) -> np.ndarray:
    """OD of an RGB reference: ``_OD_LUT`` at its values rounded half to even and clipped to 0..255."""
    vals = np.asarray(reference, np.float32).tolist()
    if all(math.isfinite(v) for v in vals):  # plain Python on 3 numbers: np.clip/np.rint cost more
        return _OD_LUT[[min(255, max(0, round(v))) for v in vals]]
    return _OD_LUT[np.clip(np.rint(np.asarray(reference, np.float32)), 0, 255).astype(np.uint8)]


def optical_density(rgb: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Optical density per channel, float32.

    ``log(256 / (I + 1))``, minus that of ``reference`` (an RGB triple, e.g. the
    background from :func:`background_rgb`) when given: 0 on unstained glass,
    positive where the stain absorbs.

    Examples
    --------
    >>> import numpy as np
    >>> rgb = np.full((1, 2, 3), 255, np.uint8)
    >>> rgb[0, 0] = 127  # a pixel that lets half the light through
    >>> od = optical_density(rgb, [255, 255, 255])
    >>> od.dtype, [round(float(v), 3) for v in od[0, 0]], od[0, 1].tolist()
    (dtype('float32'), [0.693, 0.693, 0.693], [0.0, 0.0, 0.0])
    """
    rgb = np.ascontiguousarray(rgb)
    if reference is None:
        return cv2.LUT(rgb, _OD_LUT)
    ref = _reference_od(reference)
    # One table per channel: the same values as :func:`optical_density_channels`, merged.
    return cv2.LUT(rgb, np.stack([_OD_LUT - ref[c] for c in range(3)], axis=-1)[None])


def optical_density_channels(rgb: np.ndarray, reference: np.ndarray) -> list[np.ndarray]:
    """:func:`optical_density` against ``reference``, as three single-channel float32 images (R, G, B).

    Examples
    --------
    >>> import numpy as np
    >>> red, green, blue = optical_density_channels(np.full((2, 2, 3), 127, np.uint8), [255, 255, 255])
    >>> red.shape, red.dtype, round(float(red[0, 0]), 3)
    ((2, 2), dtype('float32'), 0.693)
    """
    rgb = np.ascontiguousarray(rgb)
    return [cv2.LUT(ch, t) for ch, t in zip(cv2.split(rgb), od_tables(reference), strict=True)]


def od_tables(reference) -> list[np.ndarray]:
    """The three float32 tables (R, G, B) of :func:`optical_density_channels`: OD of each level minus the reference's.

    Examples
    --------
    >>> tables = od_tables([255, 255, 255])
    >>> len(tables), tables[0].shape, float(tables[0][255])
    (3, (256,), 0.0)
    """
    # One subtraction for the three (float32 table minus float32 value, as per channel).
    return list(_OD_LUT[None, :] - _reference_od(reference)[:, None])


def background_rgb(rgb: np.ndarray, percentile: float = 95.0) -> np.ndarray:
    """RGB of the unstained background: a high percentile of each channel (subsampled).

    Examples
    --------
    >>> import numpy as np
    >>> rgb = np.full((30, 30, 3), (250, 227, 212), np.uint8)
    >>> rgb[10:20, 10:20] = (100, 50, 140)  # a nucleus does not move the 95th percentile
    >>> background_rgb(rgb).tolist()
    [250.0, 227.0, 212.0]
    """
    sample = rgb[::3, ::3].reshape(-1, 3)
    return np.percentile(sample, percentile, axis=0).astype(np.float32)


def _hist_quantile(hist: np.ndarray, q: float, lo: float, hi: float) -> float:
    """Quantile ``q`` of values whose histogram over ``[lo, hi)`` is ``hist``."""
    c = np.cumsum(hist.ravel())
    if c[-1] <= 0:
        return float("nan")
    k = int(np.searchsorted(c, q * c[-1]))
    return lo + (k + 0.5) * (hi - lo) / len(c)


def background_rgb_fast(rgb: np.ndarray, q: float = 0.95) -> np.ndarray:
    """Like :func:`background_rgb` (quantile ``q`` per channel), from OpenCV histograms.

    Examples
    --------
    >>> import numpy as np
    >>> from lympho_features.synthetic import synthetic_crop
    >>> rgb = synthetic_crop(np.random.default_rng(0)).rgb
    >>> background_rgb_fast(rgb).tolist(), background_rgb(rgb).tolist()
    ([249.0, 227.0, 211.0], [249.0, 227.0, 211.0])
    """
    sub = np.ascontiguousarray(rgb[::3, ::3])
    return np.array(
        [_hist_quantile(cv2.calcHist([sub], [c], None, [256], [0, 256]), q, 0, 256) - 0.5 for c in range(3)],
        np.float32,
    )


def _subsample(rgb: np.ndarray, k: int) -> np.ndarray:
    """``rgb[::k, ::k]`` as a contiguous array, copied pixel by pixel (3 bytes at once), 3x faster."""
    rgb = np.ascontiguousarray(rgb)
    return np.ascontiguousarray(rgb.view(f"V{rgb.shape[2]}")[::k, ::k]).view(np.uint8)


def red_cell_reference(
    rgb: np.ndarray, background: np.ndarray, dark: np.ndarray, od_background: float
) -> tuple[float, float]:
    """Median ``OD_red - OD_blue`` and mean OD of the crop's stained, non-nuclear pixels (mostly red cells).

    Computed on every fourth pixel (in each direction) of the whole crop, where red cells
    outnumber any cytoplasm, so a large lymphocyte does not bias it. Returns
    ``(0.0, nan)`` when the crop has almost no stained pixel.

    Examples
    --------
    >>> import numpy as np
    >>> from lympho_features.segment import background_rgb
    >>> from lympho_features.synthetic import synthetic_crop
    >>> rgb = synthetic_crop(np.random.default_rng(0)).rgb
    >>> blueness, density = red_cell_reference(rgb, background_rgb(rgb), np.zeros(rgb.shape[:2], np.uint8), 0.15)
    >>> round(blueness, 3), round(density, 2)
    (-0.015, 0.9)
    """
    sub = _subsample(rgb, 4)
    od_r, od_g, od_b = optical_density_channels(sub, background)
    return _red_cell_reference(od_r, od_g, od_b, dark, od_background)[:2]


def _red_cell_reference(
    od_r: np.ndarray,
    od_g: np.ndarray,
    od_b: np.ndarray,
    dark: np.ndarray,
    od_background: float,
    od_sum: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """:func:`red_cell_reference` from the OD channels of the crop's every fourth pixel.

    Also returns the median blue chroma ``(OD_red - OD_blue) / OD_sum`` of the
    same pixels (0.0 when too few are stained): the hue of the red cells,
    whatever their density. ``od_sum``: their sum ``cv2.add(cv2.add(od_r, od_g), od_b)``, when the caller has it.
    """
    if od_sum is None:
        od_sum = cv2.add(cv2.add(od_r, od_g), od_b)
    stained = _stained_pixels(od_sum, dark[::4, ::4], od_background)
    if stained is None:
        return 0.0, float("nan"), 0.0
    blueness = cv2.subtract(od_r, od_b)
    med = _hist_quantile(cv2.calcHist([blueness], [0], stained, [200], [-1.0, 1.0]), 0.5, -1.0, 1.0)
    # Stained pixels have od_sum > od_background > 0: the ratio is defined where it is counted.
    chroma = cv2.divide(blueness, cv2.max(od_sum, od_background))
    chroma_med = _hist_quantile(cv2.calcHist([chroma], [0], stained, [200], [-1.0, 1.0]), 0.5, -1.0, 1.0)
    return med, float(cv2.mean(od_sum, mask=stained)[0]), chroma_med


def _stained_pixels(od_sum: np.ndarray, dark_sub: np.ndarray, od_background: float) -> np.ndarray | None:
    """Pixels of ``od_sum`` above ``od_background`` and not dark in ``dark_sub`` (uint8 0/255, the same shape).

    None when fewer than 10: :func:`_red_cell_reference`'s red-cell pixels, given the dark mask already
    taken at every fourth pixel.
    """
    stained = cv2.compare(od_sum, od_background, cv2.CMP_GT)
    stained = cv2.bitwise_and(stained, cv2.bitwise_not(np.ascontiguousarray(dark_sub)))
    return stained if cv2.countNonZero(stained) >= 10 else None


def _masked_mean_u8(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``cv2.mean(img, mask)`` of a uint8 image as float32 (the first three channels), without a masked reduction.

    The sums of uint8 pixels are exact integers whichever way they are added, and
    OpenCV scales them by ``1 / count`` as here; masked reductions are several
    times slower than copying the masked pixels onto zeros and summing all.
    """
    n = cv2.countNonZero(mask)
    scale = 1.0 / n if n else 0.0
    sums = cv2.sumElems(cv2.copyTo(img, mask))
    return np.array([v * scale for v in sums[:3]], np.float32)
