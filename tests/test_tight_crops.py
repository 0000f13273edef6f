"""Crops cut close around the cell (other labs' exports): told apart, segmented without red cells, and
failed with their own QC reason (``tight_crop``, never ``blur``) only when no pixel size says their scale."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from lympho_features.extract import extract
from lympho_features.measure import ExtractSettings, apply_patient_blur, measure_crop
from lympho_features.scale import CANONICAL_UM_PER_PX
from lympho_features.segment import QC_REASONS, SegmentationSettings, segment_cell, tight_crop_thresholds
from lympho_features.synthetic import synthetic_crop, varied_set

#: As ``lympho extract`` segments: the crop already at the canonical scale, settings not scaled with its side.
AT_CANONICAL = SegmentationSettings(scale_with_side=False)


def cut_tight(rgb: np.ndarray, cell_mask: np.ndarray, margin: int) -> np.ndarray:
    """The crop cut to the box of ``cell_mask`` plus ``margin`` pixels: as another lab's export would hold it."""
    ys, xs = np.nonzero(cell_mask)
    y0, y1 = max(0, ys.min() - margin), min(rgb.shape[0], ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(rgb.shape[1], xs.max() + 1 + margin)
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])


def _tight_synthetic(seed: int, margin: int = 4, **kwargs):
    crop = synthetic_crop(np.random.default_rng(seed), **kwargs)
    return crop, cut_tight(crop.rgb, crop.cell_mask, margin), cut_tight(crop.nucleus_mask, crop.cell_mask, margin)


@pytest.mark.parametrize("seed", range(4))
def test_tight_synthetic_crop_is_flagged_and_segmented_as_the_whole_crop(seed):
    crop, tight, true_nucleus = _tight_synthetic(seed)
    assert tight.shape[0] < 0.6 * crop.rgb.shape[0]  # the cell nearly fills it
    whole = segment_cell(crop.rgb, AT_CANONICAL)
    seg = segment_cell(tight, AT_CANONICAL)
    assert seg.flags["qc_tight_crop"] and not whole.flags["qc_tight_crop"]
    assert seg.qc_ok, seg.qc_reason
    assert seg.nucleus_mask.sum() == pytest.approx(true_nucleus.sum(), rel=0.1)
    assert seg.nucleus_mask.sum() == pytest.approx(whole.nucleus_mask.sum(), rel=0.1)
    # No red cells in the crop: no red-cell reference taken from its own cytoplasm.
    assert np.isnan(seg.diagnostics["rbc_od"])


def test_ordinary_crops_are_not_tight():
    for case, crop in varied_set(seed=3, repeats=1):
        seg = segment_cell(crop.rgb, AT_CANONICAL)
        assert not seg.flags["qc_tight_crop"], case


def test_tight_crop_thresholds_do_not_split_the_chromatin():
    # Pale cytoplasm filling the crop, glass in its corners, a nucleus with a darker clump of chromatin:
    # the nucleus threshold lies between cytoplasm and nucleus (above the nucleus' own levels), the glass
    # threshold between glass and cytoplasm.
    yy, xx = np.mgrid[:60, :60]
    r2 = (yy - 30) ** 2 + (xx - 30) ** 2
    green = np.full((60, 60), 226, np.uint8)
    green[r2 < 30**2] = 168
    green[r2 < 20**2] = 72
    green[r2 < 6**2] = 38
    t1, t2 = tight_crop_thresholds(green, (slice(9, 51), slice(9, 51)))
    assert 72 <= t1 < 168 and 168 <= t2 < 226


def test_tight_crop_without_scale_fails_as_tight_crop_with_scale_passes():
    _, tight, _ = _tight_synthetic(1)
    unknown = measure_crop(tight)
    assert unknown["qc_reason"] == "tight_crop" and not unknown["qc_ok"] and unknown["qc_tight_crop"]
    known = measure_crop(tight, um_per_px=CANONICAL_UM_PER_PX)
    assert known["qc_ok"] and known["qc_reason"] == "ok" and known["qc_tight_crop"]
    assert known["nucleus_area"] == pytest.approx(unknown["nucleus_area"])  # measured all the same
    assert "tight_crop" in QC_REASONS


def test_soft_tight_crop_without_scale_is_tight_crop_not_blur():
    # One soft crop among five sharp ones of a patient, all cut tight. With the scale the blur check judges it
    # against the patient's crops (blur); without, the reason is the missing scale, which comes first.
    sharp = [_tight_synthetic(seed)[1] for seed in range(5)]
    soft = _tight_synthetic(5, blur=2.5)[1]
    for um, reason in ((CANONICAL_UM_PER_PX, "blur"), (None, "tight_crop")):
        # gate off: a cell blurred by 2.5 px is no longer a clear lymphocyte to the gate; this is about blur
        rows = [measure_crop(rgb, ExtractSettings(cell_type_gate=False), um_per_px=um) for rgb in [*sharp, soft]]
        apply_patient_blur(rows, AT_CANONICAL)
        assert rows[-1]["qc_reason"] == reason
        assert {r["qc_reason"] for r in rows[:-1]} == {"ok" if um else "tight_crop"}


def test_cell_type_gate_keeps_the_tight_crop_reason():
    _, tight, _ = _tight_synthetic(3)
    row = measure_crop(tight, ExtractSettings(cell_type_gate=True))
    assert row["qc_reason"] == "tight_crop"


@pytest.fixture(scope="module")
def tight_cohort(tmp_path_factory):
    """Two patients of 6 synthetic lymphocytes cut tight (PNG: lossless)."""
    root = tmp_path_factory.mktemp("tight")
    rows = []
    for p in range(2):
        folder = root / f"T{p}"
        folder.mkdir()
        for k in range(6):
            _, tight, _ = _tight_synthetic(100 * p + k, margin=3 + k % 3)
            cv2.imwrite(str(folder / f"{k:03d}.png"), cv2.cvtColor(tight, cv2.COLOR_RGB2BGR))
        rows.append({"ID": f"T{p}", "LABEL": p, "GENDER": "F", "DOB": "1/1/1950", "LYMPH_COUNT": 12.0})
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    return root


def test_extract_tight_crops_without_pixel_size(tight_cohort, tmp_path):
    extract(tight_cohort, tmp_path / "out", progress=False)
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    # No red cells anywhere in the run: the scale is named as missing, and every crop fails for it, none as blur.
    assert set(cells["scale_flag"]) == {"no_scale"}
    assert manifest["scale"]["flags"] == {"no_scale": 2}
    assert cells["qc_tight_crop"].all()
    assert (cells["qc_reason"] == "tight_crop").all(), cells["qc_reason"].value_counts().to_dict()
    patients = pd.read_parquet(tmp_path / "out" / "patients.parquet")
    assert (patients["frac_qc_tight_crop"] == 1.0).all()


def test_extract_tight_crops_with_pixel_size(tight_cohort, tmp_path):
    settings = ExtractSettings(pixel_size_um=CANONICAL_UM_PER_PX)
    extract(tight_cohort, tmp_path / "out", settings=settings, progress=False)
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert cells["qc_tight_crop"].all()
    assert cells["qc_ok"].all(), cells["qc_reason"].value_counts().to_dict()
    assert (cells["scale_source"] == "option").all()
