"""The domain check on tables: the training profile, each patient's reasons, the settings comparison."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lympho_features.domain import (
    DomainSettings,
    check_settings,
    compare_settings,
    fit_profile,
    patient_reasons,
    validate_domain,
    warning_column,
    warning_lines,
)
from lympho_features.errors import FeaturesMismatchError, ModelError
from lympho_features.extract import FEATURES_VERSION, ExtractSettings


def _cohort(n: int = 60, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A training cohort scanned one way: JPEG 95, cream glass, sharp; and its model inputs."""
    rng = np.random.default_rng(seed)
    patients = pd.DataFrame(
        {
            "patient_id": [f"T{i}" for i in range(n)],
            "acq_jpeg_quality": np.full(n, 95.0),
            "acq_background_red": rng.normal(249, 1.5, n),
            "acq_background_green": rng.normal(223, 1.5, n),
            "acq_background_blue": rng.normal(200, 1.0, n),
            "acq_rbc_od": rng.normal(0.87, 0.09, n),
            "acq_rbc_chroma": rng.normal(0.11, 0.02, n),
            "acq_sharpness": rng.normal(1.6, 0.09, n),
        }
    )
    inputs = pd.DataFrame({"age": rng.uniform(30, 90, n), "cellscore_morph__mean": rng.uniform(0.2, 0.8, n)})
    return patients, inputs


def _new(**changes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One new patient at the training medians, with ``changes`` (acquisition columns or inputs)."""
    patients, inputs = _cohort()
    p = patients.drop(columns="patient_id").median().to_frame().T.assign(patient_id="N1")
    x = inputs.median().to_frame().T
    for k, v in changes.items():
        (x if k in x else p)[k] = v
    return p, x


@pytest.fixture(scope="module")
def profile():
    patients, inputs = _cohort()
    return fit_profile(patients, inputs)


def test_profile_holds_every_measure_with_a_range_around_the_cohort(profile):
    patients, inputs = _cohort()
    m = profile["measures"]
    assert set(m) == {*patients.columns[1:], *inputs.columns}
    assert m["acq_jpeg_quality"]["kind"] == "acquisition" and m["age"]["kind"] == "input"
    # A cohort at a single JPEG quality still gets a tolerance; a spread measure, its IQR.
    # (clipped to the qualities that exist)
    assert m["acq_jpeg_quality"]["low"] == 85 and m["acq_jpeg_quality"]["high"] == 100
    q = np.quantile(inputs["age"], [0.02, 0.25, 0.75, 0.98])
    assert m["age"]["low"] == pytest.approx(q[0] - (q[2] - q[1]))
    assert m["age"]["high"] == pytest.approx(q[3] + (q[2] - q[1]))
    assert validate_domain(json.loads(json.dumps(profile))) is None
    # Every training patient bar a few extremes is inside its own profile.
    reasons = patient_reasons(profile, patients, inputs)
    assert sum(bool(r) for r in reasons.values()) <= 2


def test_in_profile_patient_has_no_reason(profile):
    p, x = _new()
    assert patient_reasons(profile, p, x) == {"N1": []}
    assert warning_column({"N1": []}, ["N1"]) == [""]
    assert warning_lines(["N1"], [""]) == []


@pytest.mark.parametrize(
    ("changes", "measures", "direction"),
    [
        ({"acq_jpeg_quality": 40.0}, {"acq_jpeg_quality"}, "below"),
        (
            {"acq_background_red": 229.0, "acq_background_blue": 220.0},
            {"acq_background_red", "acq_background_blue"},
            None,
        ),
        ({"acq_sharpness": 0.9}, {"acq_sharpness"}, "below"),
        ({"age": 120.0}, {"age"}, "above"),
    ],
)
def test_out_of_profile_patient_is_told_why(profile, changes, measures, direction):
    p, x = _new(**changes)
    reasons = patient_reasons(profile, p, x)["N1"]
    assert {r["measure"] for r in reasons} == measures
    for r in reasons:
        assert r["value"] == changes[r["measure"]]
        assert not r["low"] <= r["value"] <= r["high"]
        assert r["direction"] == (direction or ("below" if r["value"] < r["low"] else "above"))
    line = warning_lines(["N1"], warning_column({"N1": reasons}, ["N1"]))[0]
    assert line.startswith("N1: outside the model's training profile")
    if "acq_jpeg_quality" in measures:
        assert "JPEG quality of the crops 40, training median 95 (accepted 85 to 100)" in line


def test_edge_blur_is_accepted_up_to_the_common_focus_and_named_beyond_it():
    """Crops sharper than the common focus are blurred to it at extraction: any edge blur up to it measures
    the same, so only a softer acquisition is outside the profile."""
    patients, inputs = _cohort()
    patients["acq_edge_sigma"] = np.random.default_rng(1).normal(0.87, 0.03, len(patients))
    settings = json.loads(json.dumps(ExtractSettings().to_dict()))
    target = settings["segmentation"]["focus_edge_sigma"]
    prof = fit_profile(patients, inputs, extract_settings=settings)
    entry = prof["measures"]["acq_edge_sigma"]
    assert entry["low"] == 0.0 and entry["high"] == target
    for sharp_or_soft in (0.5, 1.2):  # another lab's sharper optics, or a blur of ~0.9 px: both equalised
        p, x = _new(acq_edge_sigma=sharp_or_soft)
        assert patient_reasons(prof, p, x)["N1"] == []
    p, x = _new(acq_edge_sigma=target + 0.3)
    (reason,) = patient_reasons(prof, p, x)["N1"]
    assert reason["measure"] == "acq_edge_sigma" and reason["direction"] == "above"
    # Without the extraction settings the cohort's own range applies, as for any measure.
    assert fit_profile(patients, inputs)["measures"]["acq_edge_sigma"]["high"] < target


def test_pixel_size_of_a_cohort_scanned_at_one_scale():
    patients, inputs = _cohort()
    patients["um_per_px"] = 0.1627
    prof = fit_profile(patients, inputs)
    assert prof["measures"]["um_per_px"]["low"] == pytest.approx(0.1627 * 0.95)
    p, x = _new(um_per_px=0.1627 / 1.5)
    assert [r["measure"] for r in patient_reasons(prof, p, x)["N1"]] == ["um_per_px"]
    p, x = _new(um_per_px=0.1627 * 1.02)  # within the scale estimate's own tolerance
    assert patient_reasons(prof, p, x)["N1"] == []


def test_missing_values_and_absent_columns_are_no_reason(profile):
    p, x = _new(acq_jpeg_quality=np.nan, age=np.nan)
    assert patient_reasons(profile, p.drop(columns="acq_sharpness"), x) == {"N1": []}
    assert patient_reasons(None, p, x) == {"N1": []}  # a model fitted before the check


def test_measure_needs_enough_training_patients():
    patients, inputs = _cohort(n=4)
    prof = fit_profile(patients, inputs, settings=DomainSettings(min_patients=5))
    assert prof["measures"] == {}


def _settings(**changes) -> dict:
    s = ExtractSettings().to_dict()
    for key, value in changes.items():
        d = s
        *path, last = key.split(".")
        for k in path:
            d = d[k]
        d[last] = value
    return json.loads(json.dumps(s))


def test_same_settings_pass_and_user_choices_are_notes():
    assert compare_settings(_settings(), _settings()) == ([], [])
    refused, notes = compare_settings(_settings(), _settings(reference_date="2023-06-01"))
    assert refused == []
    assert notes == [
        'reference date of ages (reference_date): "2023-06-01", the model\'s training features used "2020-01-01"'
    ]


def test_declared_pixel_size_is_a_note_but_the_canonical_scale_is_refused():
    model, new = _settings(), _settings()
    model.update(pixel_size_um=None, canonical_um_per_px=0.1627)
    new.update(pixel_size_um=0.25, canonical_um_per_px=0.1627)
    refused, notes = compare_settings(model, new)
    assert refused == [] and notes[0].startswith("pixel size declared for the crops (µm/px) (pixel_size_um): 0.25")
    new["canonical_um_per_px"] = 0.2
    assert compare_settings(model, new)[0] == ["canonical_um_per_px 0.2, the model's training features used 0.1627"]


def test_other_features_version_is_refused_with_what_to_rerun():
    refused, _ = compare_settings(_settings(), _settings(features_version=FEATURES_VERSION - 1))
    assert refused == [
        f"features version {FEATURES_VERSION - 1}, the model was fitted on version {FEATURES_VERSION}: "
        "re-run `lympho extract` with this lympho"
    ]
    refused, _ = compare_settings(_settings(features_version=FEATURES_VERSION - 1), _settings())
    assert "re-fit the model" in refused[0]


def test_other_segmentation_setting_or_a_setting_one_side_lacks_is_refused():
    refused, _ = compare_settings(_settings(), _settings(**{"segmentation.min_nucleus_area": 200}))
    assert refused == ["segmentation.min_nucleus_area 200, the model's training features used 300"]
    new = _settings()
    new["scale"] = {"um_per_px": 0.1}
    refused, _ = compare_settings(_settings(), new)
    assert refused == ["scale.um_per_px 0.1, the model's training features used not recorded"]


def test_a_setting_added_since_the_model_was_fitted_is_compared_as_its_default():
    """A model written before a setting existed (same features version) takes features at that setting's
    default and refuses features measured with another value."""
    older = _settings()
    del older["features"]["haralick_levels"]  # as if the model predates the setting
    default = _settings()["features"]["haralick_levels"]
    assert compare_settings(older, _settings()) == ([], [])
    assert compare_settings(_settings(), older) == ([], [])
    refused, _ = compare_settings(older, _settings(**{"features.haralick_levels": default * 2}))
    assert refused == [f"features.haralick_levels {default * 2}, the model's training features used {default}"]
    # From another features version the default means nothing: the version is refused and so is the gap.
    refused, _ = compare_settings(older, _settings(features_version=FEATURES_VERSION - 1))
    assert (
        len(refused) == 2
        and refused[1] == f"features.haralick_levels {default}, the model's training features used not recorded"
    )


def _features_dir(tmp_path, settings: dict | None):
    if settings is not None:
        (tmp_path / "manifest.json").write_text(json.dumps({"settings": settings}))
    return tmp_path


def test_check_settings_refuses_naming_the_folders(tmp_path):
    meta = {"domain": {"settings": _settings()}}
    feats = _features_dir(tmp_path, _settings(**{"features.haralick_levels": 32}))
    with pytest.raises(FeaturesMismatchError) as info:
        check_settings(meta, feats, "model_dir")
    assert isinstance(info.value, ModelError)
    assert str(feats) in str(info.value) and "model_dir" in str(info.value)
    assert "features.haralick_levels 32, the model's training features used 16" in str(info.value)


def test_check_settings_notes(tmp_path):
    meta = {"domain": {"settings": _settings()}}
    assert check_settings(meta, _features_dir(tmp_path, _settings())) == []
    assert check_settings({}, _features_dir(tmp_path, _settings(features_version=1))) == []  # old model: no check
    (tmp_path / "manifest.json").unlink()
    notes = check_settings(meta, tmp_path)
    assert len(notes) == 1 and "cannot check" in notes[0]


def test_validate_domain_rejects_malformed_entries(profile):
    assert validate_domain([]) is not None
    bad = json.loads(json.dumps(profile))
    bad["measures"]["age"]["low"] = bad["measures"]["age"]["high"] + 1
    assert validate_domain(bad) is not None
    bad = json.loads(json.dumps(profile))
    bad["measures"]["age"]["quantiles"] = [1.0]
    assert validate_domain(bad) is not None
    assert validate_domain({**profile, "format": 99}) is not None
