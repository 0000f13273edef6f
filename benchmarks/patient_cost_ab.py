"""CPU time of one patient's extraction work, this checkout against another, alternated in one process.

    python benchmarks/patient_cost_ab.py --against /path/to/old/checkout --patients 4 --rounds 2
    python benchmarks/patient_cost_ab.py --against DIR --profile        # cProfile of this checkout's work

What each side does for a patient is what its ``lympho extract`` workers do:
this checkout reads the red-cell ruler's crops (``measure._ruler_patient``)
then runs ``extract.process_patient`` at the trainset's scale (read, decode,
``measure_cell`` per crop, the cell-type gate, the blur check); a checkout
without ``measure._ruler_patient`` (features version 4 and before) runs its
``process_patient`` alone. Times are ``time.process_time`` of this one process
(OpenCV and OpenMP on one thread), patient by patient, alternating which side
goes first, so that a shared machine's drift weighs on both alike. Per-run
costs (worker start-up and imports, the tables) are not included: compare
``python -c "import lympho_features.extract"`` for those.

The other checkout's package is loaded under another name (``lympho_other``),
so both run in the same interpreter.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import importlib.util
import os
import pstats
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The trainset's red-cell scale (patients.parquet of the whole trainset): within the canonical scale's
#: tolerance, so crops are not resampled, as in a run over the whole trainset.
TRAINSET_UM_PER_PX = 0.1626722


def load_other(root: Path):
    """The other checkout's ``lympho_features`` package, imported as ``lympho_other``."""
    pkg = root.resolve() / "lympho_features"
    spec = importlib.util.spec_from_file_location(
        "lympho_other", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["lympho_other"] = module
    spec.loader.exec_module(module)
    return module


def patient_runner(package: str, data: Path, patients: dict[str, list[str]]):
    """A function measuring one patient as ``package``'s extraction workers do."""
    extract = importlib.import_module(f"{package}.extract")
    try:
        measure = importlib.import_module(f"{package}.measure")
    except ModuleNotFoundError:  # features version 4: no ruler, no scale
        measure = None
    if measure is None or not hasattr(measure, "_ruler_patient"):
        settings = extract.ExtractSettings()
        return lambda pid: extract.process_patient(data, pid, patients[pid], settings)
    settings = measure.ExtractSettings()
    scale = importlib.import_module(f"{package}.scale").PatientScale(TRAINSET_UM_PER_PX, "red_cells_run")

    def run(pid):
        measure._ruler_patient(data, pid, patients[pid], settings, None)
        return extract.process_patient(data, pid, patients[pid], settings, scale)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--against", type=Path, required=True, metavar="DIR", help="the other checkout")
    ap.add_argument("--patients", type=int, default=4, help="patients, evenly spread over the sorted list")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="cProfile this checkout's work instead")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    from lympho_features.dataset import discover_patients

    patients = discover_patients(args.data)
    pids = sorted(patients)
    chosen = pids[:: max(1, len(pids) // args.patients)][: args.patients]
    n = sum(len(patients[p]) for p in chosen)
    load_other(args.against)
    runs = {
        "other": patient_runner("lympho_other", args.data, patients),
        "this": patient_runner("lympho_features", args.data, patients),
    }
    for run in runs.values():  # warm up: imports, the gate, structuring elements
        run(chosen[0])
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for pid in chosen:
            runs["this"](pid)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    total = dict.fromkeys(runs, 0.0)
    for rd in range(args.rounds):
        for i, pid in enumerate(chosen):
            for side in ("other", "this") if (rd + i) % 2 == 0 else ("this", "other"):
                t0 = time.process_time()
                runs[side](pid)
                total[side] += time.process_time() - t0
    ms = {k: v * 1000 / n / args.rounds for k, v in total.items()}
    print(f"{len(chosen)} patients, {n} crops, {args.rounds} rounds; CPU ms a crop (reading and decoding included)")
    print(
        f"  {args.against}: {ms['other']:.3f}   this checkout: {ms['this']:.3f}   ratio {ms['this'] / ms['other']:.3f}"
    )
    print(f"load average (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
