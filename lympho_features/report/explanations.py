"""Why the model decided: global importance of its inputs and each patient's waterfall of contributions.

Everything here is plain data (dataclasses, DataFrames, numbers and text); the
templates decide how it looks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..glossary import clinician_name, format_input_value
from ..model import CLINICAL_FEATURES, load_model, load_patients, model_matrix
from ..model import predict as model_predict
from .inputs import ReportInputs, design_matrix, logit, shap_contributions, sigmoid
from .language import feature_family, input_meaning
from .numbers import ordinal


def explain_predictions(
    model_dir: str | Path, features_dir: str | Path, top: int = 3, embeddings_dir: str | Path | None = None
) -> pd.DataFrame:
    """Predictions with each patient's strongest contributions, for ``lympho predict --explain``.

    Returns the contract columns ``patient_id, probability, prediction`` then,
    for k = 1..top, ``top{k}_feature``, ``top{k}_value`` (the patient's value)
    and ``top{k}_contribution`` (SHAP, log-odds; positive pushes toward tumoral),
    strongest first. ``embeddings_dir``: where the CNN embeddings of these
    patients are, for models with CNN inputs (default ``features_dir``).
    """
    preds = model_predict(model_dir, features_dir, embeddings_dir)
    booster, meta = load_model(model_dir)
    patients = load_patients(features_dir)
    feats = meta["features"]
    X = design_matrix(patients, feats, str(features_dir), model_dir, meta, embeddings_dir)[feats].to_numpy(float)
    contrib, _ = shap_contributions(booster, X)
    order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :top]
    rows = np.arange(len(X))[:, None]
    out = preds.copy()
    for k in range(min(top, len(feats))):
        idx = order[:, k]
        out[f"top{k + 1}_feature"] = [feats[i] for i in idx]
        out[f"top{k + 1}_value"] = X[rows[:, 0], idx]
        out[f"top{k + 1}_contribution"] = contrib[rows[:, 0], idx]
    return out


def global_importance(inp: ReportInputs) -> pd.DataFrame:
    """Per feature: gain importance, mean |SHAP|, direction, family and meaning, strongest first."""
    gain = np.asarray(inp.booster.feature_importance(importance_type="gain"), float)
    mean_abs = np.abs(inp.contrib).mean(0)
    direction = []
    for j in range(inp.X.shape[1]):
        x, s = inp.X[:, j], inp.contrib[:, j]
        ok = np.isfinite(x)
        if ok.sum() < 3 or np.nanstd(x[ok]) == 0 or np.std(s[ok]) == 0:
            direction.append(0.0)
            continue
        r = pd.Series(x[ok]).rank().corr(pd.Series(s[ok]).rank())
        direction.append(float(r) if np.isfinite(r) else 0.0)
    df = pd.DataFrame(
        {
            "feature": inp.features,
            "gain": gain,
            "gain_share": gain / gain.sum() if gain.sum() > 0 else 0.0,
            "mean_abs_shap": mean_abs,
            "direction": direction,
        }
    )
    df["family"] = df["feature"].map(feature_family)
    return df.sort_values(["mean_abs_shap", "gain"], ascending=False, kind="stable").reset_index(drop=True)


# ------------------------------------------------------------ waterfall ----
def percentiles(inp: ReportInputs, i: int) -> dict[str, float]:
    """Percentile of each of patient ``i``'s inputs (see :attr:`ReportInputs.percentile_ranks`)."""
    ranks = inp.percentile_ranks
    return {f: float(ranks[i, j]) for j, f in enumerate(inp.features) if np.isfinite(ranks[i, j])}


def reference_medians(inp: ReportInputs, name: str) -> tuple[str, str] | None:
    """Median of an input among the training patients of each class (reactive, tumoral), e.g. the count."""
    entry = (inp.reference or {}).get("inputs", {}).get(name)
    if not entry or name == "gender_male" or not entry.get("reactive") or not entry.get("tumoral"):
        return None
    return format_input_value(name, entry["reactive"][1]), format_input_value(name, entry["tumoral"][1])


@dataclass
class Bar:
    """A segment of a waterfall row, in percent of the track width."""

    left: float
    width: float
    kind: str  #: "up" (toward tumoral), "down" (toward reactive) or "base" (start and end markers)


@dataclass
class WaterfallStep:
    """One row of a waterfall: an input (or the rest of them), its contribution and the probability reached."""

    label: str
    contribution: float
    probability: float  #: the model's probability once this step is added (from the top)
    bar: Bar
    value: str | None = None  #: the patient's value, None for the row of the other inputs
    percentile: str = ""  #: ", 21st pct" or ""
    meaning: str = ""  #: what the input measures, said on the first row of inputs that share it only
    medians: tuple[str, str] | None = None  #: training medians (reactive, tumoral)
    input: str | None = None  #: the model input's name, None for the row of the other inputs


@dataclass
class Waterfall:
    """A patient's score built from the model's average, input by input (SHAP, log-odds)."""

    base: float
    final: float
    steps: list[WaterfallStep]
    threshold_left: float  #: the decision threshold on the track, percent
    base_bar: Bar
    final_bar: Bar
    ticks: list[tuple[float, str]]  #: the probability axis: (position on the track in percent, label)

    @property
    def base_probability(self) -> float:
        return float(sigmoid(self.base))

    @property
    def final_probability(self) -> float:
        return float(sigmoid(self.final))


#: Candidate ticks of the probability axis of a waterfall (the track is linear in log-odds).
PROBABILITY_TICKS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def probability_ticks(lo: float, hi: float, min_gap: float = 9.0) -> list[tuple[float, str]]:
    """Ticks of a probability axis over a log-odds track ``[lo, hi]``: ``(percent, label)``, at least
    ``min_gap`` percent apart (0.5 always kept when it is on the track)."""
    on_track = [(p, (logit(p) - lo) / (hi - lo) * 100) for p in PROBABILITY_TICKS if lo <= logit(p) <= hi]
    chosen: list[tuple[float, float]] = [t for t in on_track if t[0] == 0.5]
    for p, x in sorted(on_track, key=lambda t: abs(t[0] - 0.5)):
        if all(abs(x - y) >= min_gap for _, y in chosen):
            chosen.append((p, x))
    return [(x, f"{p:g}") for p, x in sorted(chosen, key=lambda t: t[1])]


def waterfall(inp: ReportInputs, i: int, n_top: int = 10) -> Waterfall:
    """The ``n_top`` inputs that moved patient ``i``'s score most, then the rest summed."""
    contrib = inp.contrib[i]
    base = float(inp.base[i])
    raw = model_matrix(inp.patients.iloc[[i]])
    # Clinical values missing from the patient's record (the model used the training median instead).
    raw_missing = {c for c in CLINICAL_FEATURES if c in raw.columns and raw[c].isna().iat[0]}
    order = np.argsort(-np.abs(contrib), kind="stable")
    top = order[:n_top]
    moves = [(inp.features[j], float(contrib[j])) for j in top]
    if len(order) > n_top:
        moves.append((f"{len(order) - n_top} other inputs", float(contrib[order[n_top:]].sum())))
    cum = [base]
    for _, v in moves:
        cum.append(cum[-1] + v)
    thr = logit(inp.threshold)
    lo = min(min(cum), thr, 0.0) - 0.3
    hi = max(max(cum), thr, 0.0) + 0.3

    def pos(v):
        return (v - lo) / (hi - lo) * 100

    def bar(a, b, kind):
        return Bar(pos(min(a, b)), max(abs(pos(b) - pos(a)), 0.8), kind)

    pct = percentiles(inp, i)
    said: set[str] = set()
    steps = []
    for k, (name, v) in enumerate(moves):
        step = WaterfallStep(name, v, float(sigmoid(cum[k + 1])), bar(cum[k], cum[k + 1], "up" if v > 0 else "down"))
        if k < len(top):
            val = format_input_value(name, float(inp.X[i, top[k]]))
            step.value = f"missing (training median {val} used)" if name in raw_missing else val
            p = pct.get(name)
            clinical = feature_family(name) == "clinical"
            step.percentile = f", {ordinal(p)} pct" if p is not None and not clinical else ""
            step.label, step.input = clinician_name(name), name
            key, meaning = input_meaning(name)
            if key not in said and not clinical:  # said once for all the summaries of one measurement
                said.add(key)
                step.meaning = meaning
            step.medians = reference_medians(inp, name)
        steps.append(step)
    ticks = probability_ticks(lo, hi)
    return Waterfall(base, cum[-1], steps, pos(thr), bar(base, base, "base"), bar(cum[-1], cum[-1], "base"), ticks)


def start_note(inp: ReportInputs) -> str:
    """What the start of a waterfall is, in one line."""
    cv = inp.meta.get("cv") if isinstance(inp.meta.get("cv"), dict) else {}
    n = inp.meta.get("n_training_patients", cv.get("n_patients"))
    n_t, n_r = cv.get("n_tumoral"), cv.get("n_reactive")
    who = f"its {n} training patients" if n else "the patients it was trained on"
    mix = f" ({n_t} tumoral, {n_r} reactive)" if n_t is not None and n_r is not None else ""
    return (
        f"Start: the model's average score over {who}{mix}, p={sigmoid(float(inp.base[0])):.2f}: a reference "
        "point, not this patient's prior chance (weighing both classes equally sets the threshold, not this average)."
        " Each row adds one input's push; the last row is this patient's score."
    )


def percentile_note(inp: ReportInputs) -> str:
    """What the percentiles of the patient pages compare with."""
    ref = inp.reference
    if ref is None:
        return "Percentiles (pct) compare the patient with the others of this report."
    n = inp.meta.get("n_training_patients")
    who = f"the {n} training patients" if n else "the training patients"
    return f"Percentiles (pct) and medians compare the patient with {who} of the model."
