"""Per-stage CPU time of one crop's measurement, on a fixed sample of real crops, one core.

    python benchmarks/profile_crop.py --data ../shared/data/lymphocytosis/trainset -n 300
    python benchmarks/profile_crop.py --profile features     # cProfile of one stage, top functions
    python benchmarks/profile_crop.py --families             # CPU ms of each feature family
    python benchmarks/profile_crop.py --save /tmp/x.parquet  # rows of measure_crop, for a before/after check
    python benchmarks/profile_crop.py --save-gate /tmp/g.parquet  # measure_cell rows (gate_* kept), hue off and on
    python benchmarks/profile_crop.py --compare /tmp/old.parquet /tmp/new.parquet
    python benchmarks/profile_crop.py --against ../main      # interleaved A/B against another checkout

The sample is every ``k``-th image of the sorted data set (the same as
``benchmarks/extract_speed.py``'s per-stage line), decoded once before
timing; times are ``time.process_time`` with OpenCV on one thread, so they
are meaningful on a machine shared with other jobs. ``--compare`` prints the
largest relative difference of each numeric column between two saved runs.

``--against DIR`` loads the ``lympho_features`` package of another checkout
(say the main branch's) next to this one and times both on the same decoded
crops, alternating in chunks of 20 crops (and alternating which goes first),
so that the machine's drift of +-20 % over a minute hits both alike, and
times ``measure_cell`` too (the crop's whole path: the common focus, the
segmentation, the features, the gate's measures); it also prints the largest
relative difference of every feature and flag, and of every ``measure_cell``
column, between the two.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.dataset import discover_patients, read_image  # noqa: E402


def load_sample(data: Path, n: int) -> tuple[list[str], list[np.ndarray], float]:
    """The fixed sample of ``n`` crops, decoded; returns names, images and decode CPU ms per crop."""
    patients = discover_patients(data)
    images = [rel for imgs in patients.values() for rel in imgs]
    step = max(1, len(images) // n)
    sample = images[::step][:n]
    t0 = time.process_time()
    rgbs = [read_image(data / rel)[0] for rel in sample]
    return sample, rgbs, (time.process_time() - t0) * 1000 / len(sample)


def time_families(rgbs, segs) -> dict[str, float]:
    """CPU ms per crop of each feature family (their inputs prepared as in ``cell_features``)."""
    import cv2

    from lympho_features import features as F

    tot: dict[str, float] = {}

    def add(name, t):
        tot[name] = tot.get(name, 0.0) + t

    for rgb, seg in zip(rgbs, segs, strict=True):
        if seg.box is None or not seg.nucleus_mask.any():
            continue
        y0, y1, x0, x1 = seg.box
        n_box, c_box = seg.nucleus_mask[y0:y1, x0:x1], seg.cell_mask[y0:y1, x0:x1]
        rgb_box = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        t = time.process_time()
        nc, cc = F._largest_contour(n_box), F._largest_contour(c_box)
        add("contours", time.process_time() - t)
        t = time.process_time()
        F.nc_features(n_box, c_box, nc)
        add("nc", time.process_time() - t)
        t = time.process_time()
        F.shape_features(n_box, "nucleus", nc)
        F.shape_features(c_box, "cell", cc)
        add("shape", time.process_time() - t)
        t = time.process_time()
        bx, by, bw, bh = cv2.boundingRect(F._u8(n_box))
        sl = (slice(max(0, by - 1), by + bh + 1), slice(max(0, bx - 1), bx + bw + 1))
        rgb_n, n_nuc = np.ascontiguousarray(rgb_box[sl]), np.ascontiguousarray(n_box[sl])
        grey = cv2.cvtColor(rgb_n, cv2.COLOR_RGB2GRAY)
        od_r, od_g, od_b = F.optical_density_channels(rgb_n, seg.background)
        od_sum = cv2.add(cv2.add(od_r, od_g), od_b)
        q = F.quantize(grey, n_nuc, 16)
        add("prepare", time.process_time() - t)
        for name, fn, fargs, kw in (
            ("haralick", F.haralick_features, (grey, n_nuc), {"q": q}),
            ("lbp", F.lbp_features, (grey, n_nuc), {}),
            ("granularity", F.granularity_features, (od_sum, n_nuc), {}),
            ("radial", F.radial_features, (od_sum, n_nuc), {}),
            ("nucleoli", F.nucleoli_features, (od_sum, n_nuc), {}),
            ("color", F.color_features, (rgb_box, n_box, c_box), {"background": seg.background, "rbc_od": 1.0}),
        ):
            t = time.process_time()
            fn(*fargs, **kw)
            add(name, time.process_time() - t)
    return {k: v * 1000 / len(rgbs) for k, v in tot.items()}


def load_other(root: Path):
    """The ``segment``, ``features`` and ``measure`` modules of the checkout at ``root``, as a package of another name."""
    import importlib
    import importlib.util

    pkg = root.resolve() / "lympho_features"
    if not ((pkg / "features.py").is_file() or (pkg / "features" / "__init__.py").is_file()):
        sys.exit(f"{root}: no lympho_features/features (module or package) there")
    spec = importlib.util.spec_from_file_location(
        "lympho_against", pkg / "__init__.py", submodule_search_locations=[str(pkg)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["lympho_against"] = module
    spec.loader.exec_module(module)
    return tuple(importlib.import_module(f"lympho_against.{m}") for m in ("segment", "features", "measure"))


def _rel_diff(x, y) -> float:
    """Relative difference of two values of one column (0 when equal, both NaN, or equal flags)."""
    if isinstance(x, (bool, str)) or isinstance(y, (bool, str)):
        return 0.0 if x == y else float("inf")
    if np.isnan(x) or np.isnan(y):
        return 0.0 if np.isnan(x) and np.isnan(y) else float("inf")
    return abs(x - y) / max(abs(x), 1e-12)


def _note_differences(worst: dict[str, float], row_a: dict, row_b: dict, prefix: str = "") -> None:
    """Raise ``worst[prefix + column]`` to the relative difference of each column of two rows (inf: one lacks it)."""
    for col in row_a.keys() | row_b.keys():
        d = _rel_diff(row_a[col], row_b[col]) if col in row_a and col in row_b else float("inf")
        worst[prefix + col] = max(worst.get(prefix + col, 0.0), d)


def against(root: Path, rgbs: list[np.ndarray], rounds: int) -> None:
    """Interleaved A/B timing and value check of this checkout against the one at ``root``."""
    from lympho_features import features as F
    from lympho_features import measure as M
    from lympho_features import segment as S

    S0, F0, M0 = load_other(root)
    mods = {"other": (S0, F0), "this": (S, F)}
    whole = {"other": M0, "this": M}  # measure_cell: the crop's whole path (focus, segmentation, features, gate)
    segs = {k: [s.segment_cell(r) for r in rgbs] for k, (s, _) in mods.items()}
    worst: dict[str, float] = {}
    for r, a, b in zip(rgbs, segs["other"], segs["this"], strict=True):
        row_a = {"qc_reason": a.qc_reason, **a.flags, **mods["other"][1].cell_features(r, a)}
        row_b = {"qc_reason": b.qc_reason, **b.flags, **F.cell_features(r, b)}
        _note_differences(worst, row_a, row_b)
    # measure_cell's rows, the gate's measures kept (hue off, as lympho extract measures for the shipped gate)
    for r in rgbs:
        _note_differences(
            worst, *(whole[k].measure_cell(r, gate_hue=False) for k in ("other", "this")), "measure_cell:"
        )
    stages = ("segment", "features", "measure_cell")
    tot = {(k, stage): 0.0 for k in mods for stage in stages}
    chunks = [range(i, min(len(rgbs), i + 20)) for i in range(0, len(rgbs), 20)]
    for rd in range(rounds):
        for ci, chunk in enumerate(chunks):
            for k in ("other", "this") if (rd + ci) % 2 == 0 else ("this", "other"):
                s, f = mods[k]
                t0 = time.process_time()
                for i in chunk:
                    s.segment_cell(rgbs[i])
                t1 = time.process_time()
                for i in chunk:
                    f.cell_features(rgbs[i], segs[k][i])
                t2 = time.process_time()
                for i in chunk:
                    whole[k].measure_cell(rgbs[i], gate_hue=False)
                t3 = time.process_time()
                tot[k, "segment"] += t1 - t0
                tot[k, "features"] += t2 - t1
                tot[k, "measure_cell"] += t3 - t2
    ms = {key: v * 1000 / len(rgbs) / rounds for key, v in tot.items()}
    print(f"interleaved against {root} ({rounds} rounds), CPU ms per crop: other -> this")
    for stage in ("segment", "features"):
        a, b = ms["other", stage], ms["this", stage]
        print(f"  {stage:<9} {a:6.3f} -> {b:6.3f}  ({b / a - 1:+.1%})")
    a, b = ms["other", "segment"] + ms["other", "features"], ms["this", "segment"] + ms["this", "features"]
    print(f"  {'both':<9} {a:6.3f} -> {b:6.3f}  ({b / a - 1:+.1%})")
    a, b = ms["other", "measure_cell"], ms["this", "measure_cell"]
    print(f"  measure_cell (focus, segment, features, gate measures) {a:6.3f} -> {b:6.3f}  ({b / a - 1:+.1%})")
    bad = sorted(((d, c) for c, d in worst.items() if d > 0), reverse=True)
    print(f"values: {len(worst)} columns, {len(bad)} with any difference (largest relative ones below)")
    for d, c in bad[:20]:
        print(f"  {c}: {d:.3g}")


def compare(old: Path, new: Path) -> None:
    """Largest relative difference per numeric column between two saved runs (same sample)."""
    import pandas as pd

    a, b = pd.read_parquet(old), pd.read_parquet(new)
    if list(a["image"]) != list(b["image"]):
        sys.exit("the two runs are not on the same sample")
    worst = []
    for col in a.columns:
        if col not in b.columns:
            print(f"{col}: missing in {new}")
            continue
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind in "bO":
            n = int((x != y).sum())
            if n:
                worst.append((float("inf"), col, f"{n} rows differ"))
            continue
        x, y = x.astype(float), y.astype(float)
        nan_diff = int((np.isnan(x) != np.isnan(y)).sum())
        ok = ~np.isnan(x) & ~np.isnan(y)
        rel = np.abs(x[ok] - y[ok]) / np.maximum(np.abs(x[ok]), 1e-12)
        r = float(rel.max()) if rel.size else 0.0
        worst.append((r if not nan_diff else float("inf"), col, f"max rel diff {r:.3g}, NaN mismatches {nan_diff}"))
    worst.sort(reverse=True)
    print(f"{len(a)} rows, {len(a.columns)} columns; columns with a difference above 1e-6:")
    n_bad = 0
    for r, col, msg in worst:
        if r > 1e-6:
            n_bad += 1
            print(f"  {col}: {msg}")
    print(f"{n_bad} columns above 1e-6; largest overall: {worst[0][1]} {worst[0][2]}" if worst else "no columns")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("-n", type=int, default=300, help="crops in the sample")
    ap.add_argument("--profile", choices=("segment", "features"), default=None)
    ap.add_argument("--families", action="store_true", help="time each feature family")
    ap.add_argument("--save", type=Path, default=None, help="write measure_crop rows of the sample here")
    ap.add_argument("--save-gate", type=Path, default=None, help="write measure_cell rows (gate_* kept, hue off, on)")
    ap.add_argument("--compare", type=Path, nargs=2, default=None, metavar=("OLD", "NEW"))
    ap.add_argument("--against", type=Path, default=None, metavar="DIR", help="interleaved A/B against a checkout")
    ap.add_argument("--rounds", type=int, default=3, help="passes over the sample for --against")
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    import cv2

    from lympho_features.celltype import apply_gate, gate_measurements
    from lympho_features.extract import measure_cell, measure_crop
    from lympho_features.features import cell_features
    from lympho_features.segment import segment_cell

    cv2.setNumThreads(1)
    names, rgbs, d_ms = load_sample(args.data, args.n)
    k = 1000 / len(rgbs)
    for r in rgbs[:10]:  # warm caches (structuring elements, constants)
        cell_features(r, segment_cell(r))
    t0 = time.process_time()
    segs = [segment_cell(r) for r in rgbs]
    t1 = time.process_time()
    for r, s in zip(rgbs, segs, strict=True):
        cell_features(r, s)
    t2 = time.process_time()
    for r, s in zip(rgbs, segs, strict=True):
        gate_measurements(r, s, hue=False)  # as lympho extract measures for the shipped gate
    t3 = time.process_time()
    measured = [measure_cell(r) for r in rgbs]
    t4 = time.process_time()
    apply_gate(measured)  # all crops in one call, as a patient's
    t5 = time.process_time()
    s_ms, f_ms, g_ms, a_ms = (t1 - t0) * k, (t2 - t1) * k, (t3 - t2) * k, (t5 - t4) * k
    if args.against:
        against(args.against, rgbs, args.rounds)
    print(f"{len(rgbs)} crops, one core, CPU ms per crop")
    print(f"decode {d_ms:.2f}  segment {s_ms:.2f}  features {f_ms:.2f}  ratio {d_ms / (d_ms + s_ms + f_ms):.3f}")
    print(f"cell-type gate: measurements {g_ms:.3f}  applying it {a_ms:.3f}")
    if args.families:
        for name, ms in sorted(time_families(rgbs, segs).items(), key=lambda kv: -kv[1]):
            print(f"  {name:<12} {ms:6.3f} ms")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        if args.profile == "segment":
            for r in rgbs:
                segment_cell(r)
        else:
            for r, s in zip(rgbs, segs, strict=True):
                cell_features(r, s)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    if args.save:
        import pandas as pd

        rows = [{"image": n, **measure_crop(r)} for n, r in zip(names, rgbs, strict=True)]
        args.save.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(args.save)
        print(f"wrote {args.save}")
    if args.save_gate:
        import pandas as pd

        rows = [
            {"image": n, "gate_hue": hue, **measure_cell(r, gate_hue=hue)}
            for hue in (False, True)
            for n, r in zip(names, rgbs, strict=True)
        ]
        args.save_gate.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_parquet(args.save_gate)
        print(f"wrote {args.save_gate}")


if __name__ == "__main__":
    main()
