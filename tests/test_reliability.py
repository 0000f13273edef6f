"""Reliability and scale-out of `lympho extract` (issue 6).

Bad inputs each give a named one-line error or a recorded skip; a killed run
resumes to the same tables; corrupt shards are recomputed; one run at a time
writes an output folder; a Dask cluster gives the same tables as local
workers; parsing and decoding hold on arbitrary input (hypothesis).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lympho_features import extract as extract_mod
from lympho_features.aggregate import build_patient_table
from lympho_features.dataset import (
    DatasetError,
    ImageError,
    decode_image,
    load_clinical,
    normalise_gender,
    parse_count,
    parse_dob,
)
from lympho_features.extract import extract
from lympho_features.model import ModelError, load_model
from lympho_features.schema import ModelMetadataError, validate_model_metadata
from lympho_features.synthetic import make_cohort

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """24 small synthetic patients (one shard each): enough to interrupt a run."""
    root = tmp_path_factory.mktemp("rel-cohort")
    make_cohort(root, n_patients=24, cells_per_patient=(2, 4), seed=3, size=96)
    return root


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> Path:
    """An uninterrupted single-process extraction of :func:`cohort`."""
    out = tmp_path_factory.mktemp("rel-reference")
    extract(cohort, out, jobs=1, progress=False)
    return out


def read_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out / "cells.parquet"), pd.read_parquet(out / "patients.parquet")


def assert_same_tables(out: Path, ref: Path, sort: bool = False) -> None:
    for a, b in zip(read_tables(out), read_tables(ref), strict=True):
        if sort:  # equal up to row order
            keys = ["patient_id", "image"] if "image" in a else ["patient_id"]
            a = a.sample(frac=1, random_state=0).sort_values(keys).reset_index(drop=True)
            b = b.sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    cells, patients = read_tables(out)
    assert not patients["patient_id"].duplicated().any()
    assert not cells.duplicated(["patient_id", "image"]).any()


# --------------------------------------------------------------------- shards


def test_shards_share_one_schema_and_read_as_the_cells_table(reference, tmp_path, cohort):
    shards = sorted((reference / "cells").glob("*.parquet"))
    assert len(shards) == 24
    schemas = {str(pq.read_schema(s).remove_metadata()) for s in shards}
    assert len(schemas) == 1
    cells = pd.read_parquet(reference / "cells.parquet")
    as_dataset = pd.read_parquet(reference / "cells").sort_values(["patient_id", "image"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(as_dataset, cells)

    # A patient without any readable crop still writes a shard of the same schema.
    data = tmp_path / "data"
    shutil.copytree(cohort, data, symlinks=True)
    for f in (data / "P0").iterdir():
        f.write_bytes(b"not an image")
    out = tmp_path / "out"
    extract(data, out, progress=False)
    shard = next((out / "cells").glob("P0-*.parquet"))
    assert pq.read_metadata(shard).num_rows == 0
    assert str(pq.read_schema(shard).remove_metadata()) in schemas
    dd = pytest.importorskip("dask.dataframe")
    assert len(dd.read_parquet(str(out / "cells")).compute()) == len(pd.read_parquet(out / "cells.parquet"))


def test_chunked_aggregation_equals_the_one_shot_table(reference, cohort, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    res = extract(cohort, out, progress=False, chunk_cells=5)  # every patient reused, tables rebuilt 5 cells at a time
    assert res.n_reused == 24
    assert_same_tables(out, reference)
    cells, patients = read_tables(out)
    clinical = load_clinical(cohort / "clinical.csv")
    pd.testing.assert_frame_equal(patients, build_patient_table(clinical, cells))


def test_corrupt_truncated_and_stale_shards_are_recomputed(reference, cohort, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shards = {p.name.split("-")[0]: p for p in (out / "cells").glob("*.parquet")}
    # 1. truncated (a disk filled while copying, say)
    data = shards["P1"].read_bytes()
    shards["P1"].write_bytes(data[: len(data) // 2])
    # 2. silently corrupted value, metadata intact: only the checksum can tell
    table = pq.read_table(shards["P2"])
    col = next(c for c in table.column_names if c.startswith("nucleus_"))
    i = table.column_names.index(col)
    table = table.set_column(i, col, pa.array(table.column(col).to_numpy() + 1.0))
    pq.write_table(table, shards["P2"])
    # 3. garbage
    shards["P3"].write_bytes(os.urandom(3000))
    # 4. a shard of a patient that is no longer in the data, and a temporary file of a killed write
    (out / "cells" / "GONE-12345678.parquet").write_bytes(shards["P4"].read_bytes())
    (out / "cells" / ".P5-x.parquet.abc.tmp").write_bytes(b"half")
    (out / ".cells.parquet.abc.tmp").write_bytes(b"half")
    (out / ".embeddings.parquet.abc.tmp").write_bytes(b"another command's, maybe running: kept")

    res = extract(cohort, out, progress=False)
    assert (res.n_reused, res.n_recomputed) == (21, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    reasons = {r["patient_id"]: r["reason"] for r in manifest["recomputed_shards"]}
    assert reasons == {"P1": "unreadable or truncated", "P2": "checksum mismatch", "P3": "unreadable or truncated"}
    assert manifest["removed_stale_shards"] == ["GONE-12345678.parquet"]
    assert not list((out / "cells").glob(".*.tmp"))
    assert [p.name for p in out.glob(".*.tmp")] == [".embeddings.parquet.abc.tmp"]
    assert_same_tables(out, reference)


def test_changed_image_recomputes_only_that_patient(reference, cohort, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(cohort, data)
    shutil.copytree(reference, out)
    # copytree keeps sizes and modification times: every key matches but the changed crop's patient's
    victim = sorted((data / "P7").iterdir())[0]
    img = cv2.imread(str(victim))
    cv2.imwrite(str(victim), 255 - img)
    res = extract(data, out, progress=False)
    assert (res.n_reused, res.n_recomputed) == (23, 1)


# ----------------------------------------------------------- kill -9, resume


def test_kill_9_then_rerun_gives_the_uninterrupted_tables(cohort, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lympho_features.cli", "extract", str(cohort), "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 120
    try:
        while len(list((out / "cells").glob("*.parquet"))) < 3:
            assert proc.poll() is None, f"extraction ended before it was interrupted: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "no shard written in time"
            time.sleep(0.005)
    finally:
        proc.kill()  # SIGKILL: no cleanup handler runs
        proc.wait()
    assert proc.returncode == -9
    assert not (out / "patients.parquet").exists()
    done = len(list((out / "cells").glob("*.parquet")))
    assert 3 <= done < 24

    res = extract(cohort, out, progress=False)
    assert res.n_reused == done and res.n_patients == 24
    assert not list((out / "cells").glob(".*.tmp")) and not list(out.glob(".*.tmp"))
    assert_same_tables(out, reference)


# ----------------------------------------------------------------------- lock


def test_second_run_on_the_same_out_dir_is_refused(cohort, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = (
        "import sys, time\n"
        "from lympho_features._io import output_lock\n"
        "with output_lock(sys.argv[1], 'extract'):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        with pytest.raises(DatasetError, match=rf"in use by another lympho run \(pid {proc.pid} on ") as info:
            extract(cohort, out, progress=False)
        assert "\n" not in str(info.value)
    finally:
        proc.kill()
        proc.wait()
    # The holder was killed with -9: the operating system released its lock.
    assert extract(cohort, out, progress=False).n_patients == 24


# ----------------------------------------------------------------------- dask


def test_dask_local_cluster_gives_the_same_tables(cohort, reference, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    res = extract(cohort, out, jobs=2, progress=False, backend="dask", scheduler="local")
    assert res.n_patients == 24 and res.n_reused == 0
    assert json.loads((out / "manifest.json").read_text())["backend"] == "dask (local)"
    assert_same_tables(out, reference, sort=True)


def test_local_workers_give_the_same_tables(cohort, reference, tmp_path):
    out = tmp_path / "out"
    extract(cohort, out, jobs=2, progress=False)
    assert_same_tables(out, reference, sort=True)


def test_backend_options_are_checked(cohort, tmp_path):
    from typer.testing import CliRunner

    from lympho_features.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["extract", str(cohort), "--out", str(tmp_path / "o"), "--backend", "spark"])
    assert r.exit_code == 2 and "unknown backend 'spark'" in r.output
    r = runner.invoke(app, ["extract", str(cohort), "--out", str(tmp_path / "o"), "--scheduler", "local"])
    assert r.exit_code == 2 and "--backend dask" in r.output


# ------------------------------------------------------ bad-input catalogue


def encode(img, ext):
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def png_bomb(width: int, height: int) -> bytes:
    from tests.test_dataset import png_bomb as bomb

    return bomb(width, height)


def make_bad_cohort(root: Path) -> dict[str, str | None]:
    """A cohort with every kind of bad image; returns image -> expected skip reason (None: processed)."""
    make_cohort(root, n_patients=4, cells_per_patient=(2, 2), seed=5, size=96)
    good = cv2.imread(str(sorted((root / "P0").iterdir())[0]))
    jpg = encode(good, ".jpg")
    rng = np.random.default_rng(0)
    files = {
        "P1/truncated.jpg": (jpg[: len(jpg) * 2 // 3], "truncated JPEG"),
        "P1/text.jpg": (b"ID,LABEL\nthis is a CSV named .jpg\n", "not an image"),
        "P1/empty.jpg": (b"", "empty file"),
        "P1/bomb.png": (png_bomb(50000, 50000), "too large"),
        "P1/float.tiff": (encode(rng.random((40, 40)).astype(np.float32), ".tiff"), "unsupported pixel type"),
        "P2/gray.png": (encode(cv2.cvtColor(good, cv2.COLOR_BGR2GRAY), ".png"), None),
        "P2/rgba.png": (encode(cv2.cvtColor(good, cv2.COLOR_BGR2BGRA), ".png"), None),
        "P2/sixteen.png": (encode(good.astype(np.uint16) * 257, ".png"), None),
        "P2/sixteen_gray.tif": (encode(cv2.cvtColor(good, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257, ".tif"), None),
        "P2/png_named.jpg": (encode(good, ".png"), None),
        "P3/tiny.jpg": (encode(good[:7, :5], ".jpg"), None),
        "P3/one_pixel.png": (encode(good[:1, :1], ".png"), None),
        "P3/wide.png": (encode(np.tile(good, (1, 4, 1))[:40], ".png"), None),
        "P3/tall_bmp_named.jpg": (encode(np.tile(good, (3, 1, 1)), ".bmp"), None),
    }
    for rel, (data, _) in files.items():
        (root / rel).write_bytes(data)
    outside = root.parent / f"{root.name}-outside.jpg"
    outside.write_bytes(jpg)
    (root / "P3" / "escape.jpg").symlink_to(outside)
    (root / "P3" / "folder.jpg").mkdir()
    (root / "EMPTY").mkdir()  # a folder without images (and without a CSV row)
    csv = root / "clinical.csv"
    csv.write_text(csv.read_text() + "GHOST,0,F,1/2/1960,4.2\n")  # a row without a folder
    expected = {rel: reason for rel, (_, reason) in files.items()}
    expected["P3/escape.jpg"] = "outside DATA_DIR"
    expected["P3/folder.jpg"] = "not a regular file"
    return expected


def test_bad_inputs_are_skipped_with_reasons_and_the_run_kept(tmp_path):
    data = tmp_path / "data"
    expected = make_bad_cohort(data)
    out = tmp_path / "out"
    res = extract(data, out, jobs=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {s["image"]: s["reason"] for s in manifest["skipped"]}
    for rel, reason in expected.items():
        if reason is None:
            assert rel not in skipped, f"{rel} should be processed, skipped: {skipped.get(rel)}"
        else:
            assert reason in skipped.get(rel, ""), f"{rel}: {skipped.get(rel)!r}"
            assert "\n" not in skipped[rel]
    cells, patients = read_tables(out)
    processed = {rel for rel, reason in expected.items() if reason is None and not rel.endswith("folder.jpg")}
    assert processed <= set(cells["image"])
    assert set(patients["patient_id"]) == {"P0", "P1", "P2", "P3", "EMPTY", "GHOST"}
    counts = patients.set_index("patient_id")["n_cells"]
    assert counts["EMPTY"] == 0 and counts["GHOST"] == 0 and counts["P0"] == 2
    assert cells.set_index("image").loc["P3/one_pixel.png", ["qc_ok", "qc_reason"]].tolist() == [False, "bad_image"]
    text = " ".join(res.warnings)
    assert "dropped" not in text  # every flag, even those set only on failures, is a column
    assert "without a row" in text and "EMPTY" in text and "without an image folder" in text and "GHOST" in text


def test_a_crop_whose_measurement_fails_is_skipped_not_fatal(tmp_path, cohort, monkeypatch):
    from lympho_features.dataset import read_image

    real = extract_mod.measure_crop
    victim = sorted((cohort / "P5").iterdir())[0]
    victim_rgb, _ = read_image(victim)

    def fragile(rgb, settings, *scale):
        if np.array_equal(rgb, victim_rgb):
            raise FloatingPointError("overflow in a\nmulti-line message")
        return real(rgb, settings, *scale)

    monkeypatch.setattr(extract_mod, "measure_crop", fragile)
    res = extract(cohort, tmp_path / "out", jobs=1, progress=False)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert res.n_skipped == 1 and res.n_patients == 24
    assert manifest["skipped"] == [
        {
            "patient_id": "P5",
            "image": f"P5/{victim.name}",
            "reason": "measurement failed (FloatingPointError: overflow in a multi-line message)",
        }
    ]
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    assert f"P5/{victim.name}" not in set(cells["image"]) and (cells["patient_id"] == "P5").any()


@pytest.mark.parametrize(
    "row,fragment",
    [
        ("P0,1,M,1/1/1950,1\nP0,0,F,1/1/1950,2", "duplicate patient ID(s): P0"),
        ("P0,1,M,1/1/1950,abc", "line 2 (patient P0): LYMPH_COUNT 'abc' is not a number"),
        ("P0,1,M,1/1/1950,-3", "LYMPH_COUNT '-3' is not a valid count"),
        ("P0,1,M,the sixties,1", "line 2 (patient P0): unparseable date of birth"),
        ("P0,2,M,1/1/1950,1", "line 2 (patient P0): label '2' is not 1, 0, -1 or empty"),
        ("P0,yes,M,1/1/1950,1", "label 'yes'"),
        ("P0,1,X,1/1/1950,1", "unknown gender 'X'"),
        ("P0,1,M,1/1/1950", "line 2: 4 field(s) where the header has 5"),
    ],
)
def test_bad_clinical_rows_stop_with_one_named_line(tmp_path, cohort, row, fragment):
    data = tmp_path / "data"
    data.mkdir()
    (data / "P0").symlink_to(cohort / "P0")
    (data / "clinical.csv").write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\n" + row + "\n")
    with pytest.raises(DatasetError) as info:
        extract(data, tmp_path / "out", progress=False)
    message = str(info.value)
    assert fragment in message and "clinical.csv" in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_missing_lymph_count_is_kept_as_unknown(tmp_path, cohort):
    data = tmp_path / "data"
    data.mkdir()
    (data / "P0").symlink_to(cohort / "P0")
    (data / "clinical.csv").write_text("ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP0,,M,1/1/1950,\n")
    extract(data, tmp_path / "out", progress=False)
    patients = pd.read_parquet(tmp_path / "out" / "patients.parquet")
    assert np.isnan(patients["lymph_count"].iloc[0]) and pd.isna(patients["label"].iloc[0])


def test_unwritable_output_folder_is_one_line_error(cohort, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(DatasetError, match="cannot write to output folder"):
        extract(cohort, blocker / "out", progress=False)
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(DatasetError, match="cannot write to output folder"):
            extract(cohort, ro, progress=False)
    import lympho_features._io as io_mod

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", denied)  # what a read-only folder does to a write probe
    with pytest.raises(DatasetError, match="cannot write to output folder .*Permission denied"):
        extract(cohort, tmp_path / "ro2", progress=False)


def test_full_disk_keeps_finished_patients_and_resumes(cohort, reference, tmp_path, monkeypatch):
    real_write = pq.write_table
    calls = {"n": 0}

    def filling_disk(table, where, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            Path(where).write_bytes(b"partial")  # what a full disk leaves: a partial temporary file
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", filling_disk)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match="no space left on device .*the 5 finished patient\\(s\\) are kept") as info:
        extract(cohort, out, progress=False)
    assert "\n" not in str(info.value)
    assert len(list((out / "cells").glob("*.parquet"))) == 5
    assert not list((out / "cells").glob(".*.tmp"))  # the atomic write removed its partial file
    monkeypatch.setattr(pq, "write_table", real_write)
    res = extract(cohort, out, progress=False)
    assert res.n_reused == 5
    assert_same_tables(out, reference)


def test_cli_reports_bad_input_as_one_line(cohort, tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lympho_features.cli",
            "extract",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: data folder not found") and r.stderr.strip().count("\n") == 0
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------- model.json


def valid_meta() -> dict:
    return {"format": 1, "feature_set": "all", "features": ["age", "n_cells"], "threshold": 0.4, "params": {}}


@pytest.mark.parametrize(
    "change,fragment",
    [
        ({"format": 7, "lympho_version": "9.1"}, "model format 7 (written by lympho 9.1)"),
        ({"features": "age"}, "key 'features' must be a non-empty list"),
        ({"features": ["age", "age"]}, "without duplicates"),
        ({"threshold": "0.5"}, "key 'threshold' must be a number"),
        ({"threshold": float("nan")}, "key 'threshold'"),
        ({"threshold": 3}, "key 'threshold'"),
        ({"min_sensitivity": 0}, "key 'min_sensitivity'"),
        ({"format": True}, "key 'format' must be an integer"),
        ({"params": []}, "key 'params' must be an object"),
    ],
)
def test_model_json_schema_rejects(change, fragment):
    meta = valid_meta() | change
    with pytest.raises(ModelMetadataError) as info:
        validate_model_metadata(meta, "m/model.json")
    assert fragment in str(info.value) and "m/model.json" in str(info.value)


def test_model_json_schema_accepts_and_requires():
    meta = valid_meta() | {"new_key_of_a_later_version": {"x": 1}}
    assert validate_model_metadata(meta, "p") is meta
    for key in ("format", "features", "threshold", "feature_set"):
        with pytest.raises(ModelMetadataError, match=f"key '{key}' is missing"):
            validate_model_metadata({k: v for k, v in valid_meta().items() if k != key}, "p")
    with pytest.raises(ModelMetadataError, match="expected a JSON object"):
        validate_model_metadata([1, 2], "p")


def test_load_model_refuses_incompatible_model_json(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps(valid_meta() | {"format": 2, "lympho_version": "0.9"}))
    (tmp_path / "model.txt").write_text("not read: model.json is checked first")
    with pytest.raises(ModelError, match="model format 2 .* re-fit the model"):
        load_model(tmp_path)


def test_no_pickle_anywhere():
    for path in [*(ROOT / "lympho_features").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        text = path.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, path
        assert "allow_pickle=True" not in text, path


# --------------------------------------------------------------- hypothesis

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.dates(min_value=date(1900, 1, 1), max_value=date(2030, 12, 31)), st.sampled_from(["us", "eu-", "eu.", "iso"]))
def test_parse_dob_round_trips(d, style):
    text = {
        "us": f"{d.month}/{d.day}/{d.year}",
        "eu-": f"{d.day:02d}-{d.month:02d}-{d.year}",
        "eu.": f"{d.day}.{d.month}.{d.year}",
        "iso": d.isoformat(),
    }[style]
    assert parse_dob(text) == d


@FAST
@given(st.text(max_size=30))
def test_clinical_parsers_fail_only_with_value_error(text):
    for parse in (parse_dob, normalise_gender, parse_count):
        try:
            parse(text)
        except ValueError as exc:
            assert str(exc)


@FAST
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.booleans())
def test_parse_count_round_trips(value, comma):
    text = f"{value:.4f}"
    assert parse_count(text.replace(".", ",") if comma else text) == pytest.approx(float(text))


csv_cell = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r"), max_size=12),
    st.sampled_from(["", "1", "0", "-1", "M", "f", "4/25/1946", "25-03-1931", "1946-04-25", "11.2", "4,5", '"q"']),
)


@FAST
@given(st.lists(st.lists(csv_cell, min_size=5, max_size=5), min_size=1, max_size=6))
@example(rows=[["0\n0", "00", "", "", ""]])  # found by hypothesis: an ID with a line break
def test_load_clinical_returns_a_table_or_a_one_line_error(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("csv") / "c.csv"
    pd.DataFrame(rows, columns=["ID", "LABEL", "GENDER", "DOB", "LYMPH_COUNT"]).to_csv(path, index=False)
    try:
        df = load_clinical(path)
    except DatasetError as exc:
        assert "\n" not in str(exc) and "c.csv" in str(exc)
        return
    assert df["patient_id"].is_unique and len(df) == len(rows)
    assert set(df["gender"].dropna()) <= {"M", "F"} and set(df["label"].dropna()) <= {0, 1}
    assert (df["lymph_count"].dropna() >= 0).all()


def _check_decoded(data: bytes) -> None:
    try:
        rgb = decode_image(data, max_pixels=256 * 256)
    except ImageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[0] * rgb.shape[1] <= 256 * 256


@FAST
@given(st.binary(max_size=2048))
def test_decoding_random_bytes_never_crashes(data):
    _check_decoded(data)


MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM"]


@FAST
@given(st.sampled_from(MAGICS), st.binary(max_size=1024))
def test_decoding_random_bytes_behind_a_magic_number_never_crashes(magic, data):
    _check_decoded(magic + data)


_SAMPLES = {
    ext: encode(np.random.default_rng(1).integers(0, 255, (24, 20, 3), dtype=np.uint8), ext)
    for ext in (".jpg", ".png", ".tiff", ".bmp")
}


@FAST
@given(
    st.sampled_from(sorted(_SAMPLES)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.integers(1, 10_000),
)
def test_decoding_damaged_images_never_crashes(ext, flips, cut):
    data = bytearray(_SAMPLES[ext])
    for pos, value in flips:
        data[pos % len(data)] = value
    _check_decoded(bytes(data[: max(1, len(data) - cut % len(data))]) if cut % 3 == 0 else bytes(data))


def test_extract_module_keeps_measure_crop_public():
    # The helpers of other stages (embed) rely on these names.
    assert callable(extract_mod.measure_crop) and callable(extract_mod.read_shard_meta)
    assert extract_mod._shard_name("a/b") != extract_mod._shard_name("a_b")


def test_workers_times_threads_never_exceed_the_cores(cohort):
    cores = extract_mod._cores()
    for jobs in (1, 2, cores, -1):
        with extract_mod._parallel(jobs, "local", None) as (runner, threads):
            workers = cores if jobs < 0 else jobs
            assert threads is None if workers == 1 else workers * threads <= max(cores, workers)
    # Inside a task, OpenCV is limited to the task's share.
    before = cv2.getNumThreads()
    try:
        images = [f"P0/{p.name}" for p in sorted((cohort / "P0").iterdir())]
        schema = extract_mod.cell_schema()
        pid, cells, checksum, skipped, extra, n = extract_mod._run_patient(
            cohort, "P0", images, extract_mod.ExtractSettings(), schema, 1
        )
        assert cv2.getNumThreads() == 1 and (pid, n, skipped, extra) == ("P0", len(images), [], [])
        assert cells.schema.equals(schema) and checksum == extract_mod.table_checksum(cells)
    finally:
        cv2.setNumThreads(before)


def test_relative_data_dir_after_a_change_of_folder(cohort, tmp_path, monkeypatch):
    # Reused worker processes keep the working folder they started in: a relative DATA_DIR must still resolve
    # against the caller's current folder (found by `lympho demo` run after other extractions).
    first = extract(cohort, tmp_path / "first", jobs=2, progress=False)
    (tmp_path / "here").mkdir()
    make_cohort(tmp_path / "here" / "d", n_patients=3, cells_per_patient=(2, 3), seed=5, size=96)
    monkeypatch.chdir(tmp_path / "here")
    res = extract("d", "o", jobs=2, progress=False)
    assert first.n_cells > 0 and res.n_cells > 0 and res.n_skipped == 0


def _small_schema():
    return pa.schema(
        [
            pa.field("patient_id", pa.large_string()),
            pa.field("image", pa.large_string()),
            pa.field("qc_ok", pa.bool_()),
            pa.field("nucleus_area", pa.float64()),
        ]
    )


def test_rows_to_table_conforms_types_order_and_missing_values():
    rows = [
        {"patient_id": "P", "image": "P/b.jpg", "qc_ok": True, "nucleus_area": 3, "surprise": 1},
        {"patient_id": "P", "image": "P/a.jpg", "nucleus_area": float("nan")},  # no flag: False
        {"patient_id": "P", "image": "P/c.jpg", "qc_ok": np.bool_(False), "nucleus_area": "n/a"},
    ]
    table, extra = extract_mod.rows_to_table(rows, _small_schema())
    assert table.schema.equals(_small_schema()) and extra == ["surprise"]
    assert table.column("image").to_pylist() == ["P/a.jpg", "P/b.jpg", "P/c.jpg"]
    assert table.column("qc_ok").to_pylist() == [False, True, False]
    assert table.column("nucleus_area").to_pylist() == [None, 3.0, None]
    empty, extra = extract_mod.rows_to_table([], _small_schema())
    assert empty.num_rows == 0 and empty.schema.equals(_small_schema()) and extra == []


def test_table_checksum_follows_content_not_storage(tmp_path):
    rows = [{"patient_id": "P", "image": f"P/{i}.jpg", "qc_ok": i % 2 == 0, "nucleus_area": i * 1.5} for i in range(7)]
    rows[3]["nucleus_area"] = None
    table, _ = extract_mod.rows_to_table(rows, _small_schema())
    ref = extract_mod.table_checksum(table)
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=2)  # read back in several chunks
    assert extract_mod.table_checksum(pq.read_table(tmp_path / "t.parquet")) == ref
    changed = table.set_column(3, "nucleus_area", pa.array([0.0, 1.5, 3.0, 0.0, 6.0, 7.5, 9.0]))  # null -> 0
    flipped = table.set_column(2, "qc_ok", pa.array([not v for v in table.column("qc_ok").to_pylist()]))
    renamed = table.rename_columns(["patient_id", "image", "qc_ok", "cell_area"])
    others = {extract_mod.table_checksum(t) for t in (changed, flipped, renamed, table.slice(1))}
    assert ref not in others and len(others) == 4


def test_final_tables_are_the_same_from_memory_or_from_the_shards(reference, cohort, tmp_path, monkeypatch):
    # The reference run kept its patients' tables in memory to build cells.parquet; without memory for
    # them every shard is read back, and the tables must not change.
    monkeypatch.setattr(extract_mod, "FRESH_TABLES_BYTES", 0)
    res = extract(cohort, tmp_path / "out", progress=False)
    assert res.n_reused == 0
    assert_same_tables(tmp_path / "out", reference)
