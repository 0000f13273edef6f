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


def _pale_spot_nucleus(spot_od):
    yy, xx = np.mgrid[:101, :101]
    mask = np.hypot(yy - 50, xx - 50) <= 40
    od = (3.0 + np.random.default_rng(0).normal(0, 0.05, (101, 101))).astype(np.float32)
    for cy, cx in ((40, 40), (62, 55), (45, 65)):
        od[np.hypot(yy - cy, xx - cx) <= 3] = spot_od
    return od, mask


def test_nucleoli_keep_their_spots_under_a_weaker_nuclear_stain():
    """A weaker stain scales the nucleus' optical density, its spread and its spots' depth alike: every threshold
    of the pale-spot detector scales with them, so the same spots are found (an absolute floor of 0.3 OD, features
    version 10, lost them)."""
    from dataclasses import replace

    from lympho_features.features.nucleoli import nucleoli_features

    od, mask = _pale_spot_nucleus(2.7)  # spots 0.3 OD paler: 0.21 once stained at x0.7
    new = FeatureSettings()
    old = replace(new, nucleoli_min_depth=0.3, nucleoli_min_relative_depth=0.0)
    for settings, kept in ((new, True), (old, False)):
        full, weak = nucleoli_features(od, mask, settings), nucleoli_features(0.7 * od, mask, settings)
        assert full["nucleoli_count"] == 3
        assert (weak["nucleoli_count"] == 3) is kept
    full, weak = nucleoli_features(od, mask, new), nucleoli_features(0.7 * od, mask, new)
    assert weak["nucleoli_area_fraction"] == pytest.approx(full["nucleoli_area_fraction"], rel=0.05)
    assert weak["nucleoli_contrast"] == pytest.approx(full["nucleoli_contrast"], rel=0.05)
    # The relative floor still keeps a flat, noisy nucleus free of spots.
    flat = (3.0 + np.random.default_rng(1).normal(0, 0.05, (101, 101))).astype(np.float32)
    assert nucleoli_features(flat, mask, new)["nucleoli_count"] == 0


def test_nucleus_core_is_the_nucleus_inset_or_the_whole_small_nucleus():
    from lympho_features.features.cell import MIN_CORE_PIXELS, nucleus_core

    yy, xx = np.mgrid[:41, :41]
    nucleus = np.hypot(yy - 20, xx - 20) <= 12
    core = nucleus_core(nucleus, 2)
    assert core.dtype == bool and core.sum() < nucleus.sum() and not (core & ~nucleus).any()
    assert not core[np.hypot(yy - 20, xx - 20) > 10.5].any()  # nothing within 2 px of the outline
    tiny = np.hypot(yy - 20, xx - 20) <= 3
    assert nucleus_core(tiny, 2) is tiny and nucleus_core(tiny, 2).sum() < MIN_CORE_PIXELS + 20


def test_haralick_on_the_core_moves_less_when_the_outline_moves():
    """A weaker stain moves the nucleus' outline inwards by a pixel or so; Haralick read on the nucleus' core
    (haralick_inset 2) moves less than on the whole nucleus, whose rim holds the strong edge against the
    cytoplasm."""
    from dataclasses import replace

    import cv2

    moved = {}
    for inset in (0, 2):
        settings = FeatureSettings(haralick_inset=inset)
        rows = []
        for s in range(8):
            rgb = synthetic_crop(np.random.default_rng(s)).rgb
            seg = segment_cell(rgb)
            inner = cv2.erode(seg.nucleus_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            shrunk = replace(seg, nucleus_mask=inner, nucleus_contour=None, nucleus_moments=None, od_sum=None)
            a, b = cell_features(rgb, seg, settings), cell_features(rgb, shrunk, settings)
            names = [k for k in a if k.startswith("haralick_")]
            rows.append([[a[k] for k in names], [b[k] for k in names]])
        both = np.array(rows)  # crops, (as segmented, outline moved in), features
        spread = both[:, 0].std(0)
        ok = spread > 1e-9
        moved[inset] = np.median(np.abs(both[:, 1] - both[:, 0])[:, ok] / spread[ok])
    assert moved[2] < 0.8 * moved[0]  # 0.71 on these crops


def test_haralick_inset_changes_haralick_only():
    rgb = synthetic_crop(np.random.default_rng(4)).rgb
    seg = segment_cell(rgb)
    whole = cell_features(rgb, seg, FeatureSettings(haralick_inset=0))
    core = cell_features(rgb, seg, FeatureSettings(haralick_inset=2))
    assert any(whole[k] != core[k] for k in whole if k.startswith("haralick_"))
    assert all(whole[k] == core[k] for k in whole if not k.startswith("haralick_"))
