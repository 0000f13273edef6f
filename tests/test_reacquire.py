"""Re-acquisition of crops (lympho_features.reacquire): what each step does to a drawn crop."""

import cv2
import numpy as np
import pytest

from lympho_features import reacquire as A
from lympho_features.errors import AcquisitionError, LymphoError


def smear(size=224, seed=0):
    """A drawn crop: pale glass with a little noise, lavender red cells, one purple nucleus in the centre."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), (235, 225, 230), np.float32) + rng.normal(0, 2, (size, size, 3))
    for cx, cy in ((30, 40), (190, 50), (40, 180), (180, 190), (110, 25)):
        cv2.circle(img, (cx, cy), 18, (200, 170, 195), -1)
    cv2.circle(img, (size // 2, size // 2), 30, (90, 40, 140), -1)
    # chromatin: dark speckles inside the nucleus
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < 28**2
    speck = (rng.random((size, size)) < 0.15) & inside
    img[speck] -= 35
    return np.clip(img, 0, 255).astype(np.uint8)


def nucleus_width(rgb):
    """Widest horizontal run of purple (blue - green > 60) pixels through the centre row."""
    row = rgb[rgb.shape[0] // 2].astype(int)
    return int(((row[:, 2] - row[:, 1]) > 60).sum())


@pytest.mark.parametrize(
    "shift",
    ["none", "mag:1", "magrt:1", "jpeg:100+jpeg:100", "blur:0", "hema:1", "eosin:1", "gamma:1", "wb:1/1"],
)
def test_neutral_values_return_an_unchanged_copy(shift):
    rgb = smear()
    out = A.apply_shift(rgb, shift)
    assert out is not rgb and out.dtype == np.uint8 and out.shape == rgb.shape
    if "jpeg" in shift:  # a JPEG at 100 is nearly, not exactly, lossless
        assert np.abs(out.astype(int) - rgb).mean() < 1.5
    else:
        assert np.array_equal(out, rgb)


def test_input_is_never_modified():
    rgb = smear()
    before = rgb.copy()
    A.apply_shift(rgb, "mag:0.8+blur:0.7+hema:1.3+eosin:0.7+gamma:1.25+wb:1.08/0.92+jpeg:60")
    assert np.array_equal(rgb, before)


@pytest.mark.parametrize("factor", [0.75, 0.8, 1.25, 1.6])
def test_magnify_scales_the_cell_and_keeps_the_crop_size(factor):
    rgb = smear()
    out = A.magnify(rgb, factor)
    assert out.shape == rgb.shape
    assert nucleus_width(out) == pytest.approx(factor * nucleus_width(rgb), abs=3)
    assert A.magnify(rgb, factor, keep_size=False).shape[:2] == (round(224 * factor),) * 2


def test_round_trip_keeps_the_scale_but_loses_detail():
    rgb = smear()
    back = A.magnify_round_trip(rgb, 0.75)
    assert back.shape == rgb.shape
    assert nucleus_width(back) == pytest.approx(nucleus_width(rgb), abs=2)
    lap = [cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_32F).std() for x in (rgb, back)]
    assert lap[1] < 0.8 * lap[0]


def test_blur_and_jpeg_soften_fine_texture_more_as_they_grow():
    rgb = smear()

    def sharpness(x):
        return cv2.Laplacian(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY), cv2.CV_32F).std()

    s = [sharpness(A.blur(rgb, sig)) for sig in (0, 0.5, 1.0)]
    assert s[0] > s[1] > s[2]
    err = [np.abs(A.jpeg(rgb, q).astype(int) - rgb).mean() for q in (95, 80, 50)]
    assert err[0] < err[1] < err[2]


def test_haematoxylin_darkens_the_nucleus_more_than_the_glass():
    rgb = smear()
    c, corner = (slice(105, 120), slice(105, 120)), (slice(60, 76), slice(60, 76))
    strong = A.stain_strength(rgb, haematoxylin=1.3)
    weak = A.stain_strength(rgb, haematoxylin=0.7)
    nuc = [x[c].astype(float).mean() for x in (weak, rgb, strong)]
    assert nuc[0] > nuc[1] > nuc[2]  # darker with more stain
    glass = [np.abs(x[corner].astype(float) - rgb[corner]).mean() for x in (weak, strong)]
    assert max(glass) < 2.0  # the glass stays white
    assert (nuc[0] - nuc[1]) > 10 * max(glass)


def test_eosin_moves_red_cells_more_than_haematoxylin_does_relative_to_the_nucleus():
    rgb = smear()
    rbc, nuc = (slice(35, 45), slice(25, 35)), (slice(105, 120), slice(105, 120))

    def change(x, where):
        return np.abs(x[where].astype(float) - rgb[where]).mean()

    eo = A.stain_strength(rgb, eosin=1.3)
    he = A.stain_strength(rgb, haematoxylin=1.3)
    assert change(eo, rbc) / max(change(eo, nuc), 1e-6) > change(he, rbc) / change(he, nuc)


def test_gamma_and_white_balance():
    rgb = smear()
    assert A.gamma(rgb, 1.25).astype(float).mean() < rgb.mean() < A.gamma(rgb, 0.8).astype(float).mean()
    warm = A.white_balance(rgb, red=1.05, blue=0.95).astype(float)
    assert warm[..., 0].mean() > rgb[..., 0].mean() and warm[..., 2].mean() < rgb[..., 2].mean()
    assert np.array_equal(warm[..., 1], rgb[..., 1])


def test_parse_shift_and_errors():
    steps = A.parse_shift("mag:0.8+jpeg:80+wb:1.08/0.92")
    assert [str(s) for s in steps] == ["mag:0.8", "jpeg:80", "wb:1.08/0.92"]
    assert A.parse_shift("none") == ()
    for bad in ("zoom:2", "mag", "mag:x", "wb:1.1", "blur:nan"):
        with pytest.raises(AcquisitionError):
            A.parse_shift(bad)
    with pytest.raises(LymphoError):
        A.jpeg(smear(), 0)
    with pytest.raises(AcquisitionError):
        A.blur(np.zeros((10, 10), np.uint8), 1)


def test_random_shift_is_reproducible_and_within_range():
    texts = [A.random_shift(np.random.default_rng(s)) for s in range(60)]
    assert texts == [A.random_shift(np.random.default_rng(s)) for s in range(60)]
    assert len(set(texts)) > 40
    seen = set()
    for t in texts:
        for step in A.parse_shift(t):
            seen.add(step.name)
            lo, hi = A.SHIFT_RANGES[step.name]
            assert all(lo - 1e-3 <= v <= hi + 1e-3 for v in step.values), t
    assert seen == set(A.SHIFT_RANGES)
    A.apply_shift(smear(), texts[0])  # every drawn text applies
