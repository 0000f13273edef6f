"""Cross-validated recall of the cell-type gate: PBC by stratified folds, the lymphocytosis trainset by patient.

    python benchmarks/celltype_cv.py [--cache DIR] [--folds 5] [--with-hue] [--save oof.parquet] \
        [--no-augment] [--shifts default|SHIFT,...] [--shift-pbc-per-type 50] [--shift-per-patient 8]

The same data and fit as ``scripts/build_celltype_gate.py``. In fold k the gate is fitted on the other folds of
PBC (stratified by type, seed 0) and on the trainset lymphocytes of the patients outside patient fold k (cleaned
as the build cleans them, within those patients only), then
scores PBC's fold k and every crop of the trainset's fold-k patients. Printed: PBC's confusion matrix (argmax
type), each type's share flagged not-lymphocyte at the threshold the build's rule chooses inside each fold (the
lymphocytes' share kept), and the
share of the trainset's crops gated out, among all crops and among those the segmentation's QC passes, in
reactive and in tumoral patients, with the segmentation rules' flag beside it. The gate is taught on re-acquired
copies of its training crops as the build does (``--no-augment``: without them, for the comparison).

With ``--shifts``, the gate's stability under acquisition shifts: a sample of the crops (``--shift-pbc-per-type``
of each PBC type, ``--shift-per-patient`` of each trainset patient, the same sample for every shift) is
re-acquired by each shift (:mod:`lympho_features.reacquire`), measured at the pixel size the red cells of the
re-acquired sample give (the pooled red-cell ruler's error included, as ``lympho extract`` would measure them)
and typed by the gate of the fold that held the crop out. Printed per shift: the trainset crops gated as
acquired -> re-acquired and newly gated (gated re-acquired, not as acquired; the types they are called), PBC's
lymphocytes kept and other cells flagged as acquired -> re-acquired, and each PBC type's share flagged.

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


#: The shifts of ``--shifts default``: the ends of issue 17's ranges where the gate moved most (stain strength,
#: magnification) and the focus and compression ones (benchmarks/site_robustness_results.md).
DEFAULT_SHIFTS = ("hema:0.7", "hema:1.3", "hema:1.25", "eosin:0.7", "mag:0.8", "mag:1.6", "blur:1", "jpeg:50")
#: Crops of a patient whose red cells are read for the ruler (``lympho extract`` reads 12 of each patient).
RULER_CROPS = 12


def sample_plan(b, table: pd.DataFrame, shift: str, per_patient: int, seed: int = 0) -> pd.DataFrame:
    """The crops of ``table`` re-acquired by ``shift``: ``per_patient`` of each patient with a nucleus found.

    The same crops for every shift (drawn with ``seed`` and the patient's name). Columns as
    ``build_celltype_gate.augment_plan``'s, ``um_per_px`` the original's (see :func:`ruler_ratio`).
    """
    rows = []
    for pid, g in table[table["nucleus_area"].notna()].groupby("patient_id", sort=True):
        images = sorted(g["image"])
        if per_patient < len(images):
            rng = np.random.default_rng([seed, b.stable_seed(str(pid))])
            images = sorted(rng.choice(images, per_patient, replace=False).tolist())
        um = dict(zip(g["image"], g["um_per_px"], strict=True))
        rows += [
            {"patient_id": pid, "source": r, "image": f"{shift}/{r}", "copy": 0, "shift": shift, "um_per_px": um[r]}
            for r in images
        ]
    return pd.DataFrame(rows)


def _diameters(folder: Path, sources: list[str], shift: str) -> tuple[list, list]:
    from lympho_features.dataset import read_image, safe_path
    from lympho_features.reacquire import apply_shift
    from lympho_features.scale import red_cell_diameters

    d0, d1 = [], []
    for rel in sources:
        rgb, _ = read_image(safe_path(folder, rel))
        d0 += red_cell_diameters(rgb).tolist()
        d1 += red_cell_diameters(apply_shift(rgb, shift)).tolist()
    return d0, d1


def ruler_ratio(folder: Path, plan: pd.DataFrame, jobs: int = 2) -> tuple[float, int]:
    """How the red-cell ruler's pixel size changes under the plan's shift: median diameter before / after.

    The red cells of up to :data:`RULER_CROPS` crops of each patient, pooled over the run (one lab, one scanner),
    as acquired and re-acquired. Returns the ratio (1 / the true magnification when the ruler is exact) and the
    red cells counted re-acquired; the true ratio when none was found.
    """
    from joblib import Parallel, delayed

    shift = plan["shift"].iloc[0]
    parts = Parallel(n_jobs=jobs)(
        delayed(_diameters)(folder, sorted(g["source"])[:RULER_CROPS], shift) for _, g in plan.groupby("patient_id")
    )
    d0 = np.array([d for a, _ in parts for d in a])
    d1 = np.array([d for _, bb in parts for d in bb])
    if d0.size == 0 or d1.size == 0:
        b = _build_module()
        return 1.0 / b.magnification(shift), int(d1.size)
    return float(np.median(d0) / np.median(d1)), int(d1.size)


def shifted_sample(b, name, folder, table, shift, per_patient, cache: Path | None, jobs: int = 2):
    """The re-acquired, measured sample of ``table`` (cached under ``cache``) and the ruler's ratio."""
    import json

    from lympho_features._io import atomic_path
    from lympho_features.extract import FEATURES_VERSION

    key = (
        f"{name}-shift-{shift.replace(':', '').replace('/', '-').replace('+', '_')}-n{per_patient}-v{FEATURES_VERSION}"
    )
    path = cache / f"{key}.parquet" if cache else None
    if path is not None and path.exists():
        return pd.read_parquet(path), json.loads(path.with_suffix(".json").read_text())
    plan = sample_plan(b, table, shift, per_patient)
    ratio, n_red = ruler_ratio(folder, plan, jobs)
    plan["um_per_px"] = plan["um_per_px"] * ratio
    out = b.measure_plan(folder, plan, jobs)
    ruler = {"ratio": ratio, "true": 1.0 / b.magnification(shift), "red_cells": n_red}
    if path is not None:
        with atomic_path(path) as tmp:
            out.to_parquet(tmp)
        path.with_suffix(".json").write_text(json.dumps(ruler))
    return out, ruler


def main(argv=None) -> int:
    from sklearn.model_selection import StratifiedKFold

    from lympho_features.celltype import CELL_TYPES, PBC_FOLDERS

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
    ap.add_argument("--no-augment", action="store_true", help="teach the gate without re-acquired copies")
    ap.add_argument("--shifts", default="", help="comma-separated shift texts, or 'default': the gate's stability")
    ap.add_argument("--shift-pbc-per-type", type=int, default=50, help="PBC crops of each type re-acquired")
    ap.add_argument("--shift-per-patient", type=int, default=8, help="trainset crops of each patient re-acquired")
    ap.add_argument("--trainset-weight", type=float, default=None, help="the trainset lymphocytes' total weight")
    ap.add_argument("--augment", default="", help="JSON merged into the build's AUGMENT, e.g. '{\"copies\": 3}'")
    ap.add_argument("--augment-per-patient", type=int, default=None, help="trainset crops of a patient copied")
    ap.add_argument("--exclude", default="", help="comma-separated gate inputs left out (the comparison)")
    args = ap.parse_args(argv)
    if args.trainset_weight is not None:
        b.TRAINSET_WEIGHT = args.trainset_weight  # fit_gate reads it at each fit
    if args.augment_per_patient is not None:
        b.AUGMENT = {**b.AUGMENT, "trainset_per_patient": args.augment_per_patient}
    if args.augment:
        import json

        extra = json.loads(args.augment)
        ranges = {**b.AUGMENT["ranges"], **{k: tuple(v) for k, v in extra.pop("ranges", {}).items()}}
        b.AUGMENT = {**b.AUGMENT, **extra, "ranges": ranges}

    pbc, train, info = b.training_tables(args.pbc, args.trainset, args.cache, args.jobs)
    aug = (None, None)
    if not args.no_augment:
        aug = b.augmented_tables(pbc, train, info, args.pbc, args.trainset, args.cache, args.jobs, b.AUGMENT)
    shifts = list(DEFAULT_SHIFTS if args.shifts == "default" else [s for s in args.shifts.split(",") if s])
    shifted = {}
    for shift in shifts:
        sp, rp = shifted_sample(b, "pbc", args.pbc, pbc, shift, args.shift_pbc_per_type, args.cache, args.jobs)
        st, rt = shifted_sample(
            b, "trainset", args.trainset, train, shift, args.shift_per_patient, args.cache, args.jobs
        )
        sp = sp.assign(cell_type_true=sp["patient_id"].map(PBC_FOLDERS))
        shifted[shift] = (sp, st, rp, rt)
        print(
            f"{shift}: re-acquired and measured (ruler {rp['ratio']:.3f} / {rt['ratio']:.3f}, true {rp['true']:.3f})",
            flush=True,
        )
    pbc = pbc[pbc["nucleus_area"].notna()].reset_index(drop=True)
    csv = args.clinical or next(args.trainset.glob("*_true.csv"))
    labels = pd.read_csv(csv).rename(columns=str.upper).set_index("ID")["LABEL"]
    train["label"] = train["patient_id"].map(labels)
    inputs = [c for c in b.gate_inputs(pbc.columns, with_hue=args.with_hue) if c not in args.exclude.split(",")]
    y = pbc["cell_type_true"].map(CELL_TYPES.index).to_numpy(int)
    tfold = b.patient_folds(train["patient_id"], args.folds)
    P = np.zeros((len(pbc), len(CELL_TYPES)))
    Pt = np.full(len(train), np.nan)
    th_pbc, th_train = np.zeros(len(pbc)), np.zeros(len(train))
    # Per shift: the re-acquired PBC and trainset rows' class probabilities and thresholds, from the gate of the
    # fold that held each crop's original out.
    Ps = {
        s: (np.full((len(v[0]), len(CELL_TYPES)), np.nan), np.full((len(v[1]), len(CELL_TYPES)), np.nan))
        for s, v in shifted.items()
    }
    ths = {s: (np.full(len(v[0]), np.nan), np.full(len(v[1]), np.nan)) for s, v in shifted.items()}
    Pt_all = np.full((len(train), len(CELL_TYPES)), np.nan)
    skf = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    for k, (tr, te) in enumerate(skf.split(pbc, y)):
        # As the build does, inside the training folds only: the crops taught as lymphocytes and the threshold.
        inner = train[tfold != k]
        taught, threshold = b.prepare(pbc.iloc[tr], inner, inputs, augmented=aug)
        booster = b.fit_gate(
            pbc.iloc[tr], inner, inputs, taught=None if args.no_clean else taught, pbc_aug=aug[0], train_aug=aug[1]
        )
        th = threshold if args.threshold is None else args.threshold
        for shift, (sp, st, _, _) in shifted.items():
            mp = sp["source"].isin(pbc["image"].iloc[te]).to_numpy() & sp["nucleus_area"].notna().to_numpy()
            held_patients = train.loc[tfold == k, "patient_id"].unique()
            mt = st["patient_id"].isin(held_patients).to_numpy() & st["nucleus_area"].notna().to_numpy()
            if mp.any():
                Ps[shift][0][mp] = booster.predict(sp.loc[mp, inputs].to_numpy(np.float64))
                ths[shift][0][mp] = th
            if mt.any():
                Ps[shift][1][mt] = booster.predict(st.loc[mt, inputs].to_numpy(np.float64))
                ths[shift][1][mt] = th
        th_pbc[te] = threshold if args.threshold is None else args.threshold
        P[te] = booster.predict(pbc.iloc[te][inputs].to_numpy(np.float64))
        held = tfold == k
        th_train[held] = threshold if args.threshold is None else args.threshold
        Pt_all[held] = booster.predict(train.loc[held, inputs].to_numpy(np.float64))
        Pt[held] = Pt_all[held, 0]
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
    if shifted:
        print_shifts(shifted, Ps, ths, pbc, P, th_pbc, train, Pt_all, th_train)
    if args.save is not None:
        out = train[["patient_id", "image", "label", "qc_ok", "qc_reason", "is_not_lymphocyte"]].copy()
        out["p_lymphocyte"] = Pt
        out.to_parquet(args.save)
    return 0


def print_shifts(shifted, Ps, ths, pbc, P, th_pbc, train, Pt_all, th_train) -> None:
    """The gate's stability per shift (out of fold): gated as acquired -> re-acquired, newly gated, PBC per type."""
    from lympho_features.celltype import CELL_TYPES

    names = np.asarray(CELL_TYPES)
    p_of = dict(zip(pbc["image"], P[:, 0] < th_pbc, strict=True))
    t_row = dict(zip(train["image"], range(len(train)), strict=True))
    print(
        "\nGate stability under acquisition shifts (out of fold; trainset: the sampled crops with a nucleus found "
        "both times; PBC: flagged = P(lymphocyte) under the fold's threshold):"
    )
    print(
        "| shift | ruler PBC / trainset (true) | trainset gated as acquired -> re-acquired | newly gated "
        "| newly gated called | PBC lymphocytes kept | PBC others flagged | PBC flagged per type re-acquired "
        "(neu / eos / baso / mono / IG / erythro / plt) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for shift, (sp, st, rp, rt) in shifted.items():
        pp, pt = Ps[shift]
        tp, tt = ths[shift]
        okt = ~np.isnan(pt[:, 0])
        rows = np.array([t_row[s] for s in st.loc[okt, "source"]])
        g0 = Pt_all[rows, 0] < th_train[rows]
        ok0 = ~np.isnan(Pt_all[rows, 0])
        g1 = pt[okt, 0] < tt[okt]
        g0, g1 = g0[ok0], g1[ok0]
        called = pt[okt][ok0][g1 & ~g0, 1:].argmax(1) + 1
        top = pd.Series(names[called]).value_counts().head(3)
        top_txt = ", ".join(f"{n} {c}" for n, c in top.items()) or "-"
        okp = ~np.isnan(pp[:, 0])
        f1 = pp[okp, 0] < tp[okp]
        f0 = sp.loc[okp, "source"].map(p_of).to_numpy(bool)
        lym = (sp.loc[okp, "cell_type_true"] == "lymphocyte").to_numpy()
        per_type = " / ".join(
            f"{f1[(sp.loc[okp, 'cell_type_true'] == t).to_numpy()].mean():.2f}" for t in CELL_TYPES[1:]
        )
        print(
            f"| {shift} | {rp['ratio']:.3f} / {rt['ratio']:.3f} ({rp['true']:.3f}) | {g0.mean():.4f} -> {g1.mean():.4f} "
            f"| {(g1 & ~g0).mean():.4f} | {top_txt} | {1 - f0[lym].mean():.3f} -> {1 - f1[lym].mean():.3f} "
            f"| {f0[~lym].mean():.3f} -> {f1[~lym].mean():.3f} | {per_type} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
