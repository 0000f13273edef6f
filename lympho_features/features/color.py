"""Colour family (``color_``): optical density of nucleus and cytoplasm against the background and red cells."""

from __future__ import annotations

import cv2
import numpy as np

from ..segment import background_rgb_fast, optical_density
from .masks import _u8
from .settings import FeatureSettings


def background_reference(rgb: np.ndarray, settings: FeatureSettings = FeatureSettings()) -> np.ndarray:
    """Per-channel intensity of the unstained background (95th percentile of each channel).

    Examples
    --------
    >>> import numpy as np
    >>> background_reference(np.full((8, 8, 3), 240, np.uint8)).tolist()
    [240.0, 240.0, 240.0]
    """
    return background_rgb_fast(rgb)


def color_features(
    rgb: np.ndarray,
    nucleus_mask: np.ndarray,
    cell_mask: np.ndarray,
    settings: FeatureSettings = FeatureSettings(),
    background: np.ndarray | None = None,
    rbc_od: float | None = None,
) -> dict[str, float]:
    """Colour of nucleus and cytoplasm in optical density relative to the background and red cells.

    OD is ``log(I_background / I)`` per channel with the crop's own background
    as reference, so a slide scanned brighter or stained lighter moves less.
    ``color_{region}_od_{channel}_fraction`` is that channel's share of the
    total OD (hue of the stain, independent of its density);
    ``color_{region}_od_rbc_ratio`` the total OD over the red cells' of the
    same crop (density relative to an internal standard).
    ``color_cytoplasm_basophilia`` is the cytoplasm's ``OD_red - OD_blue``
    (blue cytoplasm, rich in RNA, absorbs red light).

    Parameters
    ----------
    background : ndarray (3,), optional
        RGB of the background (default: :func:`background_reference` of ``rgb``).
    rbc_od : float, optional
        Mean total OD of the crop's red cells (from the segmentation); NaN ratios without it.

    Examples
    --------
    A purple nucleus in a pale blue cytoplasm, on grey glass:

    >>> import numpy as np
    >>> yy, xx = np.mgrid[:40, :40]
    >>> r = np.hypot(yy - 20, xx - 20)
    >>> rgb = np.full((40, 40, 3), 240, np.uint8)
    >>> rgb[r <= 15] = (180, 170, 220)
    >>> rgb[r <= 9] = (100, 50, 140)
    >>> f = color_features(rgb, r <= 9, r <= 15, background=np.array([240.0, 240.0, 240.0]), rbc_od=1.0)
    >>> round(f["color_nucleus_od_mean"], 3), round(f["color_nucleus_od_green_fraction"], 3)
    (2.959, 0.525)
    >>> round(f["color_cytoplasm_basophilia"], 3)  # OD red - OD blue: a blue cytoplasm
    0.2
    """
    ref = background_reference(rgb, settings) if background is None else background
    od = optical_density(rgb, ref)
    n8 = _u8(nucleus_mask)
    cyto8 = cv2.subtract(_u8(cell_mask), n8)  # cell and not nucleus (0/1, saturating)
    ratio_ok = rbc_od is not None and np.isfinite(rbc_od) and rbc_od > 0
    nan = float("nan")
    values: list[float] = []
    for region, m8 in (("nucleus", n8), ("cytoplasm", cyto8)):
        if cv2.countNonZero(m8) >= 3:
            mu, sd = cv2.meanStdDev(od, mask=m8)
            means, sds = mu.ravel().tolist(), sd.ravel().tolist()
            total = means[0] + means[1] + means[2]  # float(np.sum) of three: the same additions
            fractions = [v / total for v in means] if total > 0 else [nan] * 3
            for c in range(3):
                values += (means[c], sds[c], fractions[c])
            values += (total, total / rbc_od if ratio_ok else nan)
            if region == "cytoplasm":
                values.append(means[0] - means[2])
        else:
            values += [nan] * (11 if region == "nucleus" else 12)
    return dict(zip(_COLOR_COLUMNS, values, strict=True))


_COLOR_COLUMNS = tuple(
    [
        f"color_{region}_{name}"
        for region in ("nucleus", "cytoplasm")
        for name in (
            *(f"od_{c}_{s}" for c in ("red", "green", "blue") for s in ("mean", "std", "fraction")),
            "od_mean",
            "od_rbc_ratio",
            *(("basophilia",) if region == "cytoplasm" else ()),
        )
    ]
)
