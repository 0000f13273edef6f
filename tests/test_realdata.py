"""Checks on the real shared data; skipped cleanly when it is absent."""

import shutil

import pandas as pd

from lympho_features.dataset import load_clinical
from lympho_features.extract import extract

from .conftest import REAL_DATA, requires_real_data

pytestmark = [requires_real_data]


def test_real_clinical_files_parse():
    train = load_clinical(REAL_DATA / "trainset" / "trainset_true.csv")
    test = load_clinical(REAL_DATA / "testset" / "testset_data.csv")
    assert len(train) == 115 and train["label"].notna().all()
    assert test["label"].isna().all()
    assert train["age"].between(0, 110).all() and set(train["gender"].dropna()) <= {"M", "F"}


def test_real_extract_two_patients(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    train = REAL_DATA / "trainset"
    ids = ["P0", "P26"]
    for pid in ids:
        # Copies, not links: links leading out of the data folder are refused.
        shutil.copytree(train / pid, data / pid)
    csv = pd.read_csv(train / "trainset_true.csv")
    csv[csv["ID"].isin(ids)].to_csv(data / "clinical.csv", index=False)
    res = extract(data, tmp_path / "out", progress=False)
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert res.n_skipped == 0 and len(cells) == res.n_images
    assert cells["qc_ok"].mean() > 0.85
    ok = cells[cells["qc_ok"]]
    assert ok["nc_ratio"].between(0.2, 1).all()


def test_real_patients_end_to_end_fit_predict_report(tmp_path):
    """extract -> fit (default feature set) -> predict -> report on real patients, some held out with their label."""
    from typer.testing import CliRunner

    from lympho_features.cli import app
    from lympho_features.model import fit_features_dir
    from lympho_features.report import write_report

    train = REAL_DATA / "trainset"
    csv = pd.read_csv(train / "trainset_true.csv").sort_values("ID")
    # a small cohort keeps the test short: 7 patients of each class to train on, 2 of each held out
    groups = {"fit": [], "new": []}
    for label in (0, 1):
        ids = csv.loc[csv["LABEL"] == label, "ID"].tolist()[:9]
        groups["fit"] += ids[:7]
        groups["new"] += ids[7:]
    outs = {}
    for name, ids in groups.items():
        data = tmp_path / f"data_{name}"
        data.mkdir()
        for pid in ids:
            shutil.copytree(train / pid, data / pid)
        csv[csv["ID"].isin(ids)].to_csv(data / "clinical.csv", index=False)
        outs[name] = tmp_path / f"features_{name}"
        res = extract(data, outs[name], jobs=2, progress=False)
        assert res.n_skipped == 0
    model, cv = fit_features_dir(outs["fit"], tmp_path / "model", folds=3, repeats=1, ablation=False, n_jobs=1)
    assert cv.summary["n_patients"] == 14 and (tmp_path / "model" / "cellmorph_model.txt").is_file()
    r = CliRunner().invoke(
        app, ["predict", str(tmp_path / "model"), str(outs["new"]), "--out", str(tmp_path / "p.csv")]
    )
    assert r.exit_code == 0, r.output
    preds = pd.read_csv(tmp_path / "p.csv")
    assert list(preds.columns) == ["patient_id", "probability", "prediction", "uncertain", "domain_warning"]
    assert sorted(preds["patient_id"]) == sorted(groups["new"]) and preds["probability"].between(0, 1).all()
    assert "labels recorded for 4 of 4 patients (2 tumoral, 2 reactive)" in " ".join(r.output.split())
    rep = write_report(tmp_path / "model", outs["new"], tmp_path / "report")
    doc = rep.path.read_text()
    assert rep.n_thumbnails > 0 and "crop not found" not in doc
    assert "On this report's labelled patients the model never saw" in doc
