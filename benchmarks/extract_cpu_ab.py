"""CPU time of whole ``lympho extract`` runs, checkouts alternated: the run-level cost, imports and all.

    python benchmarks/extract_cpu_ab.py --patients 30 --rounds 3 /work/wt-983 /work/main .

Copies ``--patients`` patients of ``--data`` (every k-th of the sorted list,
and the last one; the clinical CSV cut to them) to a temporary folder, then
runs ``lympho extract SUBSET --out OUT --jobs 2 -q`` with each checkout's
package first on ``PYTHONPATH`` (the same ``lympho`` command and venv), round
after round, alternating the order, each into a fresh output folder (no
shard reused). A run's cost is the user + system CPU time of the command and
every process it started (``getrusage(RUSAGE_CHILDREN)``: the workers are
reaped before the command exits), so a shared machine's load moves it less
than the wall-clock time; the ratio is to the first checkout. The load
average is printed with each run: compare rounds taken at similar loads.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_subset(data: Path, n: int, dest: Path) -> tuple[list[str], int]:
    """Copy ``n`` patients of ``data`` (every k-th, and the last) and its clinical CSV cut to them into ``dest``."""
    pids = sorted(p.name for p in data.iterdir() if p.is_dir())
    step = max(1, len(pids) // n)
    chosen = pids[::step][: n - 1] + [pids[-1]] if n < len(pids) else pids
    crops = 0
    for pid in chosen:
        shutil.copytree(data / pid, dest / pid)
        crops += sum(1 for f in (dest / pid).iterdir() if f.is_file())
    for csv_path in data.glob("*.csv"):
        with open(csv_path, newline="") as fh:
            rows = list(csv.reader(fh))
        keep = [r for r in rows[1:] if set(r[:2]) & set(chosen)]
        with open(dest / csv_path.name, "w", newline="") as fh:
            csv.writer(fh).writerows([rows[0], *keep])
    return chosen, crops


def run_once(lympho: str, checkout: Path, subset: Path, out: Path, jobs: int) -> tuple[float, float]:
    """User + system CPU (s) and wall time (s) of one extraction with ``checkout``'s package."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(
        [lympho, "extract", str(subset), "--out", str(out), "--jobs", str(jobs), "-q"],
        env=env,
        cwd=checkout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode:
        sys.exit(f"lympho extract with {checkout} failed:\n{done.stderr}")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkouts", nargs="+", type=Path, help="folders holding lympho_features/ (first: the reference)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--patients", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    lympho = shutil.which("lympho") or str(Path(sys.executable).with_name("lympho"))
    checkouts = [c.resolve() for c in args.checkouts]
    with tempfile.TemporaryDirectory(prefix="lympho-cpu-ab-") as tmp:
        subset = Path(tmp) / "subset"
        subset.mkdir()
        chosen, crops = make_subset(args.data, args.patients, subset)
        print(f"{len(chosen)} patients, {crops} crops; lympho extract --jobs {args.jobs}; user + sys CPU (s)")
        cpu: dict[Path, list[float]] = {c: [] for c in checkouts}
        for rd in range(args.rounds):
            for c in checkouts if rd % 2 == 0 else checkouts[::-1]:
                used, wall = run_once(lympho, c, subset, Path(tmp) / "out", args.jobs)
                cpu[c].append(used)
                print(f"  round {rd}  {c}: {used:.2f} s CPU, {wall:.1f} s wall, load {os.getloadavg()[0]:.1f}")
    ref = sum(cpu[checkouts[0]])
    print("| checkout | user + sys CPU (s) | mean | against the first |")
    print("|---|---|---|---|")
    for c, v in cpu.items():
        print(f"| {c} | {', '.join(f'{x:.2f}' for x in v)} | {sum(v) / len(v):.2f} | {sum(v) / ref:.3f} |")


if __name__ == "__main__":
    main()
