"""Acquisition measurements of a crop: JPEG quality from the quantisation tables, glass colour, sharpness."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from lympho_features.acquisition import (
    ACQUISITION_COLUMNS,
    STANDARD_LUMINANCE,
    ZIGZAG,
    crop_acquisition,
    ijg_table,
    jpeg_quality,
    jpeg_quantization_tables,
)
from lympho_features.segment import segment_cell
from lympho_features.synthetic import BACKGROUND, synthetic_crop


def _crop(seed: int = 0) -> np.ndarray:
    return synthetic_crop(np.random.default_rng(seed)).rgb


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("quality", [5, 10, 25, 40, 49, 50, 51, 75, 90, 95, 99, 100])
def test_quality_of_files_written_at_known_qualities(quality):
    assert jpeg_quality(_jpeg(_crop(), quality)) == quality


def test_every_quality_is_told_apart():
    data = {q: _jpeg(_crop(1), q) for q in range(1, 101)}
    assert [jpeg_quality(d) for d in data.values()] == list(data)


def test_parsed_luminance_table_is_the_scaled_standard_table():
    tables = jpeg_quantization_tables(_jpeg(_crop(), 40))
    assert set(tables) == {0, 1}  # luminance and chrominance
    np.testing.assert_array_equal(tables[0].reshape(8, 8), ijg_table(40))
    # Quality 50 is the standard table itself; 100 is all ones (no quantisation beyond rounding).
    np.testing.assert_array_equal(ijg_table(50), STANDARD_LUMINANCE)
    assert (ijg_table(100) == 1).all()


def test_zigzag_is_a_permutation_starting_along_the_first_antidiagonals():
    assert sorted(ZIGZAG.tolist()) == list(range(64))
    assert ZIGZAG[:6].tolist() == [0, 1, 8, 16, 9, 2]
    assert ZIGZAG[-1] == 63


def _handmade_jpeg(table_natural: np.ndarray, precision16: bool, extra: bytes = b"") -> bytes:
    """SOI, optional segments, one DQT with table 0 in zig-zag order, then SOS: a header without pixels."""
    values = np.asarray(table_natural, int).ravel()[ZIGZAG]
    body = bytes([0x10 if precision16 else 0x00]) + (
        values.astype(">u2").tobytes() if precision16 else values.astype(np.uint8).tobytes()
    )
    dqt = b"\xff\xdb" + (len(body) + 2).to_bytes(2, "big") + body
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + extra + dqt + sos + b"\x00" * 16


def test_16_bit_tables_and_other_segments_before_them():
    app1 = b"\xff\xe1\x00\x10" + b"Exif\x00\x00" + b"\x00" * 8  # an EXIF-like segment of 16 bytes
    assert jpeg_quality(_handmade_jpeg(ijg_table(30), precision16=True, extra=app1)) == 30
    assert jpeg_quality(_handmade_jpeg(ijg_table(80), precision16=False, extra=b"\xff\xff" + app1)) == 80


def test_not_a_jpeg_or_broken_header_gives_nan():
    ok, png = cv2.imencode(".png", _crop())
    assert math.isnan(jpeg_quality(png.tobytes()))
    assert math.isnan(jpeg_quality(b""))
    assert math.isnan(jpeg_quality(b"\xff\xd8\xff\xdb\x00"))  # cut inside the DQT's length
    assert math.isnan(jpeg_quality(b"\xff\xd8\xff\xdb\xff\xff" + b"\x00" * 10))  # length beyond the file
    data = _jpeg(_crop(), 60)
    assert jpeg_quality(data[:400]) == 60  # the header alone is enough


def test_crop_acquisition_reuses_the_segmentation():
    rgb = _crop(2)
    data = _jpeg(rgb, 70)
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    seg = segment_cell(decoded)
    acq = crop_acquisition(seg, data, decoded)
    assert set(acq) == set(ACQUISITION_COLUMNS)
    assert acq["acq_jpeg_quality"] == 70
    glass = [acq["acq_background_red"], acq["acq_background_green"], acq["acq_background_blue"]]
    np.testing.assert_allclose(glass, BACKGROUND, atol=8)  # the synthetic glass colour
    assert acq["acq_sharpness"] == seg.diagnostics["sharpness"] > 0
    assert math.isfinite(acq["acq_rbc_od"]) and acq["acq_rbc_od"] > 0
    # The red cells are pink: they absorb blue more than red, so their blue chroma is below the cytoplasm's.
    assert acq["acq_rbc_chroma"] < 0.1


def test_colour_cast_and_blur_move_the_measurements():
    rgb = _crop(3)
    base = crop_acquisition(segment_cell(rgb), None, rgb)
    cast = np.clip(rgb.astype(int) + np.array([-20, 0, 20]), 0, 255).astype(np.uint8)
    moved = crop_acquisition(segment_cell(cast), None, cast)
    assert moved["acq_background_red"] < base["acq_background_red"] - 15
    assert moved["acq_background_blue"] > base["acq_background_blue"] + 15
    assert moved["acq_rbc_chroma"] > base["acq_rbc_chroma"]
    blurred = cv2.GaussianBlur(rgb, (0, 0), 1.5)
    assert crop_acquisition(segment_cell(blurred), None, blurred)["acq_sharpness"] < 0.8 * base["acq_sharpness"]
    assert math.isnan(base["acq_jpeg_quality"])  # no file bytes given


def test_blank_crop_keeps_its_glass_colour_and_nothing_else():
    blank = np.full((224, 224, 3), (240, 230, 220), np.uint8)
    acq = crop_acquisition(segment_cell(blank), None, blank)
    assert (acq["acq_background_red"], acq["acq_background_green"], acq["acq_background_blue"]) == pytest.approx(
        (240, 230, 220), abs=1
    )
    assert math.isnan(acq["acq_sharpness"]) and math.isnan(acq["acq_rbc_od"]) and math.isnan(acq["acq_rbc_chroma"])


def test_qc_and_acquisition_sharpness_are_one_measure():
    # The segmentation measures the nucleus sharpness once: qc_sharpness (what the blur check judges) and
    # acq_sharpness (how the crop was acquired) are that number, except that a dense nucleus, which has no
    # texture to judge focus by, has no qc_sharpness and keeps its acq_sharpness.
    from lympho_features.measure import ExtractSettings, measure_crop
    from lympho_features.segment import SegmentationSettings

    rgb = synthetic_crop(np.random.default_rng(4)).rgb
    row = measure_crop(rgb)
    assert row["qc_sharpness"] == row["acq_sharpness"] > 0
    every_nucleus_dense = ExtractSettings(segmentation=SegmentationSettings(pyknotic_min_od=0.0))
    dense = measure_crop(rgb, every_nucleus_dense)
    assert math.isnan(dense["qc_sharpness"]) and dense["acq_sharpness"] == row["acq_sharpness"]
