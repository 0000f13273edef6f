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
