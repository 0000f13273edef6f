"""Chromatin texture measured at a scale coarser than focus and compression move (FeatureSettings.texture_sigma)."""

import numpy as np
import pytest

from lympho_features.features import FeatureSettings, cell_features
from lympho_features.features.masks import smooth_inside
from lympho_features.reacquire import apply_shift
from lympho_features.segment import segment_cell
from lympho_features.synthetic import synthetic_crop

TEXTURE = ("haralick_", "lbp_", "granularity_", "nucleoli_")


def test_smooth_inside_never_mixes_in_pixels_outside_the_mask():
    img = np.zeros((40, 40), np.float32)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    img[mask] = 100.0  # a flat nucleus on a dark surround
    img[~mask] = 7.0
    out = smooth_inside(img, mask, 1.5)
    assert np.allclose(out[mask], 100.0)  # the rim stays at the nucleus' value
    assert np.array_equal(out[~mask], img[~mask])
    noisy = img + np.random.default_rng(0).normal(0, 10, img.shape).astype(np.float32)
    assert smooth_inside(noisy, mask, 1.5)[mask].std() < 0.5 * noisy[mask].std()
    assert np.array_equal(smooth_inside(noisy, mask, 0), noisy)


def _texture(rgb, sigma):
    f = cell_features(rgb, segment_cell(rgb), FeatureSettings(texture_sigma=sigma))
    return {k: v for k, v in f.items() if k.startswith(TEXTURE)}


@pytest.mark.parametrize("shift", ["jpeg:50", "blur:0.7"])
def test_smoothed_texture_moves_less_under_compression_and_soft_focus(shift):
    """Over a few drawn crops, the texture features of re-acquired copies stay nearer their originals when
    measured at sigma 1 than on raw pixels (relative to each feature's spread between crops)."""
    crops = [synthetic_crop(np.random.default_rng(s)).rgb for s in range(8)]
    moved = {}
    for sigma in (0.0, 1.0):
        orig = np.array([list(_texture(c, sigma).values()) for c in crops])
        shifted = np.array([list(_texture(apply_shift(c, shift), sigma).values()) for c in crops])
        spread = np.nanstd(orig, axis=0)
        ok = spread > 1e-9
        moved[sigma] = np.nanmedian(np.abs(shifted - orig)[:, ok] / spread[ok])
    assert moved[1.0] < 0.8 * moved[0.0]


def test_texture_sigma_changes_the_texture_families_only():
    rgb = synthetic_crop(np.random.default_rng(3)).rgb
    seg = segment_cell(rgb)
    raw = cell_features(rgb, seg, FeatureSettings(texture_sigma=0.0))
    smooth = cell_features(rgb, seg, FeatureSettings(texture_sigma=1.0))
    assert any(raw[k] != smooth[k] for k in raw if k.startswith(TEXTURE))
    assert all(raw[k] == smooth[k] for k in raw if not k.startswith(TEXTURE))


def _grey_haralick(rgb, seg):
    """Haralick of the nucleus' smoothed grey level (what features version 7 and before read)."""
    import cv2

    from lympho_features.features.haralick import haralick_features

    grey = np.clip(np.rint(smooth_inside(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), seg.nucleus_mask, 1.0)), 0, 255)
    return haralick_features(grey.astype(np.uint8), seg.nucleus_mask)


@pytest.mark.parametrize("shift", ["gamma:1.25", "hema:0.7"])
def test_haralick_on_optical_density_cancels_stain_strength_and_gamma(shift):
    """A camera's gamma and a nuclear stain's strength scale the nucleus' optical density, which the
    percentile-rescaled levels cancel; they bend its grey levels, which they do not."""
    moved = {"od": [], "grey": []}
    for s in range(6):
        rgb = synthetic_crop(np.random.default_rng(s)).rgb
        other = apply_shift(rgb, shift)
        seg = segment_cell(rgb)  # one outline: the texture alone is compared
        od0, od1 = cell_features(rgb, seg), cell_features(other, seg)
        g0, g1 = _grey_haralick(rgb, seg), _grey_haralick(other, seg)
        for name in g0:
            scale = abs(g0[name]) + 1e-6
            moved["od"].append(abs(od1[name] - od0[name]) / scale)
            moved["grey"].append(abs(g1[name] - g0[name]) / scale)
    assert np.median(moved["od"]) < 0.5 * np.median(moved["grey"])
