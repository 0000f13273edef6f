"""The domain check: is a new patient like the patients the model was fitted on?

A model learned from one lab's smears: one scanner, one stain, one JPEG
setting, one magnification, and the range of ages, lymphocyte counts and cell
scores of its cohort. A patient acquired otherwise (a blurrier or more
compressed scan, another stain hue, another pixel size), or whose inputs lie
beyond anything the model saw, gets a call the cross-validation says nothing
about. Two checks, both recorded at ``lympho fit`` in ``model.json`` under
``domain`` and applied by ``lympho predict``:

* **Measurement settings** (:func:`check_settings`). The features folder's
  ``manifest.json`` records the settings that shaped the measurements
  (segmentation, features, aggregation, features version, scale). Features
  measured otherwise are refused, naming the difference: the model's
  thresholds mean nothing on them. Settings that are the user's to choose for
  a cohort (:data:`USER_SETTINGS`, e.g. the reference date of ages) are only
  reported.
* **Acquisition and input profile** (:func:`fit_profile`,
  :func:`patient_reasons`). Per training patient, the medians of the crops'
  acquisition measurements (``acq_*`` of :mod:`lympho_features.acquisition`,
  ``um_per_px`` when recorded, the median nucleus area as a magnification
  proxy) and every model input; their robust range (2nd to 98th percentile,
  widened by the interquartile range, at least a per-measurement
  tolerance) is the profile. A new patient outside it gets a reason per
  measurement, as plain data (for ``predict``'s ``domain_warning`` column, its
  warning lines and the report).

Nothing here refuses a patient: the reasons say why a call deserves less
trust, as the missing-value and few-crops warnings of
:func:`lympho_features.model.input_warnings` do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import FeaturesMismatchError

#: Version of the ``domain`` entry of model.json.
DOMAIN_FORMAT = 1

#: Settings of a features folder that are the user's to choose for a cohort: a difference with the model's
#: training features is reported, not refused (dotted keys of manifest.json ``settings``).
USER_SETTINGS = {
    "reference_date": "reference date of ages",
    "max_pixels": "largest image accepted (pixels)",
    # The pixel size declared for the crops (`lympho extract --pixel-size`) describes the user's scanner: crops
    # are resampled to the canonical scale, so another value is expected from another lab. The canonical scale
    # itself and the resampling settings shape the measurements and are compared like the others.
    "pixel_size_um": "pixel size declared for the crops (µm/px)",
}


@dataclass(frozen=True)
class Measure:
    """How one profile measurement is named and compared.

    Attributes
    ----------
    label : str
        What a clinician reads (``"JPEG quality of the crops"``).
    fmt : str
        Format of its values in messages.
    tolerance : float
        Smallest margin added to the training range, in the measurement's
        unit (a cohort scanned at one JPEG quality has no spread at all).
    relative : float
        Smallest margin as a fraction of the training median (for ratios such as the pixel size).
    hint : str
        What a value outside the range suggests.
    limits : tuple of float, optional
        The values the measurement can take: the range is clipped to them (a JPEG quality above 100
        does not exist).
    accepted_up_to : str, optional
        An extraction setting (flattened key of the features' manifest settings) up to which any value
        is accepted, whatever the training cohort's range: the edge blur of crops that extraction brings
        to one focus (``segmentation.focus_edge_sigma``) measures the same from 0 to that focus.
    """

    label: str
    fmt: str = "{:.3g}"
    tolerance: float = 0.0
    relative: float = 0.0
    hint: str = ""
    limits: tuple[float, float] | None = None
    accepted_up_to: str | None = None


_COLOUR_HINT = "another stain, lamp or scanner white balance"

#: The acquisition measurements of patients.parquet the profile covers (per-patient medians over the crops).
ACQUISITION_MEASURES = {
    "acq_jpeg_quality": Measure(
        "JPEG quality of the crops",
        "{:.0f}",
        10.0,
        hint="other compression: artefacts change texture measurements",
        limits=(1.0, 100.0),
    ),
    "acq_background_red": Measure("glass colour, red level", "{:.0f}", 6.0, hint=_COLOUR_HINT),
    "acq_background_green": Measure("glass colour, green level", "{:.0f}", 6.0, hint=_COLOUR_HINT),
    "acq_background_blue": Measure("glass colour, blue level", "{:.0f}", 6.0, hint=_COLOUR_HINT),
    "acq_rbc_od": Measure(
        "red-cell stain density (OD)", "{:.2f}", 0.05, hint="another stain intensity or smear thickness"
    ),
    "acq_rbc_chroma": Measure("red-cell hue (blue chroma)", "{:.3f}", 0.02, hint="another stain"),
    "acq_sharpness": Measure(
        "nucleus sharpness", "{:.2f}", 0.1, hint="focus, resampling or compression unlike the training crops"
    ),
    "acq_edge_sigma": Measure(
        "edge blur (focus)",
        "{:.2f}",
        0.1,
        hint="crops softer than the common focus every crop is brought to are measured as they are",
        accepted_up_to="segmentation.focus_edge_sigma",
    ),
    "um_per_px": Measure("pixel size (µm/px)", "{:.3f}", 0.0, 0.05, hint="another magnification or scanner"),
    "nucleus_area__median": Measure(
        "median nucleus area", "{:.3g}", 0.0, 0.05, hint="another magnification or crop size"
    ),
}

#: Words for the clinical model inputs.
_INPUT_WORDS = {"age": "age", "gender_male": "sex", "log_lymph_count": "lymphocyte count (log)", "n_cells": "crops"}


@dataclass(frozen=True)
class DomainSettings:
    """How wide the profile is.

    The range of a measurement is ``[q(low_quantile) - margin, q(high_quantile) + margin]`` over the
    training patients, ``margin = max(iqr_margin * IQR, tolerance, relative * |median|)``.
    """

    low_quantile: float = 0.02
    high_quantile: float = 0.98
    iqr_margin: float = 1.0
    min_patients: int = 5  #: fewer training patients with a value: no range for that measurement


#: The quantile levels stored per measurement (the range's ends are recomputed from them and the rule).
def _levels(s: DomainSettings) -> list[float]:
    return [s.low_quantile, 0.25, 0.5, 0.75, s.high_quantile]


def _finite(values) -> np.ndarray:
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
    return v[np.isfinite(v)]


def _range_entry(values, kind: str, measure: Measure | None, s: DomainSettings) -> dict | None:
    v = _finite(values)
    if v.size < s.min_patients:
        return None
    qs = [float(x) for x in np.quantile(v, _levels(s))]
    lo, q25, med, q75, hi = qs
    tol = measure.tolerance if measure else 0.0
    rel = measure.relative if measure else 0.0
    margin = max(s.iqr_margin * (q75 - q25), tol, rel * abs(med))
    if kind == "input" and margin == 0.0:
        # An input constant in training (a single value): any other value is unseen, but a float's
        # rounding is not.
        margin = 1e-9 * max(1.0, abs(med))
    low, high = lo - margin, hi + margin
    if measure is not None and measure.limits is not None:
        low, high = max(low, measure.limits[0]), min(high, measure.limits[1])
    return {"kind": kind, "n": int(v.size), "quantiles": qs, "low": low, "high": high}


def fit_profile(
    patients: pd.DataFrame,
    inputs: pd.DataFrame | None = None,
    extract_settings: dict | None = None,
    settings: DomainSettings = DomainSettings(),
) -> dict:
    """The training cohort's profile: what ``model.json`` stores under ``domain``.

    Parameters
    ----------
    patients : DataFrame
        The training patients' rows of patients.parquet (acquisition medians ``acq_*``,
        ``um_per_px`` and ``nucleus_area__median`` when present).
    inputs : DataFrame, optional
        The training patients' model inputs, one column per input the model uses.
    extract_settings : dict, optional
        The ``settings`` of the features folder's manifest.json (None: not recorded, not checked).
    settings : DomainSettings
        Width of the ranges.

    Returns
    -------
    dict
        JSON-ready: ``format``, ``quantile_levels``, ``rule``, ``settings`` (the extraction settings) and
        ``measures`` (name -> ``kind`` "acquisition" or "input", ``n`` patients, ``quantiles`` at the
        levels, ``low``, ``high``).
    """
    measures: dict[str, dict] = {}
    for name, m in ACQUISITION_MEASURES.items():
        if name in patients.columns:
            entry = _range_entry(patients[name], "acquisition", m, settings)
            if entry is not None and m.accepted_up_to and extract_settings:
                up_to = _flatten(extract_settings).get(m.accepted_up_to)
                if isinstance(up_to, (int, float)) and not isinstance(up_to, bool):
                    entry["low"], entry["high"] = min(entry["low"], 0.0), max(entry["high"], float(up_to))
            if entry is not None:
                measures[name] = entry
    if inputs is not None:
        for name in inputs.columns:
            if name in measures:
                continue
            entry = _range_entry(inputs[name], "input", None, settings)
            if entry is not None:
                measures[name] = entry
    return {
        "format": DOMAIN_FORMAT,
        "quantile_levels": _levels(settings),
        "rule": {
            "low_quantile": settings.low_quantile,
            "high_quantile": settings.high_quantile,
            "iqr_margin": settings.iqr_margin,
        },
        "settings": extract_settings,
        "measures": measures,
    }


def _fmt(name: str, value: float) -> str:
    m = ACQUISITION_MEASURES.get(name)
    if m is not None:
        return m.fmt.format(value)
    return f"{value:.3g}"


def _label(name: str) -> str:
    if name in ACQUISITION_MEASURES:
        return ACQUISITION_MEASURES[name].label
    return f"model input {_INPUT_WORDS.get(name, name)}"


def reason_text(reason: dict) -> str:
    """One reason as a short line: ``"JPEG quality of the crops 40, training 95 (accepted 85 to 105)"``."""
    name = reason["measure"]
    hint = ACQUISITION_MEASURES[name].hint if name in ACQUISITION_MEASURES else "beyond the training patients'"
    return (
        f"{reason['label']} {_fmt(name, reason['value'])}, training median {_fmt(name, reason['median'])} "
        f"(accepted {_fmt(name, reason['low'])} to {_fmt(name, reason['high'])}): {hint}"
    )


def patient_reasons(
    profile: dict | None, patients: pd.DataFrame, inputs: pd.DataFrame | None = None
) -> dict[str, list[dict]]:
    """Why each patient lies outside the model's training profile.

    Parameters
    ----------
    profile : dict or None
        :func:`fit_profile`'s result (model.json ``domain``); None (models fitted before the check):
        no reason for anyone.
    patients : DataFrame
        The patients' rows of patients.parquet.
    inputs : DataFrame, optional
        Their model inputs, rows aligned with ``patients``.

    Returns
    -------
    dict of str to list of dict
        Every patient ID (as a string) to its reasons, empty when in profile. A reason is
        ``{"measure", "kind", "label", "value", "median", "low", "high", "direction", "text"}``
        (``direction``: "below" or "above"). A missing value is no reason (the missing-value
        warnings cover those).
    """
    ids = patients["patient_id"].astype(str).tolist()
    out: dict[str, list[dict]] = {pid: [] for pid in ids}
    if not profile:
        return out
    for name, entry in (profile.get("measures") or {}).items():
        kind = entry.get("kind", "input")
        if kind == "acquisition":
            source = patients
        else:
            source = inputs
        if source is None or name not in source.columns:
            continue
        values = pd.to_numeric(source[name], errors="coerce").to_numpy(float)
        lo, hi = float(entry["low"]), float(entry["high"])
        qs, levels = entry["quantiles"], profile.get("quantile_levels", [])
        median = float(qs[levels.index(0.5)]) if 0.5 in levels else float(np.median(qs))
        for pid, v in zip(ids, values, strict=True):
            if not math.isfinite(v) or lo <= v <= hi:
                continue
            reason = {
                "measure": name,
                "kind": kind,
                "label": _label(name),
                "value": float(v),
                "median": median,
                "low": lo,
                "high": hi,
                "direction": "below" if v < lo else "above",
            }
            reason["text"] = reason_text(reason)
            out[pid].append(reason)
    return out


def warning_column(reasons: dict[str, list[dict]], patient_ids) -> list[str]:
    """``predict``'s ``domain_warning``: each patient's reasons joined by ``"; "``, empty when in profile."""
    return ["; ".join(r["text"] for r in reasons.get(str(pid), [])) for pid in patient_ids]


def warning_lines(patient_ids, warnings) -> list[str]:
    """One line per patient outside the profile, for ``lympho predict``'s warnings.

    ``warnings`` is :func:`warning_column` (``predict``'s ``domain_warning``), aligned with ``patient_ids``.
    """
    return [
        f"{pid}: outside the model's training profile ({text}): the cross-validation says nothing about such a "
        "patient; treat its call as uncertain"
        for pid, text in zip(patient_ids, warnings, strict=True)
        if isinstance(text, str) and text
    ]


# ------------------------------------------------------------------ settings


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_MISSING = object()


def _show(v) -> str:
    return "not recorded" if v is _MISSING else json.dumps(v)


def compare_settings(model_settings: dict, features_settings: dict) -> tuple[list[str], list[str]]:
    """Differences between the extraction settings of a model's training features and of new features.

    A setting one side does not record is compared as that side's default when both sides have the same
    features version (the side was written before the setting existed, and a new setting's default measures
    as the code did before it); any other setting one side lacks is a difference.

    Returns
    -------
    (refused, notes) : list of str, list of str
        ``refused``: differences in what shapes the measurements (features version first), one line each;
        ``notes``: differences in :data:`USER_SETTINGS` (shown, not refused).
    """
    from .extract import FEATURES_VERSION
    from .measure import ExtractSettings

    m, f = _flatten(model_settings), _flatten(features_settings)
    refused, notes = [], []
    mv, fv = m.pop("features_version", _MISSING), f.pop("features_version", _MISSING)
    if mv == fv:
        # A setting added to this lympho after one side was written is not recorded there. Within one features
        # version a new setting's default measures as the code did before it existed (otherwise the version
        # would have been bumped), so a side that lacks it used its default.
        defaults = _flatten(ExtractSettings().to_dict())
        for side, other in ((m, f), (f, m)):
            for key in set(other) - set(side):
                if key in defaults and key != "features_version":
                    side[key] = json.loads(json.dumps(defaults[key]))
    if mv != fv:
        if mv == FEATURES_VERSION:
            todo = "re-run `lympho extract` with this lympho"
        elif fv == FEATURES_VERSION:
            todo = "re-fit the model with `lympho fit` on features from this lympho"
        else:
            todo = (
                f"re-extract the features and re-fit the model with this lympho (features version {FEATURES_VERSION})"
            )
        refused.append(f"features version {_show(fv)}, the model was fitted on version {_show(mv)}: {todo}")
    for key in sorted(set(m) | set(f)):
        a, b = m.get(key, _MISSING), f.get(key, _MISSING)
        if a == b:
            continue
        if key in USER_SETTINGS:
            notes.append(f"{USER_SETTINGS[key]} ({key}): {_show(b)}, the model's training features used {_show(a)}")
        else:
            refused.append(f"{key} {_show(b)}, the model's training features used {_show(a)}")
    return refused, notes


def read_manifest_settings(features_dir: str | Path) -> dict | None:
    """The ``settings`` of a features folder's manifest.json, or None without a readable one."""
    path = Path(features_dir) / "manifest.json"
    try:
        settings = json.loads(path.read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return settings if isinstance(settings, dict) else None


def check_settings(meta: dict, features_dir: str | Path, model_dir: str | Path | None = None) -> list[str]:
    """Refuse features measured otherwise than the model's training features; return the notes to show.

    Parameters
    ----------
    meta : dict
        The model's model.json (its ``domain.settings``; models without them are not checked).
    features_dir : path
        The features folder (its manifest.json).
    model_dir : path, optional
        Named in the error.

    Returns
    -------
    list of str
        Lines for the user: differences in settings that are the user's to choose, or that the
        features folder records no settings to check.

    Raises
    ------
    FeaturesMismatchError
        (a :class:`~lympho_features.errors.ModelError`) naming every difference in what shapes the
        measurements.
    """
    domain = meta.get("domain") or {}
    model_settings = domain.get("settings")
    if not isinstance(model_settings, dict):
        return []
    features_settings = read_manifest_settings(features_dir)
    if features_settings is None:
        return [
            f"{Path(features_dir) / 'manifest.json'} missing or unreadable: cannot check that the features were "
            "measured with the model's settings"
        ]
    refused, notes = compare_settings(model_settings, features_settings)
    if refused:
        where = f"the model in {model_dir}" if model_dir is not None else "the model"
        raise FeaturesMismatchError(
            f"features in {features_dir} were measured otherwise than those {where} was fitted on: "
            + "; ".join(refused)
        )
    return notes


def profile_of(meta: dict) -> dict | None:
    """The profile of a model.json, or None for models fitted before the domain check."""
    domain = meta.get("domain")
    if not isinstance(domain, dict) or not isinstance(domain.get("measures"), dict):
        return None
    return domain


def validate_domain(value) -> str | None:
    """Schema check of model.json ``domain`` (None when valid, else what it should be)."""
    problem = "an object with format, quantile_levels, settings (object or null) and measures"
    if not isinstance(value, dict) or not isinstance(value.get("measures"), dict):
        return problem
    if value.get("format") != DOMAIN_FORMAT:
        return f"domain format {DOMAIN_FORMAT}"
    levels = value.get("quantile_levels")
    if not isinstance(levels, list) or not all(isinstance(x, (int, float)) for x in levels):
        return problem
    if value.get("settings") is not None and not isinstance(value["settings"], dict):
        return problem
    for entry in value["measures"].values():
        if not isinstance(entry, dict):
            return problem
        qs = entry.get("quantiles")
        if not isinstance(qs, list) or len(qs) != len(levels):
            return problem
        nums = [entry.get("low"), entry.get("high"), *qs]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in nums):
            return problem
        if entry["low"] > entry["high"]:
            return problem
    return None
