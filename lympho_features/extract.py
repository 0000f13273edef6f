"""The extraction pipeline: data folder -> per-cell and per-patient tables.

Chains the stages (dataset -> segment -> features -> aggregate) over a whole
data folder. Work is split by patient: each patient's cells are written to
their own Parquet shard under ``OUT_DIR/cells/`` as soon as they are done,
with a key (inputs' stamps + settings) in the shard's metadata, so a re-run
skips finished patients and a killed run loses at most the patients in flight.
The final tables are written atomically.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import __version__
from ._io import library_versions, sha256_of, write_json, write_parquet
from .aggregate import AggregateSettings, build_patient_table
from .dataset import (
    DEFAULT_REFERENCE_DATE,
    MAX_PIXELS,
    ClinicalColumns,
    DatasetError,
    ImageError,
    discover_patients,
    file_stamp,
    find_clinical_csv,
    load_clinical,
    read_image,
)
from .features import FeatureSettings, cell_features
from .segment import SegmentationSettings, segment_cell

#: Bump when a change to the code changes the features for the same settings,
#: so that shards from older code are recomputed rather than reused.
FEATURES_VERSION = 2


@dataclass(frozen=True)
class ExtractSettings:
    """Every setting that changes the tables ``lympho extract`` writes."""

    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    aggregate: AggregateSettings = field(default_factory=AggregateSettings)
    reference_date: date = DEFAULT_REFERENCE_DATE
    max_pixels: int = MAX_PIXELS

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reference_date"] = self.reference_date.isoformat()
        d["features_version"] = FEATURES_VERSION
        return d


@dataclass
class ExtractResult:
    """What :func:`extract` did: output paths and counts."""

    out_dir: Path
    n_patients: int
    n_images: int
    n_cells: int
    n_skipped: int
    n_reused: int
    qc_counts: dict[str, int]
    warnings: list[str]


def measure_crop(rgb: np.ndarray, settings: ExtractSettings = ExtractSettings()) -> dict:
    """Segment one crop and measure it: one row of cells.parquet (without its keys).

    The row holds ``qc_ok``, ``qc_reason``, every QC and cell-type flag
    (``qc_*``, ``is_*``, see :data:`lympho_features.segment.FLAG_DESCRIPTIONS`)
    and every feature. Flagged cells are measured too (their features are
    kept, but the per-patient morphology aggregates use ``qc_ok`` cells only).
    """
    seg = segment_cell(rgb, settings.segmentation)
    row: dict = {"qc_ok": bool(seg.qc_ok), "qc_reason": seg.qc_reason}
    row.update({k: bool(v) for k, v in seg.flags.items()})
    row.update(cell_features(rgb, seg, settings.features))
    return row


def _shard_name(patient_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", patient_id)
    return f"{safe}-{sha256_of(patient_id)[:8]}.parquet"


def _patient_key(data_dir: Path, images: list[str], settings: ExtractSettings) -> str:
    stamps = []
    for rel in images:
        try:
            stamps.append((rel, file_stamp(data_dir / rel)))
        except OSError:
            stamps.append((rel, "missing"))
    return sha256_of({"settings": settings.to_dict(), "images": stamps})


def process_patient(
    data_dir: Path, patient_id: str, images: list[str], settings: ExtractSettings
) -> tuple[pd.DataFrame, list[dict]]:
    """Measure every crop of one patient.

    Returns
    -------
    cells : DataFrame
        One row per readable crop.
    skipped : list of dict
        ``{"image", "reason"}`` for each crop that could not be read.
    """
    rows, skipped = [], []
    for rel in images:
        try:
            rgb, digest = read_image(data_dir / rel, settings.max_pixels)
        except ImageError as exc:
            skipped.append({"image": rel, "reason": str(exc)})
            continue
        row = {"patient_id": patient_id, "image": rel, "image_sha256": digest}
        row.update(measure_crop(rgb, settings))
        rows.append(row)
    cells = (
        pd.DataFrame(rows)
        if rows
        else pd.DataFrame({"patient_id": pd.Series(dtype=str), "image": pd.Series(dtype=str)})
    )
    return cells, skipped


def _run_patient(
    data_dir: Path, shard: Path, patient_id: str, images: list[str], settings: ExtractSettings, key: str, threads: int
):
    cv2.setNumThreads(threads)
    cells, skipped = process_patient(data_dir, patient_id, images, settings)
    write_parquet(cells, shard, {"patient_id": patient_id, "key": key, "skipped": skipped})
    return patient_id, len(images)


def read_shard_meta(path: Path) -> dict | None:
    """The lympho metadata of a shard, or None if the shard is unreadable or truncated."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[b"lympho"])
    except Exception:
        return None


def extract(
    data_dir: str | Path,
    out_dir: str | Path,
    clinical_csv: str | Path | None = None,
    jobs: int = 1,
    settings: ExtractSettings = ExtractSettings(),
    columns: ClinicalColumns = ClinicalColumns(),
    progress: bool = True,
) -> ExtractResult:
    """Run segmentation and feature extraction over a data folder.

    Parameters
    ----------
    data_dir : path
        One sub-folder per patient (named by patient ID) holding its crops.
    out_dir : path
        Receives ``cells.parquet``, ``patients.parquet``, ``manifest.json`` and
        the per-patient shards under ``cells/``.
    clinical_csv : path, optional
        Defaults to the single ``*.csv`` inside ``data_dir``.
    jobs : int
        Worker processes (patients are processed in parallel).

    Raises
    ------
    DatasetError
        Missing data folder, unreadable or invalid CSV.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    patients = discover_patients(data_dir)
    csv_path = Path(clinical_csv) if clinical_csv else find_clinical_csv(data_dir)
    clinical = load_clinical(csv_path, columns, settings.reference_date)
    try:
        shard_dir = out_dir / "cells"
        shard_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot write to output folder {out_dir}: {exc.strerror}") from None

    warnings = []
    ids_csv = set(clinical["patient_id"])
    no_row = sorted(set(patients) - ids_csv)
    no_folder = sorted(ids_csv - set(patients))
    if no_row:
        warnings.append(
            f"{len(no_row)} patient folder(s) without a row in {csv_path.name} (kept, clinical values unknown): {', '.join(no_row)}"
        )
        clinical = pd.concat([clinical, pd.DataFrame({"patient_id": no_row})], ignore_index=True)
        clinical["label"] = clinical["label"].astype("Int64")
    if no_folder:
        warnings.append(
            f"{len(no_folder)} patient(s) in {csv_path.name} without an image folder (kept with 0 cells): {', '.join(no_folder)}"
        )
    empty = sorted(p for p, imgs in patients.items() if not imgs)
    if empty:
        warnings.append(f"{len(empty)} patient folder(s) with no image: {', '.join(empty)}")

    todo, reused = [], 0
    keys = {}
    for pid, images in patients.items():
        key = _patient_key(data_dir, images, settings)
        keys[pid] = key
        shard = shard_dir / _shard_name(pid)
        meta = read_shard_meta(shard) if shard.exists() else None
        if meta is not None and meta.get("key") == key and meta.get("patient_id") == pid:
            reused += 1
        else:
            todo.append((pid, images, shard, key))

    n_todo_images = sum(len(t[1]) for t in todo)
    threads = 1 if jobs != 1 else 0  # 0 lets OpenCV decide in a single process
    _run_all(data_dir, todo, settings, jobs, threads, n_todo_images, progress)

    frames, skipped = [], []
    for pid in patients:
        shard = shard_dir / _shard_name(pid)
        meta = read_shard_meta(shard)
        if meta is None or meta.get("key") != keys[pid]:
            raise DatasetError(f"shard for patient {pid} is missing or corrupt after extraction: {shard}")
        frames.append(pd.read_parquet(shard))
        skipped.extend({"patient_id": pid, **s} for s in meta["skipped"])
    cells = _concat_cells(frames)
    table = build_patient_table(clinical, cells, settings.aggregate)

    write_parquet(cells, out_dir / "cells.parquet")
    write_parquet(table, out_dir / "patients.parquet")
    qc_counts = (
        {str(k): int(v) for k, v in cells["qc_reason"].value_counts().sort_index().items()} if len(cells) else {}
    )
    n_images = sum(len(v) for v in patients.values())
    fingerprint = sha256_of(
        {
            "images": sorted(zip(cells["image"], cells["image_sha256"], strict=True)) if len(cells) else [],
            "clinical": clinical.sort_values("patient_id").astype(str).values.tolist(),
        }
    )
    manifest = {
        "lympho_version": __version__,
        "command": "extract",
        "data_dir": str(data_dir.resolve()),
        "clinical_csv": str(csv_path.resolve()),
        "settings": settings.to_dict(),
        "library_versions": library_versions(),
        "input_fingerprint": fingerprint,
        "counts": {
            "patients": len(table),
            "patient_folders": len(patients),
            "images": n_images,
            "cells": len(cells),
            "cells_qc_ok": int(cells["qc_ok"].sum()) if len(cells) else 0,
            "skipped": len(skipped),
            "patients_reused": reused,
        },
        "qc_counts": qc_counts,
        "skipped": skipped,
        "warnings": warnings,
    }
    write_json(manifest, out_dir / "manifest.json")
    return ExtractResult(out_dir, len(table), n_images, len(cells), len(skipped), reused, qc_counts, warnings)


def _concat_cells(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(
            {
                "patient_id": pd.Series(dtype=str),
                "image": pd.Series(dtype=str),
                "qc_ok": pd.Series(dtype=bool),
                "qc_reason": pd.Series(dtype=str),
            }
        )
    cells = pd.concat(frames, ignore_index=True)
    return cells.sort_values(["patient_id", "image"], kind="stable").reset_index(drop=True)


def _run_all(data_dir, todo, settings, jobs, threads, n_images, progress) -> None:
    from joblib import Parallel, delayed
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not todo:
        return
    # Largest patients first: better load balance across workers.
    todo = sorted(todo, key=lambda t: -len(t[1]))
    tasks = (
        delayed(_run_patient)(data_dir, shard, pid, images, settings, key, threads) for pid, images, shard, key in todo
    )
    columns = (
        TextColumn("extract"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("crops"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        t = bar.add_task("extract", total=n_images, rate="")
        runner = Parallel(n_jobs=jobs, return_as="generator_unordered")
        for _pid, n in runner(tasks):
            bar.advance(t, n)
            speed = bar.tasks[0].speed
            bar.update(t, rate=f"{speed:6.0f} crops/s" if speed else "")
