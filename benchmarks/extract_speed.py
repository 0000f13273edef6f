"""Extraction throughput against decoding alone, side by side on the same files.

    python benchmarks/extract_speed.py --data ../shared/data/lymphocytosis/trainset --jobs 2

Prints one table: crops/s for decoding only (the floor any extractor pays:
read + decode + checksum of every file, with ``--jobs`` processes; timed
before and after the extraction, the faster counts), for the
full ``lympho extract`` run as a subprocess with ``--jobs`` workers (decode +
segment + features + tables), their ratio, CPU time per crop, and the peak
resident memory of the extraction: the largest single process
(``getrusage(RUSAGE_CHILDREN)``) and the whole process tree (sum of the RSS
of the ``lympho extract`` process and all its workers, sampled every 0.1 s
with psutil). A third line times decoding, segmentation and features in this process,
crop by crop on a fixed sample of 300 crops, and the ratio those CPU times
imply (less sensitive to other jobs on a shared machine than the wall-clock
ratio). ``benchmarks/profile_crop.py`` breaks these times down further.

``--repeats N`` alternates decoding and extraction N times (then decodes once
more) and counts the fastest of each: on a shared machine whose speed drifts
by 20 % over minutes (the same extraction took 24 to 33 s back to back here),
a single 25-second extraction against the best of two 3-second decodes
understates the ratio. Each extraction's time is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from joblib import Parallel, delayed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.dataset import discover_patients, read_image  # noqa: E402


def _decode_patient(root: Path, images: list[str]) -> int:
    for rel in images:
        read_image(root / rel)
    return len(images)


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_extract(data: Path, out: Path, jobs: int) -> tuple[float, float, float | None, float]:
    """Run ``lympho extract`` as a subprocess.

    Returns
    -------
    seconds, largest_process_mb, tree_peak_mb (None without psutil), cpu_seconds (all processes)
    """
    cmd = [
        sys.executable,
        "-c",
        "from lympho_features.cli import app; app()",
        "extract",
        str(data),
        "--out",
        str(out),
        "--jobs",
        str(jobs),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    peak = [0]
    try:
        import psutil  # noqa: F401

        have_psutil = True
    except ImportError:
        have_psutil = False

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    if have_psutil:
        sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - t0
    if have_psutil:
        sampler.join()
    if proc.returncode != 0:
        sys.exit(f"lympho extract failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, after.ru_maxrss / 1024, (peak[0] / 2**20 if have_psutil else None), cpu


def per_stage(data: Path, images: list[str], n: int = 300) -> tuple[float, float, float]:
    """CPU milliseconds per crop for decode, segmentation and features, in this process (single thread).

    The three stages are timed crop by crop, one after the other, so that a change of load on a
    shared machine weighs on all three alike (the ratio stays comparable between runs).
    """
    import cv2

    from lympho_features.features import cell_features
    from lympho_features.segment import segment_cell

    cv2.setNumThreads(1)
    step = max(1, len(images) // n)
    sample = images[::step][:n]
    for rel in sample[:10]:  # warm-up: imports, caches, structuring elements
        rgb = read_image(data / rel)[0]
        cell_features(rgb, segment_cell(rgb))
    d = s = f = 0.0
    for rel in sample:
        t0 = time.process_time()
        rgb = read_image(data / rel)[0]
        t1 = time.process_time()
        seg = segment_cell(rgb)
        t2 = time.process_time()
        cell_features(rgb, seg)
        t3 = time.process_time()
        d, s, f = d + t1 - t0, s + t2 - t1, f + t3 - t2
    k = 1000 / len(sample)
    return d * k, s * k, f * k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--max-patients", type=int, default=None, help="limit for a quick run")
    ap.add_argument("--repeats", type=int, default=1, help="extractions, alternated with decodes; fastest counts")
    args = ap.parse_args()
    if not args.data.is_dir():
        sys.exit(f"data folder not found: {args.data}")
    patients = discover_patients(args.data)
    if args.max_patients:
        patients = dict(list(patients.items())[: args.max_patients])
    n = sum(len(v) for v in patients.values())

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.max_patients:
            # A data folder of just these patients (copies under the temporary folder: the extraction
            # refuses links leading out of its data folder).
            data = Path(tmp) / "data"
            data.mkdir()
            for pid in patients:
                shutil.copytree(args.data / pid, data / pid)
            csv = next(args.data.glob("*.csv"))
            shutil.copyfile(csv, data / csv.name)
        # Warm the page cache so that neither side pays the first read from disk.
        Parallel(n_jobs=args.jobs)(delayed(_decode_patient)(args.data, imgs) for imgs in patients.values())
        # Decode before and after each extraction; the fastest decode is the floor (a conservative ratio on a
        # machine shared with other jobs, whose load moves during the run), the fastest extraction counts.
        t_decode = t_extract = float("inf")
        rss_largest = rss_tree = 0.0
        extract_times = []
        for step in ["decode", "extract"] * max(1, args.repeats) + ["decode"]:
            if step == "extract":
                out = Path(tmp) / "out"
                shutil.rmtree(out, ignore_errors=True)  # a fresh extraction each time (no reuse of shards)
                t, rss_l, rss_t, _cpu = run_extract(data, out, args.jobs)
                extract_times.append(t)
                t_extract = min(t_extract, t)
                rss_largest = max(rss_largest, rss_l)
                rss_tree = None if rss_t is None else max(rss_tree or 0.0, rss_t)
                counts = json.loads((out / "manifest.json").read_text())["counts"]
                continue
            t0 = time.perf_counter()
            Parallel(n_jobs=args.jobs)(delayed(_decode_patient)(args.data, imgs) for imgs in patients.values())
            t_decode = min(t_decode, time.perf_counter() - t0)
    images = [rel for imgs in patients.values() for rel in imgs]
    d_ms, s_ms, f_ms = per_stage(args.data, images)

    rows = [
        ("crops", f"{n}"),
        ("measured / skipped by extract", f"{counts['cells']} / {counts['skipped']}"),
        (f"decode only, {args.jobs} processes", f"{n / t_decode:8.0f} crops/s ({t_decode:.1f} s)"),
        (
            f"lympho extract, {args.jobs} jobs"
            + (f", fastest of {len(extract_times)}" if len(extract_times) > 1 else ""),
            f"{n / t_extract:8.0f} crops/s ({t_extract:.1f} s)"
            + (f"; each run {', '.join(f'{t:.1f}' for t in extract_times)} s" if len(extract_times) > 1 else ""),
        ),
        ("ratio extract / decode", f"{t_decode / t_extract:8.3f}"),
        (
            "ratio from one-core CPU times",
            f"{d_ms / (d_ms + s_ms + f_ms):8.3f}  (decode / (decode + segment + features))",
        ),
        ("one core: decode / segment / features", f"{d_ms:.2f} / {s_ms:.2f} / {f_ms:.2f} ms per crop"),
        ("peak RSS, largest process", f"{rss_largest:8.0f} MB"),
        (
            "peak RSS, extract process tree (sum)",
            f"{rss_tree:8.0f} MB" if rss_tree is not None else "n/a (install psutil)",
        ),
        ("load average (1 min) at the end", f"{os.getloadavg()[0]:8.2f} on {os.cpu_count()} cores"),
    ]
    w = max(len(a) for a, _ in rows)
    print(f"{'measure':<{w}}  value")
    for a, b in rows:
        print(f"{a:<{w}}  {b}")


if __name__ == "__main__":
    main()
