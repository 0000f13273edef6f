"""Small helpers shared by every stage: atomic writes, output lock, versions, fingerprints."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import socket
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from ._lazy import pd
from .errors import OutputError, OutputLockedError  # noqa: F401 (re-exported)

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

#: The process's umask, read once at import (reading it means setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


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
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; give it the permissions of a normal file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(obj, path: str | Path) -> None:
    """Write JSON atomically, keys sorted for stable diffs."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_table(table, path: str | Path, metadata_json: dict | None = None, compact_numbers: bool = False) -> None:
    """Write an Arrow table to Parquet atomically, optionally with JSON key-value metadata (key ``lympho``).

    ``compact_numbers`` keeps dictionary encoding and column statistics to the
    text columns: on many float columns (per-cell measurements, embeddings)
    they cost more than the rest of the write and save nothing.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if metadata_json is not None:
        meta = dict(table.schema.metadata or {})
        meta[b"lympho"] = json.dumps(metadata_json, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(meta)
    options = {}
    if compact_numbers:
        text = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        options = {"use_dictionary": text, "write_statistics": text}
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **options)


def write_parquet(
    df: pd.DataFrame,
    path: str | Path,
    metadata_json: dict | None = None,
    schema=None,
    compact_numbers: bool = False,
) -> None:
    """Write a DataFrame to Parquet atomically, optionally with JSON key-value metadata.

    ``schema`` (a ``pyarrow.Schema``) fixes the column types, so that files
    written apart (e.g. one shard per patient, some empty) read as one table.
    ``compact_numbers``: see :func:`write_table`.
    """
    import pyarrow as pa

    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    write_table(table, path, metadata_json, compact_numbers)


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


#: Name of the lock file that a run holds inside its output folder.
LOCK_NAME = ".lympho.lock"


@contextmanager
def output_lock(out_dir: str | Path, command: str = "extract"):
    """Hold an exclusive lock on ``out_dir`` for the duration of a run.

    The lock is an advisory ``flock`` on ``OUT_DIR/.lympho.lock``: the
    operating system releases it when the process ends, however it ends
    (even ``kill -9``), so a crashed run never leaves a stale lock. The file
    records who holds it (pid, host, command, start time).

    Raises
    ------
    OutputLockedError
        When another process holds the lock.
    OSError
        When the lock file cannot be created (read-only or full folder).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, run unprotected
        yield None
        return
    path = Path(out_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = json.loads(os.read(fd, 4096) or b"{}")
            who = f"pid {holder.get('pid')} on {holder.get('host')}, `lympho {holder.get('command')}` since {holder.get('started')}"
        except ValueError:
            who = "unknown process"
        os.close(fd)
        raise OutputLockedError(
            f"output folder {out_dir} is in use by another lympho run ({who}); wait for it to end or choose another --out"
        ) from None
    try:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check_writable(folder: str | Path) -> None:
    """Create and remove a small file in ``folder``; raises ``OSError`` when that fails."""
    fd, tmp = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
        os.unlink(tmp)


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the path(s) it concerns and the system's reason."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        reason = "no space left on device"
    else:
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (where the missing folders would be created)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")  # pragma: no cover - the root of a relative path always exists


def check_output_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Check, before any work, that ``folder`` can be created (if missing) and written; creates nothing.

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    OutputError
        One line naming the path: a file stands where the folder (or one above it) should be, or the
        operating system refuses to write there (read-only, permissions).
    """
    folder = Path(folder)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        where = "" if existing == folder else f" ({existing} is a file)"
        raise OutputError(f"{what} {folder} cannot be created: a file is in the way{where}")
    try:
        check_writable(existing)
    except OSError as exc:
        where = "" if existing == folder else f" (cannot create it in {existing})"
        raise OutputError(f"cannot write to {what} {folder}{where}: {exc.strerror or exc}") from None
    return folder


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder created if missing).

    Raises
    ------
    OutputError
        One line naming the path: it is a folder, or its folder cannot be created or written.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder: give a file name")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise OutputError(f"cannot write {what} {path}: {existing} is a file, not a folder")
    try:
        check_writable(existing)
    except OSError as exc:
        raise OutputError(f"cannot write {what} {path}: {exc.strerror or exc} ({existing})") from None
    return path


def remove_stale_temporaries(folder: str | Path, names: list[str] | None = None) -> list[str]:
    """Delete the temporary files that :func:`atomic_path` left behind in a killed run.

    Call it only while holding :func:`output_lock`, when no other writer of
    these files can be running. ``names`` limits it to the temporaries of
    those files (e.g. ``["cells.parquet"]``), leaving other commands' alone.
    Returns the names removed.
    """
    removed = []
    patterns = [f".{n}.*.tmp" for n in names] if names is not None else [".*.tmp"]
    for pattern in patterns:
        for p in Path(folder).glob(pattern):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p.name)
    return sorted(removed)


def progress_columns(label: str, unit: str, remaining: str = "left", rate: bool = False) -> tuple:
    """The columns of lympho's rich progress bars: ``label [bar] done/total unit [rate] elapsed remaining``.

    With ``rate``, a text column shows the task's ``rate`` field (the caller keeps it up to date).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    middle = (TextColumn("{task.fields[rate]}"),) if rate else ()
    return (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        *middle,
        TimeElapsedColumn(),
        TextColumn(remaining),
        TimeRemainingColumn(),
    )
