"""Thumbnails, montages and CNN windows segment a crop at the canonical scale, as extraction measured it.

A crop acquired at 1.5x the canonical magnification (a red cell ~69 px across instead of ~46) must be
drawn with the outline extraction measured on it, not with one found on the crop as read.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from lympho_features.measure import ExtractSettings, measure_cell, segment_at_canonical
from lympho_features.montage import draw_outlines, inspect_folder, montage
from lympho_features.report.figures import data_uri
from lympho_features.report.thumbnails import ThumbnailMaker, cell_thumbnail
from lympho_features.scale import CANONICAL_UM_PER_PX
from lympho_features.segment import segment_cell
from lympho_features.synthetic import synthetic_crop

ZOOM = 1.5
UM_PER_PX = CANONICAL_UM_PER_PX / ZOOM


def _zoomed(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic crop at the canonical scale and the same crop acquired at 1.5x (bicubic, 336 px)."""
    native = synthetic_crop(np.random.default_rng(seed), n_red_cells=16).rgb
    side = int(round(native.shape[0] * ZOOM))
    return native, cv2.resize(native, (side, side), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def zoomed_folder(tmp_path_factory):
    """A data folder of one patient whose crops are at 1.5x (PNG: read back exactly as written)."""
    root = tmp_path_factory.mktemp("zoomed")
    (root / "P1").mkdir()
    for seed in range(5):  # enough isolated red cells (about 4 a crop) for the ruler to trust
        _, big = _zoomed(seed)
        cv2.imwrite(str(root / "P1" / f"{seed:06d}.png"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    return root


def test_outline_at_1_5x_is_the_one_extraction_measured():
    native, big = _zoomed(0)
    row = measure_cell(big, ExtractSettings(), um_per_px=UM_PER_PX)
    canon = segment_at_canonical(big, UM_PER_PX)
    assert canon.crop.shape[:2] == native.shape[:2]  # 336 px at 1.5x -> 224 px at the canonical scale
    # The outline drawn is the one measured: its area, in um^2, is the nucleus area of cells.parquet ...
    drawn_area = canon.segmentation.nucleus_mask.sum() * canon.um_per_px**2
    assert drawn_area == pytest.approx(row["nucleus_area"], rel=1e-9)
    assert canon.segmentation.cell_mask.sum() * canon.um_per_px**2 == pytest.approx(row["cell_area"], rel=1e-9)
    # ... and the cell's, as measured on the crop acquired at the canonical scale (within 10 %).
    at_native = segment_cell(native)
    assert drawn_area == pytest.approx(at_native.nucleus_mask.sum() * CANONICAL_UM_PER_PX**2, rel=0.1)
    overlap = (canon.segmentation.nucleus_mask & at_native.nucleus_mask).sum()
    assert overlap / (canon.segmentation.nucleus_mask | at_native.nucleus_mask).sum() > 0.85


def test_report_thumbnail_draws_the_measured_outline(zoomed_folder):
    image = "P1/000000.png"
    big = cv2.cvtColor(cv2.imread(str(zoomed_folder / image)), cv2.COLOR_BGR2RGB)
    canon = segment_at_canonical(big, UM_PER_PX)
    seg = canon.segmentation
    expected = data_uri(cell_thumbnail(canon.crop, seg.nucleus_mask, seg.cell_mask), "image/jpeg")
    thumbs = ThumbnailMaker(zoomed_folder, scales={image: UM_PER_PX})
    assert thumbs(image) == expected
    # Without the crop's scale (older features), the crop is taken as read: another picture.
    assert ThumbnailMaker(zoomed_folder)(image) != thumbs(image)


def test_inspect_montage_draws_the_measured_outline_at_the_scale_given(zoomed_folder, tmp_path):
    images = ["P1/000001.png", "P1/000002.png"]
    tiles = []
    for image in images:
        big = cv2.cvtColor(cv2.imread(str(zoomed_folder / image)), cv2.COLOR_BGR2RGB)
        canon = segment_at_canonical(big, UM_PER_PX)
        tiles.append(draw_outlines(canon.crop, canon.segmentation))
    picture, rows = inspect_folder(zoomed_folder, images=images, pixel_size_um=UM_PER_PX)
    assert [r["um_per_px"] for r in rows] == [pytest.approx(UM_PER_PX)] * 2
    expected = montage(tiles, [""] * 2, columns=8)
    # Tiles equal (captions aside: the caption strip is under each tile).
    tile = slice(2, 2 + 160)
    np.testing.assert_array_equal(picture[tile], expected[tile])
    # A features folder's um_per_px wins over the red-cell estimate; without either, the red cells of the
    # patient's crops give a scale close to the true one.
    feats = tmp_path / "feats"
    feats.mkdir()
    pd.DataFrame({"patient_id": ["P1"] * 2, "image": images, "um_per_px": [UM_PER_PX] * 2}).to_parquet(
        feats / "cells.parquet"
    )
    from_features, rows_f = inspect_folder(zoomed_folder, images=images, features_dir=feats)
    np.testing.assert_array_equal(from_features[tile], expected[tile])
    _, rows_ruler = inspect_folder(zoomed_folder, images=images)
    assert rows_ruler[0]["um_per_px"] == pytest.approx(UM_PER_PX, rel=0.08)


def test_cnn_window_is_cut_around_the_measured_nucleus():
    from lympho_features.embed import EmbedSettings, cell_window

    native, big = _zoomed(1)
    canon = segment_at_canonical(big, UM_PER_PX)
    ys, xs = np.nonzero(canon.segmentation.nucleus_mask)
    settings = EmbedSettings(window_fraction=0.75, input_size=96)
    pixels, info = cell_window(big, settings, um_per_px=UM_PER_PX)
    # The centre is reported in the crop's own pixels: the measured nucleus centroid, scaled back by 1.5.
    assert info["centre_y"] == pytest.approx((ys.mean() + 0.5) * ZOOM - 0.5, abs=1e-6)
    assert info["centre_x"] == pytest.approx((xs.mean() + 0.5) * ZOOM - 0.5, abs=1e-6)
    # The window shows as much of the cell as the window of the crop acquired at the canonical scale.
    at_native, _ = cell_window(native, settings)
    assert np.abs(pixels.astype(int) - at_native.astype(int)).mean() < 12


def test_inspect_cli_takes_the_scale_from_a_features_folder_or_the_option(zoomed_folder, tmp_path):
    from typer.testing import CliRunner

    from lympho_features.cli import app

    runner = CliRunner()
    feats = tmp_path / "feats"
    feats.mkdir()
    pd.DataFrame({"patient_id": ["P1"], "image": ["P1/000000.png"], "um_per_px": [UM_PER_PX]}).to_parquet(
        feats / "cells.parquet"
    )
    args = ["inspect", str(zoomed_folder), "--image", "P1/000000.png", "--out"]
    shown = {}
    for name, extra in (("features", ["--features", str(feats)]), ("option", ["--pixel-size", str(UM_PER_PX)])):
        out = tmp_path / f"{name}.png"
        r = runner.invoke(app, [*args, str(out), *extra])
        assert r.exit_code == 0, r.output
        shown[name] = cv2.imread(str(out))
    np.testing.assert_array_equal(shown["features"], shown["option"])  # the same scale, the same tile
    r = runner.invoke(app, [*args, str(tmp_path / "x.png"), "--pixel-size", "50"])
    assert r.exit_code == 2 and "--pixel-size 50" in r.output  # a usage error, like extract's


def test_embed_takes_each_crops_scale_from_the_features_folder_else_the_red_cells(zoomed_folder, tmp_path):
    from lympho_features.dataset import discover_patients
    from lympho_features.embed import embed_scales

    patients = discover_patients(zoomed_folder)
    feats = tmp_path / "feats"
    feats.mkdir()
    first = patients["P1"][0]
    pd.DataFrame({"patient_id": ["P1"], "image": [first], "um_per_px": [0.2]}).to_parquet(feats / "cells.parquet")
    scales = embed_scales(zoomed_folder, tmp_path / "out", patients, features_dir=feats)
    assert scales[first] == 0.2  # as measured by the extraction
    rest = [scales[im] for im in patients["P1"][1:]]
    assert rest == [pytest.approx(UM_PER_PX, rel=0.08)] * len(rest)  # the red cells of the patient's crops
    # The output folder of `lympho extract` is the features folder by default.
    assert embed_scales(zoomed_folder, feats, patients)[first] == 0.2
    assert embed_scales(zoomed_folder, tmp_path / "out", patients, pixel_size_um=0.3)[first] == 0.3
