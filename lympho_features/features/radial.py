"""Radial family (``radial_``): chromatin density from the rim of the nucleus to its centre."""

from __future__ import annotations

import cv2
import numpy as np

from .masks import _pad1, _u8

RADIAL_RINGS = 4
_RADIAL_COLUMNS = tuple([f"radial_nucleus_ring{k + 1}" for k in range(RADIAL_RINGS)] + ["radial_nucleus_rim_centre"])


def radial_features(od: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Chromatin density from the rim of the nucleus to its centre.

    The nucleus is cut in :data:`RADIAL_RINGS` rings of equal relative depth
    (distance to the outline divided by its maximum); ``radial_nucleus_ring{k}``
    is the mean OD of ring ``k`` (1 = rim) divided by the nucleus mean, and
    ``radial_nucleus_rim_centre`` the rim's mean over the centre's.

    Examples
    --------
    A nucleus twice as dense at its rim as at its centre:

    >>> import numpy as np
    >>> yy, xx = np.mgrid[:41, :41]
    >>> r = np.hypot(yy - 20, xx - 20)
    >>> od = np.where(r > 12, 2.0, 1.0).astype(np.float32)
    >>> f = radial_features(od, r <= 18)
    >>> f["radial_nucleus_rim_centre"], round(f["radial_nucleus_ring1"], 2)
    (2.0, 1.28)
    """
    names = _RADIAL_COLUMNS
    m8 = _u8(mask)
    if cv2.countNonZero(m8) < 16:
        return dict.fromkeys(names, float("nan"))
    dist = cv2.distanceTransform(_pad1(m8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    d = dist[mask]
    ring = np.minimum((d / d.max() * RADIAL_RINGS).astype(int), RADIAL_RINGS - 1)
    vals = od[mask].astype(np.float64)
    sums = np.bincount(ring, weights=vals, minlength=RADIAL_RINGS).tolist()
    counts = np.bincount(ring, minlength=RADIAL_RINGS).tolist()
    mean = float(vals.mean())
    nan = float("nan")
    means = [sm / c if c > 0 else nan for sm, c in zip(sums, counts, strict=True)]
    values = [v / mean if mean > 0 else nan for v in means]
    values.append(means[0] / means[-1] if means[-1] > 0 else nan)
    return dict(zip(names, values, strict=True))
