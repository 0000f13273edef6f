""":func:`cell_features`: every family measured on one segmented crop."""

from __future__ import annotations

import cv2
import numpy as np

from ..segment import Segmentation, _disk, optical_density_channels
from .color import background_reference, color_features
from .granularity import granularity_features
from .haralick import haralick_features, quantize
from .lbp import lbp_features
from .masks import _u8, largest_contour, smooth_inside_all
from .nc import nc_features
from .nucleoli import nucleoli_features
from .radial import radial_features
from .settings import FeatureSettings
from .shape import shape_features


def box_moments(raw: tuple[float, ...], x0: int, y0: int) -> dict[str, float]:
    """``cv2.moments(mask[y0:, x0:], binaryImage=True)`` from the raw moments of ``mask``.

    ``raw`` is ``(m00, m10, m01, m20, m11, m02)``: integer sums, exact after the
    shift of origin; the central moments follow with OpenCV's own arithmetic.
    Only the moments the features read are returned.

    Examples
    --------
    >>> import cv2, numpy as np
    >>> mask = np.zeros((6, 6), np.uint8)
    >>> mask[2:4, 1:3] = 1
    >>> m = cv2.moments(mask, binaryImage=True)
    >>> raw = tuple(m[k] for k in ("m00", "m10", "m01", "m20", "m11", "m02"))
    >>> box_moments(raw, 1, 2) == {k: cv2.moments(mask[2:, 1:], binaryImage=True)[k] for k in box_moments(raw, 1, 2)}
    True
    """
    m00, m10, m01, m20, m11, m02 = raw
    m20 = m20 - 2 * x0 * m10 + x0 * x0 * m00
    m11 = m11 - y0 * m10 - x0 * m01 + x0 * y0 * m00
    m02 = m02 - 2 * y0 * m01 + y0 * y0 * m00
    m10 = m10 - x0 * m00
    m01 = m01 - y0 * m00
    cx = cy = 0.0
    if abs(m00) > 2.220446049250313e-16:  # DBL_EPSILON, as OpenCV
        inv = 1.0 / m00
        cx, cy = m10 * inv, m01 * inv
    return {
        "m00": m00,
        "m10": m10,
        "m01": m01,
        "mu20": m20 - m10 * cx,
        "mu11": m11 - m10 * cy,
        "mu02": m02 - m01 * cy,
    }


def _roi_od_sum(seg: Segmentation, top: tuple[int, int, int], width: int) -> np.ndarray | None:
    """The segmentation's total OD over rows ``top[0]:top[1]``, columns ``top[2]:top[2] + width``, if it has them."""
    if seg.od_sum is None or seg.roi is None:
        return None
    ry0, ry1, rx0, rx1 = seg.roi
    y0, y1, x0 = top
    if y0 < ry0 or y1 > ry1 or x0 < rx0 or x0 + width > rx1 or seg.od_sum.shape != (ry1 - ry0, rx1 - rx0):
        return None
    return np.ascontiguousarray(seg.od_sum[y0 - ry0 : y1 - ry0, x0 - rx0 : x0 - rx0 + width])


#: Fewest pixels a nucleus' core may have for Haralick to be read on it (else the whole nucleus).
MIN_CORE_PIXELS = 30


def nucleus_core(nucleus: np.ndarray, inset: int) -> np.ndarray:
    """The nucleus eroded by ``inset`` pixels (an ellipse), where Haralick's co-occurrences are counted.

    The nucleus' rim is where its density meets the cytoplasm's, and its exact position moves with the stain (a
    nuclear stain 30 % weaker moves the outline inwards, -2 % of the area on the median challenge crop):
    co-occurrence contrast and correlation read the rim's strong edge as much as the chromatin. Granularity and
    the nucleoli keep the whole nucleus (the cell-type gate reads them; nucleoli already ignore spots at the
    outline). The whole nucleus when ``inset`` is 0 or the core has under :data:`MIN_CORE_PIXELS` pixels.

    Examples
    --------
    >>> import numpy as np
    >>> disk = np.hypot(*np.mgrid[-10:11, -10:11]) <= 8
    >>> int(disk.sum()), int(nucleus_core(disk, 2).sum()), nucleus_core(disk, 0) is disk
    (197, 107, True)
    """
    if inset <= 0:
        return nucleus
    core = cv2.erode(_u8(nucleus), _disk(inset))
    return core.view(bool) if cv2.countNonZero(core) >= MIN_CORE_PIXELS else nucleus


def cell_features(
    rgb: np.ndarray, seg: Segmentation, settings: FeatureSettings = FeatureSettings()
) -> dict[str, float]:
    """All feature families of one segmented crop.

    Features are computed on the bounding box of the cell (the background and
    red-cell references come from the segmentation, measured on the whole
    crop), which keeps the cost independent of how many red cells surround it.
    The chromatin-texture families (Haralick, LBP, granularity, nucleoli) see the
    nucleus smoothed inside its mask by ``settings.texture_sigma`` pixels
    (:func:`~lympho_features.features.masks.smooth_inside`), the radial profile
    its raw optical density.

    Examples
    --------
    >>> import numpy as np
    >>> from lympho_features.segment import segment_cell
    >>> from lympho_features.synthetic import synthetic_crop
    >>> crop = synthetic_crop(np.random.default_rng(0))
    >>> f = cell_features(crop.rgb, segment_cell(crop.rgb))
    >>> len(f), f["nucleus_area"], round(f["nc_ratio"], 3)
    (110, 2915.0, 0.656)
    """
    out: dict[str, float] = {}
    nucleus, cell = seg.nucleus_mask, seg.cell_mask
    if seg.box is not None and nucleus.any():
        y0, y1, x0, x1 = seg.box
    elif nucleus.any():
        ys, xs = np.nonzero(cell)
        y0, y1, x0, x1 = max(ys.min() - 2, 0), ys.max() + 3, max(xs.min() - 2, 0), xs.max() + 3
    else:
        y0, y1, x0, x1 = 0, 0, 0, 0
    if y1 > y0 and x1 > x0:
        n_box, c_box = nucleus[y0:y1, x0:x1], cell[y0:y1, x0:x1]
        rgb_box = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    else:  # nothing segmented: every family returns NaN
        n_box, c_box = np.zeros((1, 1), bool), np.zeros((1, 1), bool)
        rgb_box = np.zeros((1, 1, 3), np.uint8)
    if seg.nucleus_contour is not None and seg.nucleus_moments is not None and y1 > y0:
        # The segmentation's own trace of the nucleus and its moments, moved to the box.
        n_contour = seg.nucleus_contour - np.array((x0, y0), np.int32)
        mn = box_moments(seg.nucleus_moments, x0, y0)
    else:
        n_contour = largest_contour(n_box)
        mn = cv2.moments(_u8(n_box), binaryImage=True)
    c_contour = largest_contour(c_box)
    mc = cv2.moments(_u8(c_box), binaryImage=True)
    out.update(nc_features(n_box, c_box, n_contour, (mn, mc)))
    out.update(shape_features(n_box, "nucleus", n_contour, mn))
    out.update(shape_features(c_box, "cell", c_contour, mc))
    bg = seg.background if seg.background is not None else background_reference(rgb, settings)
    rbc_od = seg.diagnostics.get("rbc_od") if seg.diagnostics else None
    if n_box.any():
        # Texture families work on the nucleus' own box (1-pixel margin): fewer pixels, same result.
        bx, by, bw, bh = cv2.boundingRect(_u8(n_box))
        ny0, nx0 = max(0, by - 1), max(0, bx - 1)
        sl = (slice(ny0, by + bh + 1), slice(nx0, bx + bw + 1))
        rgb_n = np.ascontiguousarray(rgb_box[sl])
        n_nuc = np.ascontiguousarray(n_box[sl])
        grey = cv2.cvtColor(rgb_n, cv2.COLOR_RGB2GRAY)
        od_sum = _roi_od_sum(seg, (y0 + sl[0].start, y0 + sl[0].start + len(rgb_n), x0 + sl[1].start), rgb_n.shape[1])
        if od_sum is None or seg.background is not bg:
            od_r, od_g, od_b = optical_density_channels(rgb_n, bg)
            od_sum = cv2.add(cv2.add(od_r, od_g), od_b)
        od_texture = od_sum
        if settings.texture_sigma > 0:
            grey_f, od_texture = smooth_inside_all([grey, od_sum], n_nuc, settings.texture_sigma)
            grey = np.clip(np.rint(grey_f), 0, 255).astype(np.uint8)  # uint8: the fast quantisation path
        n_core = nucleus_core(n_nuc, settings.haralick_inset)
        # Haralick reads the nucleus' optical density, not its grey level: OD scales with the stain's strength
        # and a camera's gamma (grey levels bend with them), so its percentile-rescaled levels cancel both.
        q = quantize(od_texture, n_core, settings.haralick_levels)
    else:
        grey = od_sum = od_texture = np.zeros((1, 1), np.float32)
        n_nuc = n_core = np.zeros((1, 1), bool)
        q = None
    out.update(haralick_features(grey, n_core, settings, q=q))
    out.update(lbp_features(grey, n_nuc))
    out.update(granularity_features(od_texture, n_nuc))
    out.update(radial_features(od_sum, n_nuc))
    out.update(nucleoli_features(od_texture, n_nuc, settings))
    out.update(color_features(rgb_box, n_box, c_box, settings, bg, rbc_od))
    return out
