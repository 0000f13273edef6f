"""`lympho extract`'s pixel scale end to end: red cells pooled per run, --pixel-size, the CSV's column."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from lympho_features.cli import app
from lympho_features.scale import CANONICAL_UM_PER_PX
from lympho_features.synthetic import make_cohort

runner = CliRunner()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Four patients at the challenge's magnification and one (Q0) scanned with 1.6x the pixels."""
    root = tmp_path_factory.mktemp("mixed")
    make_cohort(root, n_patients=4, cells_per_patient=(6, 6), seed=2)
    other = tmp_path_factory.mktemp("other")
    make_cohort(other, n_patients=1, cells_per_patient=(6, 6), seed=9, size=358)
    shutil.move(other / "P0", root / "Q0")
    clinical = pd.read_csv(root / "clinical.csv")
    row = pd.read_csv(other / "clinical.csv").assign(ID="Q0")
    pd.concat([clinical, row]).to_csv(root / "clinical.csv", index=False)
    return root


def _extract(data, out, *args):
    r = runner.invoke(app, ["extract", str(data), "--out", str(out), "-q", *map(str, args)])
    assert r.exit_code == 0, r.output
    return (
        pd.read_parquet(out / "cells.parquet"),
        pd.read_parquet(out / "patients.parquet"),
        json.loads((out / "manifest.json").read_text()),
        r.output,
    )


def test_red_cells_give_the_run_scale_and_flag_another_magnification(mixed, tmp_path):
    cells, patients, manifest, output = _extract(mixed, tmp_path / "out")
    scale = manifest["scale"]
    assert scale["canonical_um_per_px"] == CANONICAL_UM_PER_PX
    assert scale["run_red_cell_um_per_px"] == pytest.approx(CANONICAL_UM_PER_PX, rel=0.05)
    q0 = scale["patients"]["Q0"]
    assert q0["source"] == "red_cells_patient" and q0["flag"] == "differs_from_run"
    assert q0["um_per_px"] == pytest.approx(CANONICAL_UM_PER_PX / 1.6, rel=0.05)
    assert "differs_from_run for 1 patient(s)" in output
    for pid in ("P0", "P1", "P2", "P3"):
        assert scale["patients"][pid]["um_per_px"] == scale["run_red_cell_um_per_px"]
    # The scale is in both tables, and never a model input (no aggregate of it).
    by_patient = patients.set_index("patient_id")
    assert by_patient.loc["Q0", "um_per_px"] == pytest.approx(q0["um_per_px"])
    assert by_patient.loc["Q0", "scale_flag"] == "differs_from_run"
    assert not any(c.startswith("um_per_px__") for c in patients.columns)
    assert (cells.groupby("patient_id")["um_per_px"].nunique() == 1).all()
    # Measured at its own scale, the 1.6x patient's crops pass QC and its cells have the sizes of the others'.
    q0_cells = cells[cells["patient_id"] == "Q0"]
    # Every QC check passes; the cell-type gate's call on a synthetic cell is not the scale's (test_celltype.py):
    # one of these synthetic crops (small dense nucleus) sits near the threshold, P(lymphocyte) 0.39-0.56 by gate.
    assert (q0_cells["qc_ok"] | (q0_cells["qc_reason"] == "not_lymphocyte")).all()
    assert q0_cells["qc_ok"].mean() >= 0.8
    assert 0.5 < q0_cells["nucleus_area"].median() / cells["nucleus_area"].median() < 2
    assert set(manifest["units"]) >= {"lengths", "areas", "um_per_px"}


def test_pixel_size_option_and_csv_column(mixed, tmp_path):
    _, patients, manifest, _ = _extract(mixed, tmp_path / "opt", "--pixel-size", 0.2)
    assert {p["source"] for p in manifest["scale"]["patients"].values()} == {"option"}
    assert (patients["um_per_px"] == 0.2).all()

    data = tmp_path / "data"
    shutil.copytree(mixed, data)
    clinical = pd.read_csv(data / "clinical.csv")
    clinical["PIXEL_SIZE_UM"] = [None, None, None, None, CANONICAL_UM_PER_PX / 1.6]
    clinical.to_csv(data / "clinical.csv", index=False)
    cells, _, manifest, _ = _extract(data, tmp_path / "csv")
    q0 = manifest["scale"]["patients"]["Q0"]
    assert q0["source"] == "csv" and q0["flag"] == "" and q0["um_per_px"] == pytest.approx(CANONICAL_UM_PER_PX / 1.6)
    assert {manifest["scale"]["patients"][p]["source"] for p in ("P0", "P1", "P2", "P3")} == {"red_cells_run"}
    assert (cells.loc[cells["patient_id"] == "Q0", "scale_source"] == "csv").all()

    clinical["PIXEL_SIZE_UM"] = ["0.16", "", "abc", "", ""]
    clinical.to_csv(data / "clinical.csv", index=False)
    r = runner.invoke(app, ["extract", str(data), "--out", str(tmp_path / "bad"), "-q"])
    assert r.exit_code != 0 and "line 4" in r.output and "PIXEL_SIZE_UM 'abc'" in r.output
    r = runner.invoke(app, ["extract", str(mixed), "--out", str(tmp_path / "bad2"), "-q", "--pixel-size", "-1"])
    assert r.exit_code != 0 and "--pixel-size -1.0 is not a pixel size" in r.output
