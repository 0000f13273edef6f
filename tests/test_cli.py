"""The command line end to end on a tiny synthetic cohort, and its errors."""

import json
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from lympho_features.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_extract_outputs_follow_the_contract(tiny_cohort, tiny_features):
    cells = pd.read_parquet(tiny_features / "cells.parquet")
    for col in ("patient_id", "image", "qc_ok", "qc_reason", "nucleus_area", "cell_area", "nc_ratio"):
        assert col in cells.columns
    assert len([c for c in cells.columns if c.startswith("haralick_")]) >= 13
    assert cells["qc_ok"].dtype == bool
    ok = cells[cells["qc_ok"]]
    assert ((ok["nc_ratio"] > 0) & (ok["nc_ratio"] <= 1)).all()
    n_images = sum(1 for _ in tiny_cohort.glob("*/*.jpg"))
    assert len(cells) == n_images
    assert (tiny_cohort / cells["image"].iloc[0]).is_file()
    patients = pd.read_parquet(tiny_features / "patients.parquet")
    for col in ("patient_id", "label", "age", "gender", "lymph_count", "n_cells"):
        assert col in patients.columns
    assert len(patients) == 12 and patients["n_cells"].sum() == n_images
    manifest = json.loads((tiny_features / "manifest.json").read_text())
    assert manifest["counts"]["images"] == n_images and manifest["skipped"] == []
    assert len(manifest["input_fingerprint"]) == 64 and "opencv-python-headless" in manifest["library_versions"]


def test_fit_and_predict(tiny_features, tmp_path):
    r = run("fit", tiny_features, "--out", tmp_path / "m", "--folds", 3, "--repeats", 2)
    assert r.exit_code == 0, r.output
    assert "balanced accuracy" in r.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["cv"]["folds"] == 3 and meta["cv"]["repeats"] == 2
    cvp = pd.read_csv(tmp_path / "m" / "cv_predictions.csv")
    assert len(cvp) == 2 * 12
    r = run("predict", tmp_path / "m", tiny_features, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    preds = pd.read_csv(tmp_path / "p.csv")
    assert list(preds.columns)[:3] == ["patient_id", "probability", "prediction"] and len(preds) == 12
    r = run("predict", tmp_path / "m", tiny_features, "--out", tmp_path / "k.csv", "--kaggle")
    assert list(pd.read_csv(tmp_path / "k.csv").columns) == ["Id", "Predicted"]


def test_rerun_reuses_finished_patients_and_gives_identical_tables(tiny_cohort, tiny_features, tmp_path):
    out = tmp_path / "feat"
    shutil.copytree(tiny_features, out)
    r = run("extract", tiny_cohort, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert "12 patient(s) reused" in r.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "cells.parquet"), pd.read_parquet(tiny_features / "cells.parquet")
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "patients.parquet"), pd.read_parquet(tiny_features / "patients.parquet")
    )


def test_bad_files_are_skipped_and_named(tiny_cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    (data / "P0" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = sorted((data / "P1").glob("*.jpg"))[0]
    (data / "P1" / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    r = run("extract", data, "--out", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    assert "2 file(s) skipped" in r.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(s["image"] for s in manifest["skipped"]) == ["P0/broken.jpg", "P1/truncated.jpg"]


def test_mismatched_patients_are_listed(tiny_cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    shutil.rmtree(data / "P3")
    (data / "P99").mkdir()
    shutil.copy(next((data / "P0").glob("*.jpg")), data / "P99" / "a.jpg")
    r = run("extract", data, "--out", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    assert "without a row" in r.output and "P99" in r.output
    assert "without an image folder" in r.output and "P3" in r.output
    table = pd.read_parquet(tmp_path / "out" / "patients.parquet").set_index("patient_id")
    assert table.loc["P3", "n_cells"] == 0 and pd.isna(table.loc["P99", "label"])


@pytest.mark.parametrize(
    "args,fragment",
    [
        (("extract", "/nonexistent/data", "--out", "{tmp}/o"), "data folder not found"),
        (("extract", "{cohort}", "--out", "{tmp}/o", "--clinical", "{tmp}/missing.csv"), "clinical CSV not found"),
        (("fit", "{tmp}", "--out", "{tmp}/m"), "patients.parquet not found"),
        (("predict", "{tmp}", "{tmp}", "--out", "{tmp}/p.csv"), "model.json not found"),
        (("fit", "{tmp}", "--out", "{tmp}/m", "--feature-set", "bogus"), "unknown feature set 'bogus'"),
    ],
)
def test_errors_are_one_line_without_traceback(tiny_cohort, tmp_path, args, fragment):
    args = [a.format(tmp=tmp_path, cohort=tiny_cohort) for a in args]
    r = run(*args)
    assert r.exit_code != 0
    assert fragment in r.output
    assert "Traceback" not in r.output


def test_missing_column_named(tiny_cohort, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,LABEL,GENDER,DOB\nP0,1,M,1/1/1950\n")
    r = run("extract", tiny_cohort, "--out", tmp_path / "o", "--clinical", bad)
    assert r.exit_code != 0 and "LYMPH_COUNT" in r.output


def test_help_lists_commands():
    r = run("--help")
    for cmd in ("extract", "fit", "predict", "demo"):
        assert cmd in r.output


def test_the_command_line_starts_without_the_learning_libraries():
    # `lympho extract` pays the command line's start-up on every run: scikit-learn, LightGBM and torch
    # are imported by the commands that use them, not by the command line itself.
    import subprocess
    import sys

    code = "import sys, lympho_features.cli; print(sorted(m for m in ('sklearn', 'lightgbm', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
