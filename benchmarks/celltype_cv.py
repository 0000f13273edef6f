"""Cross-validated recall of the cell-type gate: PBC by stratified folds, the lymphocytosis trainset by patient.

    python benchmarks/celltype_cv.py [--cache DIR] [--folds 5] [--with-hue] [--save oof.parquet]

The same data and fit as ``scripts/build_celltype_gate.py``. In fold k the gate is fitted on the other folds of
PBC (stratified by type, seed 0) and on the trainset lymphocytes of the patients outside patient fold k (cleaned
as the build cleans them, within those patients only), then
scores PBC's fold k and every crop of the trainset's fold-k patients. Printed: PBC's confusion matrix (argmax
type), each type's share flagged not-lymphocyte at the threshold the build's rule chooses inside each fold (the
lymphocytes' share kept), and the
share of the trainset's crops gated out, among all crops and among those the segmentation's QC passes, in
reactive and in tumoral patients, with the segmentation rules' flag beside it.

PBC: Acevedo et al., "A dataset of microscopic peripheral blood cell images for development of automatic
recognition systems", Data in Brief 30, 2020 (CC BY 4.0). Results: benchmarks/celltype_results.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _build_module():
    spec = importlib.util.spec_from_file_location("build_celltype_gate", ROOT / "scripts" / "build_celltype_gate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    from sklearn.model_selection import StratifiedKFold

    from lympho_features.celltype import CELL_TYPES

    b = _build_module()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pbc", type=Path, default=ROOT.parent / "shared" / "data" / "pbc")
    ap.add_argument("--trainset", type=Path, default=ROOT.parent / "shared" / "data" / "lymphocytosis" / "trainset")
    ap.add_argument("--clinical", type=Path, default=None, help="trainset CSV with ID, LABEL (default: *_true.csv)")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--with-hue", action="store_true", help="add the ring's hue against the red cells to the inputs")
    ap.add_argument("--no-clean", action="store_true", help="teach every rule-passing trainset crop as a lymphocyte")
    ap.add_argument("--threshold", type=float, default=None, help="fixed threshold (default: chosen in each fold)")
    ap.add_argument("--save", type=Path, default=None, help="write the trainset's out-of-fold probabilities here")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)

    pbc, train, info = b.training_tables(args.pbc, args.trainset, args.cache, args.jobs)
    pbc = pbc[pbc["nucleus_area"].notna()].reset_index(drop=True)
    csv = args.clinical or next(args.trainset.glob("*_true.csv"))
    labels = pd.read_csv(csv).rename(columns=str.upper).set_index("ID")["LABEL"]
    train["label"] = train["patient_id"].map(labels)
    inputs = b.gate_inputs(pbc.columns, with_hue=args.with_hue)
    y = pbc["cell_type_true"].map(CELL_TYPES.index).to_numpy(int)
    tfold = b.patient_folds(train["patient_id"], args.folds)
    P = np.zeros((len(pbc), len(CELL_TYPES)))
    Pt = np.full(len(train), np.nan)
    th_pbc, th_train = np.zeros(len(pbc)), np.zeros(len(train))
    skf = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    for k, (tr, te) in enumerate(skf.split(pbc, y)):
        # As the build does, inside the training folds only: the crops taught as lymphocytes and the threshold.
        inner = train[tfold != k]
        taught, threshold = b.prepare(pbc.iloc[tr], inner, inputs)
        booster = b.fit_gate(pbc.iloc[tr], inner, inputs, taught=None if args.no_clean else taught)
        th_pbc[te] = threshold if args.threshold is None else args.threshold
        P[te] = booster.predict(pbc.iloc[te][inputs].to_numpy(np.float64))
        held = tfold == k
        th_train[held] = threshold if args.threshold is None else args.threshold
        Pt[held] = booster.predict(train.loc[held, inputs].to_numpy(np.float64))[:, 0]
        print(f"fold {k + 1}/{args.folds} done: threshold {th_pbc[te][0]}", flush=True)

    print(f"\ninputs: {len(inputs)}{' (with hue)' if args.with_hue else ''}")
    print(f"PBC scale: {info['pbc']['scale']}; trainset scale: {info['trainset']['scale']}")
    conf = pd.crosstab(
        pd.Categorical(pbc["cell_type_true"], CELL_TYPES),
        pd.Categorical(np.asarray(CELL_TYPES)[P.argmax(1)], CELL_TYPES),
        rownames=["true"],
        colnames=["argmax"],
        dropna=False,
    )
    print("\nPBC confusion matrix (cross-validated, argmax type):")
    print(conf.to_string())
    flagged = P[:, 0] < th_pbc
    print(
        "\nPBC per type (cross-validated): recall of the type (argmax), share flagged not-lymphocyte at the threshold"
    )
    for i, t in enumerate(CELL_TYPES):
        m = y == i
        print(f"  {t:22s} n={m.sum():3d}  recall {(P[m].argmax(1) == i).mean():.3f}  flagged {flagged[m].mean():.3f}")
    lym = y == 0
    print(f"PBC lymphocytes kept {1 - flagged[lym].mean():.3f}; other cells flagged {flagged[~lym].mean():.3f}")
    rule = pbc["is_not_lymphocyte"].astype(bool).to_numpy()
    print(
        f"  (segmentation rules: lymphocytes kept {1 - rule[lym].mean():.3f}, other cells flagged {rule[~lym].mean():.3f})"
    )

    measured = train["nucleus_area"].notna().to_numpy()
    gated = (Pt < th_train) & measured
    qc = train["qc_ok"].astype(bool).to_numpy() | (train["qc_reason"] == "not_lymphocyte").to_numpy()
    print("\nTrainset crops gated out (out-of-fold by patient):")
    for lab, name in ((0, "reactive"), (1, "tumoral")):
        m = (train["label"] == lab).to_numpy()
        per_patient = pd.Series(gated[m]).groupby(train.loc[m, "patient_id"].to_numpy()).mean()
        print(
            f"  {name:8s} patients {m.sum() and per_patient.size:3d} crops {m.sum():5d}: gated {gated[m].mean():.4f} of all,"
            f" {gated[m & qc].mean():.4f} of those passing the other QC checks;"
            f" worst patient {per_patient.max():.3f}; rules flagged {train.loc[m, 'is_not_lymphocyte'].mean():.4f}"
        )
        if name == "tumoral":
            worst = per_patient.idxmax()
            other = m & (train["patient_id"] != worst).to_numpy()
            print(f"  tumoral without {worst}: gated {gated[other].mean():.4f} of all")
    if args.save is not None:
        out = train[["patient_id", "image", "label", "qc_ok", "qc_reason", "is_not_lymphocyte"]].copy()
        out["p_lymphocyte"] = Pt
        out.to_parquet(args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
