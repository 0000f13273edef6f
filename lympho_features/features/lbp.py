"""Local-binary-pattern family (``lbp_``): fine chromatin patterns of the nucleus."""

from __future__ import annotations

import cv2
import numpy as np

#: Uniform local-binary-pattern bins: 0..8 set neighbours (uniform patterns), 9 non-uniform.
LBP_BINS = 10


_LBP_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def _lbp_table() -> np.ndarray:
    """Bin of each 8-bit neighbour code: its number of set bits if uniform (<= 2 transitions), else 9."""
    table = np.empty(256, np.intp)
    for v in range(256):
        b = [(v >> k) & 1 for k in range(8)]
        trans = sum(b[k] != b[(k + 1) % 8] for k in range(8))
        table[v] = sum(b) if trans <= 2 else 9
    return table


_LBP_TABLE = _lbp_table()
_LBP_COLUMNS = tuple([f"lbp_nucleus_u{k}" for k in range(9)] + ["lbp_nucleus_nonuniform", "lbp_nucleus_entropy"])
_LBP_SELECT = np.uint64(sum((1 << k) << (8 * k) for k in range(8)))
_LBP_GATHER = np.uint64(0x0101010101010101)


def lbp_features(grey: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Rotation-invariant uniform local binary patterns (8 neighbours, radius 1) inside ``mask``.

    Each pixel is coded by which of its 8 neighbours are at least as bright;
    uniform codes (at most two 0/1 transitions around the circle) are binned
    by their number of brighter neighbours (``lbp_nucleus_u0`` dark spot ...
    ``lbp_nucleus_u8`` bright spot, ``u4`` an edge), the rest in
    ``lbp_nucleus_nonuniform``. Also ``lbp_nucleus_entropy`` of the histogram.

    Examples
    --------
    In a flat patch every neighbour is "at least as bright": all pixels are bright spots (``u8``).

    >>> import numpy as np
    >>> f = lbp_features(np.full((16, 16), 100, np.uint8), np.ones((16, 16), bool))
    >>> f["lbp_nucleus_u8"], f["lbp_nucleus_nonuniform"], f["lbp_nucleus_entropy"] == 0
    (1.0, 0.0, True)
    """
    names = _LBP_COLUMNS
    g = grey if grey.dtype == np.uint8 else np.asarray(grey, np.float64)  # types OpenCV compares exactly
    h, w = g.shape
    if h < 3 or w < 3:
        return dict.fromkeys(names, float("nan"))
    c = g[1:-1, 1:-1]
    # One bit per neighbour (at least as bright as the centre), packed into an 8-bit code
    # per pixel (bit k for neighbour k); a 256-entry table gives each code its bin.
    # The 8 comparisons (0 or 255) are the 8 bytes of one uint64 per pixel: keeping bit k of
    # byte k and multiplying by 0x0101010101010101 adds all bytes into the top one.
    bits = cv2.merge(
        [cv2.compare(g[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx], c, cv2.CMP_GE) for dy, dx in _LBP_OFFSETS]
    )
    word = bits.view(np.uint64)
    word &= _LBP_SELECT
    word *= _LBP_GATHER
    code = bits[..., 7]  # little-endian: the top byte
    counts = np.bincount(code[mask[1:-1, 1:-1]], minlength=256)
    hist = np.bincount(_LBP_TABLE, weights=counts, minlength=LBP_BINS)
    total = hist.sum()
    if total < 16:
        return dict.fromkeys(names, float("nan"))
    p = hist / total
    nz = p[p > 0]
    return dict(zip(names, [*p.tolist(), float(-(nz * np.log2(nz)).sum())], strict=True))
