import numpy as np
import pytest

from lympho_features.segment import QC_REASONS, segment_cell
from lympho_features.synthetic import synthetic_crop


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("seed", range(4))
def test_recovers_drawn_nucleus_and_cell_areas(seed):
    rng = np.random.default_rng(seed)
    crop = synthetic_crop(rng, nucleus_radius=24 + seed, cell_radius=33 + 2 * seed)
    seg = segment_cell(crop.rgb)
    assert seg.qc_ok, seg.qc_reason
    assert seg.nucleus_mask.sum() == pytest.approx(crop.nucleus_mask.sum(), rel=0.06)
    assert seg.cell_mask.sum() == pytest.approx(crop.cell_mask.sum(), rel=0.06)
    assert not (seg.nucleus_mask & ~seg.cell_mask).any()


def test_segmentation_quality_over_varied_synthetic_set():
    rng = np.random.default_rng(42)
    cases = [
        dict(pale_nucleus=True),
        dict(dark_cytoplasm=True),
        dict(offset=(12.0, -10.0)),
        dict(nucleus_radius=18, cell_radius=22),
        dict(nucleus_radius=34, cell_radius=50),
        dict(elongation=1.5),
    ]
    dn, dc = [], []
    for kw in cases * 3:
        crop = synthetic_crop(rng, **kw)
        seg = segment_cell(crop.rgb)
        dn.append(dice(seg.nucleus_mask, crop.nucleus_mask))
        dc.append(dice(seg.cell_mask, crop.cell_mask))
    assert np.mean(dn) >= 0.90
    assert np.mean(dc) >= 0.85


def test_touching_lymphocyte_is_flagged():
    crop = synthetic_crop(np.random.default_rng(3), neighbour=True)
    seg = segment_cell(crop.rgb)
    assert seg.flags["qc_touching"]
    assert not seg.qc_ok
    # The central nucleus is still the one segmented.
    assert dice(seg.nucleus_mask, crop.nucleus_mask) > 0.9


@pytest.mark.parametrize(
    "image",
    [
        np.full((224, 224, 3), 240, np.uint8),  # blank background
        np.zeros((224, 224, 3), np.uint8),  # black
        np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8),  # noise
        np.zeros((10, 10, 3), np.uint8),  # too small
        np.zeros((224, 224), np.uint8),  # wrong shape
    ],
)
def test_never_raises_and_names_the_failure(image):
    seg = segment_cell(image)
    assert seg.qc_reason in QC_REASONS
    if image.ndim != 3 or image.shape[0] < 32:
        assert seg.qc_reason == "bad_image"
    if image.ndim == 3 and image.shape[0] == 224 and image.std() == 0:
        assert not seg.qc_ok and seg.qc_reason == "no_nucleus"
