"""Rebuild the cell-type gate shipped in the package (lympho_features/data/celltype_gate.{txt.gz,json}).

    python scripts/build_celltype_gate.py [--pbc ../shared/data/pbc] \
        [--trainset ../shared/data/lymphocytosis/trainset] [--cache DIR] [--jobs 2]

What it learns from:

* the PBC crops of another lab (Acevedo et al., "A dataset of microscopic peripheral blood cell images for
  development of automatic recognition systems", Data in Brief 30, 2020; CC BY 4.0): 200 crops of each of 8 cell
  types, the type being the folder. Each folder is read as one "patient" of one run, so the pipeline's own scale
  handling applies: the red cells pooled over the run give the um per pixel, and every crop is resampled to the
  canonical scale before it is measured (:func:`lympho_features.extract.measure_cell`), as ``lympho extract``
  does;
* the lymphocytosis trainset as extra lymphocytes: PBC's are healthy donors' only, while the gate must keep large
  reactive lymphocytes with wide cytoplasm, small CLL cells and cleaved nuclei. Every crop of the trainset that
  passes the segmentation's QC and that its lobe / monocyte / pyknotic rules do not flag is taken as a lymphocyte
  (the trainset is about 99 % lymphocytes); together they weigh as much as PBC's 200 lymphocytes, each patient the
  same (:data:`TRAINSET_WEIGHT`), so the 115 patients' cells teach the variety of lymphocytes without drowning the
  other classes;
* re-acquired copies of those crops (:data:`AUGMENT`, :func:`augment_plan`): each copy is the crop as a random
  other laboratory would have imaged it (:func:`lympho_features.reacquire.random_shift`: magnification 0.75-1.6,
  focus, nuclear and red-cell stain strength +-30 %, white balance, gamma, JPEG 50-95), measured at the pixel size
  that laboratory's red cells would give, with a ruler error of a few per cent. A copy is taught as its original
  (same type, same weight), so the gate cannot lean on what acquisition changes: a stronger nuclear stain or a
  9 % error on areas must not turn a lymphocyte into a basophil or a monocyte (benchmarks/celltype_results.md).

The JSON records the inputs, classes, threshold, LightGBM parameters, the training data's fingerprint (the
SHA-256 of every file used), the augmentation settings, the scale, the library versions and FEATURES_VERSION.
Deterministic (fixed seeds, one thread): the same data and code rebuild the same files. Cross-validated recall is
measured by ``benchmarks/celltype_cv.py`` (same data, same fit) and recorded in benchmarks/celltype_results.md.
Never pickled.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lympho_features._io import atomic_path, library_versions, write_json  # noqa: E402
from lympho_features.celltype import CELL_TYPES, GATE_FILES, GATE_FORMAT, PBC_FOLDERS  # noqa: E402
from lympho_features.dataset import read_image, safe_path, scan_data_dir  # noqa: E402
from lympho_features.extract import FEATURES_VERSION, ExtractSettings, measure_cell, patient_scales  # noqa: E402
from lympho_features.reacquire import SHIFT_RANGES, apply_shift, parse_shift, random_shift  # noqa: E402

#: The gate's inputs: shape and size in um, N:C, lobes, outline roughness, chromatin granularity and radial
#: profile, the granularity and density of the ring outside the nucleus. No stain colour or hue: on the data
#: they separate PBC's classes but shift most between the two labs (benchmarks/celltype_results.md).
SHAPE_PREFIXES = ("shape_", "nc_")
GATE_INPUT_EXTRA = (
    "nucleus_area",
    "cell_area",
    "granularity_nucleus_r2",
    "granularity_nucleus_r3",
    "granularity_nucleus_r4",
    "gate_n_lobes",
    "gate_nucleus_od_sd",
    "gate_ring_od_rbc",
    "gate_ring_texture",
    "gate_ring_granularity",
    "gate_cyto_granularity",
    # Contrast of the nucleoli (promyelocytes' and blasts' open chromatin shows them; a mature lymphocyte's
    # dense chromatin rarely): separates immature granulocytes and monocytes from lymphocytes (AUC 0.89 / 0.92 on
    # PBC) while shifting little between the two labs (PBC vs trainset lymphocytes 0.70).
    "nucleoli_contrast",
)
#: Inputs measured but left out by default (stain-dependent); ``--with-hue`` adds them (for the comparison).
HUE_INPUTS = ("gate_ring_chroma", "gate_ring_purple")

PARAMS = {
    "objective": "multiclass",
    "num_class": len(CELL_TYPES),
    "learning_rate": 0.08,
    "num_leaves": 15,
    "min_data_in_leaf": 10,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "feature_fraction": 0.5,
    "lambda_l2": 1.0,
    "seed": 0,
    "deterministic": True,
    "num_threads": 1,  # one thread: deterministic, and no OpenMP spinning on a shared machine
    "verbose": -1,
}
NUM_ROUNDS = 150
#: The gate's threshold on P(lymphocyte) is chosen on out-of-fold probabilities of the training data
#: (:func:`choose_threshold`): the lowest of these at which the other cells flagged reach
#: :data:`TARGET_FLAGGED` while the lymphocytes kept stay at least :data:`MIN_KEPT` (issue 18's targets).
THRESHOLD_GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
TARGET_FLAGGED = 0.95
MIN_KEPT = 0.97
#: Trainset crops an out-of-fold gate gives less than this P(lymphocyte) are not taught as lymphocytes: only
#: crops it is sure are other cells (a patient's neutrophils), not the unusual lymphocytes near the threshold.
CLEAN_THRESHOLD = 0.1
#: Total weight of the trainset's lymphocytes, in PBC crops (PBC's lymphocytes weigh 200). Twice PBC's: the gate
#: must keep the lymphocytes of lymphocytosis patients (angular, cleaved, large reactive ones), which PBC's healthy
#: donors' lymphocytes do not show (200 before the augmentation; benchmarks/celltype_results.md).
TRAINSET_WEIGHT = 400.0
#: Augmentation: ``copies`` re-acquired copies of every PBC crop and of ``trainset_per_patient`` crops of each
#: trainset patient (drawn with ``seed``); each copy a random laboratory within ``ranges``
#: (:func:`lympho_features.reacquire.random_shift`, each kind of change with probability ``p``), measured at the
#: original pixel size over the copy's magnification times a ruler error log-uniform in ``ruler_error`` (the
#: red cells' reading of another lab's pixel size is off by a few per cent: 4.6 % at x1.6 on the trainset).
AUGMENT = {
    "copies": 2,
    "trainset_per_patient": 60,
    "p": 0.5,
    "ruler_error": (0.94, 1.06),
    "seed": 0,
    "ranges": dict(SHIFT_RANGES),
}


def gate_inputs(columns, with_hue: bool = False) -> list[str]:
    """The gate's input columns found among ``columns`` (order: as measured)."""
    extra = set(GATE_INPUT_EXTRA) | (set(HUE_INPUTS) if with_hue else set())
    return [c for c in columns if c.startswith(SHAPE_PREFIXES) or c in extra]


def fingerprint(data_dir: Path, images: list[str]) -> str:
    """SHA-256 over the sorted (path, SHA-256 of the bytes) of every file used."""
    h = hashlib.sha256()
    for rel in sorted(images):
        h.update(rel.encode())
        h.update(hashlib.sha256(safe_path(data_dir, rel).read_bytes()).digest())
    return h.hexdigest()


def _measure_patient(data_dir: Path, pid: str, images: list[str], um: float, settings: ExtractSettings) -> list[dict]:
    rows = []
    for rel in images:
        rgb, _ = read_image(safe_path(data_dir, rel), settings.max_pixels)
        rows.append({"patient_id": pid, "image": rel, **measure_cell(rgb, settings, um_per_px=um, gate_hue=True)})
    return rows


def measure_folder(
    data_dir: Path, jobs: int = 2, settings: ExtractSettings = ExtractSettings()
) -> tuple[pd.DataFrame, dict]:
    """Every crop of a data folder measured as ``lympho extract`` would, before the gate: rows and the scale summary."""
    from joblib import Parallel, delayed

    patients, _ = scan_data_dir(data_dir)
    clinical = pd.DataFrame({"patient_id": list(patients)})
    scales, summary = patient_scales(data_dir, patients, clinical, settings, jobs=jobs)
    parts = Parallel(n_jobs=jobs)(
        delayed(_measure_patient)(data_dir, pid, imgs, scales[pid].um_per_px, settings)
        for pid, imgs in patients.items()
    )
    table = pd.DataFrame([r for part in parts for r in part])
    return table, {"run_red_cell_um_per_px": summary["run_red_cell_um_per_px"], "sources": summary["sources"]}


def training_tables(
    pbc: Path, trainset: Path, cache: Path | None, jobs: int = 2
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """PBC's and the trainset's measured rows (read from ``cache`` when they were measured with the same inputs)."""
    info: dict = {}
    out = []
    for name, folder in (("pbc", pbc), ("trainset", trainset)):
        patients, _ = scan_data_dir(folder)
        images = [rel for imgs in patients.values() for rel in imgs]
        fp = fingerprint(folder, images)
        key = f"{name}-{fp[:16]}-v{FEATURES_VERSION}"
        path = cache / f"{key}.parquet" if cache else None
        if path is not None and path.exists():
            table = pd.read_parquet(path)
            scale = json.loads(path.with_suffix(".json").read_text())
        else:
            table, scale = measure_folder(folder, jobs)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    table.to_parquet(tmp)
                write_json(scale, path.with_suffix(".json"))
        info[name] = {"folder": folder.name, "n_files": len(images), "sha256": fp, "scale": scale}
        out.append(table)
    pbc_t, train_t = out
    pbc_t = pbc_t.assign(cell_type_true=pbc_t["patient_id"].map(PBC_FOLDERS))
    return pbc_t, train_t, info


def stable_seed(text: str) -> int:
    """A seed from a name, the same in every process and Python version (not ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def magnification(shift: str) -> float:
    """The product of a shift's ``mag`` factors: how many times the pixels per um the copy has (``magrt`` none)."""
    return math.prod(step.values[0] for step in parse_shift(shift) if step.name == "mag")


def augment_plan(table: pd.DataFrame, augment: dict = AUGMENT, per_patient: int | None = None) -> pd.DataFrame:
    """The re-acquired copies to measure: one row per (crop, copy) with its shift and pixel size.

    Parameters
    ----------
    table : DataFrame
        Measured crops as acquired (``patient_id``, ``image``, ``um_per_px``).
    augment : dict
        :data:`AUGMENT`-like settings.
    per_patient : int, optional
        Copies of only this many crops of each patient (drawn with the seed); None or 0: every crop.

    Returns
    -------
    DataFrame
        ``patient_id``, ``source`` (the original's ``image``), ``image`` (``aug{copy}/{source}``), ``copy``,
        ``shift``, ``um_per_px`` (the original's / the copy's magnification x the ruler error). The same for the
        same table and settings.
    """
    lo, hi = (math.log(v) for v in augment["ruler_error"])
    rows = []
    for pid, g in table.groupby("patient_id", sort=True):
        images = sorted(g["image"])
        um_of = dict(zip(g["image"], g["um_per_px"], strict=True))
        if per_patient and per_patient < len(images):
            rng = np.random.default_rng([augment["seed"], stable_seed(str(pid))])
            images = sorted(rng.choice(images, per_patient, replace=False).tolist())
        for rel in images:
            for k in range(augment["copies"]):
                rng = np.random.default_rng([augment["seed"], stable_seed(rel), k])
                shift = random_shift(rng, augment["ranges"], augment["p"])
                ruler = math.exp(rng.uniform(lo, hi))
                um = um_of[rel] if math.isfinite(um_of[rel]) else ExtractSettings().canonical_um_per_px
                rows.append(
                    {
                        "patient_id": pid,
                        "source": rel,
                        "image": f"aug{k}/{rel}",
                        "copy": k,
                        "shift": shift,
                        "um_per_px": um / magnification(shift) * ruler,
                    }
                )
    return pd.DataFrame(rows, columns=["patient_id", "source", "image", "copy", "shift", "um_per_px"])


def _measure_copies(data_dir: Path, plan: pd.DataFrame, settings: ExtractSettings) -> list[dict]:
    rows, cache = [], {}
    for r in plan.itertuples(index=False):
        if r.source not in cache:
            cache = {r.source: read_image(safe_path(data_dir, r.source), settings.max_pixels)[0]}
        rgb = apply_shift(cache[r.source], r.shift)
        measured = measure_cell(rgb, settings, um_per_px=r.um_per_px, gate_hue=True)
        rows.append({**r._asdict(), **measured})
    return rows


def measure_plan(
    data_dir: Path, plan: pd.DataFrame, jobs: int = 2, settings: ExtractSettings = ExtractSettings()
) -> pd.DataFrame:
    """Every copy of ``plan`` (:func:`augment_plan`) re-acquired from ``data_dir`` and measured (before the gate).

    The row's ``um_per_px`` is the plan's (the copy's own pixel size), as :func:`measure_cell` records it.
    """
    from joblib import Parallel, delayed

    if plan.empty:
        return plan.copy()
    parts = Parallel(n_jobs=jobs)(
        delayed(_measure_copies)(data_dir, g, settings) for _, g in plan.groupby("patient_id", sort=True)
    )
    return pd.DataFrame([r for part in parts for r in part])


def augmented_tables(
    pbc: pd.DataFrame,
    train: pd.DataFrame,
    info: dict,
    pbc_dir: Path,
    trainset_dir: Path,
    cache: Path | None,
    jobs: int = 2,
    augment: dict = AUGMENT,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The re-acquired copies of PBC's crops and of the trainset's (read from ``cache`` when measured alike)."""
    out = []
    for name, table, folder, per in (
        ("pbc", pbc, pbc_dir, None),
        ("trainset", train, trainset_dir, augment["trainset_per_patient"]),
    ):
        # The settings that shape this table's copies (PBC's do not depend on the trainset's sample size).
        shaping = {k: v for k, v in augment.items() if name == "trainset" or k != "trainset_per_patient"}
        tag = hashlib.sha256(json.dumps(shaping, sort_keys=True, default=list).encode()).hexdigest()[:12]
        key = f"{name}-aug-{info[name]['sha256'][:16]}-v{FEATURES_VERSION}-{tag}"
        path = cache / f"{key}.parquet" if cache else None
        if path is not None and path.exists():
            aug = pd.read_parquet(path)
        else:
            aug = measure_plan(folder, augment_plan(table, augment, per), jobs)
            if path is not None:
                with atomic_path(path) as tmp:
                    aug.to_parquet(tmp)
        out.append(aug)
    pbc_aug, train_aug = out
    pbc_aug = pbc_aug.assign(cell_type_true=pbc_aug["patient_id"].map(PBC_FOLDERS))
    return pbc_aug, train_aug


def trainset_lymphocytes(train: pd.DataFrame) -> pd.Series:
    """Trainset crops taken as lymphocytes: QC passed and not flagged by the segmentation's cell-type rules."""
    return train["qc_ok"].astype(bool) & ~train["is_not_lymphocyte"].astype(bool)


def _patient_weights(rows: pd.DataFrame, total: float) -> np.ndarray:
    """Weights of ``rows`` summing to ``total``, each patient weighing the same."""
    per_patient = rows.groupby("patient_id")["image"].transform("size").to_numpy(float)
    return total / max(rows["patient_id"].nunique(), 1) / per_patient


def fit_gate(
    pbc: pd.DataFrame,
    train: pd.DataFrame,
    inputs: list[str],
    rounds: int = NUM_ROUNDS,
    params=None,
    taught: pd.Series | None = None,
    pbc_aug: pd.DataFrame | None = None,
    train_aug: pd.DataFrame | None = None,
):
    """Fit the multiclass booster on PBC's rows (all types) and the trainset's lymphocytes (weighted).

    PBC rows without a nucleus are left out. The trainset rows taught as lymphocytes are ``taught`` (default:
    :func:`trainset_lymphocytes`). Each trainset patient weighs the same, and together they weigh
    :data:`TRAINSET_WEIGHT` PBC crops. Re-acquired copies (``pbc_aug``, ``train_aug``: :func:`augmented_tables`)
    are taught with their originals: only the copies of the rows taught here (``source`` among their
    ``image``), with a nucleus found, each PBC copy weighing 1 and the trainset's copies together
    :data:`TRAINSET_WEIGHT` per copy index, each patient the same.
    """
    import lightgbm as lgb

    pbc = pbc[pbc["nucleus_area"].notna()]
    lym = train[trainset_lymphocytes(train) if taught is None else taught]
    parts = [
        (pbc, pbc["cell_type_true"].map(CELL_TYPES.index).to_numpy(int), np.ones(len(pbc))),
        (lym, np.zeros(len(lym), int), _patient_weights(lym, TRAINSET_WEIGHT)),
    ]
    if pbc_aug is not None:
        a = pbc_aug[pbc_aug["source"].isin(pbc["image"]) & pbc_aug["nucleus_area"].notna()]
        parts.append((a, a["cell_type_true"].map(CELL_TYPES.index).to_numpy(int), np.ones(len(a))))
    if train_aug is not None:
        a = train_aug[train_aug["source"].isin(lym["image"]) & train_aug["nucleus_area"].notna()]
        parts.append((a, np.zeros(len(a), int), _patient_weights(a, TRAINSET_WEIGHT * a["copy"].nunique())))
    X = pd.concat([t[inputs] for t, _, _ in parts]).to_numpy(np.float64)
    y = np.concatenate([yy for _, yy, _ in parts])
    w = np.concatenate([ww for _, _, ww in parts])
    data = lgb.Dataset(X, y, weight=w, feature_name=list(inputs), free_raw_data=False)
    return lgb.train(dict(params or PARAMS), data, num_boost_round=rounds)


def patient_folds(patient_ids: pd.Series, folds: int, seed: int = 0) -> np.ndarray:
    """Fold of each row, by patient (patients shuffled with ``seed``, dealt round-robin)."""
    patients = np.array(sorted(patient_ids.unique()))
    fold_of = {p: i % folds for i, p in enumerate(np.random.default_rng(seed).permutation(patients))}
    return patient_ids.map(fold_of).to_numpy()


def out_of_fold(pbc: pd.DataFrame, train: pd.DataFrame, inputs: list[str], folds: int = 5, augmented=(None, None)):
    """P(lymphocyte) of every PBC row and trainset row from gates fitted without it.

    PBC is split in ``folds`` folds stratified by type (seed 1), the trainset by patient; gate ``j`` is fitted on
    the other folds of both (the trainset's rule-passing crops as lymphocytes, :func:`trainset_lymphocytes`), with
    the re-acquired copies ``augmented`` (PBC's, the trainset's) of those folds' crops.

    Returns
    -------
    (ndarray, ndarray)
        PBC's and the trainset's out-of-fold P(lymphocyte), in their rows' order.
    """
    from sklearn.model_selection import StratifiedKFold

    pbc = pbc.reset_index(drop=True)
    y = pbc["cell_type_true"].to_numpy()
    tfold = patient_folds(train["patient_id"], folds)
    p_pbc, p_train = np.full(len(pbc), np.nan), np.full(len(train), np.nan)
    for j, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=1).split(pbc, y)):
        booster = fit_gate(pbc.iloc[tr], train[tfold != j], inputs, pbc_aug=augmented[0], train_aug=augmented[1])
        p_pbc[te] = booster.predict(pbc.iloc[te][inputs].to_numpy(np.float64))[:, 0]
        held = tfold == j
        p_train[held] = booster.predict(train.loc[held, inputs].to_numpy(np.float64))[:, 0]
    return p_pbc, p_train


def choose_threshold(p_lymphocyte: np.ndarray, is_lymphocyte: np.ndarray) -> float:
    """The lowest threshold of :data:`THRESHOLD_GRID` meeting the targets on out-of-fold probabilities.

    Other cells flagged (P(lymphocyte) below it) at least :data:`TARGET_FLAGGED` and lymphocytes kept at least
    :data:`MIN_KEPT`; the lowest such threshold keeps the most lymphocytes. When none meets both, the highest one
    that keeps :data:`MIN_KEPT` of the lymphocytes (the lowest of the grid if none does).
    """
    kept_ok = [t for t in THRESHOLD_GRID if (p_lymphocyte[is_lymphocyte] >= t).mean() >= MIN_KEPT]
    for t in kept_ok:
        if (p_lymphocyte[~is_lymphocyte] < t).mean() >= TARGET_FLAGGED:
            return float(t)
    return float(kept_ok[-1] if kept_ok else THRESHOLD_GRID[0])


def prepare(
    pbc: pd.DataFrame, train: pd.DataFrame, inputs: list[str], folds: int = 5, augmented=(None, None)
) -> tuple[pd.Series, float]:
    """The trainset crops to teach as lymphocytes and the gate's threshold, from one out-of-fold pass.

    Some patients' crops are not lymphocytes at all (on the trainset, one tumoral patient's crops are nearly all
    neutrophils that the lobe rules miss); taught as lymphocytes they would teach the gate to keep such cells.
    Each crop is judged by a gate fitted without its patient (:func:`out_of_fold`); those under
    :data:`CLEAN_THRESHOLD` are left out. The threshold is :func:`choose_threshold` on PBC's out-of-fold
    probabilities. ``augmented``: the re-acquired copies (:func:`augmented_tables`), taught with their originals.
    """
    pbc = pbc[pbc["nucleus_area"].notna()]
    p_pbc, p_train = out_of_fold(pbc, train, inputs, folds, augmented)
    taught = trainset_lymphocytes(train) & pd.Series(p_train >= CLEAN_THRESHOLD, index=train.index)
    threshold = choose_threshold(p_pbc, (pbc["cell_type_true"] == "lymphocyte").to_numpy())
    return taught, threshold


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pbc", type=Path, default=ROOT.parent / "shared" / "data" / "pbc")
    ap.add_argument("--trainset", type=Path, default=ROOT.parent / "shared" / "data" / "lymphocytosis" / "trainset")
    ap.add_argument("--cache", type=Path, default=None, help="keep the measured tables here (reused when unchanged)")
    ap.add_argument("--out", type=Path, default=ROOT / "lympho_features" / "data")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-augment", action="store_true", help="without re-acquired copies (the comparison)")
    args = ap.parse_args(argv)
    pbc, train, info = training_tables(args.pbc, args.trainset, args.cache, args.jobs)
    augment = None if args.no_augment else AUGMENT
    aug = (None, None)
    if augment is not None:
        aug = augmented_tables(pbc, train, info, args.pbc, args.trainset, args.cache, args.jobs, augment)
    inputs = gate_inputs(pbc.columns)
    lym, threshold = prepare(pbc, train, inputs, augmented=aug)
    booster = fit_gate(pbc, train, inputs, taught=lym, pbc_aug=aug[0], train_aug=aug[1])
    n_rule = int(trainset_lymphocytes(train).sum())
    meta = {
        "format": GATE_FORMAT,
        "classes": list(CELL_TYPES),
        "inputs": inputs,
        "threshold": threshold,
        "threshold_rule": f"lowest of {list(THRESHOLD_GRID)} at which out-of-fold PBC other cells flagged >= "
        f"{TARGET_FLAGGED} with lymphocytes kept >= {MIN_KEPT} (5 folds)",
        "params": PARAMS,
        "num_boost_round": NUM_ROUNDS,
        "features_version": FEATURES_VERSION,
        "training": {
            **info,
            "pbc_citation": "Acevedo et al., Data in Brief 30, 2020 (CC BY 4.0)",
            "pbc_crops_per_type": pbc[pbc["nucleus_area"].notna()]["cell_type_true"]
            .value_counts()
            .sort_index()
            .to_dict(),
            "trainset_lymphocytes": int(lym.sum()),
            "trainset_patients": int(train.loc[lym, "patient_id"].nunique()),
            "trainset_rule": "qc_ok, not flagged by the segmentation's lobe / monocyte / pyknotic rules, and given "
            f"P(lymphocyte) >= {CLEAN_THRESHOLD} by a gate fitted without the crop's patient (5 patient folds)",
            "trainset_rejected_by_gate": n_rule - int(lym.sum()),
            "trainset_weight": TRAINSET_WEIGHT,
            "augmentation": None
            if augment is None
            else {
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in augment.items()},
                "ranges": {k: list(v) for k, v in augment["ranges"].items()},
                "rule": "each copy: reacquire.random_shift(rng, ranges, p) applied to the crop, measured at the "
                "original's um/px / the copy's magnification x a ruler error log-uniform in ruler_error; taught "
                "as its original (type, weight); rng = numpy default_rng([seed, sha256(image)[:8], copy])",
                "pbc_copies": int(aug[0]["nucleus_area"].notna().sum()),
                "trainset_copies": int(aug[1]["nucleus_area"].notna().sum()),
            },
        },
        "library_versions": library_versions(),
        "cv": "benchmarks/celltype_results.md (benchmarks/celltype_cv.py)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    # LightGBM's own text, gzip-compressed without a time stamp (mtime=0): a rebuild gives the same bytes.
    text = booster.model_to_string().encode("utf-8")
    with atomic_path(args.out / GATE_FILES[0]) as tmp:
        tmp.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    write_json(meta, args.out / GATE_FILES[1])
    print(
        f"gate: {len(inputs)} inputs, {len(pbc)} PBC crops, {int(lym.sum())} trainset lymphocytes, "
        f"threshold {threshold} -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
