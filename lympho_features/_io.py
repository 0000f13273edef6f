"""Small helpers shared by every stage: atomic writes, versions, fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd

_PACKAGES = (
    "lympho-features",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-image",
    "opencv-python-headless",
    "scikit-learn",
    "lightgbm",
    "joblib",
)


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape the results."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A crash or kill while writing leaves the previous file (or none), never a
    half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(obj, path: str | Path) -> None:
    """Write JSON atomically, keys sorted for stable diffs."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(df: pd.DataFrame, path: str | Path, metadata_json: dict | None = None) -> None:
    """Write a DataFrame to Parquet atomically, optionally with JSON key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata_json is not None:
        meta = dict(table.schema.metadata or {})
        meta[b"lympho"] = json.dumps(metadata_json, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write a CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def sha256_of(obj) -> str:
    """Stable hash of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def dataframe_fingerprint(df: pd.DataFrame) -> str:
    """Hash of a DataFrame's content (values, column names and order of rows)."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()
