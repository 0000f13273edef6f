"""Time and peak memory of `lympho extract` against the number of crops.

    python benchmarks/scaling.py --data ../shared/data/lymphocytosis/trainset --sizes 1000,4000,16000 --jobs 2

For each size N, a cohort of N crops is assembled under --work (default a
folder in /tmp) by repeating the real patients (hard links to the real crops
when the file system allows, else copies; never inside the repository), then
extracted from scratch in a child process (running ``extract()`` as
``lympho extract`` does) while the resident memory of that
process and of its workers is sampled. Then the same extraction is run again,
when every patient is reused (the cost of resuming: shard checks and the
final tables). Prints one table and the projection for one million crops.

Cost should grow linearly with the crops (constant ms per crop) and the
memory of the main process stay flat: shards are written as patients finish
and the final tables are built from them a chunk at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.dataset import discover_patients, find_clinical_csv  # noqa: E402


def build_cohort(src: Path, dst: Path, n_crops: int) -> tuple[int, int]:
    """Repeat the real patients of ``src`` into ``dst`` until it holds ``n_crops`` crops."""
    patients = discover_patients(src)
    csv_rows = find_clinical_csv(src).read_text().splitlines()
    header, rows = csv_rows[0], {r.split(",", 1)[0]: r.split(",", 1)[1] for r in csv_rows[1:] if r}
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    out_rows, made, rep = [header], 0, 0
    while made < n_crops:
        for pid, images in patients.items():
            if made >= n_crops or not images:
                continue
            new = f"R{rep}_{pid}"
            (dst / new).mkdir()
            for rel in images[: n_crops - made]:
                target = dst / new / Path(rel).name
                try:
                    os.link(src / rel, target)
                except OSError:
                    shutil.copyfile(src / rel, target)
                made += 1
            out_rows.append(f"{new},{rows.get(pid, ',,,')}")
        rep += 1
    (dst / "clinical.csv").write_text("\n".join(out_rows) + "\n")
    return made, len(out_rows) - 1


def run_measured(cmd: list[str]) -> dict:
    """Run ``cmd``; wall time and peak RSS of the process and of the whole process tree (sampled every 0.1 s)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak_main = peak_tree = 0
    while proc.poll() is None:
        try:
            main = ps.memory_info().rss
            tree = main + sum(c.memory_info().rss for c in ps.children(recursive=True))
        except psutil.Error:
            pass
        else:
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    return {"wall": wall, "peak_main_mb": peak_main / 2**20, "peak_tree_mb": peak_tree / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--sizes", default="1000,4000,16000", help="comma-separated numbers of crops")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--backend", default="local", choices=["local", "dask"])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    ap.add_argument(
        "--chunk-cells",
        type=int,
        default=None,
        help="cells per chunk when the final tables are built (default: the library's); a small value shows "
        "that the main process's memory stops growing once a cohort is larger than one chunk",
    )
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"data folder not found: {args.data}")
    work = args.work or Path(tempfile.mkdtemp(prefix="lympho-scaling-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    try:
        for n in sizes:
            data, out = work / f"data-{n}", work / f"out-{n}"
            crops, patients = build_cohort(args.data, data, n)
            shutil.rmtree(out, ignore_errors=True)
            kwargs = {"jobs": args.jobs, "progress": False}
            if args.backend == "dask":
                kwargs |= {"backend": "dask", "scheduler": "local"}
            if args.chunk_cells:
                kwargs["chunk_cells"] = args.chunk_cells
            code = f"from lympho_features.extract import extract; extract({str(data)!r}, {str(out)!r}, **{kwargs!r})"
            cmd = [sys.executable, "-c", code]
            first = run_measured(cmd)
            again = run_measured(cmd)
            manifest = json.loads((out / "manifest.json").read_text())
            assert manifest["counts"]["patients_reused"] == patients, "the re-run should reuse every patient"
            results.append(
                {
                    "crops": crops,
                    "patients": patients,
                    "cells": manifest["counts"]["cells"],
                    "wall_s": first["wall"],
                    "core_ms_per_crop": 1000 * first["wall"] * args.jobs / crops,
                    "crops_per_s": crops / first["wall"],
                    "peak_main_mb": first["peak_main_mb"],
                    "peak_tree_mb": first["peak_tree_mb"],
                    "rerun_s": again["wall"],
                    "rerun_peak_main_mb": again["peak_main_mb"],
                }
            )
            shutil.rmtree(data)
            shutil.rmtree(out)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"lympho extract scaling: jobs {args.jobs}, backend {args.backend}"
        + (f", chunk {args.chunk_cells} cells" if args.chunk_cells else "")
        + f", {os.cpu_count()} CPUs, data {args.data}"
    )
    print(
        f"{'crops':>7} {'patients':>8} {'wall s':>8} {'crops/s':>8} {'core-ms/crop':>12} "
        f"{'peak main MB':>12} {'peak all MB':>11} {'re-run s':>9} {'re-run main MB':>14}"
    )
    for r in results:
        print(
            f"{r['crops']:>7} {r['patients']:>8} {r['wall_s']:>8.1f} {r['crops_per_s']:>8.1f} "
            f"{r['core_ms_per_crop']:>12.1f} {r['peak_main_mb']:>12.0f} {r['peak_tree_mb']:>11.0f} "
            f"{r['rerun_s']:>9.1f} {r['rerun_peak_main_mb']:>14.0f}"
        )
    largest = results[-1]
    per_crop = largest["core_ms_per_crop"] / 1000  # core-seconds per crop, fixed costs included
    print(f"\nper-crop cost at {largest['crops']} crops: {per_crop * 1000:.1f} core-ms (wall x jobs / crops)")
    print("projection for 1,000,000 crops (one core per worker, linear cost):")
    for workers in (1, 16, 64, 256):
        print(f"  {workers:>4} workers: {1e6 * per_crop / workers / 3600:7.2f} h")
    if args.json:
        args.json.write_text(json.dumps({"jobs": args.jobs, "backend": args.backend, "results": results}, indent=2))


if __name__ == "__main__":
    main()
