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
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import __version__
from ._io import (
    OutputLockedError,
    check_writable,
    library_versions,
    output_lock,
    progress_columns,
    remove_stale_temporaries,
    sha256_of,
    write_json,
)
from ._lazy import pd
from .celltype import apply_gate
from .dataset import (
    ClinicalColumns,
    DatasetError,
    ImageError,
    find_clinical_csv,
    load_clinical,
    read_image_data,
    safe_path,
    scan_data_dir,
)
from .measure import (  # noqa: F401  (re-exported: callers import them from here)
    FEATURES_VERSION,
    UNITS,
    ExtractSettings,
    _scale_warnings,
    apply_patient_blur,
    apply_patient_qc,
    apply_patient_smudge,
    measure_cell,
    measure_crop,
    patient_scales,
    ruler_sample,
)
from .scale import (
    PatientScale,
)
from .shards import (  # noqa: F401  (re-exported: callers import them from here)
    SHARD_FORMAT,
    _one_line,
    _shard_name,
    build_tables,
    columns_to_table,
    combine_patient_rows,
    inputs_key,
    patient_rows,
    read_shard_meta,
    rows_to_columns,
    rows_to_table,
    table_checksum,
    verify_shard,
    write_shard,
)
from .workers import cores as _cores  # noqa: F401
from .workers import parallel as _parallel

_build_tables = build_tables  # the name before the shards moved to their own module


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
            rgb, digest, data = read_image_data(safe_path(data_dir, rel), settings.max_pixels)
        except ImageError as exc:
            skipped.append({"image": rel, "reason": str(exc)})
            continue
        try:
            # An assumed scale is no scale: measure_cell then fails the crops that cannot be judged without one.
            known = None if scale.source == "canonical_assumed" else scale.um_per_px
            measured = measure_cell(rgb, settings, data, um_per_px=known)
        except Exception as exc:  # one odd crop must not stop a run of thousands
            skipped.append({"image": rel, "reason": f"measurement failed ({_one_line(exc)})"})
            continue
        row = {"patient_id": patient_id, "image": rel, "image_sha256": digest}
        row.update(measured)
        row["scale_source"], row["scale_flag"] = scale.source, scale.flag
        rows.append(row)
    # The cell-type gate once for the patient's crops (one LightGBM call), then blur and smudge against its crops.
    apply_gate(rows, flag=settings.cell_type_gate)
    apply_patient_qc(rows, settings.segmentation)
    return rows, skipped


def _run_patient(
    data_dir: Path, patient_id: str, images: list[str], settings: ExtractSettings, schema, threads, scale=None
):
    """One task: runs in a worker process (local or Dask) and returns the patient's columns.

    Returns ``(patient_id, columns, skipped, extra_keys, n_images)``: plain
    columns (:func:`~lympho_features.shards.rows_to_columns`), from which the
    main process builds the Arrow table (:func:`~lympho_features.shards.columns_to_table`),
    so that a worker neither imports pandas nor builds Arrow arrays (pyarrow
    imports pandas when it builds one).
    """
    if threads is None:
        rows, skipped = process_patient(data_dir, patient_id, images, settings, scale)
    else:
        from threadpoolctl import threadpool_limits

        cv2.setNumThreads(threads)
        with threadpool_limits(threads):
            rows, skipped = process_patient(data_dir, patient_id, images, settings, scale)
    columns, extra = rows_to_columns(rows, schema)
    return patient_id, columns, skipped, extra, len(images)


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
    patients, refused = scan_data_dir(data_dir)
    csv_path = Path(clinical_csv) if clinical_csv else find_clinical_csv(data_dir)
    # Every problem of the clinical CSV at once, with its rows that have no image folder, before any work.
    clinical = load_clinical(csv_path, columns, settings.reference_date, patient_folders=list(patients))
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


def _run_all(data_dir, todo, settings, schema, jobs, progress, backend, scheduler, scales=None):
    """Run the patients' tasks; yield ``(patient_id, table, checksum, skipped, extra_keys, meta)`` as each one finishes."""
    from joblib import delayed
    from rich.progress import Progress

    if not todo:
        return
    # Largest patients first: better load balance across workers.
    todo = sorted(todo, key=lambda t: -len(t[1]))
    n_images = sum(len(t[1]) for t in todo)
    columns = progress_columns("extract", "crops", remaining="ETA", rate=True)
    with _parallel(jobs, backend, scheduler) as (runner, threads):
        scales = scales or {}
        tasks = (
            delayed(_run_patient)(data_dir, pid, images, settings, schema, threads, scales.get(pid))
            for pid, images in todo
        )
        with Progress(*columns, disable=not progress, transient=False) as bar:
            t = bar.add_task("extract", total=n_images, rate="")
            for pid, columns, skipped, extra, n in runner(tasks):
                cells = columns_to_table(columns, schema)
                yield pid, cells, table_checksum(cells), skipped, extra, {"patient_id": pid, "skipped": skipped}
                bar.advance(t, n)
                speed = bar.tasks[0].speed
                bar.update(t, rate=f"{speed:6.0f} crops/s" if speed else "")
