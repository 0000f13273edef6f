"""Dataset loading and validation: patient folders, clinical CSV, images.

The first stage of the pipeline. Everything read from a user's disk goes
through here and is checked: a bad row or file gives a :class:`DatasetError`
naming it (for problems that stop the run) or a recorded skip (for a single
unreadable image), never a traceback from deep inside a library.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")

#: Decompression-bomb guard: crops are 224x224; refuse anything absurdly large.
MAX_PIXELS = 4096 * 4096


class DatasetError(Exception):
    """A problem with the user's input that stops the run; the message names the file or row."""


class ImageError(Exception):
    """One image cannot be used; the message is the recorded skip reason."""


@dataclass(frozen=True)
class ClinicalColumns:
    """Names of the clinical CSV's columns (the challenge's by default)."""

    id: str = "ID"
    label: str = "LABEL"
    gender: str = "GENDER"
    dob: str = "DOB"
    lymph_count: str = "LYMPH_COUNT"


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
        (float years at ``reference_date``), ``lymph_count`` (float, 10^9/L).

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
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for bad files
        raise DatasetError(f"cannot read clinical CSV {path}: {exc}") from None
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
            raise DatasetError(f"{path}, line {line} (patient {pid}): {exc}") from None
        count_text = str(r[columns.lymph_count]).strip()
        try:
            count = float(count_text) if count_text else float("nan")
        except ValueError:
            raise DatasetError(
                f"{path}, line {line} (patient {pid}): {columns.lymph_count} {count_text!r} is not a number"
            ) from None
        if not np.isnan(count) and (count < 0 or not np.isfinite(count)):
            raise DatasetError(
                f"{path}, line {line} (patient {pid}): {columns.lymph_count} {count_text!r} is not a valid count"
            )
        rows.append(
            {
                "patient_id": pid,
                "label": label,
                "gender": gender,
                "dob": dob.isoformat() if dob else None,
                "age": age_at(dob, reference_date),
                "lymph_count": count,
            }
        )
    df = pd.DataFrame(rows, columns=["patient_id", "label", "gender", "dob", "age", "lymph_count"])
    dup = df["patient_id"][df["patient_id"].duplicated()].unique().tolist()
    if dup:
        raise DatasetError(f"clinical CSV {path} has duplicate patient ID(s): {', '.join(dup)}")
    df["label"] = df["label"].astype("Int64")
    return df


def find_clinical_csv(data_dir: str | Path) -> Path:
    """The single ``*.csv`` directly inside ``data_dir``."""
    data_dir = Path(data_dir)
    found = sorted(data_dir.glob("*.csv"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(f"no clinical CSV in {data_dir}: pass --clinical")
    raise DatasetError(f"several CSV files in {data_dir} ({', '.join(p.name for p in found)}): pass --clinical")


def discover_patients(data_dir: str | Path) -> dict[str, list[str]]:
    """Map each patient folder of ``data_dir`` to its image paths (relative to ``data_dir``, sorted).

    Symbolic links that lead outside ``data_dir`` are ignored, so an image
    path can never escape the data folder.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    root_resolved = root.resolve()
    patients: dict[str, list[str]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name.startswith("."):
            continue
        images = []
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                continue
            if not f.resolve().is_relative_to(root_resolved):
                continue
            images.append(f.relative_to(root).as_posix())
        patients[sub.name] = images
    return patients


def decode_image(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array.

    Grayscale images are replicated to three channels, alpha is dropped and
    16-bit images are scaled to 8 bits.

    Raises
    ------
    ImageError
        Empty, truncated or non-image data, or an image above ``max_pixels``.
    """
    if not data:
        raise ImageError("empty file")
    buf = np.frombuffer(data, np.uint8)
    # Header-only check first, so a decompression bomb is refused before decoding.
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # pragma: no cover - OpenCV raises for some formats
        raise ImageError(f"cannot decode: {exc.msg.strip() if hasattr(exc, 'msg') else exc}") from None
    if img is None:
        raise ImageError("not a readable image (truncated or wrong format)")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageError(f"image too large ({img.shape[1]}x{img.shape[0]} pixels)")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise ImageError(f"unsupported channel count {img.shape[2]}")
    return np.ascontiguousarray(img)


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Read one image file; return ``(rgb, sha256 hex of its bytes)``.

    Raises
    ------
    ImageError
        When the file cannot be read or decoded.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from None
    return decode_image(data, str(path), max_pixels), hashlib.sha256(data).hexdigest()


def file_stamp(path: str | Path) -> str:
    """Cheap identity of a file (size and modification time) for resume checks."""
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"
