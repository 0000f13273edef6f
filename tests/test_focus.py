"""Every crop brought to one focus before it is measured (lympho_features.focus, SegmentationSettings.focus_edge_sigma)."""

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from lympho_features import focus
from lympho_features.errors import SettingsError
from lympho_features.focus import FOCUS_GAIN, edge_sigma, equalise_focus, focus_blur, gaussian_blur_u8
from lympho_features.measure import ExtractSettings, measure_cell, segment_at_canonical
from lympho_features.reacquire import apply_shift
from lympho_features.segment import SegmentationSettings
from lympho_features.synthetic import synthetic_crop

TARGET = SegmentationSettings().focus_edge_sigma


def _crops(n=6):
    return [synthetic_crop(np.random.default_rng(s)).rgb for s in range(n)]


def _blur(rgb, sigma):
    return cv2.GaussianBlur(rgb, (0, 0), sigma)


def test_edge_blur_grows_with_a_gaussian_blur_as_its_square_adds():
    for rgb in _crops(4):
        s0 = edge_sigma(rgb)
        readings = [edge_sigma(_blur(rgb, b)) for b in (0.5, 1.0, 1.5)]
        assert s0 < readings[0] < readings[1] < readings[2]
        for b, s in zip((0.5, 1.0, 1.5), readings, strict=True):
            # sigma^2 adds about FOCUS_GAIN * b^2 (the pixel grid and Sobel make it less than b^2)
            assert 0.6 * FOCUS_GAIN * b * b < s * s - s0 * s0 < 1.3 * FOCUS_GAIN * b * b


def test_edge_blur_does_not_read_the_edges_contrast():
    """A paler smear (every level halfway to the glass) or another stain strength has softer-contrast edges,
    not blurrier ones."""
    for rgb in _crops(4):
        paler = (255 - (255 - rgb.astype(np.float32)) * 0.5).round().astype(np.uint8)
        s = edge_sigma(rgb)
        assert edge_sigma(paler) == pytest.approx(s, rel=0.08)
        assert edge_sigma(apply_shift(rgb, "hema:0.7")) == pytest.approx(s, rel=0.08)


def test_a_crop_without_edges_reads_nan_and_is_left_as_it_is():
    flat = np.full((64, 64, 3), 230, np.uint8)
    assert math.isnan(edge_sigma(flat))
    out, edge, added = equalise_focus(flat, TARGET)
    assert out is flat and math.isnan(edge) and added == 0.0


def test_focus_blur_adds_nothing_to_a_crop_already_as_soft():
    assert focus_blur(TARGET + 0.1, TARGET) == 0.0
    assert focus_blur(TARGET, TARGET) == 0.0
    b = focus_blur(0.8, TARGET)
    assert b > 0 and 0.8**2 + FOCUS_GAIN * b * b == pytest.approx(TARGET**2)
    soft = _blur(_crops(1)[0], 2.5)
    out, edge, added = equalise_focus(soft, TARGET)
    assert edge > TARGET and added == 0.0 and out is soft


def test_a_sharp_crop_and_its_soft_copy_come_out_nearly_the_same():
    for rgb in _crops(4):
        soft = _blur(rgb, 0.8)
        a, ea, ba = equalise_focus(rgb, TARGET)
        b, eb, bb = equalise_focus(soft, TARGET)
        assert ba > bb > 0  # the sharper crop gets the larger blur
        assert edge_sigma(a) == pytest.approx(TARGET, abs=0.12)
        assert edge_sigma(b) == pytest.approx(TARGET, abs=0.12)
        before = np.abs(rgb.astype(int) - soft).mean()
        after = np.abs(a.astype(int) - b).mean()
        assert after < 0.5 * before


def test_no_target_leaves_the_crop_as_it_is_but_still_reads_its_edges():
    rgb = _crops(1)[0]
    out, edge, added = equalise_focus(rgb, None)
    assert out is rgb and added == 0.0 and math.isfinite(edge)


def _edge_sigma_by_roots(rgb):
    """The edge blur as features version 10 first read it: float roots of the whole crop's gradient, OpenCV's
    8-bit blur, np.partition and np.median on floats (edge_sigma must read the same, bit for bit)."""

    def gradient(x):
        gx = cv2.Sobel(x, cv2.CV_16S, 1, 0, ksize=3).astype(np.float32)
        gy = cv2.Sobel(x, cv2.CV_16S, 0, 1, ksize=3).astype(np.float32)
        return np.sqrt(gx * gx + gy * gy)

    k3 = np.ones((3, 3), np.uint8)
    green = np.ascontiguousarray(rgb[..., 1])
    g1 = gradient(green)
    g2 = gradient(cv2.GaussianBlur(green, (0, 0), focus.REBLUR_SIGMA))
    flat = g1.ravel()
    k = max(1, int(focus.EDGE_FRACTION * flat.size))
    strong = np.partition(flat, flat.size - k)[flat.size - k]
    peak = (g1 >= cv2.dilate(g1, k3)) & (g1 >= max(strong, focus.MIN_EDGE_GRADIENT))
    if np.count_nonzero(peak) < focus.MIN_EDGE_PIXELS:
        return math.nan
    ratio = float(np.median(g1[peak] / np.maximum(cv2.dilate(g2, k3)[peak], 1e-3)))
    return math.nan if ratio <= 1.0001 else focus.REBLUR_SIGMA / math.sqrt(ratio * ratio - 1.0)


def test_edge_blur_reads_the_same_as_by_the_roots_of_the_whole_gradient():
    rng = np.random.default_rng(5)
    crops = _crops(6) + [np.full((40, 40, 3), 230, np.uint8), rng.integers(0, 256, (33, 47, 3)).astype(np.uint8)]
    for rgb in crops:
        for b in (0.0, 0.4, 1.0, 2.5):
            x = _blur(rgb, b) if b else rgb
            assert np.array_equal(edge_sigma(x), _edge_sigma_by_roots(x), equal_nan=True)


def test_float32_roots_of_distinct_squared_gradients_are_distinct():
    """Why ridges and the strongest edges may be found on the squared gradients: the root is strictly
    increasing on every integer a squared 8-bit Sobel magnitude can be, in float32."""
    roots = np.sqrt(np.arange(focus._MAX_GRADIENT_SQ + 1, dtype=np.float32))
    assert np.all(np.diff(roots) > 0)
    assert np.sqrt(np.float32(focus.MIN_EDGE_GRADIENT**2 - 1)) < focus.MIN_EDGE_GRADIENT


def test_kth_largest_and_median_are_numpys():
    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 20, 21, 1000, 1001, 50176):
        x = (rng.integers(0, 400, n) ** 2).astype(np.float32)
        x[rng.random(n) < 0.3] = 0.0
        for k in {1, n, max(1, n // 50)}:
            assert focus._kth_largest(x, k) == np.partition(x, n - k)[n - k]
        r = rng.random(n).astype(np.float32) * rng.choice([1e-3, 1.0, 1e4])
        assert focus._median(r) == float(np.median(r))


@pytest.mark.parametrize("sigma", [0.05, 0.2, 0.3, 0.5, 0.8, 1.0, 1.01, 1.27, 1.5, 2.0, 3.3])
def test_the_8bit_gaussian_blur_is_opencvs_bit_for_bit(sigma):
    rng = np.random.default_rng(int(sigma * 100))
    images = [
        rng.integers(0, 256, (224, 224, 3)).astype(np.uint8),
        rng.integers(0, 256, (31, 17)).astype(np.uint8),
        (rng.random((40, 9)) < 0.5).astype(np.uint8) * 255,
        np.full((5, 3, 3), 255, np.uint8),
        rng.integers(0, 256, (1, 12)).astype(np.uint8),
        _crops(1)[0],
    ]
    for img in images:
        assert np.array_equal(gaussian_blur_u8(img, sigma), cv2.GaussianBlur(img, (0, 0), sigma))


def test_segment_at_canonical_measures_the_crop_at_one_focus():
    rgb = _crops(1)[0]
    on = segment_at_canonical(rgb)
    off = segment_at_canonical(rgb, segmentation=SegmentationSettings(focus_edge_sigma=None))
    assert on.segmentation.diagnostics["focus_added"] > 0
    assert on.segmentation.diagnostics["edge_sigma"] == pytest.approx(edge_sigma(rgb))
    assert np.array_equal(off.crop, rgb) and off.segmentation.diagnostics["focus_added"] == 0.0
    assert not np.array_equal(on.crop, rgb)
    assert edge_sigma(on.crop) == pytest.approx(TARGET, abs=0.12)


def test_focus_setting_must_be_positive():
    with pytest.raises(SettingsError, match="focus_edge_sigma"):
        SegmentationSettings(focus_edge_sigma=0.0)
    assert SegmentationSettings(focus_edge_sigma=None).focus_edge_sigma is None


def _measured(rgb, settings):
    row = measure_cell(rgb, settings, gate_hue=False)
    return row


TEXTURE = ("haralick_", "granularity_", "nucleoli_")


@pytest.mark.parametrize("shift", ["blur:0.7", "blur:1"])
def test_texture_of_a_soft_copy_stays_nearer_its_original_at_one_focus(shift):
    """The chromatin texture of a crop re-imaged out of focus moves less, relative to its spread between crops,
    when every crop is first brought to one focus; its acq_edge_sigma tells the two acquisitions apart."""
    on = ExtractSettings()
    off = replace(on, segmentation=replace(on.segmentation, focus_edge_sigma=None))
    crops = _crops(8)
    moved = {}
    for name, settings in (("on", on), ("off", off)):
        orig = [_measured(c, settings) for c in crops]
        soft = [_measured(apply_shift(c, shift), settings) for c in crops]
        keys = [k for k in orig[0] if k.startswith(TEXTURE)]
        a = np.array([[r[k] for k in keys] for r in orig], float)
        b = np.array([[r[k] for k in keys] for r in soft], float)
        spread = np.nanstd(a, axis=0)
        ok = spread > 1e-9
        moved[name] = np.nanmedian(np.abs(b - a)[:, ok] / spread[ok])
        if name == "on":
            assert all(s["acq_edge_sigma"] > o["acq_edge_sigma"] for o, s in zip(orig, soft, strict=True))
    assert moved["on"] < 0.5 * moved["off"]


def test_the_blur_check_reads_the_crop_as_acquired():
    """Every crop is measured at the common focus, where all read about as sharp; whether it was in focus is
    judged on it as acquired: a sharp crop passes, the same crop out of focus fails as blur, and its
    sharpness is the one the segmentation reads on the crop as acquired."""
    from lympho_features.measure import crop_sharpness
    from lympho_features.segment import segment_cell

    rgb = _crops(1)[0]
    sharp = segment_at_canonical(rgb)
    assert sharp.segmentation.qc_reason == "ok" and not sharp.segmentation.flags["qc_blur"]
    assert crop_sharpness(sharp.segmentation) == pytest.approx(crop_sharpness(segment_cell(rgb)), rel=0.05)
    soft = segment_at_canonical(_blur(rgb, 2.5))
    assert soft.segmentation.flags["qc_blur"] and soft.segmentation.qc_reason == "blur"
    # at the common focus the sharp crop's nucleus reads as soft as a blurred one: the check could not tell them
    on = segment_cell(sharp.crop)
    assert crop_sharpness(on) < 0.6 * crop_sharpness(sharp.segmentation)


def test_the_crop_as_acquired_is_kept_beside_the_crop_measured():
    rgb = _crops(1)[0]
    canon = segment_at_canonical(rgb)
    assert np.array_equal(canon.acquired, rgb) and not np.array_equal(canon.crop, rgb)
    crop, seg, um = canon  # unpacks as the three measured values
    assert crop is canon.crop and seg is canon.segmentation and um == canon.um_per_px
    soft = _blur(rgb, 2.5)
    canon = segment_at_canonical(soft)  # nothing added: one array
    assert canon.acquired is canon.crop


def test_the_gate_reads_granules_on_the_crop_as_acquired():
    """Granules are the finest detail, which the common focus blurs away: the cell-type gate's granule and ring
    measures are those of the crop as acquired, within the outlines found at the common focus."""
    from lympho_features.celltype import gate_measurements

    rgb = synthetic_crop(np.random.default_rng(0), granules=0.3, granule_colour=(190, 140, 190)).rgb
    row = measure_cell(rgb, ExtractSettings(), gate_hue=False)
    canon = segment_at_canonical(rgb)
    plain = replace(canon.segmentation, od_sum=None, od_sum_every4=None)
    as_acquired = gate_measurements(canon.acquired, plain, hue=False)
    at_focus = gate_measurements(canon.crop, plain, hue=False)
    for key in ("gate_ring_granularity", "gate_cyto_granularity", "gate_ring_texture"):
        assert row[key] == pytest.approx(as_acquired[key])
        assert at_focus[key] != pytest.approx(as_acquired[key])
