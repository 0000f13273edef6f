"""Haralick texture family (``haralick_``): 13 co-occurrence features of the nucleus at two distances."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .masks import _u8
from .settings import FeatureSettings

HARALICK_NAMES = (
    "asm",
    "contrast",
    "correlation",
    "sum_of_squares",
    "idm",
    "sum_average",
    "sum_variance",
    "sum_entropy",
    "entropy",
    "difference_variance",
    "difference_entropy",
    "imc1",
    "imc2",
)


_ANGLES = ((0, 1), (1, 1), (1, 0), (1, -1))  # (dy, dx): 0, 45, 90, 135 degrees


def _glcm_offsets(distances: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(ay * d, ax * d) for d in distances for ay, ax in _ANGLES]


def glcm_counts(levels_img: np.ndarray, mask: np.ndarray, distances: tuple[int, ...], levels: int) -> np.ndarray:
    """Raw (not symmetrised) co-occurrence counts inside a mask, every offset in one array.

    Pixels outside ``mask`` (and outside the image) take the extra level
    ``levels``, whose pairs are dropped. The image is padded by the largest
    distance, so that every offset is a shift of the flattened image: the pair
    ``(p, p + shift)`` of a pixel near the right edge meets the padding, never
    the next row.

    Returns
    -------
    ndarray of float32, shape (n_distances * 4, levels, levels)
        Distance-major, angles in :data:`_ANGLES` order.

    Examples
    --------
    On a checkerboard every horizontal neighbour has the other level:

    >>> import numpy as np
    >>> board = (np.indices((8, 8)).sum(0) % 2).astype(np.uint8)
    >>> counts = glcm_counts(board, np.ones((8, 8), bool), (1,), 2)
    >>> counts.shape, counts[0].tolist()
    ((4, 2, 2), [[0.0, 28.0], [28.0, 0.0]])
    """
    h, w = levels_img.shape
    side = levels + 1
    offsets = _glcm_offsets(distances)
    pad = max(distances)
    width = w + 2 * pad
    counts = np.zeros((len(offsets), side, side), np.float32)
    if h == 0 or w == 0:
        return counts[:, :levels, :levels]
    small = side <= 256  # codes fit in uint8: one OpenCV 2-D histogram per offset
    code = np.full((h + 2 * pad, width), levels, np.uint8 if small else np.intp)
    np.copyto(code[pad : pad + h, pad : pad + w], levels_img, where=mask, casting="unsafe")
    flat = code.ravel()
    shifts = [dy * width + dx for dy, dx in offsets]  # all >= 1: dy >= 0, and dx > 0 where dy = 0
    n = flat.size - max(shifts)
    k = len(shifts)
    if small and k * side <= 256:
        # One 2-D histogram for all offsets: first code offset * side + level of the first
        # pixel (still a byte), second code the level of the shifted pixel; pairs whose first
        # pixel is outside are skipped by the histogram's mask (fewer pixels to count).
        first = np.empty((k, n), np.uint8)
        np.add(flat[:n], (np.arange(k, dtype=np.uint8) * side)[:, None], out=first)
        second = np.empty((k, n), np.uint8)
        for i, s in enumerate(shifts):
            second[i] = flat[s : s + n]
        inside = np.repeat((flat[:n] < levels).view(np.uint8)[None], k, axis=0)
        hist = cv2.calcHist(
            [first.reshape(1, -1), second.reshape(1, -1)],
            [0, 1],
            inside.reshape(1, -1),
            [k * side, side],
            [0, k * side, 0, side],
        )
        return hist.reshape(k, side, side)[:, :levels, :levels]
    a = flat[:n].reshape(1, -1)
    for i, s in enumerate(shifts):
        b = flat[s : s + n].reshape(1, -1)
        if small:
            counts[i] = cv2.calcHist([a, b], [0, 1], None, [side, side], [0, side, 0, side])
        else:
            counts[i] = np.bincount((a * side + b).ravel(), minlength=side * side).reshape(side, side)
    return counts[:, :levels, :levels]


def masked_glcm(levels_img: np.ndarray, mask: np.ndarray, distance: int | tuple[int, ...], levels: int) -> np.ndarray:
    """Symmetric, normalised grey-level co-occurrence matrices inside a mask.

    Only pixel pairs whose both pixels lie inside ``mask`` are counted, so the
    background never enters the texture of the nucleus. All angles (and all
    distances, when ``distance`` is a tuple) are counted in one pass.

    Returns
    -------
    ndarray, shape (n_distances * n_angles, levels, levels)
        Distance-major: the 4 angles of the first distance, then of the next.

    Examples
    --------
    >>> import numpy as np
    >>> board = (np.indices((8, 8)).sum(0) % 2).astype(np.uint8)
    >>> p = masked_glcm(board, np.ones((8, 8), bool), 1, 2)
    >>> p.shape, p[0].tolist()
    ((4, 2, 2), [[0.0, 0.5], [0.5, 0.0]])
    """
    distances = (distance,) if np.isscalar(distance) else tuple(distance)
    counts = glcm_counts(np.asarray(levels_img), np.asarray(mask, bool), distances, levels).astype(np.float64)
    counts += counts.transpose(0, 2, 1)
    total = counts.sum((1, 2), keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


_GLCM_CONSTANTS: dict[int, tuple] = {}


def _glcm_constants(n: int) -> np.ndarray:
    """Weights of every linear statistic of an ``n``-level GLCM, computed once per ``n``.

    ``flat @ weights`` gives, per flattened matrix, the marginals ``px`` and
    ``py`` (``n`` each), the sum and difference distributions (``2n - 1`` and
    ``n``), then the expectations of i, j, i + j, |i - j| and of i^2, j^2,
    (i + j)^2, (i - j)^2, then of ij and 1 / (1 + (i - j)^2).
    """
    if n not in _GLCM_CONSTANTS:
        i = np.arange(n, dtype=np.float64)
        ii, jj = (a.ravel() for a in np.meshgrid(i, i, indexing="ij"))
        rows = np.arange(n * n)

        def onehot(index, width):
            out = np.zeros((n * n, width))
            out[rows, index.astype(int)] = 1
            return out

        first = np.stack([ii, jj, ii + jj, np.abs(ii - jj)], 1)
        weights = np.concatenate(
            [
                onehot(ii, n),
                onehot(jj, n),
                onehot(ii + jj, 2 * n - 1),
                onehot(np.abs(ii - jj), n),
                first,
                first * first,
                np.stack([ii * jj, 1.0 / (1.0 + (ii - jj) ** 2)], 1),
            ],
            axis=1,
        )
        _GLCM_CONSTANTS[n] = np.ascontiguousarray(weights)
    return _GLCM_CONSTANTS[n]


def haralick_from_glcms(p: np.ndarray) -> np.ndarray:
    """The 13 Haralick features of a stack of normalised GLCMs.

    Every linear statistic comes from one matrix product (variances as
    ``E[x^2] - E[x]^2``), every entropy from one logarithm of the concatenated
    distributions: a few calls for the whole stack.

    Parameters
    ----------
    p : ndarray, shape (n, levels, levels)

    Returns
    -------
    ndarray, shape (n, 13), in :data:`HARALICK_NAMES` order.

    Examples
    --------
    >>> import numpy as np
    >>> p = np.array([[[0.0, 0.5], [0.5, 0.0]], [[0.5, 0.0], [0.0, 0.5]]])  # alternating; uniform patches
    >>> f = haralick_from_glcms(p)
    >>> f.shape
    (2, 13)
    >>> [round(float(v), 3) for v in f[:, HARALICK_NAMES.index("contrast")]]
    [1.0, 0.0]
    """
    eps = 1e-12
    m, n = p.shape[0], p.shape[-1]
    nn = n * n
    flat = np.ascontiguousarray(p, np.float64).reshape(m, nn)
    lin = flat @ _glcm_constants(n)
    k = 5 * n - 1  # the distributions end here
    # Means of i, j, i + j, |i - j|; variances of the same (clipped at 0 against rounding).
    means = lin[:, k : k + 4]
    var = np.maximum(lin[:, k + 4 : k + 8] - means * means, 0.0)
    mu_x, mu_y, sum_average, diff_mean = means.T
    var_x, var_y, sum_variance, difference_variance = var.T
    contrast, exy, idm = lin[:, k + 7], lin[:, k + 8], lin[:, k + 9]
    sdp = np.sqrt(var_x * var_y)
    ok = sdp > eps
    correlation = np.where(ok, (exy - mu_x * mu_y) / np.where(ok, sdp, 1.0), 1.0)
    # Entropies of p, px * py, px, py and the sum and difference distributions: one logarithm.
    pxpy = (lin[:, :n, None] * lin[:, None, n : 2 * n]).reshape(m, nn)
    dist = np.concatenate([flat, pxpy, lin[:, :k]], axis=1)
    logs = np.log2(dist + eps)
    ent = np.add.reduceat(dist * logs, (0, nn, 2 * nn, 2 * nn + n, 2 * nn + 2 * n, 2 * nn + 4 * n - 1), axis=1)
    entropy, hxy2, hx, hy, sum_entropy, difference_entropy = -ent.T
    hxy1 = -np.einsum("ij,ij->i", flat, logs[:, nn : 2 * nn])
    hmax = np.maximum(hx, hy)
    ok = hmax > eps
    imc1 = np.where(ok, (entropy - hxy1) / np.where(ok, hmax, 1.0), 0.0)
    imc2 = np.sqrt(np.maximum(0.0, 1 - np.exp(-2.0 * (hxy2 - entropy))))
    asm = np.einsum("ij,ij->i", flat, flat)
    return np.array(
        [
            asm,
            contrast,
            correlation,
            var_x,  # sum of squares: sum over (i - mu_x)^2 p(i, j)
            idm,
            sum_average,
            sum_variance,
            sum_entropy,
            entropy,
            difference_variance,
            difference_entropy,
            imc1,
            imc2,
        ]
    ).T


def haralick_from_glcm(p: np.ndarray) -> np.ndarray:
    """The 13 Haralick features of one normalised GLCM, in :data:`HARALICK_NAMES` order.

    Examples
    --------
    >>> import numpy as np
    >>> f = haralick_from_glcm(np.array([[0.0, 0.5], [0.5, 0.0]]))
    >>> {n: round(float(v), 3) for n, v in zip(HARALICK_NAMES, f) if n in ("asm", "contrast", "correlation")}
    {'asm': 0.5, 'contrast': 1.0, 'correlation': -1.0}
    """
    return haralick_from_glcms(p[None])[0]


_GREY_LEVELS = np.arange(256, dtype=np.float32)
_QUANTILES = np.array([0.01, 0.99], np.float32)


def quantize(grey: np.ndarray, mask: np.ndarray, levels: int) -> np.ndarray:
    """Grey levels ``0..levels-1`` between the 1st and 99th percentile of the masked pixels.

    A uint8 image gives a uint8 result (through a 256-entry table), any other an int64 one.

    Examples
    --------
    >>> import numpy as np
    >>> grey = np.arange(100, dtype=np.uint8).reshape(10, 10)
    >>> q = quantize(grey, np.ones((10, 10), bool), 4)
    >>> q.dtype, q.min(), q.max(), np.bincount(q.ravel()).tolist()
    (dtype('uint8'), np.uint8(0), np.uint8(3), [25, 24, 25, 26])
    """
    if grey.dtype == np.uint8:
        hist = cv2.calcHist([np.ascontiguousarray(grey)], [0], _u8(mask), [256], [0, 256]).ravel()
        c = np.cumsum(hist)
        lo, hi = np.searchsorted(c, _QUANTILES * c[-1]).tolist()
        # The same arithmetic on the 256 possible grey levels, then a table look-up.
        scaled = np.clip((_GREY_LEVELS - float(lo)) / max(float(hi - lo), 1e-3), 0, 1)
        table = np.minimum((scaled * levels).astype(np.int64), levels - 1)
        if levels <= 256:
            return cv2.LUT(np.ascontiguousarray(grey), table.astype(np.uint8))
        return table[grey]
    grey = np.asarray(grey).astype(np.float32, copy=False)
    lo, hi = percentiles_1_99(grey[mask])
    # (grey - lo) / range in float64 (lo is a float64: grey is promoted, exactly), in place: fewer passes.
    scaled = np.subtract(grey, lo, dtype=np.float64)
    scaled /= max(hi - lo, 1e-3)
    np.clip(scaled, 0, 1, out=scaled)
    scaled *= levels
    q = scaled.astype(np.int64)
    return np.minimum(q, levels - 1, out=q)


def percentiles_1_99(values: np.ndarray) -> tuple[np.float64, np.float64]:
    """``np.percentile(values, [1, 99])`` of a float32 array, the same numbers at a fraction of the cost.

    NumPy's default (linear) method with its arithmetic: the order statistics
    ``k`` and ``k + 1`` around ``(n - 1) q``, their float32 difference,
    interpolated in float64 (from the upper one when the weight is at least
    one half). The four order statistics come from two partitions and two
    minima (:func:`numpy.percentile` partitions at six positions, and its
    Python overhead dominated on a nucleus' few thousand pixels). NaN when
    any value is NaN, as NumPy's. Other dtypes are passed to NumPy.

    Examples
    --------
    >>> import numpy as np
    >>> v = np.random.default_rng(0).random(1001).astype(np.float32)
    >>> [float(x) for x in percentiles_1_99(v)] == np.percentile(v, [1, 99]).tolist()
    True
    """
    values = np.asarray(values).ravel()
    if values.dtype != np.float32:  # the arithmetic below is float32's: anything else goes to NumPy
        lo, hi = np.percentile(values, [1, 99])
        return np.float64(lo), np.float64(hi)
    n = values.size
    if n == 0:
        raise ValueError("percentiles of an empty array")
    k_lo, k_hi = math.floor((n - 1) * 0.01), math.floor((n - 1) * 0.99)
    if n < 64:  # few values: sorting them is as cheap
        part = np.sort(values)
        if np.isnan(part[-1]):
            return np.float64(np.nan), np.float64(np.nan)
        stats = (part[k_lo], part[min(k_lo + 1, n - 1)], part[k_hi], part[min(k_hi + 1, n - 1)])
    else:  # k_lo + 1 < k_hi < n - 1
        part = np.partition(values, k_lo)
        rest = part[k_lo + 1 :]  # a view: partitioned in place
        rest.partition(k_hi - k_lo - 1)
        above_hi = rest[k_hi - k_lo :].min()  # NaN sorts last: any NaN is here, and min() propagates it
        if np.isnan(above_hi):
            return np.float64(np.nan), np.float64(np.nan)
        stats = (part[k_lo], rest[: k_hi - k_lo].min(), rest[k_hi - k_lo - 1], above_hi)
    out = []
    for q, a, b in ((0.01, stats[0], stats[1]), (0.99, stats[2], stats[3])):
        virtual = (n - 1) * q
        gamma = virtual - math.floor(virtual)
        diff = float(b - a)  # float32 difference, as NumPy's lerp
        out.append(np.float64(float(b) - diff * (1 - gamma) if gamma >= 0.5 else float(a) + diff * gamma))
    return out[0], out[1]


_HARALICK_COLUMNS: dict[tuple[int, ...], list[str]] = {}


def haralick_features(
    grey: np.ndarray, mask: np.ndarray, settings: FeatureSettings = FeatureSettings(), q: np.ndarray | None = None
) -> dict[str, float]:
    """Angle-averaged Haralick features of ``grey`` inside ``mask``.

    The grey levels are rescaled between the 1st and 99th percentile of the
    masked pixels before quantisation, so the texture measures chromatin
    pattern rather than overall stain intensity.

    Parameters
    ----------
    q : ndarray of int, optional
        ``grey`` already quantised by :func:`quantize` (quantise once, reuse).

    Returns
    -------
    dict
        ``haralick_{name}_d{distance}`` for each of the 13 features and each
        distance in ``settings.haralick_distances``.

    Examples
    --------
    >>> import numpy as np
    >>> from lympho_features.features import FeatureSettings
    >>> board = (np.indices((8, 8)).sum(0) % 2 * 200).astype(np.uint8)
    >>> f = haralick_features(board, np.ones((8, 8), bool), FeatureSettings(haralick_levels=2, haralick_distances=(1,)))
    >>> len(f), round(f["haralick_contrast_d1"], 3), round(f["haralick_asm_d1"], 3)
    (13, 0.5, 0.5)
    """
    levels = settings.haralick_levels
    distances = tuple(settings.haralick_distances)
    names = _HARALICK_COLUMNS.get(distances)
    if names is None:
        names = _HARALICK_COLUMNS[distances] = [f"haralick_{n}_d{d}" for d in distances for n in HARALICK_NAMES]
    mask = np.asarray(mask, bool)
    if cv2.countNonZero(_u8(mask)) < 16:
        return dict.fromkeys(names, float("nan"))
    if q is None:
        q = quantize(grey, mask, levels)
    counts = glcm_counts(q, mask, distances, levels)
    total = counts.sum((1, 2), dtype=np.float64)  # exact: integer counts
    valid = total > 0
    if valid.all():  # the usual case: average the angles of every distance at once
        stack = counts.astype(np.float64)
        stack += stack.transpose(0, 2, 1)
        stack /= (2 * total)[:, None, None]
        means = haralick_from_glcms(stack).reshape(len(distances), len(_ANGLES), 13).mean(1)
        return dict(zip(names, means.ravel().tolist(), strict=True))
    stack = counts.astype(np.float64)
    stack += stack.transpose(0, 2, 1)
    feats = np.full((len(stack), 13), np.nan)
    if valid.any():
        feats[valid] = haralick_from_glcms(stack[valid] / (2 * total[valid])[:, None, None])
    out: dict[str, float] = {}
    for j in range(len(distances)):
        block = feats[j * len(_ANGLES) : (j + 1) * len(_ANGLES)]
        ok = ~np.isnan(block[:, 0])
        mean = block[ok].mean(0) if ok.any() else np.full(13, np.nan)
        out.update(zip(names[j * 13 : (j + 1) * 13], mean.tolist(), strict=True))
    return out
