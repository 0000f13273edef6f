"""Does adding CNN-embedding features help? Repeated stratified patient-level CV, with and without them.

    FEATURES_DIR=/tmp/real/train python benchmarks/cv_cnn.py --embeddings /tmp/cnn/train

FEATURES_DIR (argument or environment variable) is a folder written by
`lympho extract` (patients.parquet); --embeddings a folder written by
`lympho embed` (embeddings.parquet; default: FEATURES_DIR). For each feature
set it runs the same folds (5x5 by default) with the same LightGBM settings
as `lympho fit` and prints balanced accuracy and ROC AUC (mean ± std over
repeats, out-of-fold predictions pooled per repeat), sensitivity and
specificity.

Leak-free like `lympho fit`: in every outer fold the embedding aggregator
(PCA of the cells' embeddings, then per-patient mean/std of each component)
is fitted on the training patients' cells only, and so is the decision
threshold (inner 3-fold CV on the training patients, the aggregator refitted
inside each inner fold too).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.cnn_aggregate import EmbeddingAggregator, embedding_columns_of  # noqa: E402

#: Columns of patients.parquet that are never model inputs (as in lympho_features.model).
NON_FEATURE = ("patient_id", "label", "gender", "lymph_count", "dob")
CLINICAL = ("age", "gender_male", "log_lymph_count")

#: LightGBM settings of lympho_features.model.PatientClassifier (small, regularised trees).
LGBM = dict(
    n_estimators=200,
    learning_rate=0.03,
    num_leaves=4,
    min_child_samples=8,
    subsample=0.8,
    subsample_freq=1,
    colsample_bytree=0.5,
    reg_lambda=1.0,
    class_weight="balanced",
    deterministic=True,
    force_row_wise=True,
    n_jobs=1,
    verbose=-1,
)

FEATURE_SETS = {
    "clinical": (True, False, False),
    "clinical+cnn": (True, False, True),
    "all": (True, True, False),  # clinical + classical aggregates: `lympho fit --feature-set all`
    "all+cnn": (True, True, True),
}


def base_matrix(patients: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Clinical model inputs and the classical per-patient aggregates of patients.parquet."""
    X = patients.copy()
    X["gender_male"] = X["gender"].map({"M": 1.0, "F": 0.0}).astype(float)
    X["log_lymph_count"] = np.log(X["lymph_count"].astype(float).clip(lower=0.01))
    classical = [
        c
        for c in X.columns
        if c not in NON_FEATURE
        and c not in CLINICAL
        and pd.api.types.is_numeric_dtype(X[c])
        and not pd.api.types.is_bool_dtype(X[c])
    ]
    return X.set_index("patient_id"), classical


class Design:
    """Builds fold matrices: fixed patient columns plus CNN aggregates fitted on the training patients."""

    def __init__(self, base: pd.DataFrame, columns: list[str], embeddings: pd.DataFrame | None, n_components: int):
        self.base = base[columns].astype(float)
        self.embeddings = embeddings
        self.n_components = n_components
        if embeddings is not None:
            cols = embedding_columns_of(embeddings)
            self.cells = embeddings[["patient_id", *cols]]
            self.cell_patient = embeddings["patient_id"].astype(str).to_numpy()

    def __call__(self, train_ids, score_ids) -> tuple[np.ndarray, np.ndarray, list[str]]:
        Xtr, Xsc = self.base.loc[train_ids], self.base.loc[score_ids]
        names = list(self.base.columns)
        if self.embeddings is not None:
            train_cells = self.cells[np.isin(self.cell_patient, list(train_ids))]
            agg = EmbeddingAggregator(self.n_components).fit(train_cells)
            both = agg.transform(self.cells, patient_ids=list(train_ids) + list(score_ids))
            Xtr = pd.concat([Xtr, both.iloc[: len(train_ids)].set_axis(Xtr.index)], axis=1)
            Xsc = pd.concat([Xsc, both.iloc[len(train_ids) :].set_axis(Xsc.index)], axis=1)
            names += agg.feature_names_
        return Xtr.to_numpy(float), Xsc.to_numpy(float), names


def fit_predict(Xtr, ytr, Xsc, seed) -> np.ndarray:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(random_state=seed, **LGBM).fit(Xtr, ytr)
    return model.predict_proba(Xsc)[:, 1]


def best_threshold(y, proba) -> float:
    """Threshold maximising balanced accuracy (middle of ties), as lympho_features.model.choose_threshold."""
    u = np.unique(proba)
    cands = np.concatenate([[0.0], (u[:-1] + u[1:]) / 2, [1.0]]) if len(u) > 1 else np.array([0.5])
    pos, neg = y == 1, y == 0
    ba = np.array([((proba[pos] >= t).mean() + (proba[neg] < t).mean()) / 2 for t in cands])
    best = np.flatnonzero(ba == ba.max())
    return float(cands[best[len(best) // 2]])


def cross_validate(design: Design, ids: np.ndarray, y: np.ndarray, folds: int, repeats: int, seed: int) -> dict:
    per_repeat = []
    n_features = 0
    for r in range(repeats):
        proba = np.zeros(len(y))
        thr = np.zeros(len(y))
        for f, (tr, te) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(ids, y)):
            Xtr, Xte, names = design(ids[tr], ids[te])
            n_features = len(names)
            proba[te] = fit_predict(Xtr, y[tr], Xte, seed + 1000 * r + f)
            # Threshold from an inner CV of the training patients only (aggregator refitted inside it too).
            oof = np.zeros(len(tr))
            inner = StratifiedKFold(3, shuffle=True, random_state=seed + r)
            for itr, ite in inner.split(ids[tr], y[tr]):
                Xa, Xb, _ = design(ids[tr][itr], ids[tr][ite])
                oof[ite] = fit_predict(Xa, y[tr][itr], Xb, seed + 1000 * r + f)
            thr[te] = best_threshold(y[tr], oof)
        pred = (proba >= thr).astype(int)
        per_repeat.append(
            {
                "balanced_accuracy": balanced_accuracy_score(y, pred),
                "roc_auc": roc_auc_score(y, proba),
                "sensitivity": pred[y == 1].mean(),
                "specificity": 1 - pred[y == 0].mean(),
            }
        )
    per = pd.DataFrame(per_repeat)
    return {
        "n_features": n_features,
        **{f"{k}_mean": per[k].mean() for k in per},
        **{f"{k}_std": per[k].std(ddof=1) if len(per) > 1 else 0.0 for k in per},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "features", nargs="?", type=Path, default=Path(os.environ.get("FEATURES_DIR", "artifacts/bench/train"))
    )
    ap.add_argument("--embeddings", type=Path, default=None, help="Folder with embeddings.parquet (default: FEATURES).")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-components", type=int, default=16)
    ap.add_argument("--sets", default=",".join(FEATURE_SETS), help="Comma-separated feature sets to run.")
    args = ap.parse_args()

    patients = pd.read_parquet(args.features / "patients.parquet")
    emb_dir = args.embeddings or args.features
    embeddings = pd.read_parquet(emb_dir / "embeddings.parquet")
    labeled = patients[patients["label"].notna()].reset_index(drop=True)
    ids = labeled["patient_id"].astype(str).to_numpy()
    y = labeled["label"].astype(int).to_numpy()
    base, classical = base_matrix(labeled.assign(patient_id=ids))
    embeddings = embeddings[embeddings["patient_id"].astype(str).isin(ids)]
    n_dims = len(embedding_columns_of(embeddings))
    print(
        f"{len(ids)} labeled patients ({y.sum()} tumoral), {len(classical)} classical aggregates, "
        f"{len(embeddings)} embedded cells x {n_dims} dims -> {args.n_components} PCs (mean, std); "
        f"{args.folds}-fold x {args.repeats} CV, seed {args.seed}"
    )
    print(f"{'feature set':<14} {'n_feat':>6} {'balanced acc':>15} {'ROC AUC':>15} {'sens':>6} {'spec':>6} {'secs':>5}")
    for name in args.sets.split(","):
        clinical, with_classical, with_cnn = FEATURE_SETS[name]
        columns = list(CLINICAL) + (classical if with_classical else [])
        design = Design(base, columns, embeddings if with_cnn else None, args.n_components)
        t = time.perf_counter()
        s = cross_validate(design, ids, y, args.folds, args.repeats, args.seed)
        print(
            f"{name:<14} {s['n_features']:>6} {s['balanced_accuracy_mean']:>8.3f} ± {s['balanced_accuracy_std']:.3f}"
            f" {s['roc_auc_mean']:>8.3f} ± {s['roc_auc_std']:.3f} {s['sensitivity_mean']:>6.3f}"
            f" {s['specificity_mean']:>6.3f} {time.perf_counter() - t:>5.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
