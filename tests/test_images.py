"""Decoding crop files (lympho_features.images): formats read by content, sizes checked before decoding."""

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lympho_features.images import ImageError, decode_image, image_header, read_image


def encode(img, ext=".png"):
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def test_decode_variants():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    bgr = rgb[..., ::-1].copy()
    assert decode_image(encode(bgr))[0, 0].tolist() == [200, 0, 0]
    assert decode_image(encode(np.full((20, 30), 90, np.uint8))).shape == (20, 30, 3)
    rgba = np.dstack([bgr, np.full((20, 30), 255, np.uint8)])
    assert decode_image(encode(rgba))[0, 0].tolist() == [200, 0, 0]
    sixteen = bgr.astype(np.uint16) * 257
    out = decode_image(encode(sixteen))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize("data", [b"", b"not an image at all", None])
def test_decode_bad_bytes(data):
    if data is None:  # a truncated JPEG
        data = encode(np.full((64, 64, 3), 128, np.uint8), ".jpg")[:100]
    with pytest.raises(ImageError):
        decode_image(data)


def test_decode_refuses_huge_images():
    with pytest.raises(ImageError, match="too large"):
        decode_image(encode(np.zeros((64, 64, 3), np.uint8)), max_pixels=100)


@pytest.mark.parametrize("ext,fmt", [(".jpg", "jpeg"), (".png", "png"), (".tiff", "tiff"), (".bmp", "bmp")])
def test_image_header_reads_the_size_without_decoding(ext, fmt):
    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    assert image_header(encode(img, ext)) == (fmt, 53, 37)


def _chunk(kind: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(img: np.ndarray, color_type: int, width: int | None = None, height: int | None = None) -> bytes:
    """A PNG written by hand (8-bit), so that any colour type and any header size can be made."""
    import struct
    import zlib

    h, w = img.shape[:2]
    ihdr = struct.pack(
        ">IIBBBBB", w if width is None else width, h if height is None else height, 8, color_type, 0, 0, 0
    )
    rows = b"".join(b"\0" + img[y].tobytes() for y in range(h))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def png_bomb(width, height) -> bytes:
    """A tiny PNG whose header claims a huge image."""
    return raw_png(np.zeros((2, 2, 3), np.uint8), 2, width, height)


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    def boom(*args):
        raise AssertionError("cv2.imdecode must not be called for a bomb")

    monkeypatch.setattr(cv2, "imdecode", boom)
    with pytest.raises(ImageError, match="too large \\(60000x60000"):
        decode_image(png_bomb(60000, 60000))
    jpeg = bytearray(encode(np.zeros((16, 16, 3), np.uint8), ".jpg"))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = (65000).to_bytes(2, "big") + (65000).to_bytes(2, "big")
    with pytest.raises(ImageError, match="too large \\(65000x65000"):
        decode_image(bytes(jpeg))


@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda: encode(np.full((64, 64, 3), 99, np.uint8), ".jpg")[:-40], "truncated JPEG"),
        (lambda: encode(np.full((64, 64, 3), 99, np.uint8), ".png")[:-20], "truncated PNG"),
        (lambda: b"GIF89a" + b"\0" * 40, "not an image"),
        (lambda: b"hello world, not a picture", "not an image"),
        (lambda: encode(np.zeros((8, 8), np.float32), ".tiff"), "unsupported pixel type float32"),
        (lambda: png_bomb(0, 10), "empty image"),
    ],
)
def test_decode_names_what_is_wrong(make, fragment):
    with pytest.raises(ImageError, match=fragment):
        decode_image(make())


def test_png_bytes_named_jpg_and_gray_alpha_are_read(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(encode(np.full((10, 12, 3), 7, np.uint8), ".png"))
    rgb, digest = read_image(p)
    assert rgb.shape == (10, 12, 3) and len(digest) == 64
    ga = np.dstack([np.full((9, 11), 50, np.uint8), np.full((9, 11), 255, np.uint8)])
    assert decode_image(raw_png(ga, color_type=4))[0, 0].tolist() == [50, 50, 50]


def test_read_image_refuses_huge_files(tmp_path):
    p = tmp_path / "big.jpg"
    p.write_bytes(b"\xff\xd8\xff" + b"\0" * 2000)
    with pytest.raises(ImageError, match="file too large"):
        read_image(p, max_bytes=1000)


def test_read_image_reads_a_file_that_grew_after_its_size_was_taken(tmp_path, monkeypatch):
    # The file is read to the size fstat gave plus what was added since: the whole image, and the size limit
    # still holds for the bytes actually read.
    import hashlib
    import os
    from types import SimpleNamespace

    from lympho_features import images

    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)
    p = tmp_path / "crop.png"
    p.write_bytes(encode(rgb))
    real_fstat = os.fstat
    monkeypatch.setattr(images.os, "fstat", lambda fd: SimpleNamespace(st_size=real_fstat(fd).st_size // 3))
    got, digest = read_image(p)
    assert np.array_equal(got, cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB))
    assert digest == hashlib.sha256(p.read_bytes()).hexdigest()
    # fstat says 2,036 bytes (under the limit), the file holds 6,108: refused on what was read.
    with pytest.raises(ImageError, match="file too large \\(over 3000 bytes"):
        read_image(p, max_bytes=3000)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_decoded(data: bytes) -> None:
    try:
        rgb = decode_image(data, max_pixels=256 * 256)
    except ImageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[0] * rgb.shape[1] <= 256 * 256


@FAST
@given(st.binary(max_size=2048))
def test_decoding_random_bytes_never_crashes(data):
    _check_decoded(data)


MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM"]


@FAST
@given(st.sampled_from(MAGICS), st.binary(max_size=1024))
def test_decoding_random_bytes_behind_a_magic_number_never_crashes(magic, data):
    _check_decoded(magic + data)


_SAMPLES = {
    ext: encode(np.random.default_rng(1).integers(0, 255, (24, 20, 3), dtype=np.uint8), ext)
    for ext in (".jpg", ".png", ".tiff", ".bmp")
}


@FAST
@given(
    st.sampled_from(sorted(_SAMPLES)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(1, 10_000),
)
def test_decoding_damaged_images_never_crashes(ext, flips, cut):
    data = bytearray(_SAMPLES[ext])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check_decoded(bytes(data[: max(1, len(data) - cut % len(data))]) if cut % 3 == 0 else bytes(data))
