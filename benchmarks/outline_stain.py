"""Does the nucleus' outline follow the stain? Its area under re-acquisition, as segmented and refined in memory.

    python benchmarks/outline_stain.py --data ../shared/data/lymphocytosis/trainset [--per-patient 3] \
        [--shifts hema:0.7,hema:1.3,jpeg:50,blur:1]

A weaker nuclear stain shrinks the segmented nucleus (the green-channel threshold between nucleus and cytoplasm
is the crop's, not the nucleus'), and a few per cent of nucleus area was what still flipped confident calls at
features version 11 (benchmarks/site_robustness_results.md). For ``--per-patient`` crops of each patient (fixed
seed) passing QC, each crop is segmented as ``lympho extract`` does (:func:`~lympho_features.measure.
segment_at_canonical`), as acquired and re-acquired by each shift, and the nucleus' area compared. Next to the
pipeline's outline, a prototype that is not part of the pipeline (:func:`half_contrast_outline`): the nucleus
redrawn where the optical density of the green channel is half-way between the nucleus' inside and the
cytoplasm around it. Printed per shift: median, 10th and 90th percentile of the relative change of area, and
the median absolute change, for both outlines; then the prototype's area against the pipeline's as acquired.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lympho_features.dataset import read_image  # noqa: E402
from lympho_features.measure import segment_at_canonical  # noqa: E402
from lympho_features.reacquire import apply_shift, parse_shift  # noqa: E402
from lympho_features.segment import _disk  # noqa: E402


def half_contrast_outline(green: np.ndarray, nucleus: np.ndarray, cell: np.ndarray, grow: int = 3) -> np.ndarray:
    """The nucleus redrawn at half its contrast against the cytoplasm, in optical density (a prototype).

    The inside is the nucleus eroded by 3 px, the outside the cell's pixels 2-5 px beyond the outline; the
    outline is redrawn within ``grow`` px of the given one, where the green channel's OD crosses half-way
    between their medians. A weaker stain scales both densities, so their half-way point moves with them.
    The given nucleus when either region is too small or nothing is left.
    """
    od = -np.log10(np.maximum(green.astype(np.float32), 1.0) / 255.0)
    n8 = nucleus.astype(np.uint8)
    inner = cv2.erode(n8, _disk(3)).astype(bool)
    ring = cv2.dilate(n8, _disk(5)).astype(bool) & ~cv2.dilate(n8, _disk(1)).astype(bool) & cell
    if inner.sum() < 30 or ring.sum() < 20:
        return nucleus
    half = 0.5 * (np.median(od[inner]) + np.median(od[ring]))
    zone = cv2.dilate(n8, _disk(grow)).astype(bool)
    count, labels = cv2.connectedComponents(((od >= half) & zone).astype(np.uint8))
    if count <= 1:
        return nucleus
    best = np.bincount(labels[nucleus & (labels > 0)].ravel(), minlength=count)[1:].argmax() + 1
    piece = (labels == best).astype(np.uint8)
    contours, _ = cv2.findContours(piece, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(piece)
    cv2.drawContours(filled, contours, -1, 1, -1)
    return filled.astype(bool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/lymphocytosis/trainset"))
    ap.add_argument("--per-patient", type=int, default=3)
    ap.add_argument("--shifts", default="hema:0.7,hema:1.3,jpeg:50,blur:1")
    args = ap.parse_args()
    shifts = [s for s in args.shifts.split(",") if s]
    for s in shifts:
        parse_shift(s)
    rng = np.random.default_rng(0)
    rows = []
    for patient in sorted(p for p in args.data.iterdir() if p.is_dir()):
        files = sorted(patient.glob("*.jpg"))
        for f in rng.choice(files, min(args.per_patient, len(files)), replace=False):
            rgb, _ = read_image(f)
            c0 = segment_at_canonical(rgb)
            s0 = c0.segmentation
            if not s0.qc_ok:
                continue
            a0 = s0.nucleus_mask.sum()
            h0 = half_contrast_outline(c0.crop[..., 1], s0.nucleus_mask, s0.cell_mask).sum()
            for shift in shifts:
                c1 = segment_at_canonical(apply_shift(rgb, shift))
                s1 = c1.segmentation
                if s1.qc_reason not in ("ok", "blur") or s1.nucleus_mask.shape != s0.nucleus_mask.shape:
                    continue
                h1 = half_contrast_outline(c1.crop[..., 1], s1.nucleus_mask, s1.cell_mask).sum()
                rows.append((patient.name, f.name, shift, s1.nucleus_mask.sum() / a0 - 1, h1 / h0 - 1, h0 / a0 - 1))
    d = pd.DataFrame(rows, columns=["patient", "crop", "shift", "pipeline", "half_contrast", "half_vs_pipeline"])
    print(f"{d[['patient', 'crop']].drop_duplicates().shape[0]} crops passing QC as acquired")
    print("| shift | pipeline: median / p10 / p90 / median abs | half contrast (prototype): the same |")
    print("|---|---|---|")
    for shift, g in d.groupby("shift", sort=False):
        cells = [
            f"{g[c].median():+.4f} / {g[c].quantile(0.1):+.4f} / {g[c].quantile(0.9):+.4f} / {g[c].abs().median():.4f}"
            for c in ("pipeline", "half_contrast")
        ]
        print(f"| {shift} | " + " | ".join(cells) + " |")
    r = d.drop_duplicates(["patient", "crop"])["half_vs_pipeline"]
    print(
        f"prototype's area against the pipeline's, as acquired: median {r.median():+.3f}, "
        f"p10 {r.quantile(0.1):+.3f}, p90 {r.quantile(0.9):+.3f}"
    )


if __name__ == "__main__":
    main()
