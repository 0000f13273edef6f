"""Calls of a saved model on the patients of a features folder, and why some of them deserve less trust.

:func:`predict` gives each patient a probability of tumoral, a decision and an ``uncertain`` flag
(:func:`calls_table`); :func:`input_warnings` is the one place that says which patients' calls rest on
less than the model was trained with (``lympho predict`` prints it, the report shows it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..domain import check_settings, patient_reasons, profile_of, warning_column
from ..errors import ModelError
from ..feature_sets import CELL_SCORE_BLOCKS, CLINICAL_FEATURES
from .cellscore import usable_cells
from .evaluation import uncertain_calls
from .inputs import Cohort, load_cohort_tables, load_patients, model_matrix, stage_errors
from .persistence import load_inputs, load_model, model_blocks
from .reference import fill_missing_inputs


def model_inputs(
    model_dir: str | Path,
    meta: dict,
    features_dir: str | Path,
    patients: pd.DataFrame | None = None,
    embeddings_dir: str | Path | None = None,
) -> pd.DataFrame:
    """The model's input matrix for the patients of a features folder (rows in the order of ``patients``).

    Inputs missing for a patient but complete in training take the training median (:func:`fill_missing_inputs`).

    Raises
    ------
    ModelError
        When the features folder lacks what the model needs (columns, cells, embeddings).
    """
    patients = load_patients(features_dir) if patients is None else patients
    ff = load_inputs(model_dir, meta)
    cells, embeddings = load_cohort_tables(features_dir, ["+".join(model_blocks(meta)[0])], embeddings_dir)
    cohort = Cohort.from_tables(patients, cells, embeddings)
    try:
        X = ff.transform(cohort)
    except ModelError as exc:
        raise ModelError(f"features in {features_dir} do not match the model in {model_dir}: {exc}") from None
    return fill_missing_inputs(X.reset_index(drop=True), meta)


def predict(model_dir: str | Path, features_dir: str | Path, embeddings_dir: str | Path | None = None) -> pd.DataFrame:
    """Probability of tumoral, 0/1 decision, ``uncertain`` flag and ``domain_warning`` for every patient.

    ``uncertain`` is 1 when the probability lies in the band around the
    threshold where the cross-validation's wrong calls concentrate (model.json
    ``refer``): refer such a patient to flow cytometry rather than trust the call.
    ``domain_warning`` names every way the patient lies outside the model's
    training profile (acquisition: JPEG quality, glass and red-cell colour,
    sharpness, pixel size; inputs beyond the training range), empty when in
    profile (:func:`domain_reasons`).

    Raises
    ------
    FeaturesMismatchError
        When the features were measured otherwise (features version, segmentation or
        feature settings) than those the model was fitted on.
    ModelError
        When the features folder lacks what the model was trained on.
    """
    booster, meta = load_model(model_dir)
    check_settings(meta, features_dir, model_dir)
    patients = load_patients(features_dir)
    X = model_inputs(model_dir, meta, features_dir, patients, embeddings_dir)
    calls = calls_table(patients["patient_id"], booster.predict(X[meta["features"]].to_numpy(float)), meta)
    calls["domain_warning"] = warning_column(domain_reasons(meta, patients, X), patients["patient_id"])
    return calls


def domain_reasons(meta: dict, patients: pd.DataFrame, inputs: pd.DataFrame | None = None) -> dict[str, list[dict]]:
    """Why each patient lies outside a saved model's training profile, as data (for ``predict`` and the report).

    Parameters
    ----------
    meta : dict
        The model's model.json (its ``domain``; models fitted before the check give no reason).
    patients : DataFrame
        The features folder's patients table (acquisition medians ``acq_*``, ``um_per_px``).
    inputs : DataFrame, optional
        Their model inputs (:func:`model_inputs`), rows aligned with ``patients``.

    Returns
    -------
    dict of str to list of dict
        Patient ID to its reasons (empty when in profile): ``measure``, ``kind`` ("acquisition" or
        "input"), ``label``, ``value``, ``median``, ``low``, ``high``, ``direction``, ``text``
        (:func:`lympho_features.domain.patient_reasons`).
    """
    return patient_reasons(profile_of(meta), patients, inputs)


def calls_table(patient_ids, proba, meta: dict) -> pd.DataFrame:
    """``patient_id, probability, prediction, uncertain`` of :func:`predict` for probabilities of a saved model."""
    proba = np.asarray(proba, float)
    return pd.DataFrame(
        {
            "patient_id": patient_ids,
            "probability": proba,
            "prediction": (proba >= meta["threshold"]).astype(int),
            "uncertain": uncertain_calls(proba, meta).astype(int),
        }
    )


#: Blocks whose inputs are computed from the patient's cells (their reliability depends on how many there are).
_CELL_BLOCKS = ("crops", "morphology", *CELL_SCORE_BLOCKS, "cnn")


def few_cells_warnings(meta: dict, patients: pd.DataFrame) -> list[str]:
    """Warnings for patients with fewer crops passing QC than any training patient had: ``"PID: why"``.

    One line per patient of :func:`few_cells_reasons`.
    """
    return [f"{pid}: {text}" for pid, text in few_cells_reasons(meta, patients)]


def few_cells_reasons(meta: dict, patients: pd.DataFrame) -> list[tuple[str, str]]:
    """``(patient_id, why)`` for each patient with fewer crops passing QC than any training patient had.

    A model whose inputs come from the cells (cell-score summaries, morphology aggregates) has
    only seen patients with at least ``meta["training_cells_ok"]["min"]`` QC-passing crops; a
    summary over fewer cells is noisier than anything it learned from. None for clinical-only
    models or models saved without the training counts.
    """
    ref = meta.get("training_cells_ok")
    if not ref or "n_cells_ok" not in patients or not set(model_blocks(meta)[0]) & set(_CELL_BLOCKS):
        return []
    out = []
    for pid, n in zip(patients["patient_id"], patients["n_cells_ok"], strict=True):
        if pd.notna(n) and n < ref["min"]:
            rest = (
                "its cell-based inputs could not be measured" if n == 0 else "its cell-based inputs rest on few cells"
            )
            out.append(
                (
                    str(pid),
                    f"{int(n)} crop(s) passed QC, fewer than any training patient had (at least "
                    f"{ref['min']:.0f}; median {ref['median']:.0f}): {rest}; treat its call as uncertain",
                )
            )
    return out


#: What the clinical inputs are called in warnings.
_CLINICAL_WORDS = {"age": "age (date of birth)", "gender_male": "sex", "log_lymph_count": "lymphocyte count"}


def missing_value_warnings(meta: dict, patients: pd.DataFrame) -> list[str]:
    """Patients missing a clinical input the model uses: one line each, ``"PID: why"`` (:func:`missing_value_reasons`)."""
    return [f"{pid}: {text}" for pid, text in missing_value_reasons(meta, patients)]


def missing_value_reasons(meta: dict, patients: pd.DataFrame) -> list[tuple[str, str]]:
    """``(patient_id, why)`` for each patient missing a clinical input the model uses.

    The model then takes the training median for it (:func:`fill_missing_inputs`):
    the call rests on the other inputs.
    """
    used = [c for c in CLINICAL_FEATURES if c in meta.get("features", ())]
    if not used:
        return []
    out = []
    X = model_matrix(patients)
    for pid, row in zip(patients["patient_id"], X[used].to_numpy(float), strict=True):
        missing = [_CLINICAL_WORDS[c] for c, v in zip(used, row, strict=True) if not np.isfinite(v)]
        if missing:
            out.append(
                (str(pid), f"{', '.join(missing)} missing: the call rests on the other inputs; treat it as uncertain")
            )
    return out


def input_warnings(meta: dict, patients: pd.DataFrame) -> list[str]:
    """Why some patients' calls deserve less trust than the CV says: :func:`missing_value_warnings`, then
    :func:`few_cells_warnings` (``lympho predict`` prints them)."""
    return missing_value_warnings(meta, patients) + few_cells_warnings(meta, patients)


def cell_scores(
    model_dir: str | Path, meta: dict, cells: pd.DataFrame, contributions: bool = False
) -> pd.Series | tuple[pd.Series, pd.DataFrame, dict] | None:
    """Each cell's score by a saved model's cell model (NaN for cells it does not score), or None without one.

    With several cell models, the first of ``cellscore`` (every per-cell feature), ``cellmorph``, ``cellatyp``.
    With ``contributions``, also why: ``(scores, contributions, medians)`` with the cell model's SHAP
    contributions (log-odds, one column per per-cell feature, rows of the scored cells; see
    :meth:`CellScorer.explain_cells`) and its training cells' median of each feature (a typical cell).
    """
    if not set(model_blocks(meta)[0]) & set(CELL_SCORE_BLOCKS):
        return None
    ff = load_inputs(model_dir, meta)
    scorer = next(iter(ff.cell_scorers_.values()))
    out = pd.Series(np.nan, index=cells.index, name="cell_score")
    usable = usable_cells(cells, scorer.qc_only)
    with stage_errors():
        out.loc[usable.index] = scorer.score_cells(usable)["score"].to_numpy()
        if contributions:
            return out, scorer.explain_cells(usable), dict(scorer.feature_medians_)
    return out
