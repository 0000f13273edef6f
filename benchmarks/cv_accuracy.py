"""Cross-validated accuracy of `lympho fit` for each feature set on the shared patients.

    python benchmarks/cv_accuracy.py --data ../shared/data/lymphocytosis/trainset

Extracts features once (cached in --features, reused on later runs), then
prints balanced accuracy and ROC AUC (mean ± std over repeats), sensitivity
and specificity for the clinical, image and all feature sets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.extract import extract  # noqa: E402
from lympho_features.model import FEATURE_SETS, fit_model, load_patients  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--features", type=Path, default=Path("artifacts/bench/train"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    extract(args.data, args.features, jobs=args.jobs, progress=True)
    patients = load_patients(args.features)
    print(f"{'feature set':<12} {'n_feat':>6} {'balanced acc':>15} {'ROC AUC':>15} {'sens':>6} {'spec':>6}")
    for fs in ("clinical", "image", "all"):
        assert fs in FEATURE_SETS
        model, cv = fit_model(patients, fs, args.folds, args.repeats, args.seed)
        s = cv.summary
        print(
            f"{fs:<12} {len(model.features):>6} {s['balanced_accuracy_mean']:>8.3f} ± {s['balanced_accuracy_std']:.3f}"
            f" {s['roc_auc_mean']:>8.3f} ± {s['roc_auc_std']:.3f} {s['sensitivity_mean']:>6.3f} {s['specificity_mean']:>6.3f}"
        )


if __name__ == "__main__":
    main()
