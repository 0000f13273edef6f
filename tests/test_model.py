import json

import numpy as np
import pandas as pd
import pytest

from lympho_features.model import (
    Cohort,
    ModelError,
    PatientClassifier,
    choose_threshold,
    cross_validate_sets,
    feature_columns,
    few_cells_warnings,
    fill_missing_inputs,
    fit_model,
    input_warnings,
    load_model,
    monotone_direction,
    parse_feature_set,
    predict,
    reference_percentile,
    reference_ranges,
    save_model,
)


def patients_table(n=60, seed=0, signal=2.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    return pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n)],
            "label": pd.array(y, dtype="Int64"),
            "age": rng.normal(60, 10, n) + 5 * y,
            "gender": rng.choice(["M", "F"], n),
            "lymph_count": np.exp(rng.normal(1.5, 0.5, n) + 0.8 * y),
            "n_cells": rng.integers(20, 100, n),
            "nc_ratio__mean": rng.normal(0, 1, n) + signal * y,
            "noise__mean": rng.normal(0, 1, n),
        }
    )


def test_threshold_maximises_balanced_accuracy():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.8, 0.9])
    t = choose_threshold(y, p)
    pred = p >= t
    assert ((pred[y == 1]).mean() + (~pred[y == 0]).mean()) / 2 == pytest.approx(5 / 6)
    # Demanding full sensitivity moves the threshold below the lowest tumoral score.
    assert choose_threshold(y, p, min_sensitivity=1.0) <= 0.4


def test_threshold_is_neutral_when_no_threshold_beats_chance():
    # Inverted scores (an inner CV on a handful of patients can give them): every threshold but the two
    # extremes is worse than chance, and an extreme would call every patient one class.
    y = np.array([0, 0, 0, 1, 1, 1])
    assert choose_threshold(y, np.array([0.7, 0.8, 0.9, 0.1, 0.2, 0.3])) == 0.5
    assert choose_threshold(y, np.full(6, 0.3)) == 0.5


def test_feature_sets():
    t = patients_table()
    assert feature_columns(t, "clinical") == ["age", "gender_male", "log_lymph_count"]
    assert set(feature_columns(t, "morphology")) == {"n_cells", "nc_ratio__mean", "noise__mean"}
    assert len(feature_columns(t, "clinical+morphology")) == 6
    # image = crops + the atypical-cell model: from the table only the crop count (the cell scores are fitted).
    assert feature_columns(t, "image") == ["n_cells"] and feature_columns(t, "image-n_cells") == []
    assert feature_columns(t, "all") == ["age", "gender_male", "log_lymph_count", "n_cells"]
    assert parse_feature_set("all") == (("clinical", "crops", "cellatyp"), ())
    assert parse_feature_set("image") == (("crops", "cellatyp"), ())
    assert parse_feature_set("crops+morphology-n_cells") == (("crops", "morphology"), ("n_cells",))
    assert feature_columns(t, "crops+morphology") == feature_columns(t, "morphology")  # n_cells once
    with pytest.raises(ModelError):
        feature_columns(t, "everything")


def morphology_cv(table, columns, **options):
    """The CV of a patient model on some columns of a table only (as the ``morphology`` block)."""
    cohort = Cohort.from_tables(table[["patient_id", "label", *columns]])
    y = table["label"].astype(int).to_numpy()
    return cross_validate_sets(cohort, y, ["morphology"], **options)["morphology"]


def test_cv_finds_real_signal_and_not_noise():
    t = patients_table(n=80)
    good = morphology_cv(t, ["nc_ratio__mean"], folds=4, repeats=2)
    noise = morphology_cv(t, ["noise__mean"], folds=4, repeats=2)
    assert good.summary["n_features"] == noise.summary["n_features"] == 1
    assert good.summary["roc_auc_mean"] > 0.8
    assert noise.summary["roc_auc_mean"] < 0.7
    # Every patient is predicted exactly once per repeat.
    assert (good.predictions.groupby("repeat")["patient_id"].nunique() == 80).all()
    assert len(good.predictions) == 160


def test_fit_save_load_predict_roundtrip(tmp_path):
    t = patients_table()
    model, cv = fit_model(t, "clinical+morphology", folds=3, repeats=2)
    save_model(model, cv, tmp_path / "m")
    booster, meta = load_model(tmp_path / "m")
    assert meta["features"] == model.features
    for k in (
        "balanced_accuracy_mean",
        "balanced_accuracy_std",
        "roc_auc_mean",
        "roc_auc_std",
        "sensitivity_mean",
        "specificity_mean",
    ):
        assert k in meta["cv"]
    assert "lightgbm" in meta["library_versions"] and len(meta["training_data_fingerprint"]) == 64
    feats = tmp_path / "f"
    feats.mkdir()
    t.to_parquet(feats / "patients.parquet")
    preds = predict(tmp_path / "m", feats)
    assert list(preds.columns) == ["patient_id", "probability", "prediction", "uncertain"]
    assert ((preds["probability"] >= meta["threshold"]).astype(int) == preds["prediction"]).all()
    # The saved model reproduces the in-memory one.
    from lympho_features.model import model_matrix

    direct = model.classifier.predict_proba(model_matrix(t)[model.features].to_numpy(float))[:, 1]
    assert np.allclose(direct, preds["probability"])


def test_reference_ranges_describe_the_training_patients(tmp_path):
    t = patients_table(n=80, seed=3)
    model, cv = fit_model(t, "clinical+morphology", folds=3, repeats=1)
    save_model(model, cv, tmp_path / "m")
    _, meta = load_model(tmp_path / "m")  # the schema accepts what fit writes
    ref = meta["reference"]
    assert set(ref["inputs"]) == set(model.features)
    X = model.inputs.train_features_[model.features]
    y = t["label"].astype(int).to_numpy()
    lymph = ref["inputs"]["log_lymph_count"]
    assert lymph["n"] == len(t)
    assert ref["percentiles"][0] == 5 and ref["percentiles"][-1] == 95  # no single patient's extreme value
    assert np.isclose(lymph["all"][0], X["log_lymph_count"].quantile(0.05))
    assert np.isclose(lymph["all"][-1], X["log_lymph_count"].quantile(0.95))
    assert np.isclose(lymph["tumoral"][1], X["log_lymph_count"][y == 1].median())
    assert lymph["tumoral"][1] > lymph["reactive"][1]  # the planted signal: tumoral counts are higher
    # Percentiles: the median is the 50th, beyond the extremes 0 and 100, in between monotone.
    med = float(X["log_lymph_count"].median())
    assert abs(reference_percentile(med, ref, "log_lymph_count") - 50) < 3
    assert reference_percentile(-1e9, ref, "log_lymph_count") == 5
    assert reference_percentile(1e9, ref, "log_lymph_count") == 95
    grid = np.linspace(lymph["all"][0], lymph["all"][-1], 50)
    assert np.all(np.diff([reference_percentile(v, ref, "log_lymph_count") for v in grid]) >= 0)
    assert reference_percentile(float("nan"), ref, "log_lymph_count") is None
    assert reference_percentile(1.0, ref, "no_such_input") is None


def test_reference_ranges_of_a_binary_and_a_missing_input():
    X = pd.DataFrame(
        {"gender_male": [0.0] * 30 + [1.0] * 10, "empty": [np.nan] * 40, "part": [np.nan] * 20 + list(range(20))}
    )
    y = np.array([0, 1] * 20)
    ref = reference_ranges(X, y)
    assert "empty" not in ref["inputs"] and ref["inputs"]["part"]["n"] == 20
    # 75 % are 0: a 0 sits in the middle of the percentiles that are 0, a 1 in the middle of those that are 1.
    p0, p1 = reference_percentile(0.0, ref, "gender_male"), reference_percentile(1.0, ref, "gender_male")
    assert 30 <= p0 <= 45 and 85 <= p1 <= 95


def test_load_model_rejects_malformed_reference_ranges(tmp_path):
    t = patients_table()
    model, cv = fit_model(t, "clinical", folds=3, repeats=1)
    save_model(model, cv, tmp_path / "m")
    path = tmp_path / "m" / "model.json"
    meta = json.loads(path.read_text())
    good = json.loads(json.dumps(meta["reference"]))
    meta["reference"]["inputs"]["age"]["all"] = meta["reference"]["inputs"]["age"]["all"][::-1]  # not sorted
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="'reference'"):
        load_model(tmp_path / "m")
    meta["reference"] = good
    meta["reference"]["inputs"]["age"]["tumoral"] = "old"  # the report reads the class quartiles
    path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="'reference'"):
        load_model(tmp_path / "m")


def test_lymph_count_age_and_cell_scores_only_ever_raise_the_probability():
    # Planted: tumoral patients have high counts, but so do a few reactive ones at the very top (a U shape
    # that 80 patients cannot tell from noise). Constrained, the model cannot lower the probability there.
    rng = np.random.default_rng(0)
    n = 80
    y = rng.integers(0, 2, n)
    lymph = rng.normal(1.0 + 1.0 * y, 0.4)
    lymph[np.argsort(lymph)[-8:]] += 1.0
    y[np.argsort(lymph)[-8:]] = 0
    X = pd.DataFrame(
        {"log_lymph_count": lymph, "gender_male": rng.integers(0, 2, n).astype(float), "noise": rng.normal(size=n)}
    )
    assert [monotone_direction(c) for c in X.columns] == [1, 0, 0]
    assert monotone_direction("age") == 1 and monotone_direction("cellscore_morph__q90") == 1
    assert monotone_direction("n_cells") == 1 and monotone_direction("frac_qc_ok") == 0
    assert monotone_direction("cnn_pc01__mean") == 0
    grid = X.iloc[[0] * 50].copy()
    grid["log_lymph_count"] = np.linspace(lymph.min(), lymph.max() + 0.5, 50)
    kw = dict(min_child_samples=3, num_leaves=8, n_estimators=300, learning_rate=0.1)
    free = PatientClassifier(monotone=False, **kw).fit(X, y).predict_proba(grid)[:, 1]
    mono = PatientClassifier(**kw).fit(X, y)
    p = mono.predict_proba(grid)[:, 1]
    assert np.all(np.diff(p) >= -1e-12)
    assert np.diff(free).min() < -0.05  # unconstrained, it learned the dip
    assert mono.monotone_constraints_ == [1, 0, 0]
    # Arrays carry no names: no constraint.
    assert PatientClassifier(**kw).fit(X.to_numpy(), y).monotone_constraints_ is None


def test_few_cells_warnings_only_for_cell_based_models():
    counts = {"min": 16.0, "median": 60.0}
    patients = pd.DataFrame({"patient_id": ["A", "B", "C", "D"], "n_cells_ok": [3, 20, np.nan, 0]})
    meta = {"feature_set": "clinical+cellmorph", "training_cells_ok": counts}
    warning, none = few_cells_warnings(meta, patients)
    assert warning.startswith("A: 3 crop(s) passed QC") and "at least 16" in warning and "rest on few cells" in warning
    assert none.startswith("D: 0 crop(s)") and "could not be measured" in none
    assert few_cells_warnings({**meta, "feature_set": "clinical"}, patients) == []  # no cell-based input
    assert few_cells_warnings({"feature_set": "clinical+cellmorph"}, patients) == []  # saved before the counts
    assert few_cells_warnings(meta, patients.drop(columns="n_cells_ok")) == []


def test_missing_clinical_values_are_named_per_patient():
    patients = pd.DataFrame(
        {
            "patient_id": ["A", "B", "C"],
            "age": [70.0, np.nan, 50.0],
            "gender": ["M", "F", None],
            "lymph_count": [np.nan, 5.0, 8.0],
            "n_cells_ok": [40, 40, 3],
        }
    )
    meta = {
        "feature_set": "clinical+cellmorph",
        "features": ["age", "gender_male", "log_lymph_count", "cellscore_morph__mean"],
        "training_cells_ok": {"min": 16.0, "median": 60.0},
    }
    lines = input_warnings(meta, patients)
    assert lines[:3] == [
        "A: lymphocyte count missing: the call rests on the other inputs; treat it as uncertain",
        "B: age (date of birth) missing: the call rests on the other inputs; treat it as uncertain",
        "C: sex missing: the call rests on the other inputs; treat it as uncertain",
    ]
    assert len(lines) == 4 and lines[3].startswith("C: 3 crop(s) passed QC")
    # An image-only model does not use the clinical values: only the crop count matters.
    image_only = {**meta, "feature_set": "image", "features": ["n_cells", "cellscore_morph__mean"]}
    assert [w[:2] for w in input_warnings(image_only, patients)] == ["C:"]


def test_missing_inputs_take_the_training_median():
    X = pd.DataFrame(
        {
            "age": [np.nan, 60.0],
            "log_lymph_count": [1.0, np.nan],
            "cellscore_morph__q90": [np.nan, 0.5],
            "x": [np.nan, 1],
        }
    )
    train = pd.DataFrame(
        {"age": [50.0, 70.0, 90.0], "log_lymph_count": [0.0, 1.0, 4.0], "cellscore_morph__q90": [0.2, 0.6, 0.9]}
    )
    ref = reference_ranges(train, [0, 1, 1])
    meta = {"features": ["age", "log_lymph_count", "cellscore_morph__q90", "x"], "reference": ref}
    filled = fill_missing_inputs(X, meta)
    assert filled["age"].tolist() == [70.0, 60.0] and filled["log_lymph_count"].tolist() == [1.0, 1.0]
    assert filled["cellscore_morph__q90"].tolist() == [0.6, 0.5]  # a patient without usable cells
    assert filled["x"].isna().iat[0]  # no reference for it: LightGBM's own missing-value handling
    assert X["age"].isna().iat[0]  # the caller's table is not modified
    # A model saved without reference ranges: nothing to fill with.
    assert fill_missing_inputs(X, {"features": meta["features"]}) is X
    # An input missing for some training patients keeps the missing-value branch the model learned.
    ref["inputs"]["age"]["n"] = 2
    partly = fill_missing_inputs(X, {**meta, "n_training_patients": 3})
    assert partly["age"].isna().iat[0] and partly["log_lymph_count"].iat[1] == 1.0


def test_predict_refuses_mismatched_columns(tmp_path):
    t = patients_table()
    model, cv = fit_model(t, "clinical+morphology", folds=3, repeats=1)
    save_model(model, cv, tmp_path / "m")
    feats = tmp_path / "f"
    feats.mkdir()
    t.drop(columns=["nc_ratio__mean"]).to_parquet(feats / "patients.parquet")
    with pytest.raises(ModelError, match="nc_ratio__mean"):
        predict(tmp_path / "m", feats)


def test_a_model_saved_before_the_blocks_were_renamed_still_predicts(tmp_path):
    # model.json of earlier versions: feature set "all" with blocks ["clinical", "image"] (today's morphology);
    # it must not be read as today's "all" (which needs a cell model and cells.parquet).
    t = patients_table()
    model, cv = fit_model(t, "clinical+morphology", folds=3, repeats=1)
    save_model(model, cv, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta.update(feature_set="all", blocks=["clinical", "image"])
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    feats = tmp_path / "f"
    feats.mkdir()
    t.to_parquet(feats / "patients.parquet")  # no cells.parquet
    preds = predict(tmp_path / "m", feats)
    assert len(preds) == len(t) and preds["probability"].between(0, 1).all()


def test_load_model_rejects_incompatible_metadata(tmp_path):
    t = patients_table()
    model, cv = fit_model(t, "clinical", folds=3, repeats=1)
    save_model(model, cv, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["format"] = 99
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="format 99"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(tmp_path / "m")


def test_refer_band_covers_the_calls_near_the_threshold_that_cv_got_wrong():
    from lympho_features.model import CVResult, refer_band

    # 40 confident right calls far from the threshold 0.5, 10 calls near it of which 5 wrong.
    proba = np.r_[np.full(20, 0.05), np.full(20, 0.95), np.linspace(0.45, 0.55, 10)]
    label = np.r_[np.zeros(20), np.ones(20), np.tile([0, 1], 5)].astype(int)
    thr = np.full(50, 0.5)
    pred = (proba >= thr).astype(int)
    cv = CVResult(pd.DataFrame({"probability": proba, "threshold": thr, "prediction": pred, "label": label}), None)
    band = refer_band(cv, min_error_rate=0.3)
    assert 0.05 <= band["half_width"] < 0.45
    assert band["cv_fraction_referred"] == pytest.approx(10 / 50)
    assert band["cv_share_of_errors_referred"] == 1.0 and band["cv_error_rate_not_referred"] == 0.0
    # Without errors there is nothing to refer.
    right = cv.predictions.assign(label=pred)
    assert refer_band(CVResult(right, None))["half_width"] == 0.0


def test_refer_band_stays_narrow_at_a_low_threshold():
    from lympho_features.model import CVResult, in_refer_band, refer_band

    # A triage threshold (0.14): every reactive patient above it is a false alarm, spread up to 0.8. One symmetric
    # width holding 30% errors would cover nearly everything; each side is capped at a quarter of its calls.
    proba = np.r_[
        np.linspace(0.9, 0.99, 20), [0.10, 0.12, 0.13], np.linspace(0.02, 0.12, 15), np.linspace(0.15, 0.8, 17)
    ]
    label = np.r_[np.ones(23), np.zeros(32)].astype(int)
    thr = np.full(len(proba), 0.14)
    pred = (proba >= thr).astype(int)
    cv = CVResult(pd.DataFrame({"probability": proba, "threshold": thr, "prediction": pred, "label": label}), None)
    band = refer_band(cv, min_error_rate=0.3, max_fraction=0.25)
    n_above, n_below = int((proba >= 0.14).sum()), int((proba < 0.14).sum())
    inside = in_refer_band(proba - thr, band["below"], band["above"])
    assert inside[proba >= 0.14].sum() <= 0.25 * n_above and inside[proba < 0.14].sum() <= 0.25 * n_below
    assert 0 < band["above"] < 0.4 and band["cv_fraction_referred"] == pytest.approx(inside.mean())
    # What it refers are the calls closest to the threshold, mostly wrong ones.
    assert band["cv_error_rate_referred"] > band["cv_error_rate_not_referred"]
    assert 0 < band["cv_share_of_errors_referred"] < 1
    # Without the cap, the side above would reach the farthest false alarms.
    assert refer_band(cv, min_error_rate=0.3, max_fraction=1.0)["above"] > 0.6


def test_paired_bootstrap_separates_a_real_gain_from_noise():
    from lympho_features.model import Cohort, ablation_table, cross_validate_sets

    t = patients_table(n=80, signal=3.0)
    cohort = Cohort.from_tables(t)
    y = t["label"].astype(int).to_numpy()
    res = cross_validate_sets(cohort, y, ["clinical", "clinical+morphology"], folds=4, repeats=2)
    rows = {r["configuration"]: r for r in ablation_table(res, n_boot=500)}
    lo, hi = rows["clinical+morphology"]["delta_auc_vs_clinical"]
    assert lo > 0 and hi >= lo  # the image feature adds to clinical, with confidence
    assert "delta_ba_vs_clinical" not in rows["clinical"]
    # Same folds: every configuration predicts each patient once per repeat with the same fold index.
    a, b = res["clinical"].predictions, res["clinical+morphology"].predictions
    assert (a[["patient_id", "repeat", "fold"]].to_numpy() == b[["patient_id", "repeat", "fold"]].to_numpy()).all()


def test_nested_selection_picks_inside_each_outer_fold():
    from lympho_features.model import Cohort, nested_selection

    t = patients_table(n=60, signal=3.0)
    sets = ["clinical", "clinical+morphology"]
    cv, chosen = nested_selection(Cohort.from_tables(t), t["label"].astype(int).to_numpy(), sets, 3, 1)
    assert len(chosen) == 3 and set(chosen["configuration"]) <= set(sets)
    assert (chosen["configuration"] == sets[1]).sum() >= 2  # the image signal is strong: inner CVs see it
    # Each outer fold records its choice's inner-CV BA and its BA on the held-out patients.
    assert chosen[["inner_balanced_accuracy", "outer_balanced_accuracy"]].stack().between(0, 1).all()
    assert (cv.predictions.groupby("repeat")["patient_id"].nunique() == 60).all()


def test_balanced_operating_point_is_fixed_and_min_sensitivity_is_chosen_in_cv():
    from lympho_features.model import BALANCED_THRESHOLD

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    t = pd.DataFrame(
        {"patient_id": [f"P{i}" for i in range(40)], "label": y, "signal": y + rng.normal(0, 0.8, 40)}
    ).assign(noise=rng.normal(size=40))
    balanced = morphology_cv(t, ["signal", "noise"], folds=4, repeats=1)
    # Nothing tuned for the balanced point: every fold uses the neutral threshold of a class-balanced model.
    assert (balanced.predictions["threshold"] == BALANCED_THRESHOLD).all()
    sensitive = morphology_cv(t, ["signal", "noise"], folds=4, repeats=1, min_sensitivity=0.95)
    # A sensitivity floor is met by thresholds chosen on each fold's training patients: lower, and fold-specific.
    thresholds = sensitive.predictions.groupby("fold")["threshold"].first()
    assert (thresholds < BALANCED_THRESHOLD).all() and thresholds.nunique() > 1


class _SizeRecordingClassifier(PatientClassifier):
    """The patient model, noting how many patients (of each class) each fit sees."""

    fits: list = []

    def fit(self, X, y):
        _SizeRecordingClassifier.fits.append(np.bincount(np.asarray(y, int), minlength=2))
        return super().fit(X, y)


def test_train_fraction_fits_every_fold_on_a_stratified_share_and_scores_every_patient():
    from lympho_features.model import Cohort, ModelError, cross_validate_sets, learning_curve

    t = patients_table(n=80, signal=3.0)
    cohort, y = Cohort.from_tables(t), t["label"].astype(int).to_numpy()
    full = cross_validate_sets(cohort, y, ["clinical+morphology"], folds=4, repeats=2)["clinical+morphology"]
    _SizeRecordingClassifier.fits = []
    clf = _SizeRecordingClassifier()
    res = cross_validate_sets(
        cohort, y, ["clinical+morphology"], folds=4, repeats=2, classifier=clf, train_fraction=0.5
    )["clinical+morphology"]
    # 8 folds, each model fitted on half its fold's 60 training patients, classes in the fold's proportions
    sizes = np.array(_SizeRecordingClassifier.fits)
    assert len(sizes) == 8 and (sizes.sum(1) == 30).all()
    share = y.mean()
    assert (np.abs(sizes[:, 1] / 30 - share) < 0.05).all()
    # held-out folds stay whole: every patient scored once per repeat
    assert (res.predictions.groupby("repeat")["patient_id"].nunique() == 80).all()
    assert not np.allclose(res.predictions["probability"], full.predictions["probability"])
    with pytest.raises(ModelError, match="train_fraction"):
        cross_validate_sets(cohort, y, ["clinical"], folds=4, repeats=1, train_fraction=0)
    curve = learning_curve(cohort, y, ["clinical", "clinical+morphology"], (0.5, 1.0), folds=4, repeats=2)
    assert list(curve["n_train"].unique()) == [30, 60] and len(curve) == 4
    # the share 1.0 is the plain CV
    last = curve[(curve["fraction"] == 1.0) & (curve["configuration"] == "clinical+morphology")].iloc[0]
    assert last["balanced_accuracy"] == pytest.approx(full.summary["balanced_accuracy_mean"])


def test_fit_settings_are_checked_once_and_name_the_bad_option():
    import dataclasses

    from lympho_features.model import DEFAULT_FEATURE_SET, FitSettings, sets_with_inputs

    assert FitSettings().feature_set == DEFAULT_FEATURE_SET and FitSettings().ablation is True
    bad = [
        ("folds", 1, "--folds"),
        ("repeats", 0, "--repeats"),
        ("min_sensitivity", 0.0, "--min-sensitivity"),
        ("refer_error_rate", 1.0, "--refer-error-rate"),
        ("refer_max_fraction", 1.5, "--refer-max-fraction"),
        ("n_jobs", 0, "--jobs"),
        ("n_boot", 0, "n_boot"),
        ("feature_set", "everything", "unknown feature set 'everything'"),
        ("ablation", ("clinical", "nothing"), "unknown feature set 'nothing'"),
    ]
    for option, value, named in bad:
        with pytest.raises(ModelError, match=named):
            FitSettings(**{option: value})
    s = FitSettings.build("clinical", folds=3, ablation=["clinical+morphology"])
    assert (s.feature_set, s.folds, s.ablation) == ("clinical", 3, ("clinical+morphology",))
    assert FitSettings.build(s, seed=4) == dataclasses.replace(s, seed=4)
    with pytest.raises(TypeError, match="fold"):
        FitSettings.build(fold=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.folds = 4
    # the ablation keeps the configurations whose inputs are given
    cells, embeddings = pd.DataFrame({"patient_id": ["P0"]}), pd.DataFrame({"patient_id": ["P0"]})
    assert sets_with_inputs(["clinical", "cellmorph", "clinical+cnn"], None, None) == ["clinical"]
    assert sets_with_inputs(["clinical", "image", "clinical+cnn"], cells, None) == ["clinical", "image"]
    assert FitSettings().ablation_sets(None, embeddings) == ["clinical", "morphology", "clinical+morphology"] + [
        "clinical+cnn",
        "clinical+morphology+cnn",
    ]
    assert FitSettings(ablation=False).ablation_sets(cells, embeddings) == []
    # fit_model and lympho fit share the default feature set: it needs the per-cell table
    with pytest.raises(ModelError, match="per-cell table"):
        fit_model(patients_table())


def test_cross_validation_reports_its_progress_after_each_fold():
    calls = []
    cv = morphology_cv(
        patients_table(n=40), ["nc_ratio__mean"], folds=4, repeats=2, n_jobs=2, progress=lambda *a: calls.append(a)
    )
    assert calls == [(done, 8) for done in range(9)]  # (0, 8) first: a bar knows its length
    assert (cv.predictions.groupby("repeat")["patient_id"].nunique() == 40).all()
