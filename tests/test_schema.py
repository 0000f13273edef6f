"""model.json is checked against a schema before any of it is used (lympho_features.schema); nothing is pickled."""

from pathlib import Path

import pytest

from lympho_features.schema import ModelMetadataError, validate_model_metadata

ROOT = Path(__file__).resolve().parents[1]


def valid_meta() -> dict:
    return {"format": 1, "feature_set": "all", "features": ["age", "n_cells"], "threshold": 0.4, "params": {}}


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"format": 7, "lympho_version": "9.1"}, "model format 7 (written by lympho 9.1)"),
        ({"features": "age"}, "key 'features' must be a non-empty list"),
        ({"features": ["age", "age"]}, "without duplicates"),
        ({"threshold": "0.5"}, "key 'threshold' must be a number"),
        ({"threshold": float("nan")}, "key 'threshold'"),
        ({"threshold": 3}, "key 'threshold'"),
        ({"min_sensitivity": 0}, "key 'min_sensitivity'"),
        ({"format": True}, "key 'format' must be an integer"),
        ({"params": []}, "key 'params' must be an object"),
    ],
)
def test_model_json_schema_rejects(change, fragment):
    meta = valid_meta() | change
    with pytest.raises(ModelMetadataError) as info:
        validate_model_metadata(meta, "m/model.json")
    assert fragment in str(info.value) and "m/model.json" in str(info.value)


def test_model_json_schema_accepts_and_requires():
    meta = valid_meta() | {"new_key_of_a_later_version": {"x": 1}}
    assert validate_model_metadata(meta, "p") is meta
    for key in ("format", "features", "threshold", "feature_set"):
        with pytest.raises(ModelMetadataError, match=f"key '{key}' is missing"):
            validate_model_metadata({k: v for k, v in valid_meta().items() if k != key}, "p")
    with pytest.raises(ModelMetadataError, match="expected a JSON object"):
        validate_model_metadata([1, 2], "p")


def test_no_pickle_anywhere():
    for path in [*(ROOT / "lympho_features").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path
        assert "allow_pickle=True" not in text, path
