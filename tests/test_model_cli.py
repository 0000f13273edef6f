"""`lympho fit` / `predict` with fitted input stages (cell scores, CNN features) on the tiny synthetic cohort."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from typer.testing import CliRunner

from lympho_features.cli import app
from lympho_features.model import (
    DEFAULT_FEATURE_SET,
    labelled_metrics,
    load_model,
    model_inputs,
    parse_feature_set,
)

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def quick_fit(features, out, *options):
    """`lympho fit` with a 3-fold x 1 CV (tiny cohorts) and further options."""
    return run("fit", features, "--out", out, "--folds", 3, "--repeats", 1, *options)


@pytest.fixture(scope="module")
def default_model(tiny_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "default"
    r = run("fit", tiny_features, "--out", out, "--folds", 3, "--repeats", 2, "-j", 1)
    assert r.exit_code == 0, r.output
    return out


def test_default_fit_saves_cell_model_calibration_refer_band_and_ablation(default_model, tiny_features):
    meta = json.loads((default_model / "model.json").read_text())
    assert meta["feature_set"] == DEFAULT_FEATURE_SET
    blocks = parse_feature_set(DEFAULT_FEATURE_SET)[0]
    for block, stem, prefix in (
        ("cellscore", "cell_model", "cellscore__"),
        ("cellmorph", "cellmorph_model", "cellscore_morph__"),
        ("cellatyp", "cellatyp_model", "cellscore_atyp__"),
    ):
        if block in blocks:
            assert (default_model / f"{stem}.txt").is_file() and (default_model / f"{stem}.json").is_file()
            assert any(f.startswith(prefix) for f in meta["features"])
    # Calibration: bins cover the CV predictions; Brier matches them.
    cvp = pd.read_csv(default_model / "cv_predictions.csv")
    assert sum(b["count"] for b in meta["calibration"]["bins"]) == len(cvp)
    assert meta["calibration"]["brier"] == pytest.approx(float(((cvp["probability"] - cvp["label"]) ** 2).mean()))
    assert 0 <= meta["refer"]["half_width"] <= 1
    # Ablation: the same folds for every configuration, clinical as the reference.
    rows = {r["configuration"]: r for r in meta["ablation"]}
    assert {
        "clinical",
        "image",
        "image-n_cells",
        "all",
        "all-n_cells",
        "morphology",
        "clinical+morphology",
        DEFAULT_FEATURE_SET,
    } <= set(rows)
    assert (
        rows["clinical"]["n_features"] == 3 and rows["image-n_cells"]["n_features"] == rows["image"]["n_features"] - 1
    )
    assert rows["all"]["n_features"] == rows["image"]["n_features"] + 3
    lo, hi = rows["all"]["delta_ba_vs_clinical"]
    assert lo <= hi
    assert rows[DEFAULT_FEATURE_SET]["balanced_accuracy"] == pytest.approx(meta["cv"]["balanced_accuracy_mean"])


def test_python_fit_matches_the_command(default_model, tiny_features, tmp_path):
    # The CLI is thin: fit_features_dir with the same options gives the same model and CV.
    from lympho_features.model import fit_features_dir

    model, cv = fit_features_dir(tiny_features, tmp_path / "py", folds=3, repeats=2, n_jobs=1)
    cli_meta = json.loads((default_model / "model.json").read_text())
    py_meta = json.loads((tmp_path / "py" / "model.json").read_text())
    assert py_meta["feature_set"] == cli_meta["feature_set"] == DEFAULT_FEATURE_SET
    assert py_meta["features"] == cli_meta["features"] == model.features
    assert py_meta["threshold"] == pytest.approx(cli_meta["threshold"])
    assert cv.summary["balanced_accuracy_mean"] == pytest.approx(cli_meta["cv"]["balanced_accuracy_mean"])
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "py" / "cv_predictions.csv"), pd.read_csv(default_model / "cv_predictions.csv")
    )


def test_predict_flags_uncertain_patients_and_reproduces_the_inputs(default_model, tiny_features, tmp_path):
    r = run("predict", default_model, tiny_features, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    p = pd.read_csv(tmp_path / "p.csv")
    assert list(p.columns) == ["patient_id", "probability", "prediction", "uncertain"]
    meta = json.loads((default_model / "model.json").read_text())
    margin = p["probability"] - meta["threshold"]
    near = ((margin < 0) & (-margin < meta["refer"]["below"])) | ((margin >= 0) & (margin < meta["refer"]["above"]))
    assert (p["uncertain"] == near.astype(int)).all()
    booster, meta = load_model(default_model)
    X = model_inputs(default_model, meta, tiny_features)
    assert np.allclose(booster.predict(X[meta["features"]].to_numpy(float)), p["probability"])
    r = run("predict", default_model, tiny_features, "--out", tmp_path / "e.csv", "--explain")
    assert r.exit_code == 0, r.output
    assert "top1_feature" in pd.read_csv(tmp_path / "e.csv").columns


def test_predict_scores_its_calls_against_recorded_labels(default_model, tiny_features, tmp_path):
    r = run("predict", default_model, tiny_features, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    p = pd.read_csv(tmp_path / "p.csv")
    y = pd.read_parquet(tiny_features / "patients.parquet").set_index("patient_id")["label"].loc[p["patient_id"]]
    ba = balanced_accuracy_score(y.astype(int), p["prediction"])
    assert f"labels recorded for {len(p)} of {len(p)} patients" in text and f"balanced accuracy {ba:.3f}," in text
    # these are the model's own training patients: said, since the figures are then in-sample
    assert f"note: {len(p)} of these labelled patients trained the model" in text
    # without the model's CV predictions nobody can tell which patients trained it: no warning
    model = tmp_path / "m"
    shutil.copytree(default_model, model)
    (model / "cv_predictions.csv").unlink()
    text = " ".join(run("predict", model, tiny_features, "--out", tmp_path / "q.csv").output.split())
    assert "labels recorded" in text and "trained the model" not in text
    # no label recorded: nothing to score
    feats = tmp_path / "f"
    shutil.copytree(tiny_features, feats)
    patients = pd.read_parquet(feats / "patients.parquet")
    patients["label"] = np.nan
    patients.to_parquet(feats / "patients.parquet")
    r = run("predict", default_model, feats, "--out", tmp_path / "u.csv")
    assert r.exit_code == 0 and "labels recorded" not in r.output


def test_labelled_metrics_count_only_labelled_patients_and_set_the_refer_band_apart():
    preds = pd.DataFrame(
        {
            "patient_id": ["a", "b", "c", "d", "e", "f"],
            "probability": [0.9, 0.45, 0.2, 0.8, 0.6, 0.1],
            "prediction": [1, 0, 0, 1, 1, 0],
            "uncertain": [0, 1, 0, 0, 1, 0],
        }
    )
    patients = pd.DataFrame({"patient_id": ["a", "b", "c", "d", "e", "f"], "label": [1, 1, 0, 0, np.nan, 0]})
    m = labelled_metrics(preds, patients, 0.5, training_ids={"a", "e", "zz"})
    assert (m["n"], m["n_tumoral"], m["n_reactive"], m["n_uncertain"], m["n_in_training"]) == (5, 2, 3, 1, 1)
    # tumoral a found, b missed; reactive c, f cleared, d a false alarm
    assert m["sensitivity"] == 0.5 and m["specificity"] == pytest.approx(2 / 3)
    assert (m["n_found"], m["n_missed"], m["n_false_alarms"], m["n_cleared"]) == (1, 1, 1, 2)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["roc_auc"] == pytest.approx(roc_auc_score([1, 1, 0, 0, 0], [0.9, 0.45, 0.2, 0.8, 0.1]))
    # without the uncertain b: a found, c and f cleared, d a false alarm
    assert m["balanced_accuracy_confident"] == pytest.approx((1 + 2 / 3) / 2)
    assert labelled_metrics(preds, patients, 0.5)["n_in_training"] is None
    one_class = labelled_metrics(preds, patients.assign(label=[1, 1, np.nan, np.nan, np.nan, np.nan]), 0.5)
    assert (
        np.isnan(one_class["balanced_accuracy"]) and np.isnan(one_class["roc_auc"]) and one_class["sensitivity"] == 0.5
    )
    assert labelled_metrics(preds, patients.assign(label=np.nan), 0.5) is None


def test_predict_warns_about_patients_with_fewer_crops_than_the_training_patients(
    default_model, tiny_features, tmp_path
):
    meta = json.loads((default_model / "model.json").read_text())
    counts = meta["training_cells_ok"]
    patients = pd.read_parquet(tiny_features / "patients.parquet")
    assert counts["min"] == patients["n_cells_ok"].min() and counts["median"] == patients["n_cells_ok"].median()
    assert "warning" not in run("predict", default_model, tiny_features, "--out", tmp_path / "a.csv").output
    # The same patients, one of them with a single crop passing QC: named in a warning, predictions unchanged.
    feats = tmp_path / "f"
    shutil.copytree(tiny_features, feats)
    pid = patients["patient_id"].iat[0]
    patients.loc[0, "n_cells_ok"] = 1
    patients.to_parquet(feats / "patients.parquet")
    r = run("predict", default_model, feats, "--out", tmp_path / "b.csv")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"warning: {pid}: 1 crop(s) passed QC" in text and text.count("warning:") == 1
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv"))
    # A missing lymphocyte count is named too (the prediction is still made, from the other inputs).
    other = patients["patient_id"].iat[1]
    patients.loc[1, "lymph_count"] = np.nan
    patients.to_parquet(feats / "patients.parquet")
    r = run("predict", default_model, feats, "--out", tmp_path / "c.csv")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert f"warning: {other}: lymphocyte count missing" in text and text.count("warning:") == 2
    # The missing count is taken at the training median (not LightGBM's zero branch: a count of 1 x10^9/L).
    k = meta["reference"]["percentiles"].index(50)
    patients.loc[1, "lymph_count"] = np.exp(meta["reference"]["inputs"]["log_lymph_count"]["all"][k])
    patients.to_parquet(feats / "patients.parquet")
    assert run("predict", default_model, feats, "--out", tmp_path / "d.csv").exit_code == 0
    c, d = pd.read_csv(tmp_path / "c.csv"), pd.read_csv(tmp_path / "d.csv")
    assert np.allclose(c["probability"], d["probability"])
    # A patient none of whose crops is usable: its cell-score summaries are the training medians, not 0.
    cells = pd.read_parquet(feats / "cells.parquet")
    cells[cells["patient_id"] != pid].to_parquet(feats / "cells.parquet")
    shutil.rmtree(feats / "cells", ignore_errors=True)
    patients.loc[0, "n_cells_ok"] = 0
    patients.to_parquet(feats / "patients.parquet")
    r = run("predict", default_model, feats, "--out", tmp_path / "e.csv")
    assert r.exit_code == 0, r.output
    assert f"warning: {pid}: 0 crop(s) passed QC" in " ".join(r.output.split())
    _, meta = load_model(default_model)
    X = model_inputs(default_model, meta, feats)
    scores = [f for f in meta["features"] if f.startswith("cellscore")]
    assert scores and all(X.loc[0, f] == meta["reference"]["inputs"][f]["all"][k] for f in scores)


def test_cellscore_model_needs_the_cells_of_new_patients(default_model, tiny_features, tmp_path):
    if not {"cellscore", "cellmorph"} & set(parse_feature_set(DEFAULT_FEATURE_SET)[0]):
        pytest.skip("default model does not use cell scores")
    feats = tmp_path / "f"
    feats.mkdir()
    (feats / "patients.parquet").write_bytes((tiny_features / "patients.parquet").read_bytes())
    r = run("predict", default_model, feats, "--out", tmp_path / "p.csv")
    assert r.exit_code != 0 and "cells" in r.output and "Traceback" not in r.output


def test_image_only_model_saves_its_atypical_cell_model_and_predicts(tiny_features, tmp_path):
    r = quick_fit(tiny_features, tmp_path / "m", "--feature-set", "image", "--no-ablation")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["blocks"] == ["crops", "cellatyp"]
    assert not (tmp_path / "m" / "cell_model.txt").exists() and not (tmp_path / "m" / "cellmorph_model.txt").exists()
    assert meta["features"][0] == "n_cells" and all(f.startswith("cellscore_atyp__") for f in meta["features"][1:])
    assert not {"age", "gender_male", "log_lymph_count"} & set(meta["features"])  # images only
    assert meta["cellatyp_model"]["file"] == "cellatyp_model.txt"
    cell_meta = json.loads((tmp_path / "m" / "cellatyp_model.json").read_text())
    assert cell_meta["features"] and not any(f.startswith("color_") for f in cell_meta["features"])
    assert cell_meta["params"]["positive_quantile"] == 0.9  # the positive selection travels with the model
    r = run("predict", tmp_path / "m", tiny_features, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 12


def test_monotone_constraints_are_the_default_and_can_be_switched_off(default_model, tiny_features, tmp_path):
    meta = json.loads((default_model / "model.json").read_text())
    assert meta["params"]["monotone"] is True
    constraints = (default_model / "model.txt").read_text().split("[monotone_constraints: ")[1].split("]")[0]
    assert constraints.split(",") == [
        "1" if f in ("age", "log_lymph_count") or f.startswith("cellscore") else "0" for f in meta["features"]
    ]
    r = quick_fit(tiny_features, tmp_path / "m", "--feature-set", "clinical", "--no-ablation", "--no-monotone")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["params"]["monotone"] is False
    assert "[monotone_constraints: ]" in (tmp_path / "m" / "model.txt").read_text()


def test_min_sensitivity_and_feature_set_errors(tiny_features, tmp_path):
    r = quick_fit(tiny_features, tmp_path / "m", "--feature-set", "clinical", "--min-sensitivity", 1.0, "--no-ablation")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    cvp = pd.read_csv(tmp_path / "m" / "cv_predictions.csv")
    tumoral = cvp[cvp["label"] == 1]
    assert (tumoral["probability"] >= meta["threshold"]).all() and "ablation" not in meta
    r = run("fit", tiny_features, "--out", tmp_path / "m2", "--feature-set", "clinical+bogus")
    assert r.exit_code != 0 and "unknown feature set" in r.output
    r = run("fit", tiny_features, "--out", tmp_path / "m3", "--feature-set", "all+cnn")
    assert r.exit_code != 0 and "embeddings.parquet not found" in r.output and "Traceback" not in r.output


def fake_embeddings(features_dir, dim=10, seed=0):
    """Embeddings keyed like cells.parquet, with one direction carrying the label (no torch needed)."""
    cells = pd.read_parquet(features_dir / "cells.parquet")
    patients = pd.read_parquet(features_dir / "patients.parquet").set_index("patient_id")
    rng = np.random.default_rng(seed)
    y = patients.loc[cells["patient_id"], "label"].astype(float).fillna(0.5).to_numpy()
    E = rng.normal(size=(len(cells), dim))
    E[:, 0] += 3 * y
    out = cells[["patient_id", "image", "qc_ok", "qc_reason"]].copy()
    for i in range(dim):
        out[f"cnn_{i:04d}"] = E[:, i]
    return out


def test_cnn_features_are_fitted_per_fold_saved_and_reused_by_predict(tiny_features, tmp_path):
    emb_dir = tmp_path / "emb"
    emb_dir.mkdir()
    fake_embeddings(tiny_features).to_parquet(emb_dir / "embeddings.parquet")
    r = quick_fit(
        tiny_features, tmp_path / "m", "--feature-set", "clinical+cnn", "--embeddings", emb_dir, "--no-ablation"
    )
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert (tmp_path / "m" / "aggregator.json").is_file()
    assert any(f.startswith("cnn_pc1__") for f in meta["features"])
    r = run("predict", tmp_path / "m", tiny_features, "--out", tmp_path / "p.csv", "--embeddings", emb_dir)
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 12
    # --explain finds the embeddings in the same place, and explains with the learned inputs.
    r = run("predict", tmp_path / "m", tiny_features, "--out", tmp_path / "e.csv", "--embeddings", emb_dir, "--explain")
    assert r.exit_code == 0, r.output
    ex = pd.read_csv(tmp_path / "e.csv")
    pd.testing.assert_frame_equal(ex[pd.read_csv(tmp_path / "p.csv").columns], pd.read_csv(tmp_path / "p.csv"))
    assert set(ex["top1_feature"]) <= set(meta["features"])
    r = run("predict", tmp_path / "m", tiny_features, "--out", tmp_path / "p2.csv")
    assert r.exit_code != 0 and "embeddings.parquet not found" in r.output


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _torch_available(), reason="torch not installed (the optional cnn extra)")
def test_all_plus_cnn_end_to_end_with_the_tiny_network(tiny_cohort, tiny_features, tmp_path):
    import shutil

    from lympho_features.embed import save_tiny_weights

    feats = tmp_path / "features"
    shutil.copytree(tiny_features, feats)
    weights = save_tiny_weights(tmp_path / "tiny.pt", width=8, seed=0)
    r = run("embed", tiny_cohort, "--out", feats, "--weights", weights, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    r = quick_fit(feats, tmp_path / "m", "--feature-set", "all+cnn")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert "all+cnn" in {row["configuration"] for row in meta["ablation"]}
    r = run("predict", tmp_path / "m", feats, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output


def test_report_scores_cells_with_the_models_cell_model(default_model, tiny_features):
    if not {"cellscore", "cellmorph"} & set(parse_feature_set(DEFAULT_FEATURE_SET)[0]):
        pytest.skip("default model does not use cell scores")
    from lympho_features.report import load_inputs

    inp = load_inputs(default_model, tiny_features)
    scored = inp.cells["cell_score"].notna()
    assert (scored == inp.cells["qc_ok"]).all()
    assert inp.cells.loc[scored, "cell_score"].between(0, 1).all()


def test_fit_refuses_bad_options_in_one_line_naming_the_option(tiny_features, tmp_path):
    for option, value in (("--folds", 1), ("--min-sensitivity", 1.5), ("--refer-error-rate", 0), ("--jobs", 0)):
        r = run("fit", tiny_features, "--out", tmp_path / "m", option, value)
        assert r.exit_code == 2 and option in r.output and "Traceback" not in r.output, r.output
    r = run("fit", tiny_features, "--out", tmp_path / "m", "--feature-set", "everything")
    assert r.exit_code == 2 and "unknown feature set 'everything'" in " ".join(r.output.split())
    assert not (tmp_path / "m").exists()  # refused before anything is read or written
