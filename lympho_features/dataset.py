"""Dataset loading and validation: patient folders, clinical CSV, safe paths to the crops.

The first stage of the pipeline. Everything read from a user's disk goes
through here and is checked: a bad row or file gives a :class:`DatasetError`
naming it (for problems that stop the run) or a recorded skip (for a single
unreadable image), never a traceback from deep inside a library.
"""

from __future__ import annotations

import csv
import io
import os
import re
import stat
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._lazy import pd
from .errors import DatasetError, ImageError  # noqa: F401 (re-exported)
from .images import MAX_FILE_BYTES, MAX_PIXELS, decode_image, image_header, read_image, read_image_data  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")  # .bmp: a common export of other scanners


@dataclass(frozen=True)
class ClinicalColumns:
    """Names of the clinical CSV's columns (the challenge's by default)."""

    id: str = "ID"
    label: str = "LABEL"
    gender: str = "GENDER"
    dob: str = "DOB"
    lymph_count: str = "LYMPH_COUNT"
    #: optional: um per pixel of the patient's crops (another magnification than the rest of the run)
    pixel_size: str = "PIXEL_SIZE_UM"


#: Ages are computed at this date unless told otherwise, so that the same
#: files give the same features whenever they are processed. The challenge
#: data were collected before 2020; for a lab's own data pass the sampling date.
DEFAULT_REFERENCE_DATE = date(2020, 1, 1)

_DOB_RE = re.compile(r"^\s*(\d{1,4})\s*([/.-])\s*(\d{1,2})\s*\2\s*(\d{1,4})\s*$")


def parse_dob(text: object) -> date | None:
    """Parse a date of birth written in one of the formats found in real files.

    Rule (documented in the README): the four-digit year is unambiguous and
    may come first (``1946-04-25``) or last. With the year last, a slash means
    the US order month/day (``4/25/1946``) and a dash or dot the European
    order day-month (``25-03-1931``); if that reading is impossible (a month
    above 12) the other order is used. Returns None for an empty value.

    Raises
    ------
    ValueError
        When the text is not a date in any of these forms.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return None
    s = str(text).strip()
    if not s or s.lower() in {"nan", "na", "none"}:
        return None
    m = _DOB_RE.match(s)
    if not m:
        raise ValueError(f"unparseable date of birth {s!r}")
    a, sep, b, c = m.groups()
    if len(a) == 4:
        year, first, second = int(a), int(b), int(c)  # ISO: year-month-day
        order = [(first, second)]
    elif len(c) == 4:
        year = int(c)
        x, y = int(a), int(b)
        order = [(x, y), (y, x)] if sep == "/" else [(y, x), (x, y)]
    else:
        raise ValueError(f"date of birth {s!r} has no four-digit year")
    for month, day in order:
        try:
            return date(year, month, day)
        except ValueError:
            continue
    raise ValueError(f"impossible date of birth {s!r}")


def age_at(dob: date | None, reference: date = DEFAULT_REFERENCE_DATE) -> float:
    """Age in years (fractional) at ``reference``; NaN when unknown."""
    if dob is None:
        return float("nan")
    return (reference - dob).days / 365.25


def normalise_gender(value: object) -> str | None:
    """``M``/``F`` from the spellings found in files (``m``, ``f``, ``male``...); None when empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    s = str(value).strip().upper()
    if not s or s in {"NAN", "NA", "NONE"}:
        return None
    if s in {"M", "MALE", "H", "HOMME", "MAN"}:
        return "M"
    if s in {"F", "FEMALE", "FEMME", "W", "WOMAN"}:
        return "F"
    raise ValueError(f"unknown gender {value!r}")


def parse_label(value: object) -> int | None:
    """1 (tumoral), 0 (reactive) or None (unknown: -1 or empty)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    s = str(value).strip()
    if s in {"", "-1", "-1.0", "nan"}:
        return None
    if s in {"1", "1.0"}:
        return 1
    if s in {"0", "0.0"}:
        return 0
    raise ValueError(f"label {value!r} is not 1, 0, -1 or empty")


def load_clinical(
    csv_path: str | Path,
    columns: ClinicalColumns = ClinicalColumns(),
    reference_date: date = DEFAULT_REFERENCE_DATE,
    patient_folders: Collection[str] | None = None,
) -> pd.DataFrame:
    """Read and validate the clinical CSV, reporting every problem of the file at once.

    Parameters
    ----------
    csv_path : path
    columns : ClinicalColumns
        Names of the ID, label, gender, date-of-birth and count columns.
    reference_date : date
        Ages are computed at this date.
    patient_folders : collection of str, optional
        Names of the patient folders of the data folder. When the file has
        problems, its rows without a folder are listed with them (alone they
        are no problem: such a patient is kept with 0 cells and a warning).

    Returns
    -------
    DataFrame
        Indexed by nothing, columns ``patient_id`` (str), ``label`` (Int64,
        nullable), ``gender`` ('M'/'F'/None), ``dob`` (ISO string), ``age``
        (float years at ``reference_date``), ``lymph_count`` (float, 10^9/L).

    Raises
    ------
    DatasetError
        Unreadable file or missing column; or rows with a wrong number of
        fields, an empty or duplicate ID, or a value that cannot be parsed:
        all of them in one message, each naming its line, patient and value.
    """
    path = Path(csv_path)
    if path.is_dir():
        raise DatasetError(f"clinical CSV {path} is a folder, not a file")
    if not path.is_file():
        raise DatasetError(f"clinical CSV not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read clinical CSV {path}: {exc.strerror}") from None
    text, warnings = _decode_csv_text(data, path)
    header, records = _read_records(text, _sniff_separator(text), path)
    missing = [c for c in (columns.id, columns.gender, columns.dob, columns.lymph_count) if c not in header]
    if missing:
        raise DatasetError(f"clinical CSV {path} lacks column(s) {', '.join(missing)} (has: {', '.join(header)})")
    rows, problems = _parse_records(header, records, columns, reference_date)
    if problems and patient_folders is not None:
        folders = set(patient_folders)
        problems += [
            (line, f"line {line} (patient {_shown(r['patient_id'])}): no image folder of that name")
            for line, r in rows
            if r["patient_id"] and r["patient_id"] not in folders
        ]
    if problems:
        raise DatasetError(_problems_message(path, sorted(problems, key=lambda p: p[0])))
    names = ["patient_id", "label", "gender", "dob", "age", "lymph_count"]
    if columns.pixel_size in header:
        names.append("pixel_size_um")
    df = pd.DataFrame([r for _, r in rows], columns=names)
    df["label"] = df["label"].astype("Int64")
    df.attrs["warnings"] = warnings
    return df


#: A clinical-CSV error lists at most this many problems (then says how many more there are).
MAX_PROBLEMS_SHOWN = 30


def _problems_message(path: Path, problems: list[tuple[int, str]]) -> str:
    """One line naming the file and every problem (``line N (patient P): what``), the first ones if very many."""
    if len(problems) == 1:
        return f"{path}, {problems[0][1]}"
    shown = [text for _, text in problems[:MAX_PROBLEMS_SHOWN]]
    more = len(problems) - len(shown)
    tail = f"; and {more} more" if more else ""
    return f"clinical CSV {path} has {len(problems)} problems: {'; '.join(shown)}{tail}"


def _read_records(text: str, sep: str, path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header (stripped names) and the non-blank records, each with the line it starts on."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"clinical CSV {path} is empty")
        records, line = [], reader.line_num + 1
        for row in reader:
            if any(f.strip() for f in row):  # blank lines and rows of empty fields (spreadsheet exports) are skipped
                records.append((line, row))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise DatasetError(f"cannot read clinical CSV {path}: {_one_line(exc)}") from None
    return [c.strip() for c in header], records


def _parse_records(
    header: list[str], records: list[tuple[int, list[str]]], columns: ClinicalColumns, reference_date: date
) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """Parse each record; returns the rows (with their line) and every problem found (line, text)."""
    index = {}
    for i, name in enumerate(header):
        index.setdefault(name, i)
    rows, problems, first_line = [], [], {}
    for line, fields in records:
        if len(fields) != len(header):
            problems.append((line, f"line {line}: {len(fields)} field(s) where the header has {len(header)}"))
            continue
        value = {name: fields[i] for name, i in index.items()}
        pid = value[columns.id].strip()
        where = f"line {line} (patient {_shown(pid)})"
        if not pid:
            problems.append((line, f"line {line}: empty {columns.id}"))
        elif pid in first_line:
            problems.append((line, f"{where}: duplicate patient ID (first on line {first_line[pid]})"))
        else:
            first_line[pid] = line
        parsed = {}
        for key, parse, name in (
            ("label", parse_label, columns.label),
            ("gender", normalise_gender, columns.gender),
            ("dob", parse_dob, columns.dob),
            ("lymph_count", _parse_valid_count, columns.lymph_count),
            ("pixel_size_um", _parse_pixel_size, columns.pixel_size),
        ):
            try:
                parsed[key] = parse(value[name]) if name in value else None
            except ValueError as exc:
                problems.append(
                    (line, f"{where}: {name} {exc}" if key in ("lymph_count", "pixel_size_um") else f"{where}: {exc}")
                )
        dob = parsed.get("dob")
        rows.append(
            (
                line,
                {
                    "patient_id": pid,
                    "label": parsed.get("label"),
                    "gender": parsed.get("gender"),
                    "dob": dob.isoformat() if dob else None,
                    "age": age_at(dob, reference_date),
                    "lymph_count": parsed.get("lymph_count", float("nan")),
                }
                | ({"pixel_size_um": parsed.get("pixel_size_um", float("nan"))} if columns.pixel_size in value else {}),
            )
        )
    return rows, problems


def _parse_pixel_size(text: str) -> float:
    """A pixel size in um (empty: NaN, the scale then comes from elsewhere); refuses what cannot be one."""
    shown = repr(str(text).strip())
    try:
        size = parse_count(text)
    except ValueError:
        size = -1.0
    if not np.isnan(size) and not (np.isfinite(size) and 0.005 <= size <= 5.0):
        raise ValueError(f"{shown} is not a pixel size in um (0.005 to 5)")
    return size


def _parse_valid_count(text: str) -> float:
    """:func:`parse_count`, also refusing a negative or infinite count (the message quotes the value)."""
    shown = repr(str(text).strip())
    try:
        count = parse_count(text)
    except ValueError:
        raise ValueError(f"{shown} is not a number") from None
    if not np.isnan(count) and (count < 0 or not np.isfinite(count)):
        raise ValueError(f"{shown} is not a valid count")
    return count


def _shown(value: str) -> str:
    """A value as written, or quoted with escapes when it holds line breaks or other control characters."""
    return value if value.isprintable() else repr(value)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _decode_csv_text(data: bytes, path: Path) -> tuple[str, list[str]]:
    """Text of a CSV file: UTF-8 (with or without BOM) or UTF-16 with BOM; else Windows-1252 with a warning."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), []
        except UnicodeDecodeError:
            raise DatasetError(f"clinical CSV {path} starts with a UTF-16 mark but is not UTF-16") from None
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        where = f"byte 0x{data[exc.start]:02X} on line {line}"
    try:
        text, encoding = data.decode("cp1252"), "Windows-1252"
    except UnicodeDecodeError:
        text, encoding = data.decode("latin-1"), "Latin-1"
    return text, [f"clinical CSV {path.name} is not UTF-8 ({where}): read as {encoding}; save it as UTF-8 to be sure"]


def _sniff_separator(text: str) -> str:
    """``,`` unless the header line has no comma but semicolons or tabs (spreadsheet exports)."""
    header = text.split("\n", 1)[0]
    if "," in header:
        return ","
    if ";" in header:
        return ";"
    if "\t" in header:
        return "\t"
    return ","


_DECIMAL_COMMA_RE = re.compile(r"^[+]?\d+,\d+$")


def parse_count(text: object) -> float:
    """A lymphocyte count (10^9/L): a number (decimal point or comma); NaN when empty.

    Raises
    ------
    ValueError
        When the text is not a number.
    """
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return float("nan")
    s = str(text).strip()
    if not s or s.lower() in {"nan", "na", "none"}:
        return float("nan")
    if _DECIMAL_COMMA_RE.match(s):
        s = s.replace(",", ".")
    if not re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", s):
        raise ValueError(f"{s!r} is not a number")
    return float(s)


def find_clinical_csv(data_dir: str | Path) -> Path:
    """The single ``*.csv`` directly inside ``data_dir``."""
    data_dir = Path(data_dir)
    found = sorted(data_dir.glob("*.csv"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"no clinical CSV in {data_dir}: pass --clinical")
    raise DatasetError(f"several CSV files in {data_dir} ({', '.join(p.name for p in found)}): pass --clinical")


def check_data_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as a Path, once checked to be an existing folder.

    Raises
    ------
    DatasetError
        When it does not exist, or is a file (a CSV or a crop given by mistake).
    """
    root = Path(data_dir)
    if root.is_dir():
        return root
    if root.exists():
        raise DatasetError(f"data folder {root} is a file, not a folder (give the folder of the patient sub-folders)")
    raise DatasetError(f"data folder not found: {root}")


def scan_data_dir(data_dir: str | Path) -> tuple[dict[str, list[str]], list[dict]]:
    """Patient folders of ``data_dir`` and the entries refused for safety.

    Returns
    -------
    patients : dict
        Each patient folder's name mapped to its image paths (relative to
        ``data_dir``, POSIX, sorted).
    refused : list of dict
        ``{"patient_id", "image", "reason"}`` for each image-named entry that
        is not used: a symbolic link leading outside ``data_dir`` (an image
        path can never escape the data folder), or not a regular file.
    """
    root = check_data_dir(data_dir)
    root_resolved = root.resolve()
    patients: dict[str, list[str]] = {}
    refused: list[dict] = []
    # os.scandir tells links and types apart without a system call per entry: only links are resolved.
    with os.scandir(root) as it:
        subs = sorted((e for e in it if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name)
    for sub in subs:
        sub_is_link = sub.is_symlink()  # a whole patient folder may be a link: check each file's target then
        with os.scandir(sub.path) as it:
            entries = sorted(
                (e for e in it if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES), key=lambda e: e.name
            )
        images = []
        for f in entries:
            rel = f"{sub.name}/{f.name}"
            if (sub_is_link or f.is_symlink()) and not Path(f.path).resolve().is_relative_to(root_resolved):
                refused.append({"patient_id": sub.name, "image": rel, "reason": "symbolic link leads outside DATA_DIR"})
            elif not f.is_file():
                refused.append({"patient_id": sub.name, "image": rel, "reason": "not a regular file"})
            else:
                images.append(rel)
        patients[sub.name] = images
    return patients, refused


def discover_patients(data_dir: str | Path) -> dict[str, list[str]]:
    """Map each patient folder of ``data_dir`` to its image paths (relative to ``data_dir``, sorted).

    Symbolic links that lead outside ``data_dir`` are ignored, so an image
    path can never escape the data folder (:func:`scan_data_dir` also lists them).
    """
    return scan_data_dir(data_dir)[0]


def safe_path(data_dir: str | Path, rel: str) -> Path:
    """``data_dir / rel``, refusing any path that resolves outside ``data_dir``.

    Guards every read of a crop: ``..`` components, absolute paths and
    symbolic links swapped in after the folder was scanned are refused.

    Raises
    ------
    ImageError
        When the path leads outside ``data_dir``.
    """
    root = _resolved_root(str(data_dir))
    parts = [p for p in str(rel).replace(os.sep, "/").split("/") if p not in ("", ".")]
    if os.path.isabs(rel) or ".." in parts:
        raise ImageError(f"path {rel!r} leads outside DATA_DIR")
    path = root.joinpath(*parts)
    # Lexically inside the (resolved) root: only a symbolic link on the way can lead out. Checking
    # each component with lstat (on strings: this runs for every crop) is much cheaper than resolving.
    step = str(root)
    for part in parts:
        step = f"{step}/{part}"
        try:
            is_link = stat.S_ISLNK(os.lstat(step).st_mode)
        except OSError:
            break  # missing: read_image reports it
        if is_link:
            if not path.resolve().is_relative_to(root):
                raise ImageError(f"path {rel!r} leads outside DATA_DIR")
            break
    return path


@lru_cache(maxsize=8)
def _resolved_root(data_dir: str) -> Path:
    return Path(data_dir).resolve()


def read_crop(data_dir: str | Path, rel: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read the crop ``rel`` (``PATIENT/FILE``, as in ``cells.parquet``) of ``data_dir`` as RGB.

    The one way lympho reads a crop after the folder was scanned (report, montage, embed): the
    path always goes through :func:`safe_path`, so no caller can skip the check.

    Raises
    ------
    ImageError
        When the path leads outside ``data_dir`` or the file cannot be read or decoded.
    """
    return read_crop_hashed(data_dir, rel, max_pixels)[0]


def read_crop_hashed(data_dir: str | Path, rel: str, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """:func:`read_crop` that also returns the SHA-256 (hex) of the file's bytes, read once."""
    return read_image(safe_path(data_dir, rel), max_pixels)


def file_stamp(path: str | Path) -> str:
    """Cheap identity of a file (size and modification time) for resume checks."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"
