"""Fraction of real crops per quality-control outcome and flag.

    python benchmarks/qc_outcomes.py --data ../shared/data/lymphocytosis/trainset [--jobs 2]
    python benchmarks/qc_outcomes.py --cells features/cells.parquet   # from an extraction

Prints two tables: the share of crops per ``qc_reason`` (the first failed
check; ``ok`` passes every check) and the share of crops raising each flag
(a crop can raise several; ``qc_neighbour_split`` is informational: a
touching neighbour was cut off and the cell kept).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from joblib import Parallel, delayed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.dataset import ImageError, discover_patients, read_image  # noqa: E402
from lympho_features.segment import FLAG_DESCRIPTIONS, QC_REASONS, segment_cell  # noqa: E402


def _patient(root: Path, images: list[str]) -> list[dict]:
    import cv2

    cv2.setNumThreads(1)
    rows = []
    for rel in images:
        try:
            rgb, _ = read_image(root / rel)
        except ImageError:
            rows.append({"qc_reason": "bad_image"})
            continue
        seg = segment_cell(rgb)
        rows.append({"qc_reason": seg.qc_reason, **seg.flags})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--cells", type=Path, default=None, help="cells.parquet of an extraction (skips segmentation)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    if args.cells is not None:
        cells = pd.read_parquet(args.cells)
    else:
        if not args.data.is_dir():
            sys.exit(f"data folder not found: {args.data}")
        patients = discover_patients(args.data)
        parts = Parallel(n_jobs=args.jobs)(delayed(_patient)(args.data, imgs) for imgs in patients.values())
        cells = pd.DataFrame([r for p in parts for r in p])
    n = len(cells)
    counts = cells["qc_reason"].value_counts()
    print(f"{n} crops\n")
    print(f"{'qc_reason':<22} {'crops':>6} {'share':>7}")
    for reason in QC_REASONS:
        if reason in counts:
            print(f"{reason:<22} {counts[reason]:>6} {counts[reason] / n:>7.1%}")
    for reason in sorted(set(counts.index) - set(QC_REASONS)):
        print(f"{reason:<22} {counts[reason]:>6} {counts[reason] / n:>7.1%}")
    print(f"\n{'flag':<22} {'crops':>6} {'share':>7}  meaning")
    for flag, meaning in FLAG_DESCRIPTIONS.items():
        if flag in cells:
            k = int(cells[flag].fillna(False).astype(bool).sum())
            print(f"{flag:<22} {k:>6} {k / n:>7.1%}  {meaning}")


if __name__ == "__main__":
    main()
