"""Cross-validated accuracy of `lympho fit`'s configurations on the shared patients: one ablation table.

    python benchmarks/cv_accuracy.py --data ../shared/data/lymphocytosis/trainset [--embeddings DIR]

Extracts features once (cached in --features, reused on later runs), then
runs repeated stratified patient-level CV (5 x 5 by default) of every
configuration on the SAME folds, and prints one table: balanced accuracy and
ROC AUC (mean ± std over repeats, out-of-fold predictions pooled per repeat),
sensitivity, specificity, Brier score, and a paired bootstrap over patients
(95% interval of the difference in balanced accuracy and AUC to clinical-only,
and the share of resamplings where the configuration beats it).

Configurations (model.ABLATION_SETS): clinical; image (crop count + the
weakly supervised atypical-cell model without stain colour, ``cellatyp``) with and
without the crop count; all (clinical + image); morphology and
clinical+morphology (the ~565 per-patient aggregates: what ``image`` and
``all`` meant before); the cell-model variants; and the CNN variants when
embeddings.parquet exists (in --embeddings or --features). With
--nested-repeats, also the nested estimate of "choose the configuration by
inner CV, then fit it", among the a-priori candidates (model.NESTED_CANDIDATES)
and among every configuration of the table, with the choice of each outer fold. With
--learning-curve, the accuracy against the number of training patients instead. Everything fitted
on data (cell model, PCA of embeddings, patient model, threshold) is fitted
inside each outer fold, exactly as `lympho fit` does; `lympho fit` stores the
same table in model.json under ``ablation``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.extract import extract  # noqa: E402
from lympho_features.model import (  # noqa: E402
    ABLATION_SETS,
    DEFAULT_FEATURE_SET,
    NESTED_CANDIDATES,
    Cohort,
    PatientClassifier,
    ablation_table,
    cross_validate_sets,
    format_ablation,
    learning_curve,
    load_cohort_tables,
    load_patients,
    nested_selection,
    sets_with_inputs,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--features", type=Path, default=Path("artifacts/bench/train"))
    ap.add_argument(
        "--embeddings", type=Path, default=None, help="folder with embeddings.parquet (default: --features)"
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default=",".join(ABLATION_SETS), help="comma-separated configurations")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamplings")
    ap.add_argument(
        "--nested-repeats",
        type=int,
        default=0,
        help="also estimate 'choose the best configuration by inner CV, then fit it' with N outer repeats",
    )
    ap.add_argument(
        "--nested-sets",
        default="candidates,all",
        help="candidate lists for the nested selection, comma-separated: 'candidates' (the a-priori few, "
        "model.NESTED_CANDIDATES) and/or 'all' (every configuration of the table)",
    )
    ap.add_argument(
        "--learning-curve",
        default="",
        help="comma-separated shares of each training fold (e.g. 0.4,0.6,0.8,1.0): instead of the ablation table, "
        "the accuracy of --sets with every fitted stage trained on that share (held-out folds whole)",
    )
    ap.add_argument(
        "--no-monotone",
        action="store_true",
        help="patient model without monotone constraints (lympho fit --no-monotone; the models before)",
    )
    args = ap.parse_args()
    clf = PatientClassifier(monotone=not args.no_monotone, random_state=args.seed)
    if not (args.features / "patients.parquet").is_file() or args.data.is_dir():
        extract(args.data, args.features, jobs=args.jobs, progress=True)
    patients = load_patients(args.features)
    sets = [s for s in args.sets.split(",") if s]
    cells, emb = load_cohort_tables(args.features, sets, args.embeddings, optional=True)
    kept = sets_with_inputs(sets, cells, emb)
    for fs in (fs for fs in sets if fs not in kept):
        print(f"skipping {fs}: its inputs are missing", file=sys.stderr)
    labeled = patients[patients["label"].notna()].reset_index(drop=True)
    cohort = Cohort.from_tables(labeled, cells, emb)
    y = labeled["label"].astype(int).to_numpy()
    if args.learning_curve:
        fractions = [float(x) for x in args.learning_curve.split(",") if x]
        t0 = time.perf_counter()
        curve = learning_curve(
            cohort, y, kept, fractions, args.folds, args.repeats, args.seed, classifier=clf, n_jobs=args.jobs
        )
        print(
            f"{len(y)} patients ({int(y.sum())} tumoral), {args.folds}-fold x {args.repeats} CV; each training fold "
            "subsampled (stratified) before anything is fitted, held-out folds whole. BA / AUC, mean over repeats "
            "(std of BA):"
        )
        wide = curve.assign(
            cell=[
                f"{r.balanced_accuracy:.3f} / {r.roc_auc:.3f} ({r.balanced_accuracy_std:.3f})"
                for r in curve.itertuples()
            ]
        ).pivot(index="configuration", columns="n_train", values="cell")
        wide.columns = [f"{n} patients" for n in wide.columns]
        print(wide.loc[kept].to_string())
        print(f"learning curve: {time.perf_counter() - t0:.0f} s, {args.jobs} job(s)")
        return
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    res = cross_validate_sets(cohort, y, kept, args.folds, args.repeats, args.seed, n_jobs=args.jobs, classifier=clf)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rows = ablation_table(res, {fs: r.summary["n_features"] for fs, r in res.items()}, n_boot=args.boot, seed=args.seed)
    print(
        f"{len(y)} patients ({int(y.sum())} tumoral), {args.folds}-fold x {args.repeats} stratified patient-level CV, "
        f"same folds for every configuration; paired bootstrap over patients ({args.boot}x). "
        f"Default of `lympho fit`: {DEFAULT_FEATURE_SET}."
    )
    print(format_ablation(rows))
    print(f"CV of {len(kept)} configurations: {wall:.0f} s wall, {cpu:.0f} s CPU, {args.jobs} job(s)")
    for which in [w for w in args.nested_sets.split(",") if w] if args.nested_repeats else []:
        cands = kept if which == "all" else [fs for fs in NESTED_CANDIDATES if fs in kept]
        t0 = time.perf_counter()
        cv, chosen = nested_selection(
            cohort, y, cands, args.folds, args.nested_repeats, args.seed, n_jobs=args.jobs, classifier=clf
        )
        s = cv.summary
        counts = ", ".join(f"{k} {v}" for k, v in chosen["configuration"].value_counts().items())
        print(
            f"\nnested selection among {len(cands)} ({which}: {', '.join(cands)}), {args.folds}-fold x "
            f"{args.nested_repeats}, configuration chosen by inner 3-fold CV on each outer training fold "
            f"({time.perf_counter() - t0:.0f} s):\n  balanced acc {s['balanced_accuracy_mean']:.3f} ± "
            f"{s['balanced_accuracy_std']:.3f}, ROC AUC {s['roc_auc_mean']:.3f} ± {s['roc_auc_std']:.3f}, "
            f"sens {s['sensitivity_mean']:.3f}, spec {s['specificity_mean']:.3f}; chosen: {counts}"
        )
        for row in chosen.itertuples():
            print(
                f"  repeat {row.repeat} fold {row.fold}: {row.configuration:<24} inner BA "
                f"{row.inner_balanced_accuracy:.3f}, outer BA {row.outer_balanced_accuracy:.3f}"
            )


if __name__ == "__main__":
    main()
