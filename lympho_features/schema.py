"""Validation of ``model.json`` before any of it is used.

A model folder may come from another machine, another lympho version or an
untrusted source. Nothing in it is executed (LightGBM's text format and JSON,
no pickle), and its metadata is checked against the schema below when
:class:`lympho_features.folders.ModelFolder` reads it, before anything uses
it: a missing or mistyped key, a model format this lympho cannot read or an
absurd value gives one clear error naming the file and the key.

No pandas, no learning library: the folder readers import it cheaply.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import ModelMetadataError  # noqa: F401 (re-exported)

#: Version of the layout of a model folder (model.json and its files) that this lympho writes and reads.
MODEL_FORMAT = 1

#: Longest string and list accepted in model.json (a guard against absurd files).
MAX_STRING = 10_000
MAX_FEATURES = 100_000


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _is_short_str(v) -> bool:
    return isinstance(v, str) and len(v) <= MAX_STRING


def _check_features(v) -> str | None:
    if not isinstance(v, list) or not v:
        return "a non-empty list of column names"
    if len(v) > MAX_FEATURES:
        return f"at most {MAX_FEATURES} names"
    if not all(_is_short_str(f) and f for f in v):
        return "a list of non-empty strings"
    if len(set(v)) != len(v):
        return "a list without duplicates"
    return None


def _check_reference(v) -> str | None:
    """Reference ranges (model.reference_ranges): percentiles and, per input, values at those percentiles."""
    problem = "an object with 'percentiles' and 'inputs' (each input's values at those percentiles)"
    if not isinstance(v, dict) or not isinstance(v.get("inputs"), dict) or not isinstance(v.get("percentiles"), list):
        return problem
    pcts = v["percentiles"]
    if len(pcts) < 2 or not all(_is_number(p) and 0 <= p <= 100 for p in pcts) or pcts != sorted(pcts):
        return problem
    for entry in v["inputs"].values():
        vals = entry.get("all") if isinstance(entry, dict) else None
        if not isinstance(vals, list) or len(vals) != len(pcts) or not all(_is_number(x) for x in vals):
            return problem
        if vals != sorted(vals):
            return problem
        for cls in ("reactive", "tumoral"):  # quartiles of each class, or null without patients of that class
            q = entry.get(cls)
            if q is not None and not (isinstance(q, list) and len(q) == 3 and all(_is_number(x) for x in q)):
                return problem
    return None


#: key -> (required, check returning None when valid or what the value should be)
SCHEMA = {
    "format": (True, lambda v: None if _is_int(v) else "an integer"),
    "feature_set": (True, lambda v: None if _is_short_str(v) and v else "a non-empty string"),
    "features": (True, _check_features),
    "threshold": (True, lambda v: None if _is_number(v) and 0 <= v <= 1 else "a number in [0, 1]"),
    "lympho_version": (False, lambda v: None if _is_short_str(v) else "a string"),
    "min_sensitivity": (
        False,
        lambda v: None if v is None or (_is_number(v) and 0 < v <= 1) else "null or a number in (0, 1]",
    ),
    "params": (False, lambda v: None if isinstance(v, dict) else "an object"),
    "cv": (False, lambda v: None if isinstance(v, dict) else "an object"),
    "library_versions": (
        False,
        lambda v: None if isinstance(v, dict) and all(_is_short_str(x) for x in v.values()) else "an object of strings",
    ),
    "training_data_fingerprint": (False, lambda v: None if _is_short_str(v) else "a string"),
    "n_training_patients": (False, lambda v: None if _is_int(v) and v >= 1 else "a positive integer"),
    "reference": (False, _check_reference),
    "training_cells_ok": (
        False,
        lambda v: (
            None
            if v is None or (isinstance(v, dict) and all(_is_number(v.get(k)) for k in ("min", "median")))
            else "null or an object with numbers min, median"
        ),
    ),
}


def validate_model_metadata(meta: dict, path: str | Path) -> dict:
    """Check the content of a ``model.json`` against the schema; return it unchanged.

    Unknown keys are allowed (later versions may add some); known keys must
    have the documented type. The model format is checked first, so that a
    model from an incompatible version is reported as such.

    Parameters
    ----------
    meta : dict
        The parsed JSON.
    path : path
        The file it was read from, named in errors.

    Raises
    ------
    ModelMetadataError
        (a :class:`~lympho_features.errors.ModelError`) naming the file and the
        first key that does not follow the schema.
    """
    if not isinstance(meta, dict):
        raise ModelMetadataError(f"{path}: expected a JSON object, found {type(meta).__name__}")
    fmt = meta.get("format")
    if _is_int(fmt) and fmt != MODEL_FORMAT:
        version = meta.get("lympho_version", "an unknown version")
        raise ModelMetadataError(
            f"{path} has model format {fmt} (written by lympho {version}); this lympho reads format "
            f"{MODEL_FORMAT}: re-fit the model with `lympho fit`"
        )
    for key, (required, check) in SCHEMA.items():
        if key not in meta:
            if required:
                raise ModelMetadataError(f"{path}: key {key!r} is missing")
            continue
        problem = check(meta[key])
        if problem is not None:
            raise ModelMetadataError(f"{path}: key {key!r} must be {problem}")
    return meta
