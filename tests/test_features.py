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


# ------------------------------------------------------------ new families ----
from lympho_features.features import (  # noqa: E402
    FEATURE_DESCRIPTIONS,
    color_features,
    describe_feature,
    granularity_features,
    lbp_features,
    nucleoli_features,
    radial_features,
)
from lympho_features.segment import segment_cell  # noqa: E402
from lympho_features.synthetic import synthetic_crop  # noqa: E402


def test_fourier_and_notch_measure_outline_irregularity():
    round_ = disk((200, 200), (100, 100), 40)
    ellipse = np.zeros((200, 200), np.uint8)
    cv2.ellipse(ellipse, (100, 100), (55, 30), 20, 0, 360, 1, -1)
    notched = round_ & ~disk((200, 200), (142, 100), 16)
    yy, xx = np.mgrid[:200, :200]
    ang = np.arctan2(yy - 100, xx - 100)
    hairy = np.hypot(yy - 100, xx - 100) < 40 + 4 * np.sin(16 * ang)
    f_round, f_ell = shape_features(round_, "n"), shape_features(ellipse.astype(bool), "n")
    f_notch, f_hairy = shape_features(notched, "n"), shape_features(hairy, "n")
    assert f_round["shape_n_fourier_low"] < 0.02 and f_ell["shape_n_fourier_low"] < 0.1  # ellipses are regular
    assert f_notch["shape_n_fourier_low"] > 20 * f_round["shape_n_fourier_low"]
    assert f_notch["shape_n_notch_depth"] > 0.2 > f_round["shape_n_notch_depth"]
    assert f_hairy["shape_n_fourier_high"] > 5 * f_round["shape_n_fourier_high"]
    assert f_hairy["shape_n_curvature_std"] > f_round["shape_n_curvature_std"]


def test_rim_widths_of_an_offset_nucleus():
    cell = disk((200, 200), (100, 100), 50)
    nucleus = disk((200, 200), (115, 100), 25)
    f = nc_features(nucleus, cell)
    assert f["nc_rim_width_min"] == pytest.approx(10, abs=1.5)
    assert f["nc_rim_width_max"] == pytest.approx(40, abs=1.5)
    assert f["nc_nucleus_offset"] == pytest.approx(15 / 50, abs=0.02)


def test_radial_distribution_sees_a_condensed_rim():
    mask = disk((101, 101), (50, 50), 40)
    dist = np.hypot(*(np.mgrid[:101, :101] - 50))
    rim_dark = np.where(dist > 30, 3.0, 1.0).astype(np.float32)
    f = radial_features(rim_dark, mask)
    assert f["radial_nucleus_ring1"] > 1 > f["radial_nucleus_ring4"]
    assert f["radial_nucleus_rim_centre"] == pytest.approx(3.0, rel=0.05)
    flat = radial_features(np.ones((101, 101), np.float32), mask)
    assert flat["radial_nucleus_rim_centre"] == pytest.approx(1.0)


def test_nucleoli_counts_pale_spots():
    mask = disk((101, 101), (50, 50), 40)
    rng = np.random.default_rng(0)
    od = (3.0 + rng.normal(0, 0.05, (101, 101))).astype(np.float32)
    for c in ((40, 40), (62, 55), (45, 65)):
        od[disk((101, 101), c, 3)] = 1.5
    f = nucleoli_features(od, mask)
    assert f["nucleoli_count"] == 3
    assert f["nucleoli_area_fraction"] == pytest.approx(3 * 29 / mask.sum(), rel=0.35)
    none = nucleoli_features((3.0 + rng.normal(0, 0.05, (101, 101))).astype(np.float32), mask)
    assert none["nucleoli_count"] == 0


def test_granularity_peaks_at_the_clump_size():
    mask = np.ones((120, 120), bool)
    fine = np.zeros((120, 120), np.float32)
    coarse = np.zeros((120, 120), np.float32)
    for y in range(6, 120, 12):
        for x in range(6, 120, 12):
            fine[y - 1 : y + 2, x - 1 : x + 2] = 1  # 3-pixel clumps
            cv2.circle(coarse, (x, y), 4, 1.0, -1)  # 9-pixel clumps
    f, c = granularity_features(fine, mask), granularity_features(coarse, mask)
    assert max(f, key=f.get) in ("granularity_nucleus_r1", "granularity_nucleus_r2")
    assert max(c, key=c.get) in ("granularity_nucleus_r4", "granularity_nucleus_r3")


def test_lbp_histogram_of_flat_and_spotty_images():
    mask = np.ones((30, 30), bool)
    flat = lbp_features(np.full((30, 30), 100, np.uint8), mask)
    assert flat["lbp_nucleus_u8"] == pytest.approx(1.0) and flat["lbp_nucleus_entropy"] == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    noisy = lbp_features(rng.integers(0, 255, (30, 30)).astype(np.uint8), mask)
    assert sum(v for k, v in noisy.items() if k != "lbp_nucleus_entropy") == pytest.approx(1.0)
    assert noisy["lbp_nucleus_nonuniform"] > 0.3 and noisy["lbp_nucleus_entropy"] > 1.5


def test_color_is_relative_to_background_and_red_cells():
    rgb = np.full((40, 40, 3), 240, np.uint8)
    rgb[10:30, 10:30] = (60, 30, 120)
    nucleus = np.zeros((40, 40), bool)
    nucleus[12:28, 12:28] = True
    cell = np.zeros((40, 40), bool)
    cell[10:30, 10:30] = True
    f = color_features(rgb, nucleus, cell, background=np.array([240, 240, 240], np.float32), rbc_od=2.0)
    expected = np.log(241 / np.array([61, 31, 121]))
    assert f["color_nucleus_od_red_mean"] == pytest.approx(expected[0], rel=1e-3)
    assert f["color_nucleus_od_mean"] == pytest.approx(expected.sum(), rel=1e-3)
    fr = [f[f"color_nucleus_od_{c}_fraction"] for c in ("red", "green", "blue")]
    assert sum(fr) == pytest.approx(1.0) and fr[1] == max(fr)  # purple absorbs green most
    assert f["color_nucleus_od_rbc_ratio"] == pytest.approx(expected.sum() / 2.0, rel=1e-3)
    # A dimmer scan of the same slide (less light everywhere): same OD against its own background.
    dim = np.round(rgb.astype(float) * 0.8).astype(np.uint8)
    g = color_features(dim, nucleus, cell, background=np.array([192, 192, 192], np.float32), rbc_od=2.0)
    assert g["color_nucleus_od_mean"] == pytest.approx(f["color_nucleus_od_mean"], rel=0.03)


def test_every_column_is_described_in_plain_language():
    crop = synthetic_crop(np.random.default_rng(0))
    feats = cell_features(crop.rgb, segment_cell(crop.rgb))
    for name in feats:
        text = describe_feature(name)
        assert text and "_" not in text, name
    assert set(feats) <= set(FEATURE_DESCRIPTIONS)
    assert "chromatin contrast" in describe_feature("haralick_contrast_d1")
    assert describe_feature("haralick_entropy_d5")  # other distances from the base name
    assert describe_feature("frac_is_smudge") and describe_feature("no_such_feature") is None


def test_features_on_synthetic_crop_match_truth():
    crop = synthetic_crop(np.random.default_rng(4), nucleus_radius=25, cell_radius=36)
    f = cell_features(crop.rgb, segment_cell(crop.rgb))
    assert f["nucleus_area"] == pytest.approx(crop.nucleus_mask.sum(), rel=0.06)
    assert f["nc_ratio"] == pytest.approx(crop.nucleus_mask.sum() / crop.cell_mask.sum(), rel=0.08)
    assert f["color_cytoplasm_basophilia"] > 0  # pale blue cytoplasm
    assert all(np.isfinite(v) for v in f.values())


# ------------------------------------------- fast paths vs plain definitions ----
from lympho_features.features import glcm_counts, haralick_from_glcms  # noqa: E402


def _direct_glcm(img, mask, offsets, levels):
    """Co-occurrence counts by a loop over pixel pairs: the definition, slowly."""
    h, w = img.shape
    out = np.zeros((len(offsets), levels, levels))
    for k, (dy, dx) in enumerate(offsets):
        for y in range(h):
            for x in range(w):
                y2, x2 = y + dy, x + dx
                if 0 <= y2 < h and 0 <= x2 < w and mask[y, x] and mask[y2, x2]:
                    out[k, img[y, x], img[y2, x2]] += 1
    return out


@pytest.mark.parametrize("seed", range(3))
def test_glcm_counts_match_a_loop_over_pixel_pairs(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(4, 14, 2)
    img = rng.integers(0, 5, (h, w)).astype(np.uint8)
    mask = rng.random((h, w)) < 0.7
    offsets = [(0, 1), (1, 1), (1, 0), (1, -1), (0, 3), (3, 3), (3, 0), (3, -3)]
    fast = glcm_counts(img, mask, (1, 3), 5)
    assert np.array_equal(fast, _direct_glcm(img, mask, offsets, 5))
    # Wide codes (more than 255 levels) take another path: same counts.
    assert np.array_equal(glcm_counts(img.astype(np.int64), mask, (1, 3), 300)[:, :5, :5], fast)


def test_haralick_from_glcms_matches_the_textbook_formulas():
    rng = np.random.default_rng(0)
    n = 6
    c = rng.integers(0, 20, (3, n, n)).astype(float)
    c[2, :, 3:] = 0  # some empty rows and columns
    c += c.transpose(0, 2, 1)
    p = c / c.sum((1, 2), keepdims=True)
    got = haralick_from_glcms(p)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    eps = 1e-12
    for k in range(3):
        q = p[k]
        px, py = q.sum(1), q.sum(0)
        mx, my = (i * q).sum(), (j * q).sum()
        sx, sy = np.sqrt(((i - mx) ** 2 * q).sum()), np.sqrt(((j - my) ** 2 * q).sum())
        ps = np.array([q[i + j == s].sum() for s in range(2 * n - 1)])
        pd = np.array([q[np.abs(i - j) == d].sum() for d in range(n)])
        sa = (np.arange(2 * n - 1) * ps).sum()
        dm = (np.arange(n) * pd).sum()
        ent = -(q * np.log2(q + eps)).sum()
        hx, hy = -(px * np.log2(px + eps)).sum(), -(py * np.log2(py + eps)).sum()
        pxy = np.outer(px, py)
        hxy1, hxy2 = -(q * np.log2(pxy + eps)).sum(), -(pxy * np.log2(pxy + eps)).sum()
        expected = [
            (q**2).sum(),
            ((i - j) ** 2 * q).sum(),
            ((i - mx) * (j - my) * q).sum() / (sx * sy),
            ((i - mx) ** 2 * q).sum(),
            (q / (1 + (i - j) ** 2)).sum(),
            sa,
            ((np.arange(2 * n - 1) - sa) ** 2 * ps).sum(),
            -(ps * np.log2(ps + eps)).sum(),
            ent,
            ((np.arange(n) - dm) ** 2 * pd).sum(),
            -(pd * np.log2(pd + eps)).sum(),
            (ent - hxy1) / max(hx, hy),
            np.sqrt(1 - np.exp(-2 * (hxy2 - ent))),
        ]
        assert got[k] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_lbp_matches_a_pixel_by_pixel_count():
    rng = np.random.default_rng(1)
    g = rng.integers(90, 110, (12, 15)).astype(np.uint8)  # many ties: ">=" matters
    mask = rng.random((12, 15)) < 0.8
    f = lbp_features(g, mask)
    counts = np.zeros(10)
    ring = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))
    for y in range(1, 11):
        for x in range(1, 14):
            if not mask[y, x]:
                continue
            bits = [int(g[y + dy, x + dx] >= g[y, x]) for dy, dx in ring]
            transitions = sum(bits[k] != bits[(k + 1) % 8] for k in range(8))
            counts[sum(bits) if transitions <= 2 else 9] += 1
    expected = counts / counts.sum()
    assert [f[f"lbp_nucleus_u{k}"] for k in range(9)] + [f["lbp_nucleus_nonuniform"]] == pytest.approx(expected)


def test_cell_findings_name_real_columns_and_two_readings():
    from lympho_features.extract import measure_crop
    from lympho_features.features import CELL_FINDINGS

    row = measure_crop(synthetic_crop(np.random.default_rng(0)).rgb)
    assert set(CELL_FINDINGS) <= set(row), set(CELL_FINDINGS) - set(row)
    assert all(high and low and high != low for high, low in CELL_FINDINGS.values())


def test_cell_findings_are_documented():
    from pathlib import Path

    from lympho_features.features import CELL_FINDINGS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "features.md").read_text()
    for name, (high, low) in CELL_FINDINGS.items():
        assert f"| `{name}` | {high} | {low} |" in doc, name


def test_cell_models_are_documented_with_their_report_names():
    from pathlib import Path

    from lympho_features.feature_sets import CELL_MODEL_BLOCKS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "features.md").read_text()
    for block, spec in CELL_MODEL_BLOCKS.items():
        assert f"| `{block}` | `{spec.prefix}*` | {spec.label} |" in doc, block


from lympho_features.features.haralick import percentiles_1_99, quantize  # noqa: E402
from lympho_features.features.masks import smooth_inside_all  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_1_99_are_numpy_percentiles_exactly(seed):
    # The fast order statistics must give np.percentile's numbers bit for bit (quantised texture depends on them),
    # for every size (both code paths: sorted below 64 values, partitioned above), ties and any spread.
    rng = np.random.default_rng(seed)
    for n in [*range(1, 130), 999, 3001]:
        for values in (
            rng.random(n).astype(np.float32) * 3,
            np.round(rng.random(n) * 4, 1).astype(np.float32),  # many ties
            (rng.standard_normal(n) * 1e3).astype(np.float32),
        ):
            got = percentiles_1_99(values)
            assert [float(v) for v in got] == np.percentile(values, [1, 99]).tolist(), n
            assert all(isinstance(v, np.float64) for v in got)
    wide = rng.random(500)  # float64: NumPy's own result
    assert [float(v) for v in percentiles_1_99(wide)] == np.percentile(wide, [1, 99]).tolist()


def test_percentiles_1_99_nan_and_empty():
    values = np.arange(200, dtype=np.float32)
    values[17] = np.nan
    assert all(np.isnan(v) for v in percentiles_1_99(values))
    assert all(np.isnan(v) for v in percentiles_1_99(np.array([np.nan], np.float32)))
    with pytest.raises(ValueError):
        percentiles_1_99(np.zeros(0, np.float32))


def test_quantize_float_matches_the_percentile_formula():
    # quantize of a float image: levels between np.percentile's 1st and 99th, float64 arithmetic, int64 codes.
    rng = np.random.default_rng(3)
    for _ in range(30):
        h, w = rng.integers(5, 60, 2)
        od = (rng.gamma(2.0, 0.3, (h, w))).astype(np.float32)
        mask = rng.random((h, w)) < 0.7
        mask[0, 0] = True
        lo, hi = np.percentile(od[mask].astype(np.float32), [1, 99])
        expected = np.minimum((np.clip((od - lo) / max(hi - lo, 1e-3), 0, 1) * 16).astype(np.int64), 15)
        got = quantize(od, mask, 16)
        assert got.dtype == np.int64
        assert np.array_equal(got, expected)


def test_smooth_inside_all_is_the_guarded_normalised_convolution():
    # The masked division must equal blur(img * m) / max(blur(m), 1e-6) where the mask is set and the blurred mask
    # above 1e-6, and the input elsewhere, for bool and 0/255 masks and any sigma (a huge one included).
    rng = np.random.default_rng(4)
    for sigma in (0.5, 1.0, 3.0, 1000.0):
        for mask in (rng.random((30, 24)) < 0.5, (rng.random((30, 24)) < 0.5).astype(np.uint8) * 255):
            img = (rng.random((30, 24)) * 255).astype(np.float32)
            m = mask.astype(np.float32)
            den = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
            num = cv2.GaussianBlur(img * m, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
            expected = np.where(mask & (den > 1e-6), num / np.maximum(den, 1e-6), img).astype(np.float32)
            (got,) = smooth_inside_all([img], mask, sigma)
            assert got.dtype == np.float32
            assert np.array_equal(got, expected)
