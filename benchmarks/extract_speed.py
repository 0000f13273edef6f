"""Extraction throughput against decoding alone, side by side on the same files.

    python benchmarks/extract_speed.py --data ../shared/data/lymphocytosis/trainset --jobs 2

Prints one table: crops/s for decoding only (the floor any extractor pays),
for the full extraction (decode + segment + features), their ratio, and the
peak resident memory of the extraction's processes.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from joblib import Parallel, delayed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.dataset import discover_patients, read_image  # noqa: E402
from lympho_features.extract import extract  # noqa: E402


def _decode_patient(root: Path, images: list[str]) -> int:
    for rel in images:
        read_image(root / rel)
    return len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--max-patients", type=int, default=None, help="limit for a quick run")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"data folder not found: {args.data}")
    patients = discover_patients(args.data)
    if args.max_patients:
        patients = dict(list(patients.items())[: args.max_patients])
    n = sum(len(v) for v in patients.values())

    t0 = time.perf_counter()
    Parallel(n_jobs=args.jobs)(delayed(_decode_patient)(args.data, imgs) for imgs in patients.values())
    t_decode = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.max_patients:
            data = Path(tmp) / "data"
            data.mkdir()
            for pid in patients:
                (data / pid).mkdir()
                for rel in patients[pid]:
                    (data / rel).write_bytes((args.data / rel).read_bytes())
            csv = next(args.data.glob("*.csv"))
            (data / csv.name).write_bytes(csv.read_bytes())
        t0 = time.perf_counter()
        extract(data, Path(tmp) / "out", jobs=args.jobs, progress=False)
        t_extract = time.perf_counter() - t0
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    rows = [
        ("crops", f"{n}"),
        (f"decode only, {args.jobs} processes", f"{n / t_decode:8.0f} crops/s ({t_decode:.1f} s)"),
        (f"extract, {args.jobs} jobs", f"{n / t_extract:8.0f} crops/s ({t_extract:.1f} s)"),
        ("ratio extract / decode", f"{t_decode / t_extract:8.3f}"),
        ("per crop, one core", f"{t_extract * args.jobs / n * 1000:8.2f} ms"),
        ("peak RSS main / largest worker", f"{rss_self:.0f} MB / {rss_children:.0f} MB"),
    ]
    w = max(len(a) for a, _ in rows)
    print(f"{'measure':<{w}}  value")
    for a, b in rows:
        print(f"{a:<{w}}  {b}")


if __name__ == "__main__":
    main()
