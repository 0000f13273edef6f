"""Dataset loading and validation: patient folders, clinical CSV, images.

The first stage of the pipeline. Everything read from a user's disk goes
through here and is checked: a bad row or file gives a :class:`DatasetError`
naming it (for problems that stop the run) or a recorded skip (for a single
unreadable image), never a traceback from deep inside a library.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .errors import DatasetError, ImageError  # noqa: F401 (re-exported)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

#: Decompression-bomb guard: crops are 224x224; refuse anything absurdly large.
MAX_PIXELS = 4096 * 4096


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
) -> pd.DataFrame:
    """Read and validate the clinical CSV.

    Returns
    -------
    DataFrame
        Indexed by nothing, columns ``patient_id`` (str), ``label`` (Int64,
        nullable), ``gender`` ('M'/'F'/None), ``dob`` (ISO string), ``age``
        (float years at ``reference_date``), ``lymph_count`` (float, 10^9/L),
        and ``pixel_size_um`` (float, NaN when empty) only when the CSV has the
        optional ``columns.pixel_size`` column.

    Raises
    ------
    DatasetError
        Unreadable file, missing column, duplicate ID, or a row whose value
        cannot be parsed (the message names the file, row and column).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise DatasetError(f"clinical CSV not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read clinical CSV {path}: {exc.strerror}") from None
    text, warnings = _decode_csv_text(data, path)
    sep = _sniff_separator(text)
    _check_field_counts(text, sep, path)
    try:
        raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, sep=sep, index_col=False)
    except Exception as exc:  # pandas raises many types for bad files
        raise DatasetError(f"cannot read clinical CSV {path}: {_one_line(exc)}") from None
    raw.columns = [c.strip() for c in raw.columns]
    needed = [columns.id, columns.gender, columns.dob, columns.lymph_count]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise DatasetError(f"clinical CSV {path} lacks column(s) {', '.join(missing)} (has: {', '.join(raw.columns)})")
    rows = []
    for i, r in raw.iterrows():
        line = i + 2  # header is line 1
        pid = str(r[columns.id]).strip()
        if not pid:
            raise DatasetError(f"{path}, line {line}: empty {columns.id}")
        try:
            label = parse_label(r[columns.label]) if columns.label in raw.columns else None
            gender = normalise_gender(r[columns.gender])
            dob = parse_dob(r[columns.dob])
        except ValueError as exc:
            raise DatasetError(f"{path}, line {line} (patient {_shown(pid)}): {exc}") from None
        count_text = str(r[columns.lymph_count]).strip()
        try:
            count = parse_count(count_text)
        except ValueError:
            raise DatasetError(
                f"{path}, line {line} (patient {_shown(pid)}): {columns.lymph_count} {count_text!r} is not a number"
            ) from None
        if not np.isnan(count) and (count < 0 or not np.isfinite(count)):
            raise DatasetError(
                f"{path}, line {line} (patient {_shown(pid)}): {columns.lymph_count} {count_text!r} is not a valid count"
            )
        row = {
            "patient_id": pid,
            "label": label,
            "gender": gender,
            "dob": dob.isoformat() if dob else None,
            "age": age_at(dob, reference_date),
            "lymph_count": count,
        }
        if columns.pixel_size in raw.columns:
            px_text = str(r[columns.pixel_size]).strip()
            try:
                px = parse_count(px_text)
            except ValueError:
                px = -1.0
            if not np.isnan(px) and not (np.isfinite(px) and 0.005 <= px <= 5.0):
                raise DatasetError(
                    f"{path}, line {line} (patient {_shown(pid)}): {columns.pixel_size} {px_text!r} is not a pixel "
                    "size in um (0.005 to 5)"
                )
            row["pixel_size_um"] = px
        rows.append(row)
    names = ["patient_id", "label", "gender", "dob", "age", "lymph_count"]
    if columns.pixel_size in raw.columns:
        names.append("pixel_size_um")
    df = pd.DataFrame(rows, columns=names)
    dup = df["patient_id"][df["patient_id"].duplicated()].unique().tolist()
    if dup:
        raise DatasetError(f"clinical CSV {path} has duplicate patient ID(s): {', '.join(map(_shown, dup))}")
    df["label"] = df["label"].astype("Int64")
    df.attrs["warnings"] = warnings
    return df


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


def _check_field_counts(text: str, sep: str, path: Path) -> None:
    """Every non-blank row must have as many fields as the header (pandas would shift or drop them)."""
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"clinical CSV {path} is empty")
        for row in reader:
            if row and any(f.strip() for f in row) and len(row) != len(header):
                raise DatasetError(
                    f"{path}, line {reader.line_num}: {len(row)} field(s) where the header has {len(header)}"
                )
    except csv.Error as exc:
        raise DatasetError(f"cannot read clinical CSV {path}: {_one_line(exc)}") from None


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
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
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


#: Largest crop file read into memory (crops are a few kB).
MAX_FILE_BYTES = 64 * 1024 * 1024

_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header; checks the data ends with an end-of-image marker."""
    i, n = 2, len(data)
    size, sos = None, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ImageError(f"corrupt JPEG header (byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker == 0xD9:
            break
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if length < 2:
            raise ImageError(f"corrupt JPEG header (segment length {length})")
        if marker in _SOF_MARKERS and size is None:
            if i + 9 > n:
                break
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            size = (width, height)
        if marker == 0xDA:
            sos = i
            break
        i += 2 + length
    if size is None or sos is None:
        raise ImageError("truncated JPEG (header incomplete)")
    if data.rfind(b"\xff\xd9") < sos:
        raise ImageError("truncated JPEG (no end-of-image marker)")
    return size


def _tiff_size(data: bytes) -> tuple[int, int]:
    order = "little" if data[:2] == b"II" else "big"
    if len(data) < 8:
        raise ImageError("truncated TIFF header")
    off = int.from_bytes(data[4:8], order)
    if off + 2 > len(data):
        raise ImageError("truncated TIFF header")
    count = int.from_bytes(data[off : off + 2], order)
    found: dict[int, int] = {}
    for k in range(count):
        e = off + 2 + 12 * k
        if e + 12 > len(data):
            break
        tag, typ = int.from_bytes(data[e : e + 2], order), int.from_bytes(data[e + 2 : e + 4], order)
        if tag in (256, 257):
            if typ == 3:
                found[tag] = int.from_bytes(data[e + 8 : e + 10], order)
            elif typ == 4:
                found[tag] = int.from_bytes(data[e + 8 : e + 12], order)
    if 256 not in found or 257 not in found:
        raise ImageError("TIFF header without image size")
    return found[256], found[257]


def image_header(data: bytes) -> tuple[str, int, int]:
    """Format and size of an image, read from its header without decoding it.

    Only JPEG, PNG, TIFF and BMP are accepted, whatever the file's suffix.
    A JPEG without its end-of-image marker or a PNG without its ``IEND``
    chunk is reported as truncated.

    Returns
    -------
    (format, width, height)

    Raises
    ------
    ImageError
        Unknown format, or a header that is truncated or corrupt.
    """
    if data[:3] == b"\xff\xd8\xff":
        return ("jpeg", *_jpeg_size(data))
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("truncated or corrupt PNG header")
        if data.rfind(b"IEND") < 33:
            raise ImageError("truncated PNG (no IEND chunk)")
        return "png", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ("tiff", *_tiff_size(data))
    if data[:2] == b"BM":
        if len(data) < 26:
            raise ImageError("truncated BMP header")
        w = int.from_bytes(data[18:22], "little", signed=True)
        h = int.from_bytes(data[22:26], "little", signed=True)
        return "bmp", abs(w), abs(h)
    raise ImageError("not an image (not JPEG, PNG, TIFF or BMP)")


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array.

    The size is read from the header first, so a decompression bomb is
    refused before any pixel is decoded. Grayscale images are replicated to
    three channels, alpha is dropped and 16-bit images are scaled to 8 bits.

    Raises
    ------
    ImageError
        Empty, truncated or non-image data, or an image above ``max_pixels``.
    """
    if not data:
        raise ImageError("empty file")
    fmt, width, height = image_header(data)
    if width <= 0 or height <= 0:
        raise ImageError(f"{fmt.upper()} header gives an empty image ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(f"image too large ({width}x{height} pixels, limit {max_pixels})")
    buf = np.frombuffer(data, np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises for some corrupt files
        raise ImageError(f"cannot decode {fmt.upper()}: {' '.join(str(exc).split())[:200]}") from None
    if img is None or img.size == 0:
        raise ImageError(f"not a readable {fmt.upper()} image (truncated or corrupt)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(f"image too large ({img.shape[1]}x{img.shape[0]} pixels, limit {max_pixels})")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise ImageError(f"unsupported image layout {img.shape}")
    return np.ascontiguousarray(img)


def read_image(
    path: str | Path, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES
) -> tuple[np.ndarray, str]:
    """Read one image file; return ``(rgb, sha256 hex of its bytes)``.

    Raises
    ------
    ImageError
        When the file cannot be read or decoded, or is larger than ``max_bytes``.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                raise ImageError(f"file too large ({size} bytes, limit {max_bytes})")
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise ImageError(f"file too large (over {max_bytes} bytes)")
    return decode_image(data, str(path), max_pixels), hashlib.sha256(data).hexdigest()


def read_crop(data_dir: str | Path, rel: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read the crop ``rel`` (``PATIENT/FILE``, as in ``cells.parquet``) of ``data_dir`` as RGB.

    The one way lympho reads a crop after the folder was scanned (report, montage, embed): the
    path always goes through :func:`safe_path`, so no caller can skip the check.

    Raises
    ------
    ImageError
        When the path leads outside ``data_dir`` or the file cannot be read or decoded.
    """
    return read_image(safe_path(data_dir, rel), max_pixels)[0]


def file_stamp(path: str | Path) -> str:
    """Cheap identity of a file (size and modification time) for resume checks."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"
