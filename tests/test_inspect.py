"""`lympho inspect` and the montage drawing, on synthetic crops."""

import shutil

import cv2
import numpy as np
from typer.testing import CliRunner

from lympho_features.cli import app
from lympho_features.montage import CELL_COLOUR, NUCLEUS_COLOUR, draw_outlines, montage, qc_label
from lympho_features.segment import segment_cell
from lympho_features.synthetic import synthetic_crop

runner = CliRunner()


def test_outlines_follow_the_masks():
    crop = synthetic_crop(np.random.default_rng(0))
    seg = segment_cell(crop.rgb)
    drawn = draw_outlines(crop.rgb, seg)
    nuc = np.all(drawn == NUCLEUS_COLOUR, axis=-1)
    cell = np.all(drawn == CELL_COLOUR, axis=-1)
    assert nuc.sum() > 50 and cell.sum() > 50
    # Nucleus outline pixels lie on the nucleus mask, cell outline pixels on the cell mask but off the nucleus.
    assert seg.nucleus_mask[nuc].mean() > 0.95
    assert seg.cell_mask[cell].mean() > 0.95 and not seg.nucleus_mask[cell].any()
    assert (drawn[~(nuc | cell)] == crop.rgb[~(nuc | cell)]).all()  # nothing else changed


def test_montage_layout_and_captions():
    tiles = [np.full((50, 50, 3), v, np.uint8) for v in (10, 60, 110, 160, 210)]
    img = montage(
        tiles, ["ok", "blur", "", "smudge", "x"], columns=2, tile_size=40, ok=[True, False, True, False, True]
    )
    assert img.shape == (3 * (40 + 16 + 4), 2 * (40 + 4), 3)
    assert img[2 + 20, 2 + 20].tolist() == [10, 10, 10]  # first tile, resized
    assert img[2 + 20, 44 + 2 + 20].tolist() == [60, 60, 60]  # second tile, next column
    red_caption = img[2 + 40 : 2 + 40 + 16, 44:88]
    assert (red_caption[..., 0].astype(int) - red_caption[..., 1] > 100).any()  # failing tile: red text
    assert montage([]).shape[0] > 0


def test_qc_label_names_reason_and_other_flags():
    rng = np.random.default_rng(3)
    seg = segment_cell(synthetic_crop(rng, blur=2.5).rgb)
    assert qc_label(seg).startswith("blur")
    seg = segment_cell(synthetic_crop(rng).rgb)
    assert qc_label(seg) == "ok"


def test_inspect_command_writes_montage(tiny_cohort, tmp_path):
    out = tmp_path / "m.png"
    r = runner.invoke(app, ["inspect", str(tiny_cohort), "--out", str(out), "--n", "6", "--columns", "3"])
    assert r.exit_code == 0, r.output
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] == 3 * 164 and img.shape[0] == 2 * 180
    assert "6 crops" in r.output


def test_inspect_one_patient_and_errors(tiny_cohort, tmp_path):
    pid = sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir())[0]
    n_crops = len(list((tiny_cohort / pid).glob("*.jpg")))
    out = tmp_path / "p.png"
    r = runner.invoke(app, ["inspect", str(tiny_cohort), "--patient", pid, "--n", "100", "--out", str(out)])
    assert r.exit_code == 0 and f"{n_crops} crops" in r.output
    r = runner.invoke(app, ["inspect", str(tiny_cohort), "--patient", "NOPE", "--out", str(out)])
    assert r.exit_code == 1 and "NOPE" in r.output
    r = runner.invoke(app, ["inspect", str(tiny_cohort), "--out", str(tmp_path / "m.jpg")])
    assert r.exit_code == 2 and ".png" in r.output
    r = runner.invoke(app, ["inspect", str(tiny_cohort), "--only", "bogus", "--out", str(out)])
    assert r.exit_code == 2 and "flagged" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "missing"), "--out", str(out)])
    assert r.exit_code == 1 and "not found" in r.output


def test_inspect_named_crops_in_the_order_given(tiny_cohort, tmp_path):
    from lympho_features.montage import inspect_folder

    names = sorted(str(p.relative_to(tiny_cohort)) for p in tiny_cohort.glob("*/*.jpg"))
    chosen = [names[5], names[0], names[3]]
    _, rows = inspect_folder(tiny_cohort, images=chosen)
    assert [r["image"] for r in rows] == chosen  # exactly these, in this order, whatever the sample settings
    out = tmp_path / "m.png"
    args = ["inspect", str(tiny_cohort), "--out", str(out), "--columns", "3"]
    r = runner.invoke(app, [*args, "--image", chosen[0], "--image", chosen[1]])
    assert r.exit_code == 0, r.output
    assert "2 crops" in r.output and cv2.imread(str(out)).shape[1] == 2 * 164  # two tiles: one row of two
    r = runner.invoke(app, [*args, "--image", "P0/nope.jpg"])
    assert r.exit_code == 1 and "P0/nope.jpg" in r.output
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    (data / chosen[0]).write_bytes(b"not a jpeg")
    r = runner.invoke(app, ["inspect", str(data), "--out", str(out), "--image", chosen[0]])
    assert r.exit_code == 1 and chosen[0] in r.output and "cannot be read" in r.output
