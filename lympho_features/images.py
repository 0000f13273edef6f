"""Decoding crop files safely: the format and size are read from the header before any pixel.

Only JPEG, PNG, TIFF and BMP are accepted, whatever the file's suffix; a decompression bomb
or an oversized file is refused before decoding, and every failure is an :class:`ImageError`
whose message is the skip reason recorded for that file. :mod:`lympho_features.dataset`
re-exports these names (and reads crops of a data folder through them).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError

#: Decompression-bomb guard: crops are 224x224; refuse anything absurdly large.
MAX_PIXELS = 4096 * 4096

#: Largest crop file read into memory (crops are a few kB).
MAX_FILE_BYTES = 64 * 1024 * 1024

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header; checks the data ends with an end-of-image marker."""
    i, n = 2, len(data)
    size, sos = None, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageError(f"corrupt JPEG header (byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            raise ImageError(f"corrupt JPEG header (segment length {length})")
        if marker in _SOF_MARKERS and size is None:
            if i + 9 > n:
                break
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            size = (width, height)
        if marker == 0xDA:
            sos = i
            break
        i += 2 + length
    if size is None or sos is None:
        raise ImageError("truncated JPEG (header incomplete)")
    if data.rfind(b"\xff\xd9") < sos:
        raise ImageError("truncated JPEG (no end-of-image marker)")
    return size


def _tiff_size(data: bytes) -> tuple[int, int]:
    order = "little" if data[:2] == b"II" else "big"
    if len(data) < 8:
        raise ImageError("truncated TIFF header")
    off = int.from_bytes(data[4:8], order)
    if off + 2 > len(data):
        raise ImageError("truncated TIFF header")
    count = int.from_bytes(data[off : off + 2], order)
    found: dict[int, int] = {}
    for k in range(count):
        e = off + 2 + 12 * k
        if e + 12 > len(data):
            break
        tag, typ = int.from_bytes(data[e : e + 2], order), int.from_bytes(data[e + 2 : e + 4], order)
        if tag in (256, 257):
            if typ == 3:
                found[tag] = int.from_bytes(data[e + 8 : e + 10], order)
            elif typ == 4:
                found[tag] = int.from_bytes(data[e + 8 : e + 12], order)
    if 256 not in found or 257 not in found:
        raise ImageError("TIFF header without image size")
    return found[256], found[257]


def image_header(data: bytes) -> tuple[str, int, int]:
    """Format and size of an image, read from its header without decoding it.

    Only JPEG, PNG, TIFF and BMP are accepted, whatever the file's suffix.
    A JPEG without its end-of-image marker or a PNG without its ``IEND``
    chunk is reported as truncated.

    Returns
    -------
    (format, width, height)

    Raises
    ------
    ImageError
        Unknown format, or a header that is truncated or corrupt.
    """
    if data[:3] == b"\xff\xd8\xff":
        return ("jpeg", *_jpeg_size(data))
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("truncated or corrupt PNG header")
        if data.rfind(b"IEND") < 33:
            raise ImageError("truncated PNG (no IEND chunk)")
        return "png", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ("tiff", *_tiff_size(data))
    if data[:2] == b"BM":
        if len(data) < 26:
            raise ImageError("truncated BMP header")
        w = int.from_bytes(data[18:22], "little", signed=True)
        h = int.from_bytes(data[22:26], "little", signed=True)
        return "bmp", abs(w), abs(h)
    raise ImageError("not an image (not JPEG, PNG, TIFF or BMP)")


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array.

    The size is read from the header first, so a decompression bomb is
    refused before any pixel is decoded. Grayscale images are replicated to
    three channels, alpha is dropped and 16-bit images are scaled to 8 bits.

    Raises
    ------
    ImageError
        Empty, truncated or non-image data, or an image above ``max_pixels``.
    """
    if not data:
        raise ImageError("empty file")
    fmt, width, height = image_header(data)
    if width <= 0 or height <= 0:
        raise ImageError(f"{fmt.upper()} header gives an empty image ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(f"image too large ({width}x{height} pixels, limit {max_pixels})")
    buf = np.frombuffer(data, np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises for some corrupt files
        raise ImageError(f"cannot decode {fmt.upper()}: {' '.join(str(exc).split())[:200]}") from None
    if img is None or img.size == 0:
        raise ImageError(f"not a readable {fmt.upper()} image (truncated or corrupt)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(f"image too large ({img.shape[1]}x{img.shape[0]} pixels, limit {max_pixels})")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise ImageError(f"unsupported image layout {img.shape}")
    return np.ascontiguousarray(img)


def read_image(
    path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES
) -> tuple[np.ndarray, str]:
    """Read one image file; return ``(rgb, sha256 hex of its bytes)``.

    Raises
    ------
    ImageError
        When the file cannot be read or decoded, or is larger than ``max_bytes``.
    """
    rgb, digest, _ = read_image_data(path, max_pixels, max_bytes)
    return rgb, digest


def read_image_data(
    path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES
) -> tuple[np.ndarray, str, bytes]:
    """:func:`read_image`, also returning the file's bytes (whose header tells how it was compressed).

    Raises
    ------
    ImageError
        When the file cannot be read or decoded, or is larger than ``max_bytes``.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise ImageError(f"file too large ({size} bytes, limit {max_bytes})")
            # Read the size fstat gave (plus one byte, to notice a file that grew since): asking for max_bytes + 1
            # made every read allocate that much first (~30 us a crop); a file that grew is read to the limit.
            data = fh.read(size + 1)
            if len(data) > size:
                data += fh.read(max_bytes + 1 - len(data))
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ImageError(f"file too large (over {max_bytes} bytes)")
    return decode_image(data, str(path), max_pixels), hashlib.sha256(data).hexdigest(), data
