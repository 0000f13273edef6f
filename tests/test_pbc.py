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
from lympho_features.scale import CANONICAL_UM_PER_PX, CHALLENGE_RED_CELL_DIAMETER_PX

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
    assert ratio.between(0.9, 1.1).all(), ratio.describe().to_dict()
    # Lymphocytes of healthy donors: a nucleus about the size of a red cell (7.5 um) or a little larger, in um.
    assert 6.5 < both["shape_nucleus_equivalent_diameter_native"].median() < 11
