"""`lympho extract` (lympho_features.extract): shards, resume after kill -9, corrupt shards, the output
lock, Dask and local workers, the bad-input catalogue (each bad input a named one-line error or a
recorded skip) and full or read-only disks."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lympho_features import extract as extract_mod
from lympho_features.aggregate import build_patient_table
from lympho_features.dataset import DatasetError, load_clinical, read_image
from lympho_features.extract import extract
from lympho_features.synthetic import make_cohort
from tests.processes import CHECKOUT_ENV, wait_for_shards
from tests.test_images import png_bomb


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
    # Change the lymphocyte, not the red cells: these tiny patients have too few red cells each, so the run's
    # scale comes from every red cell read together, and a changed red cell would rightly move it (and so
    # recompute every shard, as docs/features.md says of the run's scale).
    h, w = img.shape[:2]
    img[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] //= 2
    cv2.imwrite(str(victim), img)
    res = extract(data, out, progress=False)
    assert (res.n_reused, res.n_recomputed) == (23, 1)


def test_kill_9_then_rerun_gives_the_uninterrupted_tables(cohort, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lympho_features.cli", "extract", str(cohort), "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path, env=CHECKOUT_ENV)
    try:
        wait_for_shards(proc, out, 3)
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


def encode(img, ext):
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


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

    # process_patient measures each crop with measure_cell (the cell-type gate then runs once per patient)
    real = extract_mod.measure_cell
    victim = sorted((cohort / "P5").iterdir())[0]
    victim_rgb, _ = read_image(victim)

    def fragile(rgb, *args, **kwargs):  # whatever else extract passes (settings, the file's bytes...)
        if np.array_equal(rgb, victim_rgb):
            raise FloatingPointError("overflow in a\nmulti-line message")
        return real(rgb, *args, **kwargs)

    monkeypatch.setattr(extract_mod, "measure_cell", fragile)
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
        ("P0,1,M,1/1/1950,1\nP0,0,F,1/1/1950,2", "line 3 (patient P0): duplicate patient ID (first on line 2)"),
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
        pid, columns, skipped, extra, n = extract_mod._run_patient(
            cohort, "P0", images, extract_mod.ExtractSettings(), schema, 1
        )
        assert cv2.getNumThreads() == 1 and (pid, n, skipped, extra) == ("P0", len(images), [], [])
        cells = extract_mod.columns_to_table(columns, schema)
        assert cells.schema.equals(schema) and cells.num_rows == len(images)
    finally:
        cv2.setNumThreads(before)


def test_worker_tasks_do_not_import_pandas(cohort):
    # A worker process (local or Dask) runs the ruler's and the measurement's per-patient tasks; pandas is the
    # main process's (it cost ~0.3 s of CPU a worker). The task returns plain columns; the main process builds
    # the table, and it is the one rows_to_table builds.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from lympho_features import extract as x\n"
        "from lympho_features.measure import _ruler_patient\n"
        "data = Path(sys.argv[1])\n"
        "images = [f'P0/{p.name}' for p in sorted((data / 'P0').iterdir())]\n"
        "settings = x.ExtractSettings()\n"
        "_ruler_patient(data, 'P0', images, settings, 1)\n"
        "pid, columns, skipped, extra, n = x._run_patient(data, 'P0', images, settings, x.cell_schema(settings), 1)\n"
        "assert pid == 'P0' and n == len(images) and len(columns['image']) == n, (pid, n, skipped)\n"
        "loaded = sorted(m for m in sys.modules if m == 'pandas' or m.startswith('pandas.'))\n"
        "assert not loaded, loaded[:5]\n"
        "rows, _ = x.process_patient(data, 'P0', images, settings)\n"
        "table, _ = x.rows_to_table(rows, x.cell_schema(settings))\n"
        "built = x.columns_to_table(columns, x.cell_schema(settings))\n"
        "assert built.equals(table) and x.table_checksum(built) == x.table_checksum(table)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(cohort)], capture_output=True, text=True, env=CHECKOUT_ENV)
    assert res.returncode == 0, res.stderr


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
