"""Another lab's crops (../shared/data/pbc, CellaVision, 1.6x the pixels of the lymphocytosis crops): measured alike.

PBC dataset: Acevedo et al., "A dataset of microscopic peripheral blood cell images for development of automatic
recognition systems", Data in Brief 30, 2020 (CC BY 4.0). Skipped when the folder is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pandas as pd
import pytest

from lympho_features.extract import extract
from lympho_features.measure import ExtractSettings
from lympho_features.scale import CANONICAL_UM_PER_PX, CHALLENGE_RED_CELL_DIAMETER_PX, to_canonical
from lympho_features.segment import SegmentationSettings, segment_cell

PBC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc"

pytestmark = pytest.mark.skipif(not (PBC / "lymphocyte").is_dir(), reason="../shared/data/pbc is absent")

#: Red cells of the PBC crops measure about 73 px with the ruler, the lymphocytosis crops' 46.1 px.
PBC_RED_CELL_PX = 73.0


def _cohort(root: Path, factor: float | None) -> Path:
    """The 200 PBC lymphocytes as one patient, as they are or resized by ``factor`` (PNG: no second JPEG loss)."""
    folder = root / "LY"
    folder.mkdir(parents=True)
    for src in sorted((PBC / "lymphocyte").glob("*.jpg")):
        img = cv2.imread(str(src))
        if factor is None:
            (folder / src.name).write_bytes(src.read_bytes())
            continue
        h, w = img.shape[:2]
        small = cv2.resize(img, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / (src.stem + ".png")), small)
    pd.DataFrame({"ID": ["LY"], "LABEL": [0], "GENDER": ["F"], "DOB": ["1/1/1970"], "LYMPH_COUNT": [2.0]}).to_csv(
        root / "clinical.csv", index=False
    )
    return root


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pbc-native")
    extract(_cohort(tmp / "data", None), tmp / "out", progress=False)
    return tmp / "out"


@pytest.fixture(scope="module")
def resized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pbc-resized")
    extract(_cohort(tmp / "data", CHALLENGE_RED_CELL_DIAMETER_PX / PBC_RED_CELL_PX), tmp / "out", progress=False)
    return tmp / "out"


def test_pbc_scale_is_read_on_its_red_cells(native):
    manifest = json.loads((native / "manifest.json").read_text())
    patient = manifest["scale"]["patients"]["LY"]
    assert patient["source"] == "red_cells_run" and patient["flag"] == ""
    # 1.6x the pixels of the lymphocytosis crops.
    assert patient["um_per_px"] == pytest.approx(CANONICAL_UM_PER_PX * 46.1 / PBC_RED_CELL_PX, rel=0.05)
    cells = pd.read_parquet(native / "cells.parquet")
    assert (cells["um_per_px"] == patient["um_per_px"]).all()


def test_pbc_lymphocytes_pass_qc_at_their_native_scale(native):
    cells = pd.read_parquet(native / "cells.parquet")
    assert len(cells) == 200
    assert cells["qc_ok"].mean() >= 0.9, cells["qc_reason"].value_counts().to_dict()


def test_pbc_nucleus_area_does_not_depend_on_the_pixels(native, resized):
    a = pd.read_parquet(native / "cells.parquet").assign(stem=lambda d: d["image"].str.rsplit(".", n=1).str[0])
    b = pd.read_parquet(resized / "cells.parquet").assign(stem=lambda d: d["image"].str.rsplit(".", n=1).str[0])
    both = a.merge(b, on="stem", suffixes=("_native", "_resized"))
    both = both[both["qc_ok_native"] & both["qc_ok_resized"]]
    assert len(both) >= 170
    ratio = both["nucleus_area_native"] / both["nucleus_area_resized"]
    # One cell in a hundred may be off: a cell's outline can flip between two segmentations when its scale moves
    # by 0.3 % (LY_139845: 80 and 92 um^2; the canonical crop's side rounds to another pixel), whatever the ruler.
    assert (~ratio.between(0.9, 1.1)).mean() <= 0.01, ratio.describe().to_dict()
    assert ratio.median() == pytest.approx(1.0, abs=0.02)
    # Lymphocytes of healthy donors: a nucleus about the size of a red cell (7.5 um) or a little larger, in um.
    assert 6.5 < both["shape_nucleus_equivalent_diameter_native"].median() < 11


def _tight_cohort(root: Path, um_per_px: float, margin_um: float = 0.5) -> Path:
    """The 200 PBC lymphocytes cut to their cell's box plus ``margin_um``, as a lab exporting tight crops would
    (no red cells, a little glass in the corners; PNG: the same pixels). The box is the whole crop's
    segmentation, at the canonical scale, brought back to the crop's pixels."""
    folder = root / "LY"
    folder.mkdir(parents=True)
    at_canonical = SegmentationSettings(scale_with_side=False)
    per_canonical = um_per_px / CANONICAL_UM_PER_PX  # canonical pixels per pixel of the crop
    margin = margin_um / um_per_px
    for src in sorted((PBC / "lymphocyte").glob("*.jpg")):
        bgr = cv2.imread(str(src))
        crop, _ = to_canonical(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), um_per_px)
        ys, xs = segment_cell(crop, at_canonical).cell_mask.nonzero()
        if not len(ys):
            continue
        h, w = bgr.shape[:2]
        y0, y1 = int(max(0, ys.min() / per_canonical - margin)), int(min(h, (ys.max() + 1) / per_canonical + margin))
        x0, x1 = int(max(0, xs.min() / per_canonical - margin)), int(min(w, (xs.max() + 1) / per_canonical + margin))
        cv2.imwrite(str(folder / (src.stem + ".png")), bgr[y0:y1, x0:x1])
    pd.DataFrame({"ID": ["LY"], "LABEL": [0], "GENDER": ["F"], "DOB": ["1/1/1970"], "LYMPH_COUNT": [2.0]}).to_csv(
        root / "clinical.csv", index=False
    )
    return root


@pytest.fixture(scope="module")
def tight(native, tmp_path_factory):
    """The lymphocytes cut tight, extracted with the pixel size their red cells gave on the whole crops, and without."""
    um = json.loads((native / "manifest.json").read_text())["scale"]["patients"]["LY"]["um_per_px"]
    tmp = tmp_path_factory.mktemp("pbc-tight")
    data = _tight_cohort(tmp / "data", um)
    extract(data, tmp / "with", settings=ExtractSettings(pixel_size_um=um), progress=False)
    extract(data, tmp / "without", progress=False)
    return tmp


def test_pbc_tight_crops_with_pixel_size_measure_as_the_whole_crops(native, tight):
    cells = pd.read_parquet(tight / "with" / "cells.parquet")
    assert len(cells) >= 195
    assert cells["qc_tight_crop"].mean() >= 0.95  # told apart from ordinary crops
    assert cells["qc_ok"].mean() >= 0.9, cells["qc_reason"].value_counts().to_dict()
    whole = pd.read_parquet(native / "cells.parquet")
    both = whole.assign(stem=whole["image"].str.rsplit(".", n=1).str[0]).merge(
        cells.assign(stem=cells["image"].str.rsplit(".", n=1).str[0]), on="stem", suffixes=("_whole", "_tight")
    )
    # Cells segmented both times: the cell-type gate's decision (not_lymphocyte) is no part of the outline's.
    segmented = ("ok", "not_lymphocyte")
    both = both[both["qc_reason_whole"].isin(segmented) & both["qc_reason_tight"].isin(segmented)]
    assert len(both) >= 180
    ratio = both["nucleus_area_tight"] / both["nucleus_area_whole"]
    # Measured: median 1.01; within 10 %: 95 % of cells when written (features version 8), 89.5 % at versions 10
    # and 11, which blur both crops to the common focus (their edge readings agree: median 0.91 both); the rest
    # dark perinuclear cytoplasm that one or the other takes for nucleus, 0.79-1.22.
    assert ratio.median() == pytest.approx(1.0, abs=0.03), ratio.describe().to_dict()
    assert ratio.between(0.9, 1.1).mean() >= 0.88, ratio.describe().to_dict()
    assert ratio.between(0.75, 1.3).all(), ratio.describe().to_dict()


def test_pbc_tight_crops_without_pixel_size_fail_as_tight_crop_not_blur(tight):
    cells = pd.read_parquet(tight / "without" / "cells.parquet")
    manifest = json.loads((tight / "without" / "manifest.json").read_text())
    assert manifest["scale"]["patients"]["LY"]["flag"] == "no_scale"
    assert (cells["qc_reason"] == "tight_crop").mean() >= 0.95, cells["qc_reason"].value_counts().to_dict()
    assert not (cells["qc_reason"] == "blur").any()
