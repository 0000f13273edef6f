"""Per-patient Parquet shards of ``lympho extract``, and the final tables streamed from them.

Every shard has the same schema (so ``cells/`` reads as one table with pandas,
pyarrow or Dask) and carries in its metadata a key (inputs' stamps + settings)
and a checksum of its content, so that a re-run can tell a finished patient
from a truncated, corrupt or stale shard. :func:`build_tables` streams the
shards into ``cells.parquet`` and ``patients.parquet`` so that memory does not
grow with the cohort.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import closing
from operator import itemgetter
from pathlib import Path

import numpy as np

from ._io import atomic_path, sha256_of, write_parquet, write_table
from ._lazy import pd
from .aggregate import AggregateSettings, build_patient_table
from .dataset import DatasetError, file_stamp

#: Version of the shard layout (schema + metadata); older shards are recomputed.
SHARD_FORMAT = 3


def _shard_name(patient_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", patient_id)
    return f"{safe}-{sha256_of(patient_id)[:8]}.parquet"


def inputs_key(data_dir: Path, images: list[str], **what) -> str:
    """Hash of a patient's images (names, sizes, mtimes) and of ``what`` (settings, weights...).

    A shard whose recorded key differs from this is stale and recomputed.
    """
    stamps = []
    base = os.fspath(data_dir)  # string joins: pathlib's cost a third of a second per 10,000 crops
    for rel in images:
        try:
            stamps.append((rel, file_stamp(os.path.join(base, rel))))
        except OSError:
            stamps.append((rel, "missing"))
    return sha256_of({**what, "images": stamps})


def rows_to_table(rows: list[dict], schema):
    """One patient's rows as an Arrow table with exactly the columns and types of ``schema``, sorted by image.

    Built column by column from the rows (no pandas round trip). A missing
    flag is False, a missing or non-numeric measurement is null, a missing
    string is null. Returns the table and the names of keys that are not in
    the schema (dropped; reported as a warning). :func:`rows_to_columns`
    then :func:`columns_to_table`.
    """
    columns, extra = rows_to_columns(rows, schema)
    return columns_to_table(columns, schema), extra


def rows_to_columns(rows: list[dict], schema) -> tuple[dict[str, object], list[str]]:
    """One patient's rows as plain columns, in ``schema``'s order and sorted by image: what a worker returns.

    A measurement column is a float64 array (NaN for a missing or non-numeric
    value), a flag a list of bools (a missing flag is False), a string a list
    of str or None. No Arrow array is built (nor pandas imported, but for a
    non-numeric measurement): :func:`columns_to_table`, in the process that
    writes the shards, makes the table :func:`rows_to_table` makes. Returns
    the columns and the names of keys that are not in the schema.
    """
    import pyarrow as pa

    names = set(schema.names)
    extra = sorted({k for r in rows for k in r} - names)
    rows = sorted(rows, key=lambda r: r["image"])
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    matrix = None
    if rows and len(floats) > 1:
        try:  # every measurement of every row in one go (one C-level lookup per row)
            get = itemgetter(*floats)
            matrix = np.array([get(r) for r in rows], dtype=np.float64)
        except (KeyError, TypeError, ValueError):  # a missing key or an odd value: column by column below
            matrix = None
    float_index = {name: j for j, name in enumerate(floats)}
    columns: dict[str, object] = {}
    for f in schema:
        if pa.types.is_floating(f.type):
            if matrix is not None:
                col = np.ascontiguousarray(matrix[:, float_index[f.name]])
            else:
                values = [r.get(f.name) for r in rows]
                try:
                    col = np.array(values, dtype=np.float64)
                except (TypeError, ValueError):  # a string or other odd value among the numbers (rare: pandas)
                    col = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(np.float64)
            columns[f.name] = col
            continue
        values = [r.get(f.name) for r in rows]
        if pa.types.is_boolean(f.type):
            columns[f.name] = [bool(v) and v == v for v in values]
        else:
            columns[f.name] = [None if v is None or v != v else str(v) for v in values]
    return columns, extra


def columns_to_table(columns: dict[str, object], schema):
    """The Arrow table of :func:`rows_to_columns`' columns, with exactly the columns and types of ``schema``."""
    import pyarrow as pa

    arrays = []
    for f in schema:
        col = columns[f.name]
        if pa.types.is_floating(f.type):
            arrays.append(pa.array(col, f.type, from_pandas=True))  # NaN is stored as null
        elif pa.types.is_boolean(f.type):
            arrays.append(pa.array(col, pa.bool_()))
        else:
            arrays.append(pa.array(col, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def table_checksum(table) -> str:
    """SHA-256 of an Arrow table's content: column names, then each column's values and nulls in row order.

    Independent of how the table is chunked or was stored, so a shard read
    back from Parquet has the checksum it was written with.
    """
    import pyarrow as pa

    h = hashlib.sha256("\0".join(table.column_names).encode())
    for col in table.columns:
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if arr.null_count:
            h.update(b"N")
            h.update(np.packbits(arr.is_valid().to_numpy(zero_copy_only=False)).tobytes())
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            h.update("\0".join("" if v is None else v for v in arr.to_pylist()).encode())
        elif pa.types.is_boolean(arr.type):
            h.update(np.packbits(arr.fill_null(False).to_numpy(zero_copy_only=False)).tobytes())
        else:
            h.update(arr.to_numpy(zero_copy_only=False).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def read_shard_meta(path: Path) -> dict | None:
    """The lympho metadata of a shard, or None if the shard is unreadable or truncated."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[b"lympho"])
    except Exception:
        return None


def write_shard(path: Path, table, meta: dict, checksum: str | None = None) -> None:
    """Write one patient's shard (an Arrow table) atomically, with its row count and content checksum.

    ``checksum`` is :func:`table_checksum` of ``table`` when the caller has it already.
    """
    checksum = checksum or table_checksum(table)
    meta = {**meta, "format": SHARD_FORMAT, "n_rows": table.num_rows, "sha256": checksum}
    # Compact: dictionaries and statistics of a hundred float columns took half of the write, in the one
    # process that writes every shard.
    write_table(table, path, meta, compact_numbers=True)


def verify_shard(path: Path, patient_id: str, key: str, schema, checksum: bool = True):
    """Read a shard and check it is complete, current and intact.

    ``checksum=False`` skips only the content hash (for a shard verified or
    written moments before by this run).

    Returns
    -------
    (table, meta, problem)
        ``table`` (without metadata) and ``meta`` when the shard can be used,
        else None and ``problem`` saying why (missing, unreadable or truncated,
        stale inputs or settings, other schema, checksum mismatch).
    """
    import pyarrow.parquet as pq

    if not path.exists():
        return None, None, "missing"
    try:
        # One open for the metadata and the data; ParquetFile.read is several times cheaper than
        # read_table (no dataset discovery) on these small files.
        shard = pq.ParquetFile(path)
    except Exception:
        return None, None, "unreadable or truncated"
    with closing(shard):
        try:
            meta = json.loads((shard.schema_arrow.metadata or {})[b"lympho"])
        except Exception:
            return None, None, "unreadable or truncated"
        if meta.get("patient_id") != patient_id or meta.get("key") != key:
            return None, None, "inputs or settings changed"
        if meta.get("format") != SHARD_FORMAT:
            return None, None, f"older shard format {meta.get('format')}"
        try:
            table = shard.read(use_threads=False)
        except Exception as exc:
            return None, None, f"unreadable ({_one_line(exc)})"
    table = table.replace_schema_metadata(None)
    if not table.schema.equals(schema):
        return None, None, "schema differs from this lympho's"
    if table.num_rows != meta.get("n_rows") or (checksum and table_checksum(table) != meta.get("sha256")):
        return None, None, "checksum mismatch"
    return table, meta, None


def build_tables(out_dir, shard_dir, patients, keys, schema, clinical, settings, chunk_cells, fresh=None):
    """Stream the shards into ``cells.parquet`` and the per-patient table, ``chunk_cells`` cells at a time.

    ``fresh`` maps patients written by this run to their ``(table, meta)``,
    used instead of reading their shard back.

    Memory holds one chunk of cells plus the per-patient table, whatever the
    size of the cohort. Returns a summary of the cells, ``patients.parquet``'s
    table and the skipped crops.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    summary = {"n_cells": 0, "n_ok": 0, "qc_counts": {}}
    images_hash = hashlib.sha256()  # of every (image, its sha256), in table order: streamed, not held
    parts: list[pd.DataFrame] = []
    skipped: list[dict] = []
    chunk_tables, chunk_ids, chunk_rows = [], [], 0

    def flush(writer):
        nonlocal chunk_tables, chunk_ids, chunk_rows
        if not chunk_ids:
            return
        tables = pa.concat_tables(chunk_tables) if chunk_tables else schema.empty_table()
        writer.write_table(tables)
        cells = tables.to_pandas()
        parts.append(patient_rows(clinical, chunk_ids, cells, settings.aggregate))
        summary["n_cells"] += len(cells)
        if len(cells):
            summary["n_ok"] += int(cells["qc_ok"].sum())
            for k, v in cells["qc_reason"].value_counts().items():
                summary["qc_counts"][str(k)] = summary["qc_counts"].get(str(k), 0) + int(v)
            for image, digest in zip(cells["image"], cells["image_sha256"], strict=True):
                images_hash.update(f"{image}\0{digest}\n".encode())
        chunk_tables, chunk_ids, chunk_rows = [], [], 0

    with atomic_path(out_dir / "cells.parquet") as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for pid in sorted(patients):
                shard = shard_dir / _shard_name(pid)
                if pid in fresh:
                    table, meta = fresh.pop(pid)
                else:
                    table, meta, problem = verify_shard(shard, pid, keys[pid], schema, checksum=False)
                    if table is None:
                        raise DatasetError(f"shard for patient {pid} is {problem} after extraction: {shard}")
                skipped.extend({"patient_id": pid, **s} for s in meta.get("skipped", []))
                chunk_tables.append(table)
                chunk_ids.append(pid)
                chunk_rows += table.num_rows
                if chunk_rows >= chunk_cells:
                    flush(writer)
            flush(writer)
    no_folder = sorted(set(clinical["patient_id"]) - set(patients))
    if no_folder:
        parts.append(patient_rows(clinical, no_folder, schema.empty_table().to_pandas(), settings.aggregate))
    table = combine_patient_rows(parts)
    write_parquet(table, out_dir / "patients.parquet")
    summary["qc_counts"] = dict(sorted(summary["qc_counts"].items()))
    summary["images_sha256"] = images_hash.hexdigest()
    return summary, table, skipped


def patient_rows(
    clinical: pd.DataFrame, patient_ids: list[str], cells: pd.DataFrame, settings: AggregateSettings
) -> pd.DataFrame:
    """Rows of ``patients.parquet`` for some patients, from their cells only."""
    sub = clinical[clinical["patient_id"].isin(set(patient_ids))]
    return build_patient_table(sub, cells, settings)


def combine_patient_rows(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate :func:`patient_rows` of disjoint groups into the table :func:`build_patient_table` gives at once.

    Columns follow the part with the most columns (a group without any cell
    lacks the aggregates); patients are sorted by ID.
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return build_patient_table(
            pd.DataFrame({"patient_id": pd.Series(dtype=str), "label": pd.Series(dtype="Int64")}).assign(
                age=np.nan, gender=None, lymph_count=np.nan
            ),
            pd.DataFrame(),
        )
    order = max(parts, key=lambda p: len(p.columns)).columns
    columns = list(dict.fromkeys([*order, *(c for p in parts for c in p.columns)]))
    table = pd.concat([p.reindex(columns=columns) for p in parts], ignore_index=True)
    for c in ("n_cells", "n_cells_ok"):
        if c in table:
            table[c] = table[c].fillna(0).astype(int)
    table["label"] = table["label"].astype("Int64")
    return table.sort_values("patient_id", kind="stable").reset_index(drop=True)
