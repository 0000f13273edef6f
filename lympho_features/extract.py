"""The extraction pipeline: data folder -> per-cell and per-patient tables.

Chains the stages (dataset -> segment -> features -> aggregate) over a whole
data folder. Work is split by patient: each patient's cells are written to
their own Parquet shard under ``OUT_DIR/cells/`` as soon as they are done.
Every shard has the same schema (so ``cells/`` reads as one table with
pandas, pyarrow or Dask) and carries in its metadata a key (inputs' stamps +
settings) and a checksum of its content: a re-run skips finished patients,
recomputes any shard that is truncated, corrupt or stale, and a killed run
loses at most the patients in flight. Patients run in local worker processes
or on a Dask cluster (through joblib). The final tables are written
atomically, streaming the shards so that memory does not grow with the cohort.
One run at a time may write an output folder (a lock file). The shard format
and the final tables built from the shards are in :mod:`lympho_features.shards`.
"""

from __future__ import annotations

import errno
import math
import os
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import __version__
from ._io import (
    OutputLockedError,
    check_writable,
    library_versions,
    output_lock,
    remove_stale_temporaries,
    sha256_of,
    write_json,
)
from ._validate import SettingsCheck
from .aggregate import AggregateSettings
from .dataset import (
    DEFAULT_REFERENCE_DATE,
    MAX_PIXELS,
    ClinicalColumns,
    DatasetError,
    ImageError,
    find_clinical_csv,
    load_clinical,
    read_image,
    safe_path,
    scan_data_dir,
)
from .features import FeatureSettings, cell_features
from .scale import (
    CANONICAL_UM_PER_PX,
    RED_CELL_DIAMETER_UM,
    RESAMPLE_TOLERANCE,
    RUN_AGREEMENT,
    SCALE_FLAGS,
    PatientScale,
    ScaleEstimate,
    estimate_from_diameters,
    pool_run,
    red_cell_diameters,
    to_canonical,
    to_physical,
)
from .segment import SegmentationSettings, patient_blur, segment_cell
from .shards import (  # noqa: F401  (re-exported: callers import them from here)
    SHARD_FORMAT,
    _one_line,
    _shard_name,
    build_tables,
    combine_patient_rows,
    inputs_key,
    patient_rows,
    read_shard_meta,
    rows_to_table,
    table_checksum,
    verify_shard,
    write_shard,
)

_build_tables = build_tables  # the name before the shards moved to their own module

#: Bump when a change to the code changes the features for the same settings,
#: so that shards from older code are recomputed rather than reused.
#: 5: sizes in um and um^2 (crops resampled to the canonical scale), blur judged against the patient's crops.
#: 6: chromatin texture (Haralick, LBP, granularity, nucleoli) measured on the nucleus smoothed by 1 px
#: (FeatureSettings.texture_sigma), so that focus and JPEG compression move it less.
FEATURES_VERSION = 6


@dataclass(frozen=True)
class ExtractSettings:
    """Every setting that changes the tables ``lympho extract`` writes."""

    segmentation: SegmentationSettings = field(default_factory=SegmentationSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    aggregate: AggregateSettings = field(default_factory=AggregateSettings)
    reference_date: date = DEFAULT_REFERENCE_DATE
    max_pixels: int = MAX_PIXELS
    #: um per pixel of every crop of the run (``--pixel-size``); None: the clinical CSV's column, else red cells
    pixel_size_um: float | None = None
    canonical_um_per_px: float = CANONICAL_UM_PER_PX  #: the scale segmentation and QC run at
    resample_tolerance: float = RESAMPLE_TOLERANCE  #: crops this close to the canonical scale are not resampled
    #: crops per patient (evenly spread) whose red cells measure its scale: 12 give 26 red cells in the median
    #: on the challenge's patients, for about 6 % of the extraction's time
    ruler_crops: int = 12

    def __post_init__(self) -> None:
        """Refuse a value that cannot mean what its setting says (raises :class:`~lympho_features.errors.SettingsError`)."""
        check = SettingsCheck(self)
        check.instance("segmentation", SegmentationSettings)
        check.instance("features", FeatureSettings)
        check.instance("aggregate", AggregateSettings)
        check.instance("reference_date", date)
        check.integer("max_pixels", 1)
        check.number("pixel_size_um", 0.005, 5.0, optional=True)
        check.number("canonical_um_per_px", 0, low_open=True)
        check.number("resample_tolerance", 0, 1)
        check.integer("ruler_crops", 1)

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
    n_recomputed: int = 0  #: shards found truncated, corrupt or stale and recomputed
    #: ``manifest.json``'s ``scale`` without the per-patient list: run scale, patients per source and flag
    scale: dict = field(default_factory=dict)


@lru_cache(maxsize=8)
def _at_canonical(settings: SegmentationSettings) -> SegmentationSettings:
    """The segmentation settings for a crop already at the canonical scale: pixel settings as they are."""
    return replace(settings, scale_with_side=False)


def measure_crop(
    rgb: np.ndarray, settings: ExtractSettings = ExtractSettings(), um_per_px: float | None = None
) -> dict:
    """Segment one crop and measure it: one row of cells.parquet (without its keys).

    The crop is first resampled to the canonical scale
    (:func:`lympho_features.scale.to_canonical`; not when within the
    tolerance), so segmentation, QC and texture see the same pixels at any
    magnification; sizes are then converted to um and um^2.

    The row holds ``qc_ok``, ``qc_reason``, every QC and cell-type flag
    (``qc_*``, ``is_*``, see :data:`lympho_features.segment.FLAG_DESCRIPTIONS`),
    ``qc_sharpness`` (for the patient-level blur check, :func:`apply_patient_blur`;
    NaN when not measured; alone, ``qc_blur`` is its floor test), ``um_per_px`` (the crop's own scale) and every
    feature. Flagged cells are measured too (their features are kept, but the
    per-patient morphology aggregates use ``qc_ok`` cells only).

    Parameters
    ----------
    rgb : ndarray (H, W, 3) uint8
    settings : ExtractSettings
    um_per_px : float, optional
        The crop's scale; None or NaN: the canonical scale is assumed.
    """
    canonical = settings.canonical_um_per_px
    um = float(um_per_px) if um_per_px is not None and math.isfinite(um_per_px) and um_per_px > 0 else canonical
    crop, um_measured = to_canonical(rgb, um, canonical, settings.resample_tolerance)
    seg = segment_cell(crop, _at_canonical(settings.segmentation))
    row: dict = {"qc_ok": bool(seg.qc_ok), "qc_reason": seg.qc_reason}
    row.update({k: bool(v) for k, v in seg.flags.items()})
    diag = seg.diagnostics or {}
    # A dense (pyknotic-looking) nucleus has no texture to judge focus by: never blur, so not measured.
    dense = diag.get("nucleus_od", 0.0) > settings.segmentation.pyknotic_min_od
    row["qc_sharpness"] = float(diag["sharpness"]) if "sharpness" in diag and not dense else float("nan")
    row["um_per_px"] = um
    row.update(to_physical(cell_features(crop, seg, settings.features), um_measured))
    # Alone, a crop is judged as in a patient of one crop (the floor only); process_patient re-judges it
    # against the patient's other crops.
    apply_patient_blur([row], settings.segmentation)
    return row


def apply_patient_blur(rows: list[dict], settings: SegmentationSettings) -> None:
    """Re-judge ``qc_blur`` of one patient's rows against the patient's own crops, in place.

    :func:`lympho_features.segment.patient_blur` on the rows' ``qc_sharpness``;
    a crop whose only failed check was blur passes, a crop that passed every
    other check and is blur fails with reason ``blur`` (the last check).
    """
    if not rows:
        return
    blur = patient_blur([r.get("qc_sharpness", float("nan")) for r in rows], settings)
    for r, b in zip(rows, blur.tolist(), strict=True):
        if "qc_blur" not in r:
            continue
        r["qc_blur"] = b
        if r["qc_reason"] == "blur" and not b:
            r["qc_reason"], r["qc_ok"] = "ok", True
        elif r["qc_reason"] == "ok" and b:
            r["qc_reason"], r["qc_ok"] = "blur", False


#: Ways to run the per-patient tasks: local worker processes, or a Dask cluster.
BACKENDS = ("local", "dask")

#: Columns of every shard and of cells.parquet before the measurements.
KEY_COLUMNS = ("patient_id", "image", "image_sha256")

#: Memory for this run's patient tables kept to build the final tables (beyond it, shards are read back).
FRESH_TABLES_BYTES = 256 * 2**20

#: Files of OUT_DIR that `extract` writes (other commands may write next to them).
_OUTPUT_FILES = ["cells.parquet", "patients.parquet", "manifest.json", "write-test"]


def _patient_key(
    data_dir: Path, images: list[str], settings: ExtractSettings, scale: PatientScale | None = None
) -> str:
    if scale is None:
        return inputs_key(data_dir, images, settings=settings.to_dict())
    # The scale the patient is measured at: another one (a new pixel size, a run's red cells that moved) recomputes.
    return inputs_key(
        data_dir, images, settings=settings.to_dict(), scale=[repr(scale.um_per_px), scale.source, scale.flag]
    )


def cell_schema(settings: ExtractSettings = ExtractSettings()):
    """The Arrow schema shared by every shard and by ``cells.parquet``.

    The measurement columns are those :func:`measure_crop` returns, probed on
    a synthetic crop, a blank crop (no nucleus) and a 2x2 crop (unusable):
    the union of their keys, so that a flag set only on failures (e.g.
    ``qc_bad_image``) is a column of every shard. Flags and ``qc_ok`` are
    booleans, ``qc_reason`` a string, every measurement a float64 (so that a
    patient whose values happen to be integers or all missing has the same
    types as the others).
    """
    import pyarrow as pa

    from .synthetic import synthetic_crop

    probes = [
        synthetic_crop(np.random.default_rng(0)).rgb,
        np.full((224, 224, 3), 240, np.uint8),
        np.zeros((2, 2, 3), np.uint8),
    ]
    kinds: dict[str, object] = {}
    for rgb in probes:
        for name, value in measure_crop(rgb, settings).items():
            if isinstance(value, (bool, np.bool_)):
                kinds.setdefault(name, pa.bool_())
            elif isinstance(value, str) or value is None:
                kinds.setdefault(name, pa.large_string())
            else:
                kinds.setdefault(name, pa.float64())
    fields = [pa.field(c, pa.large_string()) for c in KEY_COLUMNS]
    fields += [pa.field(name, kind) for name, kind in kinds.items()]
    # Where the crop's scale came from, and its patient's scale flag (set by process_patient).
    fields += [pa.field("scale_source", pa.large_string()), pa.field("scale_flag", pa.large_string())]
    return pa.schema(fields)


def process_patient(
    data_dir: Path, patient_id: str, images: list[str], settings: ExtractSettings, scale: PatientScale | None = None
) -> tuple[list[dict], list[dict]]:
    """Measure every crop of one patient at its scale, then judge blur against the patient's crops.

    A crop that cannot be read, or whose measurement fails, is skipped with
    its reason; it never stops the patient or the run. Without ``scale`` the
    canonical scale is assumed (``scale_source`` ``canonical_assumed``).

    Returns
    -------
    rows : list of dict
        One row (``patient_id``, ``image``, ``image_sha256`` and the
        measurements of :func:`measure_crop`) per readable crop.
    skipped : list of dict
        ``{"image", "reason"}`` for each crop that could not be read or measured.
    """
    if scale is None:
        scale = PatientScale(settings.canonical_um_per_px, "canonical_assumed", "no_scale")
    rows, skipped = [], []
    for rel in images:
        try:
            rgb, digest = read_image(safe_path(data_dir, rel), settings.max_pixels)
        except ImageError as exc:
            skipped.append({"image": rel, "reason": str(exc)})
            continue
        try:
            measured = measure_crop(rgb, settings, scale.um_per_px)
        except Exception as exc:  # one odd crop must not stop a run of thousands
            skipped.append({"image": rel, "reason": f"measurement failed ({_one_line(exc)})"})
            continue
        row = {"patient_id": patient_id, "image": rel, "image_sha256": digest}
        row.update(measured)
        row["scale_source"], row["scale_flag"] = scale.source, scale.flag
        rows.append(row)
    apply_patient_blur(rows, settings.segmentation)
    return rows, skipped


def _run_patient(
    data_dir: Path, patient_id: str, images: list[str], settings: ExtractSettings, schema, threads, scale=None
):
    """One task: runs in a worker process (local or Dask) and returns the patient's table and its checksum."""
    if threads is None:
        rows, skipped = process_patient(data_dir, patient_id, images, settings, scale)
    else:
        from threadpoolctl import threadpool_limits

        cv2.setNumThreads(threads)
        with threadpool_limits(threads):
            rows, skipped = process_patient(data_dir, patient_id, images, settings, scale)
    table, extra = rows_to_table(rows, schema)
    # The checksum is computed here, in parallel, rather than by the process that writes the shards.
    return patient_id, table, table_checksum(table), skipped, extra, len(images)


def ruler_sample(images: list[str], n: int) -> list[str]:
    """Up to ``n`` of a patient's crops, evenly spread over its (sorted) list: those the red-cell ruler reads."""
    if len(images) <= n:
        return list(images)
    return [images[i] for i in np.linspace(0, len(images) - 1, n).round().astype(int).tolist()]


def _ruler_patient(data_dir: Path, patient_id: str, images: list[str], settings: ExtractSettings, threads):
    """One task: the red-cell ruler's estimate of one patient's scale, from a sample of its crops."""
    if threads is not None:
        cv2.setNumThreads(threads)
    diameters = []
    for rel in ruler_sample(images, settings.ruler_crops):
        try:
            rgb, _ = read_image(safe_path(data_dir, rel), settings.max_pixels)
        except ImageError:
            continue  # recorded as skipped when the crops are measured
        diameters.append(red_cell_diameters(rgb))
    return patient_id, estimate_from_diameters(np.concatenate(diameters) if diameters else [])


def patient_scales(
    data_dir: Path,
    patients: dict[str, list[str]],
    clinical: pd.DataFrame,
    settings: ExtractSettings,
    jobs: int = 1,
    backend: str = "local",
    scheduler: str | None = None,
) -> tuple[dict[str, PatientScale], dict]:
    """The scale (um per pixel) each patient's crops are measured at, and its provenance.

    ``settings.pixel_size_um`` (``--pixel-size``) for the whole run, else
    the clinical CSV's ``pixel_size_um`` (its ``PIXEL_SIZE_UM`` column) for
    the patients that have one, else the red cells of a sample of each
    patient's crops, pooled over the run (:func:`lympho_features.scale.pool_run`).

    Returns
    -------
    scales : dict of str to PatientScale
    summary : dict
        For ``manifest.json``: the run's red-cell scale, the count of patients
        per source and flag, and every patient's scale.
    """
    scales: dict[str, PatientScale] = {}
    run_scale = float("nan")
    if settings.pixel_size_um is not None:
        scales = {pid: PatientScale(float(settings.pixel_size_um), "option") for pid in patients}
    else:
        given = {}
        if "pixel_size_um" in clinical.columns:
            given = {
                pid: float(v)
                for pid, v in zip(clinical["patient_id"], clinical["pixel_size_um"], strict=True)
                if pd.notna(v)
            }
        scales = {pid: PatientScale(given[pid], "csv") for pid in patients if pid in given}
        todo = [(pid, images) for pid, images in patients.items() if pid not in given]
        if todo:
            estimates: dict[str, ScaleEstimate] = {}
            from joblib import delayed

            with _parallel(jobs, backend, scheduler) as (runner, threads):
                tasks = (delayed(_ruler_patient)(data_dir, pid, imgs, settings, threads) for pid, imgs in todo)
                for pid, est in runner(tasks):
                    estimates[pid] = est
            run_scale, pooled = pool_run(estimates, RUN_AGREEMENT, settings.canonical_um_per_px)
            scales.update(pooled)
    scales = dict(sorted(scales.items()))
    summary = {
        "canonical_um_per_px": settings.canonical_um_per_px,
        "red_cell_diameter_um": RED_CELL_DIAMETER_UM,
        "run_red_cell_um_per_px": None if not math.isfinite(run_scale) else run_scale,
        "sources": _count(s.source for s in scales.values()),
        "flags": {f: n for f, n in _count(s.flag for s in scales.values()).items() if f},
        "flag_meanings": {f: m for f, m in SCALE_FLAGS.items() if f},
        "patients": {
            pid: {
                "um_per_px": s.um_per_px,
                "source": s.source,
                "flag": s.flag,
                "red_cell_um_per_px": None if not math.isfinite(s.own_um_per_px) else s.own_um_per_px,
                "n_red_cells": s.n_red_cells,
            }
            for pid, s in scales.items()
        },
    }
    return scales, summary


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _os_error_message(exc: OSError, path) -> str:
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"no space left on device while writing {path}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {exc.strerror or 'permission denied'}"
    return f"cannot write {path}: {exc.strerror or exc}"


def extract(
    data_dir: str | Path,
    out_dir: str | Path,
    clinical_csv: str | Path | None = None,
    jobs: int = 1,
    settings: ExtractSettings = ExtractSettings(),
    columns: ClinicalColumns = ClinicalColumns(),
    progress: bool = True,
    backend: str = "local",
    scheduler: str | None = None,
    chunk_cells: int = 20_000,
) -> ExtractResult:
    """Run segmentation and feature extraction over a data folder.

    Parameters
    ----------
    data_dir : path
        One sub-folder per patient (named by patient ID) holding its crops.
    out_dir : path
        Receives ``cells.parquet``, ``patients.parquet``, ``manifest.json`` and
        the per-patient shards under ``cells/`` (one Parquet dataset).
    clinical_csv : path, optional
        Defaults to the single ``*.csv`` inside ``data_dir``.
    jobs : int
        Worker processes (patients are processed in parallel); -1 uses every
        core. With ``backend="dask"`` and a local cluster, its worker count.
    backend : {"local", "dask"}
        ``"local"``: joblib worker processes on this machine. ``"dask"``: the
        same tasks on a dask.distributed cluster through joblib; every worker
        must see ``data_dir`` at the same path.
    scheduler : str, optional
        With ``backend="dask"``: the scheduler's address
        (``tcp://host:8786``), or ``"local"`` (default) to start a LocalCluster.
    chunk_cells : int
        The final tables are built from the shards this many cells at a time.

    Raises
    ------
    DatasetError
        Missing data folder, unreadable or invalid CSV, output folder that
        cannot be written or is in use by another run, full disk.
    """
    # Absolute: worker processes may outlive this call (joblib reuses them) and keep an older working folder.
    data_dir, out_dir = Path(data_dir).absolute(), Path(out_dir)
    if backend not in BACKENDS:
        raise DatasetError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if jobs == 0:
        raise DatasetError("jobs must be a positive number of workers, or -1 for every core")
    if scheduler is not None and backend != "dask":
        raise DatasetError("a scheduler address needs backend 'dask' (--backend dask)")
    px = settings.pixel_size_um
    if px is not None and not (math.isfinite(px) and 0.005 <= px <= 5.0):
        raise DatasetError(f"pixel size {px} um is not plausible for a blood-smear crop (0.005 to 5 um per pixel)")
    patients, refused = scan_data_dir(data_dir)
    csv_path = Path(clinical_csv) if clinical_csv else find_clinical_csv(data_dir)
    clinical = load_clinical(csv_path, columns, settings.reference_date)
    warnings = list(clinical.attrs.get("warnings", []))
    shard_dir = out_dir / "cells"
    lock = ExitStack()
    try:
        shard_dir.mkdir(parents=True, exist_ok=True)
        check_writable(out_dir)
        check_writable(shard_dir)
        lock.enter_context(output_lock(out_dir, "extract"))
    except OutputLockedError as exc:
        raise DatasetError(str(exc)) from None
    except OSError as exc:
        raise DatasetError(
            f"cannot write to output folder {out_dir}: {_os_error_message(exc, exc.filename or out_dir)}"
        ) from None
    with lock:
        return _extract_locked(
            data_dir, out_dir, csv_path, clinical, patients, refused, warnings, jobs, settings, progress, backend,
            scheduler, chunk_cells,
        )  # fmt: skip


def _extract_locked(
    data_dir, out_dir, csv_path, clinical, patients, refused, warnings, jobs, settings, progress, backend, scheduler,
    chunk_cells,
) -> ExtractResult:  # fmt: skip
    """The extraction proper, with the output folder locked: plan, measure, build the tables, write the manifest."""
    shard_dir = out_dir / "cells"
    # Temporary files of a run that was killed while writing: nobody else can be using them (we hold the lock).
    leftovers = remove_stale_temporaries(shard_dir) + remove_stale_temporaries(out_dir, _OUTPUT_FILES)
    if leftovers:
        warnings.append(f"removed {len(leftovers)} temporary file(s) left by an interrupted run")
    clinical = _reconcile_clinical(clinical, patients, refused, csv_path, warnings)
    scales, scale_summary = patient_scales(data_dir, patients, clinical, settings, jobs, backend, scheduler)
    _scale_warnings(scale_summary, warnings)
    schema = cell_schema(settings)
    todo, keys, recomputed, stale = _plan_shards(data_dir, shard_dir, patients, settings, schema, warnings, scales)
    reused = len(patients) - len(todo)
    run = (data_dir, todo, settings, schema, jobs, progress, backend, scheduler, scales)
    fresh = _measure_and_write(run, shard_dir, keys, reused, warnings)
    try:
        cells_summary, table, skipped = build_tables(
            out_dir, shard_dir, patients, keys, schema, clinical, settings, chunk_cells, fresh
        )
    except OSError as exc:
        raise DatasetError(
            f"{_os_error_message(exc, exc.filename or out_dir)}; every patient's shard is kept in {shard_dir}: "
            "free space and re-run (finished patients are reused)"
        ) from None
    skipped = [dict(r) for r in refused] + skipped
    skipped.sort(key=lambda r: (r["patient_id"], r["image"]))
    n_images = sum(len(v) for v in patients.values())
    counts = {
        "patients": len(table),
        "patient_folders": len(patients),
        "images": n_images,
        "cells": cells_summary["n_cells"],
        "cells_qc_ok": cells_summary["n_ok"],
        "skipped": len(skipped),
        "patients_reused": reused,
        "shards_recomputed": len(recomputed),
    }
    manifest = _manifest(data_dir, csv_path, clinical, settings, backend, scheduler, cells_summary, counts)
    manifest["scale"] = scale_summary
    manifest["units"] = UNITS
    manifest.update(
        {"skipped": skipped, "recomputed_shards": recomputed, "removed_stale_shards": stale, "warnings": warnings}
    )
    try:
        write_json(manifest, out_dir / "manifest.json")
    except OSError as exc:
        raise DatasetError(f"{_os_error_message(exc, out_dir / 'manifest.json')}; free space and re-run") from None
    return ExtractResult(
        out_dir, len(table), n_images, cells_summary["n_cells"], len(skipped), reused, cells_summary["qc_counts"],
        warnings, len(recomputed), {k: v for k, v in scale_summary.items() if k != "patients"},
    )  # fmt: skip


#: Units of the per-cell columns, as ``manifest.json`` records them (per-patient aggregates keep their feature's).
UNITS = {
    "um_per_px": "micrometres per pixel of the crop as read (before resampling to the canonical scale)",
    "lengths": "um: nc_rim_width*, shape_{nucleus,cell}_{perimeter,equivalent_diameter,major_axis,minor_axis,"
    "feret_max,feret_min}",
    "areas": "um^2: nucleus_area, cell_area, nc_cytoplasm_area, shape_{nucleus,cell}_area",
    "texture": "measured on the crop resampled to the canonical scale (canonical_um_per_px); distances and radii "
    "in its pixels",
    "other": "dimensionless (ratios, shape indices, optical density)",
}


def _scale_warnings(summary: dict, warnings: list[str]) -> None:
    """One warning per scale flag raised, naming the patients (a guess is never silent)."""
    by_flag: dict[str, list[str]] = {}
    for pid, p in summary["patients"].items():
        if p["flag"]:
            by_flag.setdefault(p["flag"], []).append(pid)
    for flag, pids in sorted(by_flag.items()):
        shown = ", ".join(pids[:20]) + (f" and {len(pids) - 20} more" if len(pids) > 20 else "")
        warnings.append(f"scale {flag} for {len(pids)} patient(s) ({SCALE_FLAGS[flag]}): {shown}")


def _reconcile_clinical(clinical, patients, refused, csv_path, warnings: list[str]) -> pd.DataFrame:
    """The clinical table with a row for every patient folder; warnings for what does not match."""
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
    if refused:
        warnings.append(f"{len(refused)} file(s) refused (outside DATA_DIR or not regular files), listed under skipped")
    return clinical


def _plan_shards(data_dir, shard_dir, patients, settings, schema, warnings: list[str], scales=None):
    """Which patients to measure: those without a complete, current, intact shard.

    Returns the patients to do (``(patient_id, images)``), every patient's
    shard key, the shards recomputed (with why) and the names of stale shards
    (of patients no longer in the data folder), which are removed.
    """
    todo, keys, recomputed = [], {}, []
    for pid, images in patients.items():
        key = _patient_key(data_dir, images, settings, (scales or {}).get(pid))
        keys[pid] = key
        shard = shard_dir / _shard_name(pid)
        table, _meta, problem = verify_shard(shard, pid, key, schema)
        if table is None:
            todo.append((pid, images))
            if problem != "missing":
                recomputed.append({"patient_id": pid, "reason": problem})
    if recomputed:
        warnings.append(f"{len(recomputed)} shard(s) recomputed (truncated, corrupt or stale), listed in the manifest")
    expected = {_shard_name(pid) for pid in patients}
    stale = sorted(p.name for p in shard_dir.glob("*.parquet") if p.name not in expected)
    for name in stale:
        (shard_dir / name).unlink(missing_ok=True)
    return todo, keys, recomputed, stale


def _measure_and_write(run: tuple, shard_dir, keys, reused: int, warnings: list[str]) -> dict[str, tuple]:
    """Run the patients' tasks (``run``: the arguments of :func:`_run_all`) and write each shard as it finishes.

    Returns this run's tables (``patient_id -> (table, meta)``), kept for
    building the final tables up to :data:`FRESH_TABLES_BYTES` rather than read back.
    """
    n_done = 0
    extra_keys: set[str] = set()
    fresh: dict[str, tuple] = {}
    fresh_bytes = 0
    with closing(_run_all(*run)) as results:
        for pid, cells, checksum, _skipped, extra, meta in results:
            extra_keys.update(extra)
            shard = shard_dir / _shard_name(pid)
            try:
                write_shard(shard, cells, {**meta, "key": keys[pid]}, checksum)
            except OSError as exc:
                raise DatasetError(
                    f"{_os_error_message(exc, shard)}; the {reused + n_done} finished patient(s) are kept in "
                    f"{shard_dir}: free space (or fix permissions) and re-run to resume"
                ) from None
            n_done += 1
            if fresh_bytes + cells.nbytes <= FRESH_TABLES_BYTES:
                fresh[pid] = (cells, meta)
                fresh_bytes += cells.nbytes
    if extra_keys:
        warnings.append(f"measurements not in the cell schema were dropped: {', '.join(sorted(extra_keys))}")
    return fresh


def _manifest(data_dir, csv_path, clinical, settings, backend, scheduler, cells_summary, counts) -> dict:
    """The head of ``manifest.json``: versions, inputs and their fingerprint, settings, counts."""
    fingerprint = sha256_of(
        {
            "images": cells_summary["images_sha256"],
            "clinical": clinical.sort_values("patient_id").astype(str).values.tolist(),
        }
    )
    return {
        "lympho_version": __version__,
        "command": "extract",
        "data_dir": str(data_dir.resolve()),
        "clinical_csv": str(csv_path.resolve()),
        "settings": settings.to_dict(),
        "library_versions": library_versions(),
        "input_fingerprint": fingerprint,
        "backend": backend if backend == "local" else f"dask ({scheduler or 'local'})",
        "cells_dataset": "cells/",
        "shard_format": SHARD_FORMAT,
        "counts": counts,
        "qc_counts": cells_summary["qc_counts"],
    }


@contextmanager
def _parallel(jobs: int, backend: str, scheduler: str | None):
    """A joblib ``Parallel`` for the backend, and the threads each task may use (None: leave as is)."""
    from joblib import Parallel

    if backend == "local":
        n_workers = _cores() if jobs < 0 else max(1, jobs)
        # jobs x threads <= cores: a single process keeps the libraries' defaults.
        threads = None if n_workers == 1 else max(1, _cores() // n_workers)
        yield Parallel(n_jobs=jobs, return_as="generator_unordered"), threads
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DatasetError("--backend dask needs the dask extra: pip install 'lympho-features[dask]'") from None
    from joblib import parallel_config

    with ExitStack() as stack:
        if scheduler in (None, "local"):
            n_workers = _cores() if jobs < 0 else max(1, jobs)
            cluster = stack.enter_context(
                LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
            )
            stack.enter_context(Client(cluster))
        else:
            try:
                stack.enter_context(Client(scheduler, timeout="10s"))
            except (OSError, TimeoutError, ValueError) as exc:
                raise DatasetError(f"cannot reach the Dask scheduler at {scheduler}: {_one_line(exc)}") from None
        stack.enter_context(parallel_config(backend="dask"))
        # One thread per task: a Dask worker runs as many tasks as it has threads.
        yield Parallel(n_jobs=-1, return_as="generator_unordered"), 1


def _run_all(data_dir, todo, settings, schema, jobs, progress, backend, scheduler, scales=None):
    """Run the patients' tasks; yield ``(patient_id, table, checksum, skipped, extra_keys, meta)`` as each one finishes."""
    from joblib import delayed
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
    n_images = sum(len(t[1]) for t in todo)
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
    with _parallel(jobs, backend, scheduler) as (runner, threads):
        scales = scales or {}
        tasks = (
            delayed(_run_patient)(data_dir, pid, images, settings, schema, threads, scales.get(pid))
            for pid, images in todo
        )
        with Progress(*columns, disable=not progress, transient=False) as bar:
            t = bar.add_task("extract", total=n_images, rate="")
            for pid, cells, checksum, skipped, extra, n in runner(tasks):
                yield pid, cells, checksum, skipped, extra, {"patient_id": pid, "skipped": skipped}
                bar.advance(t, n)
                speed = bar.tasks[0].speed
                bar.update(t, rate=f"{speed:6.0f} crops/s" if speed else "")
