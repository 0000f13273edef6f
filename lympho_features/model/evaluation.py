"""What is measured on a model's calls: metrics, thresholds, calibration, the refer band, the ablation table.

Everything here works on probabilities and labels (the out-of-fold predictions of a
cross-validation, :class:`CVResult`, or ``predict``'s calls on labelled patients): nothing is fitted.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

#: The balanced operating point. The patient model weighs both classes equally (``class_weight="balanced"``),
#: so 0.5 is where it puts the balance between sensitivity and specificity. A threshold tuned by an inner CV
#: on the ~90 training patients of a fold moved between 0.37 and 0.89 from fold to fold and gave the same or
#: lower balanced accuracy in every configuration measured (benchmarks/cv_accuracy_results.md): nothing is
#: tuned for it. Only ``--min-sensitivity`` thresholds are chosen from (inner) CV predictions.
BALANCED_THRESHOLD = 0.5


def choose_threshold(y_true, proba, min_sensitivity: float | None = None) -> float:
    """Decision threshold on the probability of tumoral.

    Maximises balanced accuracy; with ``min_sensitivity``, the highest
    threshold whose sensitivity is at least that (a triage tool must not miss
    tumoral patients). Thresholds are midpoints between distinct scores;
    0.5 when no threshold beats chance.
    """
    y_true = np.asarray(y_true, int)
    proba = np.asarray(proba, float)
    u = np.unique(proba)
    cands = np.concatenate([[0.0], (u[:-1] + u[1:]) / 2, [1.0]]) if len(u) > 1 else np.array([0.5])
    pos, neg = y_true == 1, y_true == 0
    sens = np.array([(proba[pos] >= t).mean() if pos.any() else 0.0 for t in cands])
    spec = np.array([(proba[neg] < t).mean() if neg.any() else 0.0 for t in cands])
    if min_sensitivity is not None:
        ok = np.flatnonzero(sens >= min_sensitivity)
        return float(cands[ok.max()]) if ok.size else 0.0
    ba = (sens + spec) / 2
    if ba.max() <= 0.5:
        # No threshold does better than chance (uninformative or inverted scores, as an inner CV on a
        # few patients can give): the classes are weighted equally, so 0.5 is the neutral choice, where
        # a tie between "everyone tumoral" (0.0) and "no one" (1.0) would pick one of them.
        return 0.5
    best = np.flatnonzero(ba == ba.max())
    # Among ties, the middle one: most margin on both sides.
    return float(cands[best[len(best) // 2]])


def binary_metrics(y_true, proba, threshold: float) -> dict[str, float]:
    """Balanced accuracy, ROC AUC, sensitivity and specificity at a threshold."""
    y_true = np.asarray(y_true, int)
    pred = (np.asarray(proba) >= threshold).astype(int)
    pos, neg = y_true == 1, y_true == 0
    return {
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "roc_auc": float(roc_auc_score(y_true, proba)) if pos.any() and neg.any() else float("nan"),
        "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
        "specificity": float(1 - pred[neg].mean()) if neg.any() else float("nan"),
    }


@dataclass
class CVResult:
    """Out-of-fold predictions and metrics of a repeated cross-validation."""

    predictions: pd.DataFrame  # patient_id, repeat, fold, label, probability, threshold, prediction
    per_repeat: pd.DataFrame  # one row of metrics per repeat
    summary: dict = field(default_factory=dict)

    @classmethod
    def from_repeats(cls, rows: list[pd.DataFrame], y: np.ndarray, folds: int, repeats: int, seed: int) -> CVResult:
        """Score the pooled out-of-fold predictions of each repeat (``rows``); mean and std over repeats."""
        per_repeat = []
        pos, neg = y == 1, y == 0
        for r, frame in enumerate(rows):
            proba, pred = frame["probability"].to_numpy(), frame["prediction"].to_numpy()
            m = binary_metrics(y, proba, 0.5)
            m.update(
                balanced_accuracy=float(balanced_accuracy_score(y, pred)),
                sensitivity=float(pred[pos].mean()),
                specificity=float(1 - pred[neg].mean()),
                brier=float(np.mean((proba - y) ** 2)),
            )
            per_repeat.append({"repeat": r, **m})
        per = pd.DataFrame(per_repeat)
        summary = {
            "folds": folds,
            "repeats": repeats,
            "seed": seed,
            "n_patients": int(len(y)),
            "n_tumoral": int(y.sum()),
            "n_reactive": int((y == 0).sum()),
        }
        for k in ("balanced_accuracy", "roc_auc", "sensitivity", "specificity", "brier"):
            summary[f"{k}_mean"] = float(per[k].mean())
            summary[f"{k}_std"] = float(per[k].std(ddof=1)) if len(per) > 1 else 0.0
        return cls(pd.concat(rows, ignore_index=True), per, summary)

    def scores(self) -> dict[str, float]:
        """Balanced accuracy and ROC AUC, mean and std over repeats: a row of a comparison table."""
        s = self.summary
        return {
            "balanced_accuracy": s["balanced_accuracy_mean"],
            "balanced_accuracy_std": s["balanced_accuracy_std"],
            "roc_auc": s["roc_auc_mean"],
            "roc_auc_std": s["roc_auc_std"],
        }


def calibration_table(y_true, proba, n_bins: int = 5) -> dict:
    """Reliability-diagram data and Brier score of pooled out-of-fold probabilities.

    Returns ``{"brier": ..., "bins": [{"lower", "upper", "mean_predicted", "observed", "count"}...]}``
    over equal-width bins (empty bins left out).
    """
    y_true = np.asarray(y_true, float)
    proba = np.asarray(proba, float)
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(proba, edges[1:-1]), 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        m = idx == b
        if m.any():
            bins.append(
                {
                    "lower": float(edges[b]),
                    "upper": float(edges[b + 1]),
                    "mean_predicted": float(proba[m].mean()),
                    "observed": float(y_true[m].mean()),
                    "count": int(m.sum()),
                }
            )
    return {"brier": float(np.mean((proba - y_true) ** 2)), "n_bins": n_bins, "bins": bins}


def _side_width(dist: np.ndarray, wrong: np.ndarray, min_error_rate: float, max_fraction: float) -> float:
    """Width of one side of the refer band: see :func:`refer_band`.

    ``dist`` are the distances to the threshold of the CV calls on that side, ``wrong`` whether each was wrong.
    """
    if not len(dist):
        return 0.0
    order = np.argsort(dist, kind="stable")
    d, w = dist[order], wrong[order]
    rate = np.cumsum(w) / np.arange(1, len(w) + 1)
    last_of_tie = np.r_[d[1:] > d[:-1], True]  # a band edge never splits equal distances
    cap = int(np.floor(max_fraction * len(d)))  # the band holds at most this many of the side's calls
    ok = np.flatnonzero((rate >= min_error_rate) & last_of_tie & (np.arange(len(d)) < cap))
    if not ok.size:
        return 0.0
    i = int(ok.max())
    return float((d[i] + d[i + 1]) / 2) if i + 1 < len(d) else float(d[i] + 1e-9)


def refer_band(cv: CVResult, min_error_rate: float = 0.3, max_fraction: float = 0.25) -> dict:
    """Band of probabilities around the threshold where the CV calls are unreliable, one width per side.

    Below the threshold (calls "reactive", whose errors are missed tumoral
    patients) and above it (calls "tumoral", whose errors are false alarms)
    separately: the side's width is the largest distance ``h`` to the fold's
    threshold such that, among that side's CV calls closer than ``h``, at least
    ``min_error_rate`` were wrong, and such that they are at most
    ``max_fraction`` of that side's calls. A patient whose probability lies in
    ``[threshold - below, threshold + above)`` is flagged ``uncertain``: refer
    to flow cytometry rather than trust the call.

    Two sides, because a threshold far from 0.5 (``--min-sensitivity``) has
    many more wrong calls on one side: with one symmetric width the band grew
    over most of [0, 1]; the cap keeps it meaningful at any threshold (it then
    refers the least certain calls, not every call of the crowded side).
    Errors far from the threshold exist too and no band catches them; the CV
    error rates inside and outside the band and the share of the errors it
    holds are recorded. ``half_width`` (the larger side) is kept for older readers.
    """
    p = cv.predictions
    signed = (p["probability"] - p["threshold"]).to_numpy(float)
    wrong = (p["prediction"] != p["label"]).to_numpy()
    above = signed >= 0
    below_w = _side_width(-signed[~above], wrong[~above], min_error_rate, max_fraction)
    above_w = _side_width(signed[above], wrong[above], min_error_rate, max_fraction)
    inside = in_refer_band(signed, below_w, above_w)
    return {
        "below": below_w,
        "above": above_w,
        "half_width": max(below_w, above_w),
        "min_error_rate": min_error_rate,
        "max_fraction": max_fraction,
        "cv_fraction_referred": float(inside.mean()),
        "cv_error_rate_referred": float(wrong[inside].mean()) if inside.any() else None,
        "cv_error_rate_not_referred": float(wrong[~inside].mean()) if (~inside).any() else None,
        "cv_share_of_errors_referred": float(wrong[inside].sum() / wrong.sum()) if wrong.any() else None,
    }


def in_refer_band(signed_margin, below: float, above: float) -> np.ndarray:
    """Whether probabilities at ``signed_margin = probability - threshold`` lie in the refer band."""
    m = np.asarray(signed_margin, float)
    return ((m < 0) & (-m < below)) | ((m >= 0) & (m < above))


def refer_limits(meta: dict) -> tuple[float, float] | None:
    """The refer band's widths below and above the threshold in a model's metadata (None: the model has none).

    Models written before the band had two sides store one ``half_width``.
    """
    refer = meta.get("refer")
    if not isinstance(refer, dict):
        return None
    half = float(refer.get("half_width", 0.0))
    return float(refer.get("below", half)), float(refer.get("above", half))


def uncertain_calls(proba, meta: dict) -> np.ndarray:
    """Which probabilities fall in the model's refer band (``predict``'s ``uncertain``); all False without one."""
    limits = refer_limits(meta)
    proba = np.asarray(proba, float)
    if limits is None:
        return np.zeros(proba.shape, bool)
    return in_refer_band(proba - float(meta["threshold"]), *limits)


def _weighted_auc(counts: np.ndarray, score: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """AUC of one score vector under many patient resamplings (``counts``: bootstrap × patients)."""
    sp, sn = score[pos], score[~pos]
    M = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
    cp, cn = counts[:, pos], counts[:, ~pos]
    num = np.einsum("bi,ij,bj->b", cp, M, cn)
    den = cp.sum(1) * cn.sum(1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _bootstrap_metrics(cv: CVResult, counts: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BA and AUC (averaged over repeats) of a CV result under each patient resampling."""
    p = cv.predictions
    bas, aucs = [], []
    for _, g in p.groupby("repeat", sort=True):
        g = g.set_index("patient_id").loc[order]
        y = g["label"].to_numpy(int) == 1
        pred = g["prediction"].to_numpy(int)
        tp = counts[:, y] @ pred[y]
        tn = counts[:, ~y] @ (1 - pred[~y])
        sens = tp / np.maximum(counts[:, y].sum(1), 1)
        spec = tn / np.maximum(counts[:, ~y].sum(1), 1)
        bas.append((sens + spec) / 2)
        aucs.append(_weighted_auc(counts, g["probability"].to_numpy(float), y))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # resamplings without one class (tiny cohorts)
        return np.mean(bas, axis=0), np.nanmean(aucs, axis=0)


def ablation_table(
    results: dict[str, CVResult],
    n_features: dict[str, int] | None = None,
    reference: str = "clinical",
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """One row per feature set: CV metrics and a paired bootstrap interval of the difference to ``reference``.

    The bootstrap resamples patients (the same resampling for every
    configuration, whose out-of-fold predictions come from the same folds) and
    recomputes balanced accuracy and ROC AUC, averaged over repeats; the 95%
    percentile interval of the difference to the reference is reported as
    ``delta_ba_vs_<reference>`` / ``delta_auc_vs_<reference>``, and
    ``p_better_ba`` is the share of resamplings where the configuration beats the reference.
    """
    n_features = n_features or {}
    first = next(iter(results.values()))
    order = first.predictions.loc[first.predictions["repeat"] == 0, "patient_id"].to_numpy()
    n = len(order)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    boot = {fs: _bootstrap_metrics(cv, counts, order) for fs, cv in results.items()}
    ref = boot.get(reference)
    rows = []
    for fs, cv in results.items():
        s = cv.summary
        row = {
            "configuration": fs,
            "n_features": n_features.get(fs),
            **cv.scores(),
            "sensitivity": s["sensitivity_mean"],
            "specificity": s["specificity_mean"],
        }
        if ref is not None and fs != reference:
            dba, dauc = boot[fs][0] - ref[0], boot[fs][1] - ref[1]
            row[f"delta_ba_vs_{reference}"] = [float(np.quantile(dba, 0.025)), float(np.quantile(dba, 0.975))]
            row[f"delta_auc_vs_{reference}"] = [float(np.nanquantile(dauc, 0.025)), float(np.nanquantile(dauc, 0.975))]
            row["p_better_ba"] = float((dba > 0).mean())
        row["brier"] = s["brier_mean"]
        rows.append(row)
    return rows


def format_ablation(rows: list[dict], reference: str = "clinical") -> str:
    """The ablation table as fixed-width text (what benchmarks/cv_accuracy.py prints)."""
    head = (
        f"{'configuration':<20} {'n':>4} {'balanced acc':>14} {'ROC AUC':>14} {'sens':>6} {'spec':>6} {'brier':>6}"
        f"  {'ΔBA vs ' + reference + ' [95%]':>24} {'ΔAUC [95%]':>18} {'P(better)':>9}"
    )
    lines = [head]
    for r in rows:
        dba, dauc = r.get(f"delta_ba_vs_{reference}"), r.get(f"delta_auc_vs_{reference}")
        lines.append(
            f"{r['configuration']:<20} {r.get('n_features') or 0:>4} "
            f"{r['balanced_accuracy']:>6.3f} ± {r['balanced_accuracy_std']:.3f} {r['roc_auc']:>6.3f} ± {r['roc_auc_std']:.3f} "
            f"{r['sensitivity']:>6.3f} {r['specificity']:>6.3f} {r['brier']:>6.3f}  "
            + (
                f"{'[' + format(dba[0], '+.3f') + ', ' + format(dba[1], '+.3f') + ']':>24} "
                if dba
                else f"{'(reference)':>24} "
            )
            + (f"{'[' + format(dauc[0], '+.3f') + ', ' + format(dauc[1], '+.3f') + ']':>18} " if dauc else f"{'':>18} ")
            + (f"{r['p_better_ba']:>9.2f}" if "p_better_ba" in r else f"{'':>9}")
        )
    return "\n".join(lines)


def labelled_metrics(
    predictions: pd.DataFrame, patients: pd.DataFrame, threshold: float, training_ids: set[str] | None = None
) -> dict | None:
    """How ``predict``'s calls compare with the labels a features folder records (held-out patients, say).

    Parameters
    ----------
    predictions : DataFrame
        :func:`predict`'s output (``patient_id, probability, prediction, uncertain``).
    patients : DataFrame
        The features folder's patients table; its ``label`` (0 reactive, 1 tumoral, missing unknown).
    threshold : float
        The model's decision threshold.
    training_ids : set of str, optional
        The model's training patients (:func:`training_patient_ids`): those among the labelled ones are counted,
        since their figures are in-sample.

    Returns
    -------
    dict or None
        None when no patient has a label; else ``n``, ``n_tumoral``, ``n_reactive``, the
        :func:`binary_metrics` at ``threshold`` (ROC AUC NaN with one class), the confusion counts
        ``n_found``, ``n_missed`` (tumoral called tumoral / reactive), ``n_false_alarms``, ``n_cleared``
        (reactive called tumoral / reactive), ``n_uncertain`` and
        ``balanced_accuracy_confident`` (the calls outside the refer band; NaN when they miss a class) and
        ``n_in_training`` (None when ``training_ids`` is None).
    """
    if "label" not in patients:
        return None
    labels = patients.set_index(patients["patient_id"].astype(str))["label"]
    merged = predictions.assign(label=predictions["patient_id"].astype(str).map(labels)).dropna(subset=["label"])
    if merged.empty:
        return None
    y = merged["label"].astype(int).to_numpy()
    proba = merged["probability"].to_numpy(float)
    out = {"n": len(y), "n_tumoral": int(y.sum()), "n_reactive": int((y == 0).sum())}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scikit-learn's warning for a single class
        out.update(binary_metrics(y, proba, threshold))
    if not (y == 1).any() or not (y == 0).any():
        out["balanced_accuracy"] = float("nan")  # one class: sensitivity or specificity alone says it
    called = proba >= threshold
    out["n_found"], out["n_missed"] = int((called & (y == 1)).sum()), int((~called & (y == 1)).sum())
    out["n_false_alarms"], out["n_cleared"] = int((called & (y == 0)).sum()), int((~called & (y == 0)).sum())
    sure = merged["uncertain"].to_numpy(int) == 0
    out["n_uncertain"] = int((~sure).sum())
    ys = y[sure]
    out["balanced_accuracy_confident"] = (
        float(balanced_accuracy_score(ys, proba[sure] >= threshold))
        if (ys == 1).any() and (ys == 0).any()
        else float("nan")
    )
    in_training = None if training_ids is None else int(merged["patient_id"].astype(str).isin(training_ids).sum())
    out["n_in_training"] = in_training
    return out
