import cv2
import numpy as np
import pytest

from lympho_features.features import (
    HARALICK_NAMES,
    FeatureSettings,
    cell_features,
    haralick_features,
    masked_glcm,
    nc_features,
    shape_features,
)
from lympho_features.segment import Segmentation


def disk(shape, centre, r):
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, centre, r, 1, -1)
    return m.astype(bool)


def test_disk_shape():
    m = disk((200, 200), (100, 100), 40)
    f = shape_features(m, "nucleus")
    assert f["shape_nucleus_circularity"] == pytest.approx(1.0, abs=0.03)
    assert f["shape_nucleus_eccentricity"] < 0.1
    assert f["shape_nucleus_solidity"] > 0.97
    assert f["shape_nucleus_equivalent_diameter"] == pytest.approx(81, rel=0.02)
    assert f["shape_nucleus_feret_max"] == pytest.approx(81, abs=2)
    assert f["shape_nucleus_feret_min"] == pytest.approx(81, abs=2)


def test_ellipse_axes_and_eccentricity():
    m = np.zeros((200, 200), np.uint8)
    cv2.ellipse(m, (100, 100), (60, 30), 30, 0, 360, 1, -1)
    f = shape_features(m.astype(bool), "cell")
    assert f["shape_cell_major_axis"] == pytest.approx(120, rel=0.03)
    assert f["shape_cell_minor_axis"] == pytest.approx(60, rel=0.04)
    assert f["shape_cell_eccentricity"] == pytest.approx(np.sqrt(1 - 0.25), abs=0.02)


def test_notched_nucleus_is_less_solid_than_a_disk():
    m = disk((200, 200), (100, 100), 40)
    notched = m & ~disk((200, 200), (140, 100), 18)
    assert shape_features(notched, "n")["shape_n_solidity"] < shape_features(m, "n")["shape_n_solidity"] - 0.03


def test_nc_ratio_by_construction():
    cell = disk((200, 200), (100, 100), 50)
    nucleus = disk((200, 200), (100, 100), 25)
    f = nc_features(nucleus, cell)
    assert f["nc_ratio"] == pytest.approx(0.25, rel=0.03)
    assert f["nucleus_area"] == nucleus.sum() and f["cell_area"] == cell.sum()
    assert f["nc_rim_width"] == pytest.approx(25, abs=1)
    assert f["nc_nucleus_offset"] == pytest.approx(0, abs=0.02)


def test_glcm_counts_only_pairs_inside_mask():
    img = np.zeros((10, 10), np.int64)
    img[:, 5:] = 3  # outside the mask the level differs
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True
    p = masked_glcm(img, mask, 1, 4)
    assert np.allclose(p[:, 0, 0], 1.0)


def test_haralick_contrast_orders_textures():
    rng = np.random.default_rng(0)
    mask = np.ones((64, 64), bool)
    smooth = cv2.GaussianBlur(rng.normal(128, 30, (64, 64)).astype(np.float32), (0, 0), 4)
    rough = rng.normal(128, 30, (64, 64)).astype(np.float32)
    fs, fr = haralick_features(smooth, mask), haralick_features(rough, mask)
    assert len([k for k in fs if k.endswith("_d1")]) == len(HARALICK_NAMES) == 13
    assert fr["haralick_contrast_d1"] > 3 * fs["haralick_contrast_d1"]
    assert fs["haralick_correlation_d1"] > fr["haralick_correlation_d1"]
    assert fr["haralick_entropy_d1"] > 0


def test_checkerboard_contrast_is_known():
    board = (np.indices((32, 32)).sum(0) % 2).astype(np.float32) * 255
    f = haralick_features(board, np.ones((32, 32), bool), FeatureSettings(haralick_levels=2, haralick_distances=(1,)))
    # Horizontal and vertical neighbours always differ (contrast 1), diagonal ones never: mean 0.5.
    assert f["haralick_contrast_d1"] == pytest.approx(0.5)


def test_cell_features_empty_segmentation_gives_nan_not_error():
    rgb = np.full((64, 64, 3), 230, np.uint8)
    z = np.zeros((64, 64), bool)
    f = cell_features(rgb, Segmentation(z, z, False, "no_nucleus"))
    assert np.isnan(f["nc_ratio"]) and np.isnan(f["haralick_contrast_d1"])
