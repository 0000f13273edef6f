"""Size and generation time of `lympho report` on the shared patients (targets: < 10 MB, < 60 s on 2 cores).

    python benchmarks/report_speed.py --data ../shared/data/lymphocytosis/trainset

Extracts features unless --features already holds them (never rewritten), fits the
default model (cached in --model), then times the report and prints one table.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.extract import extract  # noqa: E402
from lympho_features.model import fit_features_dir  # noqa: E402
from lympho_features.report import write_report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--features", type=Path, default=Path("artifacts/bench/train"))
    ap.add_argument("--model", type=Path, default=Path("artifacts/bench/model"))
    ap.add_argument("--out", type=Path, default=Path("reports/bench"))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    if not (args.features / "patients.parquet").is_file():
        extract(args.data, args.features, jobs=args.jobs, progress=True)
    if not (args.model / "model.json").is_file():
        fit_features_dir(args.features, args.model, n_jobs=args.jobs)
    t0 = time.perf_counter()
    res = write_report(args.model, args.features, args.out)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'patients':>8} {'cell images':>11} {'size MB':>8} {'seconds':>8} {'peak RSS MB':>11}  report")
    print(
        f"{res.n_patients:>8} {res.n_thumbnails:>11} {res.size_bytes / 1e6:>8.2f} {wall:>8.1f} {rss:>11.0f}  {res.path}"
    )
    for w in res.warnings:
        print(f"warning: {w}")


if __name__ == "__main__":
    main()
