"""The report's sections other than performance and patients: summary, caveats, cohort, explanation, provenance.

Each function decides what to show and returns plain data (text, numbers, figure URIs) for its template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .. import __version__
from .._io import library_versions
from ..glossary import clinician_name
from ..model import refer_limits
from .cell_types import cohort_line
from .explanations import global_importance
from .figures import cohort_figure, dependence_figure, family_figure
from .inputs import ReportInputs
from .language import (
    ACQUISITION_FAMILIES,
    FAMILY_MEANING,
    FAMILY_TITLE,
    QC_REASON,
    describe_feature,
    direction_words,
    input_meaning,
    split_aggregate,
    stat_words,
)
from .metrics import wilson_interval
from .numbers import fmt, median_iqr, plus_minus

#: How many inputs the importance table lists.
N_STRONGEST = 15


def summary(inp: ReportInputs) -> list[tuple[str, str]]:
    """The key figures at the top of the report."""
    cv = inp.meta.get("cv") if isinstance(inp.meta.get("cv"), dict) else {}
    n_call = int((inp.proba >= inp.threshold).sum())
    kp = [
        (str(len(inp.patients)), "patients in this report"),
        (
            f"{n_call} / {len(inp.patients) - n_call}",
            "called tumoral / reactive" + (" (in-sample: the model saw them)" if inp.in_sample else ""),
        ),
    ]
    if refer_limits(inp.meta) is not None:
        kp.append((str(int(inp.uncertain.sum())), "uncertain: refer to flow cytometry"))
    if "balanced_accuracy_mean" in cv:
        kp.append((plus_minus(cv, "balanced_accuracy"), "CV balanced accuracy"))
    if "roc_auc_mean" in cv:
        kp.append((plus_minus(cv, "roc_auc"), "CV ROC AUC"))
    return kp


def caveats(inp: ReportInputs, imp: pd.DataFrame) -> dict:
    """The figures the "limits of this tool" section quotes."""
    cv = inp.meta.get("cv") if isinstance(inp.meta.get("cv"), dict) else {}
    n_train = inp.meta.get("n_training_patients", cv.get("n_patients"))
    n_t, n_r = cv.get("n_tumoral"), cv.get("n_reactive")
    out: dict = {
        "n_train": n_train,
        "prevalence": None,
        "collection": None,
        "sensitivity": None,
        "clinical_share": None,
    }
    if n_train and n_t is not None and n_r is not None:
        out["prevalence"] = {"n_tumoral": n_t, "n_reactive": n_r, "share": f"{n_t / n_train:.0%}"}
    if inp.manifest.get("data_dir") and inp.in_sample:
        out["collection"] = Path(str(inp.manifest.get("data_dir"))).name
    if cv.get("sensitivity_mean") is not None and n_t:
        lo, hi = wilson_interval(cv["sensitivity_mean"] * n_t, int(n_t))
        sens = cv["sensitivity_mean"]
        out["sensitivity"] = {"n_tumoral": n_t, "value": f"{sens:.2f}", "lo": f"{lo:.2f}", "hi": f"{hi:.2f}"}
        out["sensitivity"]["missed"] = f"{1 - sens:.0%}"
    total = imp["mean_abs_shap"].sum()
    if total > 0:
        out["clinical_share"] = f"{imp.loc[imp['family'] == 'clinical', 'mean_abs_shap'].sum() / total:.0%}"
    acq = imp.reset_index().loc[lambda d: d["family"].isin(ACQUISITION_FAMILIES)].head(6)
    out["acquisition"] = [(clinician_name(r["feature"]), r["feature"], int(r["index"]) + 1) for _, r in acq.iterrows()]
    out["other_patients"] = bool(
        inp.meta.get("training_data_fingerprint") and inp.reference is None and inp.in_sample is False
    )
    out["n_patients"] = len(inp.patients)
    return out


def cohort(inp: ReportInputs) -> dict:
    """Section 1: patients, classes, clinical values by class, quality control of the crops."""
    p = inp.patients
    lab = p["label"]
    n_t, n_r = int((lab == 1).sum()), int((lab == 0).sum())
    n_u = len(p) - n_t - n_r
    kpis = [(f"{len(p)}", "patients")] + ([(f"{n_t} / {n_r}", "tumoral / reactive")] if n_t + n_r else [])
    if n_u:
        kpis.append((f"{n_u}", "without label"))
    if inp.cells is not None:
        n_ok = int(inp.cells["qc_ok"].sum()) if "qc_ok" in inp.cells else 0
        kpis.append((f"{len(inp.cells):,}", "cell crops"))
        kpis.append((f"{n_ok / max(len(inp.cells), 1):.1%}", "crops passing quality control"))
    typed = cohort_line(inp)
    if typed is not None:  # the cell-type gate's QC signal: patients whose crops hold many other cells
        kpis.append(typed)
    groups = [
        (n, g) for n, g in (("tumoral", p[lab == 1]), ("reactive", p[lab == 0]), ("no label", p[lab.isna()])) if len(g)
    ]
    rows = []
    for name, col, show in (
        ("Age, years: median [IQR]", "age", lambda g: median_iqr(g["age"])),
        ("Male", "gender", lambda g: f"{(g['gender'] == 'M').mean():.0%}" if len(g) else "–"),
        ("Lymphocyte count, 10⁹/L: median [IQR]", "lymph_count", lambda g: median_iqr(g["lymph_count"])),
        ("Crops per patient: median [IQR]", "n_cells", lambda g: median_iqr(g["n_cells"], 0)),
    ):
        if col in p:
            rows.append([name] + [show(g) for _, g in groups])
    return {
        "kpis": kpis,
        "clinical_header": ["", *[f"{n} (n={len(g)})" for n, g in groups]],
        "clinical_rows": rows,
        "qc_rows": _qc_rows(inp.cells),
        "figure": cohort_figure(p),
    }


#: The cell-type checks whose flag is also counted on crops that failed an earlier check first.
_TYPE_FLAGS = {"smudge": "is_smudge", "not_lymphocyte": "is_not_lymphocyte"}


def _qc_rows(cells: pd.DataFrame | None) -> list[list[str]] | None:
    """Rows of the quality-control table, one per outcome: crops whose first failed check it is, their share,
    and for a cell-type check every crop it flags (also those that failed an earlier check first)."""
    if cells is None or "qc_reason" not in cells:
        return None
    vc = cells["qc_reason"].value_counts()
    total = max(int(vc.sum()), 1)
    for reason, flag in _TYPE_FLAGS.items():  # a flag raised only behind earlier checks still gets its row
        if flag in cells and cells[flag].any() and reason not in vc:
            vc[reason] = 0
    rows = []
    for r, c in vc.items():
        flag = _TYPE_FLAGS.get(r)
        flagged = f"{int(cells[flag].sum()):,}" if flag in cells else "–"
        rows.append([r, f"{int(c):,}", f"{c / total:.1%}", flagged, QC_REASON.get(r, "")])
    return rows


def explanation(inp: ReportInputs, imp: pd.DataFrame) -> dict:
    """Section 3: importance by family, the strongest inputs, dependence plots."""
    fam = (
        imp.groupby("family")
        .agg(gain_share=("gain_share", "sum"), mean_abs_shap=("mean_abs_shap", "sum"), n=("feature", "size"))
        .sort_values("mean_abs_shap", ascending=False)
    )
    total = fam["mean_abs_shap"].sum()
    families = [
        [
            FAMILY_TITLE.get(k, k),
            FAMILY_MEANING.get(k, ""),
            str(int(r["n"])),
            f"{r['gain_share']:.0%}",
            f"{r['mean_abs_shap'] / total:.0%}" if total > 0 else "–",
        ]
        for k, r in fam.iterrows()
    ]
    n_shown = min(N_STRONGEST, len(imp))
    strongest, first_rank = [], {}
    for i, r in imp.head(n_shown).iterrows():
        key, _ = input_meaning(r["feature"])
        if key in first_rank:  # a meaning shared by several inputs is said once, on the strongest of them
            stat = stat_words(split_aggregate(r["feature"])[1])
            meaning = f"as #{first_rank[key]}" + (f"; {stat}" if stat else "")
        else:
            first_rank[key] = i + 1
            meaning = describe_feature(r["feature"])
        strongest.append(
            {
                "rank": str(i + 1),
                "feature": r["feature"],
                "name": clinician_name(r["feature"]),
                "acquisition": r["family"] in ACQUISITION_FAMILIES,
                "meaning": meaning,
                "direction": direction_words(r["direction"]),
                "shap": f"{r['mean_abs_shap']:.3f}",
                "gain": f"{r['gain_share']:.1%}",
            }
        )
    return {
        "n_patients": len(inp.patients),
        "family_figure": family_figure(fam),
        "families": families,
        "strongest": strongest,
        "strongest_title": f"The {n_shown} strongest inputs"
        if n_shown < len(imp)
        else f"All {n_shown} inputs, strongest first",
        "dependence_figure": dependence_figure(inp, imp.head(6)),
    }


def provenance(inp: ReportInputs, generated: str) -> dict:
    """Section 5: where the model, the features and the crops come from, and with which versions."""
    meta, man = inp.meta, inp.manifest
    cv = meta.get("cv") if isinstance(meta.get("cv"), dict) else {}
    threshold = f"{inp.threshold:.4f}" + (
        f" (min. sensitivity {meta['min_sensitivity']})" if meta.get("min_sensitivity") else ""
    )
    same = {True: "yes (fingerprints match)", False: "no (other patients or other values)", None: "cannot tell"}
    # (what, value, how it is written: "" plain, "mono" a path, "mono small" a fingerprint)
    rows = [
        ("report generated", generated, ""),
        ("lympho (report)", __version__, ""),
        ("model folder", str(inp.model_dir.resolve()), "mono"),
        ("features folder", str(inp.features_dir.resolve()), "mono"),
        ("model: lympho version", str(meta.get("lympho_version", "–")), ""),
        ("model: feature set / inputs", f"{meta.get('feature_set', '–')} / {len(inp.features)}", ""),
        ("model: threshold", threshold, ""),
        (
            "model: CV",
            f"{fmt(cv.get('folds'))} folds × {fmt(cv.get('repeats'))} repeats, seed {fmt(cv.get('seed'))}",
            "",
        ),
        ("training data fingerprint", str(meta.get("training_data_fingerprint", "–")), "mono small"),
        ("this features folder is the training table", same[inp.in_sample], ""),
    ]
    if man:
        rows += [
            ("crops folder", str(man.get("data_dir", "–")), "mono"),
            ("clinical CSV", str(man.get("clinical_csv", "–")), "mono"),
            ("extraction input fingerprint", str(man.get("input_fingerprint", "–")), "mono small"),
            ("extraction: lympho version", str(man.get("lympho_version", "–")), ""),
        ]
    versions = {
        "model (fit)": meta.get("library_versions") or {},
        "extraction": man.get("library_versions") or {},
        "report": library_versions(),
    }
    libs = sorted(set().union(*[v.keys() for v in versions.values()]))
    return {
        "rows": rows,
        "version_header": ["library", *versions.keys()],
        "versions": [[lib] + [str(v.get(lib, "–")) for v in versions.values()] for lib in libs],
        "settings": json.dumps(man["settings"], indent=1, sort_keys=True) if man.get("settings") else None,
        "params": json.dumps(meta["params"], indent=1, sort_keys=True) if meta.get("params") else None,
        "warnings": inp.warnings,
    }


def report_context(inp: ReportInputs, generated: str) -> dict:
    """What the report's template needs, except the patients (see :mod:`.patient`)."""
    imp = global_importance(inp)
    return {
        "summary": summary(inp),
        "caveats": caveats(inp, imp),
        "cohort": cohort(inp),
        "explanation": explanation(inp, imp),
        "generated": generated,
        "model_name": inp.model_dir.name,
        "features_name": inp.features_dir.name,
    }
