"""How a crop was acquired: JPEG quality, glass and red-cell colour, sharpness.

These measurements describe the scanner, the stain and the compression
rather than the cell: ``lympho extract`` stores them per crop as ``acq_*``
columns of ``cells.parquet`` (their per-patient medians in
``patients.parquet``), they never enter a model, and
:mod:`lympho_features.domain` compares a new patient's with those of the
model's training patients, so that ``lympho predict`` can say when a patient
was acquired unlike anything the model has seen.

Everything is cheap: the JPEG quality comes from the quantisation tables in
the file's header (no decoding), the colours and the sharpness from what the
segmentation computed already (:class:`~lympho_features.segment.Segmentation`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

#: The luminance quantisation table of the JPEG standard (ITU-T T.81, Annex K, table K.1), in natural
#: (row-major) order: what the IJG library (libjpeg, used by OpenCV, Pillow and most scanners' software)
#: scales by the quality setting.
STANDARD_LUMINANCE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    np.float64,
)

#: Zig-zag order of an 8x8 block: entry k of a DQT table is the coefficient at natural (row-major) index
#: ZIGZAG[k]. The scan runs along the anti-diagonals row + col = d, downwards when d is odd, upwards when even.
ZIGZAG = np.array(
    [
        8 * r + c
        for r, c in sorted(
            ((r, c) for r in range(8) for c in range(8)),
            key=lambda p: (p[0] + p[1], p[0] if (p[0] + p[1]) % 2 else -p[0]),
        )
    ]
)


def ijg_table(quality: int, base: np.ndarray = STANDARD_LUMINANCE) -> np.ndarray:
    """The quantisation table the IJG library writes at ``quality`` (1..100), natural order.

    ``scale = 5000 / q`` below 50, ``200 - 2 q`` from 50; each entry is
    ``(base * scale + 50) // 100`` clipped to 1..255 (baseline tables).
    """
    q = int(min(100, max(1, quality)))
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((base * scale + 50) // 100, 1, 255)


#: Every quality's luminance table, flattened: row q - 1 is quality q.
_LOG_IJG_TABLES = np.log(np.stack([ijg_table(q).ravel() for q in range(1, 101)]))


def _dqt_segments(data: bytes) -> tuple[bytes, ...]:
    """The payloads of a JPEG file's DQT markers, in file order (empty when ``data`` is not a JPEG).

    Walks the marker segments of the header up to the start of the scan; a
    truncated or malformed header stops the walk there.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:  # SOI
        return ()
    out = []
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            break  # not a marker: corrupt header
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the tables all come before
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2 or pos + 2 + length > n:
            break
        if marker == 0xDB:
            out.append(data[pos + 4 : pos + 2 + length])
        pos += 2 + length
    return tuple(out)


def _parse_dqt(payloads: tuple[bytes, ...]) -> dict[int, np.ndarray]:
    tables: dict[int, np.ndarray] = {}
    for seg in payloads:
        pos = 0
        while pos < len(seg):
            precision, table_id = seg[pos] >> 4, seg[pos] & 0x0F
            size = 128 if precision else 64
            if pos + 1 + size > len(seg) or table_id > 3:
                break
            raw = np.frombuffer(seg, ">u2" if precision else np.uint8, 64, pos + 1).astype(np.float64)
            natural = np.empty(64)
            natural[ZIGZAG] = raw
            tables[table_id] = natural
            pos += 1 + size
    return tables


def jpeg_quantization_tables(data: bytes) -> dict[int, np.ndarray]:
    """The quantisation tables of a JPEG file, read from its DQT markers.

    Parameters
    ----------
    data : bytes
        The file's bytes (only the header, up to the start of the scan, is read).

    Returns
    -------
    dict of int to ndarray
        Table id (0..3) to its 64 values in natural (row-major) order, as
        float64. Empty when ``data`` is not a JPEG or holds no table; a
        truncated or malformed header stops the reading there (the tables
        read so far are returned).
    """
    return _parse_dqt(_dqt_segments(data))


@lru_cache(maxsize=256)
def _quality_of_tables(payloads: tuple[bytes, ...]) -> float:
    # Cached on the raw tables: the crops of one scanner share them, so a cohort costs one estimate.
    tables = _parse_dqt(payloads)
    if not tables:
        return float("nan")
    table = tables.get(0, tables[min(tables)])
    # Log ratios: a table twice as coarse is as far away at quality 20 as at 90. The rounding of small
    # entries makes neighbouring high qualities differ in a few entries only, so ties go to the higher.
    err = np.abs(np.log(np.maximum(table, 1.0)) - _LOG_IJG_TABLES).mean(axis=1)
    best = np.flatnonzero(err <= err.min() + 1e-12)[-1]
    return float(best + 1)


def jpeg_quality(data: bytes) -> float:
    """Estimated IJG quality (1..100) a JPEG file was saved at, from its luminance quantisation table.

    The file's table 0 (luminance, in every IJG-made file) is compared with
    the standard table scaled by each quality (:func:`ijg_table`); the
    quality whose table is closest (smallest mean absolute log ratio) wins.
    Files written by other encoders with their own tables get the quality
    whose compression is closest. The JPEG quality is what compression
    artefacts (8x8 blocks, lost fine texture) depend on; it is read from the
    header only, so it costs microseconds.

    Parameters
    ----------
    data : bytes
        The file's bytes.

    Returns
    -------
    float
        The quality, or NaN when ``data`` is not a JPEG with a quantisation
        table (PNG, TIFF: lossless or unknown compression).
    """
    return _quality_of_tables(_dqt_segments(data))


#: The per-crop acquisition columns of cells.parquet (each a float; NaN when not measurable), with their meaning.
ACQUISITION_COLUMNS = {
    "acq_jpeg_quality": "JPEG quality the crop was saved at (1-100, from its quantisation table; NaN if not JPEG)",
    "acq_background_red": "red level (0-255) of the glass: the brightest class of the crop",
    "acq_background_green": "green level (0-255) of the glass",
    "acq_background_blue": "blue level (0-255) of the glass",
    "acq_rbc_od": "mean total optical density of the red cells (stain intensity and smear thickness)",
    "acq_rbc_chroma": "median blue chroma (OD_red - OD_blue) / OD_sum of the red cells (stain hue)",
    "acq_sharpness": "nucleus sharpness: std of the Laplacian of its optical density over its std (focus, "
    "compression, resampling)",
    "acq_edge_sigma": "blur of the crop's strongest edges at the canonical scale, before it is brought to one focus "
    "(lympho_features.focus.edge_sigma: focus, optics, resampling)",
}

#: Prefix of the acquisition columns: never model inputs.
ACQUISITION_PREFIX = "acq_"


def crop_acquisition(seg, data: bytes | None = None, rgb: np.ndarray | None = None) -> dict[str, float]:
    """The ``acq_*`` measurements of one crop, from its segmentation and its file's bytes.

    Parameters
    ----------
    seg : Segmentation
        :func:`~lympho_features.segment.segment_cell`'s result for the crop:
        its background reference (the glass), red-cell reference and nucleus
        sharpness are reused as they are (no extra pass over the pixels).
    data : bytes, optional
        The crop file's bytes, for the JPEG quality (NaN without them).
    rgb : ndarray, optional
        The crop, for the glass colour of a crop whose segmentation stopped
        before measuring it (no nucleus found): the 95th percentile of each
        channel on a subsample.

    Returns
    -------
    dict of str to float
        Every key of :data:`ACQUISITION_COLUMNS`; NaN where the crop gave no
        value (no nucleus found: no sharpness; no red cell: no red-cell colour).
    """
    nan = float("nan")
    bg = seg.background
    diag = seg.diagnostics or {}
    out = {
        "acq_jpeg_quality": jpeg_quality(data) if data is not None else nan,
        "acq_background_red": nan,
        "acq_background_green": nan,
        "acq_background_blue": nan,
        "acq_rbc_od": float(diag.get("rbc_od", nan)),
        "acq_rbc_chroma": float(diag.get("rbc_chroma", nan)) if math.isfinite(diag.get("rbc_od", nan)) else nan,
        # The segmentation's one sharpness measure; qc_sharpness is the same number, but NaN for a dense nucleus
        # (no texture to judge focus by), which still describes the acquisition here.
        "acq_sharpness": float(diag.get("sharpness", nan)),
        # segment_at_canonical's reading of the crop's focus, before the blur that brings it to one focus.
        "acq_edge_sigma": float(diag.get("edge_sigma", nan)),
    }
    if bg is None and rgb is not None and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size:
        from .segment import background_rgb_fast

        bg = background_rgb_fast(rgb)
    if bg is not None and len(bg) == 3:
        out["acq_background_red"], out["acq_background_green"], out["acq_background_blue"] = (float(v) for v in bg)
    return out
