"""The domain check end to end: extract -> fit -> predict / report on patients re-acquired differently.

A synthetic training cohort (JPEG 92, one glass colour, one magnification) trains a model; new patients are
copies of training patients' crops saved at JPEG 40, with a colour cast, or magnified x1.6, next to an
unchanged copy. Each re-acquired one must be flagged with its own reason, the unchanged one not at all; features
measured with another features version or other settings must be refused.
"""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lympho_features.cli import app
from lympho_features.extract import FEATURES_VERSION, extract
from lympho_features.model import fit_features_dir, predict
from lympho_features.report import ReportError, write_report

#: New patients: (name, source patient, how its crops are re-acquired, measures expected in its reasons).
REACQUIRED = {
    "SAME": None,
    "JPEG40": ("jpeg", 40),
    "CAST": ("cast", (-24, 0, 24)),
    "X16": ("scale", 1.6),
}


def _reacquire(src, dst, how) -> None:
    dst.mkdir()
    for img in sorted(src.glob("*.jpg")):
        if how is None:
            shutil.copy(img, dst / img.name)
            continue
        bgr, quality = cv2.imread(str(img)), 92
        if how[0] == "jpeg":
            quality = how[1]
        elif how[0] == "cast":  # RGB shift, written in OpenCV's BGR order
            bgr = np.clip(bgr.astype(int) + np.array(how[1][::-1]), 0, 255).astype(np.uint8)
        else:
            bgr = cv2.resize(bgr, None, fx=how[1], fy=how[1], interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(dst / img.name), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])


@pytest.fixture(scope="module")
def flow(tiny_cohort, tiny_features, tmp_path_factory):
    root = tmp_path_factory.mktemp("domain")
    model_dir = root / "model"
    fit_features_dir(tiny_features, model_dir, folds=3, repeats=1, ablation=False, n_jobs=1)
    clinical = pd.read_csv(tiny_cohort / "clinical.csv")
    data = root / "new"
    data.mkdir()
    rows = []
    for name, how in REACQUIRED.items():
        _reacquire(tiny_cohort / "P1", data / name, how)
        rows.append(clinical[clinical["ID"] == "P1"].assign(ID=name))
    pd.concat(rows).to_csv(data / "clinical.csv", index=False)
    feats = root / "new_features"
    extract(data, feats, jobs=1, progress=False)
    return model_dir, feats


def test_model_records_profile_and_settings(flow, tiny_features):
    model_dir, _ = flow
    meta = json.loads((model_dir / "model.json").read_text())
    domain = meta["domain"]
    manifest = json.loads((tiny_features / "manifest.json").read_text())
    assert domain["settings"] == manifest["settings"]
    measures = domain["measures"]
    assert {"acq_jpeg_quality", "acq_background_red", "acq_sharpness", "nucleus_area__median"} <= set(measures)
    assert measures["acq_jpeg_quality"]["quantiles"][2] == 92  # the cohort's JPEG setting, read from the files
    assert set(meta["features"]) <= set(measures)  # every model input has its range
    assert not any(f.startswith("acq_") for f in meta["features"])  # acquisition is never an input


def test_acquisition_columns_in_the_tables(tiny_features):
    cells = pd.read_parquet(tiny_features / "cells.parquet")
    patients = pd.read_parquet(tiny_features / "patients.parquet")
    acq = [c for c in cells.columns if c.startswith("acq_")]
    assert "acq_jpeg_quality" in acq and (cells["acq_jpeg_quality"] == 92).all()
    for c in acq:
        expected = cells.groupby("patient_id")[c].median()
        got = patients.set_index("patient_id")[c]
        pd.testing.assert_series_equal(got.loc[expected.index], expected, check_names=False)
        assert not any(p.startswith(c + "__") for p in patients.columns)  # no morphology aggregate of them


def test_predict_flags_each_reacquired_patient_with_its_reason(flow, tmp_path):
    model_dir, feats = flow
    r = CliRunner().invoke(app, ["predict", str(model_dir), str(feats), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    preds = pd.read_csv(tmp_path / "p.csv", keep_default_na=False).set_index("patient_id")
    assert list(preds.columns)[:3] == ["probability", "prediction", "uncertain"]
    warning = preds["domain_warning"]
    assert warning["SAME"] == ""
    assert warning["JPEG40"].startswith("JPEG quality of the crops 40, training median 92")
    assert "glass colour, red level" in warning["CAST"] and "glass colour, blue level" in warning["CAST"]
    assert "JPEG" not in warning["CAST"]
    # Sizes are in um since features version 5: the magnified copy is caught by its pixel size, and its
    # cells measure as the originals (no nucleus-area warning).
    assert "pixel size (µm/px)" in warning["X16"] and "median nucleus area" not in warning["X16"]
    output = " ".join(r.output.split())
    for name in ("JPEG40", "CAST", "X16"):
        assert f"warning: {name}: outside the model's training profile" in output
    assert "SAME: outside" not in output
    # The Python API gives the same column.
    py = predict(model_dir, feats).set_index("patient_id")["domain_warning"]
    assert py.to_dict() == warning.to_dict()


def _with_settings(feats, tmp_path, change) -> object:
    other = tmp_path / "other"
    shutil.copytree(feats, other)
    manifest = json.loads((other / "manifest.json").read_text())
    change(manifest["settings"])
    (other / "manifest.json").write_text(json.dumps(manifest))
    return other


def test_predict_refuses_features_of_another_version_or_settings(flow, tmp_path):
    model_dir, feats = flow
    old = _with_settings(feats, tmp_path / "v", lambda s: s.update(features_version=FEATURES_VERSION - 1))
    r = CliRunner().invoke(app, ["predict", str(model_dir), str(old), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 1 and not (tmp_path / "p.csv").exists()
    text = " ".join(r.output.split())
    assert (
        f"features version {FEATURES_VERSION - 1}, the model was fitted on version {FEATURES_VERSION}: "
        "re-run `lympho extract` with this lympho"
    ) in text
    other = _with_settings(feats, tmp_path / "s", lambda s: s["segmentation"].update(min_nucleus_area=123))
    r = CliRunner().invoke(app, ["predict", str(model_dir), str(other), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 1
    assert "segmentation.min_nucleus_area 123, the model's training features used 300" in " ".join(r.output.split())
    with pytest.raises(ReportError, match="min_nucleus_area 123"):
        write_report(model_dir, other, tmp_path / "report")


def test_user_settings_are_shown_not_refused(flow, tmp_path):
    model_dir, feats = flow
    other = _with_settings(feats, tmp_path, lambda s: s.update(reference_date="2024-01-01"))
    r = CliRunner().invoke(app, ["predict", str(model_dir), str(other), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    assert 'note: reference date of ages (reference_date): "2024-01-01", the model\'s training features used' in (
        " ".join(r.output.split())
    )


def test_report_shows_the_reasons_on_the_patient_page(flow, tmp_path):
    model_dir, feats = flow
    doc = write_report(model_dir, feats, tmp_path / "report").path.read_text()
    pages = {m.split("'")[0]: m for m in doc.split("<article class='patient' id='p-")[1:]}
    assert "outside training profile" not in pages["SAME"]
    assert "outside training profile" in pages["JPEG40"]
    assert "JPEG quality of the crops 40, training median 92" in pages["JPEG40"]
    assert "glass colour, blue level" in pages["CAST"]
