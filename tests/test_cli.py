"""The command line (lympho_features.cli) end to end on a tiny synthetic cohort: outputs, errors, Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from lympho_features.cli import app
from tests.processes import CHECKOUT_ENV, wait_for_shards

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_extract_outputs_follow_the_contract(tiny_cohort, tiny_features):
    cells = pd.read_parquet(tiny_features / "cells.parquet")
    for col in ("patient_id", "image", "qc_ok", "qc_reason", "nucleus_area", "cell_area", "nc_ratio"):
        assert col in cells.columns
    assert len([c for c in cells.columns if c.startswith("haralick_")]) >= 13
    assert cells["qc_ok"].dtype == bool
    ok = cells[cells["qc_ok"]]
    assert ((ok["nc_ratio"] > 0) & (ok["nc_ratio"] <= 1)).all()
    n_images = sum(1 for _ in tiny_cohort.glob("*/*.jpg"))
    assert len(cells) == n_images
    assert (tiny_cohort / cells["image"].iloc[0]).is_file()
    patients = pd.read_parquet(tiny_features / "patients.parquet")
    for col in ("patient_id", "label", "age", "gender", "lymph_count", "n_cells"):
        assert col in patients.columns
    assert len(patients) == 12 and patients["n_cells"].sum() == n_images
    manifest = json.loads((tiny_features / "manifest.json").read_text())
    assert manifest["counts"]["images"] == n_images and manifest["skipped"] == []
    assert len(manifest["input_fingerprint"]) == 64 and "opencv-python-headless" in manifest["library_versions"]


def test_fit_and_predict(tiny_features, tmp_path):
    r = run("fit", tiny_features, "--out", tmp_path / "m", "--folds", 3, "--repeats", 2)
    assert r.exit_code == 0, r.output
    assert "balanced accuracy" in r.output
    assert "cross-validation" not in r.output  # no progress bar when the output is not a terminal
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["cv"]["folds"] == 3 and meta["cv"]["repeats"] == 2
    cvp = pd.read_csv(tmp_path / "m" / "cv_predictions.csv")
    assert len(cvp) == 2 * 12
    r = run("predict", tmp_path / "m", tiny_features, "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    preds = pd.read_csv(tmp_path / "p.csv")
    assert list(preds.columns)[:3] == ["patient_id", "probability", "prediction"] and len(preds) == 12
    r = run("predict", tmp_path / "m", tiny_features, "--out", tmp_path / "k.csv", "--kaggle")
    assert list(pd.read_csv(tmp_path / "k.csv").columns) == ["Id", "Predicted"]


def test_rerun_reuses_finished_patients_and_gives_identical_tables(tiny_cohort, tiny_features, tmp_path):
    out = tmp_path / "feat"
    shutil.copytree(tiny_features, out)
    r = run("extract", tiny_cohort, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert "12 patient(s) reused" in r.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "cells.parquet"), pd.read_parquet(tiny_features / "cells.parquet")
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "patients.parquet"), pd.read_parquet(tiny_features / "patients.parquet")
    )


def test_bad_files_are_skipped_and_named(tiny_cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    (data / "P0" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = sorted((data / "P1").glob("*.jpg"))[0]
    (data / "P1" / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    r = run("extract", data, "--out", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    assert "2 file(s) skipped" in r.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(s["image"] for s in manifest["skipped"]) == ["P0/broken.jpg", "P1/truncated.jpg"]


def test_mismatched_patients_are_listed(tiny_cohort, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    shutil.rmtree(data / "P3")
    (data / "P99").mkdir()
    shutil.copy(next((data / "P0").glob("*.jpg")), data / "P99" / "a.jpg")
    r = run("extract", data, "--out", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    assert "without a row" in r.output and "P99" in r.output
    assert "without an image folder" in r.output and "P3" in r.output
    table = pd.read_parquet(tmp_path / "out" / "patients.parquet").set_index("patient_id")
    assert table.loc["P3", "n_cells"] == 0 and pd.isna(table.loc["P99", "label"])


@pytest.mark.parametrize(
    "args,fragment",
    [
        (("extract", "/nonexistent/data", "--out", "{tmp}/o"), "data folder not found"),
        (("extract", "{cohort}", "--out", "{tmp}/o", "--clinical", "{tmp}/missing.csv"), "clinical CSV not found"),
        (("fit", "{tmp}", "--out", "{tmp}/m"), "patients.parquet not found"),
        (("predict", "{tmp}", "{tmp}", "--out", "{tmp}/p.csv"), "model.json not found"),
    ],
)
def test_errors_are_one_line_without_traceback(tiny_cohort, tmp_path, args, fragment):
    args = [a.format(tmp=tmp_path, cohort=tiny_cohort) for a in args]
    r = run(*args)
    assert r.exit_code == 1
    assert r.output.startswith("error: ") and fragment in r.output and r.output.count("\n") == 1
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    "option,fragment",
    [
        (("--feature-set", "bogus"), "unknown feature set 'bogus'"),
        (("--folds", "1"), "--folds"),
        (("--min-sensitivity", "0"), "--min-sensitivity"),
    ],
)
def test_bad_fit_options_are_usage_errors_found_first(tmp_path, option, fragment):
    r = run("fit", tmp_path, "--out", tmp_path / "m", *option)  # no features there: the option is checked first
    assert r.exit_code == 2 and r.output.startswith("error: ") and fragment in r.output, r.output
    assert "patients.parquet" not in r.output


def test_missing_column_named(tiny_cohort, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,LABEL,GENDER,DOB\nP0,1,M,1/1/1950\n")
    r = run("extract", tiny_cohort, "--out", tmp_path / "o", "--clinical", bad)
    assert r.exit_code == 1 and "LYMPH_COUNT" in r.output


def test_help_lists_commands():
    r = run("--help")
    for cmd in ("extract", "fit", "predict", "demo"):
        assert cmd in r.output


def test_lympho_alone_shows_the_help_and_succeeds():
    r = run()
    assert r.exit_code == 0
    assert "Usage" in r.output and "extract" in r.output and "report" in r.output


def test_version_is_the_package_version():
    from importlib.metadata import version

    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"lympho {version('lympho-features')}"


def test_shell_completion_is_offered():
    r = run("--help")
    assert "--install-completion" in r.output and "--show-completion" in r.output
    r = runner.invoke(app, ["--show-completion", "bash"], prog_name="lympho")
    assert r.exit_code == 0 and "complete -o default -F _lympho_completion lympho" in r.output


def test_the_command_line_starts_without_the_learning_libraries():
    # `lympho extract` pays the command line's start-up on every run: scikit-learn, LightGBM and torch
    # are imported by the commands that use them, not by the command line itself.
    import subprocess
    import sys

    code = "import sys, lympho_features.cli; print(sorted(m for m in ('sklearn', 'lightgbm', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_backend_options_are_checked(tiny_cohort, tmp_path):
    r = run("extract", tiny_cohort, "--out", tmp_path / "o", "--backend", "spark")
    assert r.exit_code == 1 and "unknown backend 'spark'" in r.output
    r = run("extract", tiny_cohort, "--out", tmp_path / "o", "--scheduler", "local")
    assert r.exit_code == 1 and "--backend dask" in r.output


def lympho(*args, cwd):
    """Run the command line in a process of its own, as a user would (stderr as the terminal shows it)."""
    cmd = [sys.executable, "-m", "lympho_features.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=CHECKOUT_ENV, cwd=cwd)


def test_bad_input_is_one_line_on_stderr_exit_1(tmp_path):
    r = lympho("extract", tmp_path / "nowhere", "--out", tmp_path / "o", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.startswith("error: data folder not found") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_every_problem_of_the_clinical_csv_in_one_run(tiny_cohort, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text(
        "ID,LABEL,GENDER,DOB,LYMPH_COUNT\nP0,1,M,1/1/1950,lots\nP1,0,F,2/2/1960,4\nP1,0,F,2/2/1960,4\n"
        "P77,1,M,3/3/1970,9\n"
    )
    r = run("extract", tiny_cohort, "--out", tmp_path / "o", "--clinical", csv)
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert "3 problems" in r.output
    assert "line 2 (patient P0): LYMPH_COUNT 'lots' is not a number" in r.output
    assert "line 4 (patient P1): duplicate patient ID (first on line 3)" in r.output
    assert "line 5 (patient P77): no image folder of that name" in r.output
    assert not (tmp_path / "o").exists()  # refused before any work


def test_a_file_given_as_the_data_folder_is_named_a_file(tiny_cohort, tmp_path):
    r = run("extract", tiny_cohort / "clinical.csv", "--out", tmp_path / "o")
    assert r.exit_code == 1 and "is a file, not a folder" in r.output


@pytest.mark.parametrize(
    "command",
    [
        ("fit", "{features}", "--out", "{blocker}/model"),
        ("predict", "{model}", "{features}", "--out", "{blocker}/p.csv"),
        ("predict", "{model}", "{features}", "--out", "{tmp}"),
        ("report", "{model}", "{features}", "--out", "{blocker}/report"),
        ("inspect", "{cohort}", "--out", "{blocker}/m.png"),
        ("extract", "{cohort}", "--out", "{blocker}/features"),
        ("embed", "{cohort}", "--out", "{blocker}/e"),
        ("demo", "--out", "{blocker}/demo"),
    ],
)
def test_an_unwritable_output_is_refused_before_any_work(command, tiny_cohort, tiny_features, tmp_path, monkeypatch):
    import lympho_features.model as model_mod

    def no_work(*args, **kwargs):
        raise AssertionError("the output should have been checked before any work")

    monkeypatch.setattr(model_mod, "fit_features_dir", no_work)  # fit: the cross-validation never starts
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    values = {
        "features": tiny_features,
        "model": tmp_path / "m",
        "blocker": blocker,
        "tmp": tmp_path,
        "cohort": tiny_cohort,
    }
    r = run(*[a.format(**values) for a in command])
    assert r.exit_code == 1, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1 and str(tmp_path) in r.output
    assert "a file" in r.output or "is a folder" in r.output


def test_unwritable_folder_is_named_with_the_reason(tiny_features, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    r = run("fit", tiny_features, "--out", ro / "model")
    assert r.exit_code == 1 and f"cannot write to model folder {ro / 'model'}" in r.output
    assert "Permission denied" in r.output


def test_os_errors_are_one_line_naming_the_path(tiny_cohort, tmp_path, monkeypatch):
    import errno

    import lympho_features.montage as montage_mod

    def full_disk(image, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(montage_mod, "write_png", full_disk)
    r = run("inspect", tiny_cohort, "--out", tmp_path / "m.png", "--n", 2)
    assert r.exit_code == 1
    assert r.output == f"error: {tmp_path / 'm.png'}: no space left on device\n"


def test_a_bug_keeps_its_traceback(tiny_cohort, tmp_path, monkeypatch):
    import lympho_features.montage as montage_mod

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug in lympho")

    monkeypatch.setattr(montage_mod, "inspect_folder", bug)
    r = run("inspect", tiny_cohort, "--out", tmp_path / "m.png")
    assert isinstance(r.exception, ZeroDivisionError)  # not turned into a one-line "error"
    assert "error:" not in r.output


def test_report_refuses_a_missing_crops_folder(tmp_path):
    r = run("report", tmp_path / "m", tmp_path / "f", "--out", tmp_path / "r", "--data-dir", tmp_path / "nope")
    assert r.exit_code == 1 and f"data folder not found: {tmp_path / 'nope'}" in r.output
    assert not (tmp_path / "r").exists()


def test_skipped_files_and_measured_again_patients_are_named(tiny_cohort, tiny_features, tmp_path):
    data, out = tmp_path / "data", tmp_path / "feat"
    shutil.copytree(tiny_cohort, data)
    shutil.copytree(tiny_features, out)
    (data / "P0" / "broken.jpg").write_bytes(b"this is not a jpeg")  # P0's inputs changed: a file was added
    shard = next((out / "cells").glob("P1-*.parquet"))
    shard.write_bytes(shard.read_bytes()[:100])  # P1's saved result is damaged
    r = run("extract", data, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert "skipped P0/broken.jpg: not an image" in r.output
    assert "1 patient(s) measured again because their crops or the settings changed since the last run: P0" in r.output
    assert "1 patient(s) measured again because their earlier results were damaged" in r.output and ": P1" in r.output
    assert "shard(s) recomputed" not in r.output


def test_many_skipped_files_are_summed_up_after_the_first(tiny_cohort, tmp_path):
    from lympho_features.cli_messages import MAX_SKIPPED_SHOWN

    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    for i in range(MAX_SKIPPED_SHOWN + 3):
        (data / "P2" / f"bad{i:02d}.jpg").write_bytes(b"")
    r = run("extract", data, "--out", tmp_path / "o", "-q")
    assert r.exit_code == 0, r.output
    assert r.output.count("skipped P2/bad") == MAX_SKIPPED_SHOWN
    assert f"and 3 more skipped file(s), all listed in {tmp_path / 'o' / 'manifest.json'}" in r.output


def test_ctrl_c_says_what_is_kept_and_a_rerun_resumes(tmp_path):
    from lympho_features.synthetic import make_cohort

    data, out = tmp_path / "data", tmp_path / "out"
    make_cohort(data, n_patients=40, cells_per_patient=(3, 4), seed=2, size=96)
    cmd = [sys.executable, "-m", "lympho_features.cli", "extract", str(data), "--out", str(out), "-q"]
    # A background process may inherit an ignored SIGINT: restore the default, as a terminal's foreground job has.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=CHECKOUT_ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        wait_for_shards(proc, out, 2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    done = len(list((out / "cells").glob("*.parquet")))
    assert done < 40, "the run finished before Ctrl-C reached it"
    assert err == (
        f"interrupted: {done} finished patient(s) are kept in {out / 'cells'}; run the same command again to resume "
        "(they are not computed again)\n"
    )
    r = run("extract", data, "--out", out, "-q")
    assert r.exit_code == 0 and f"{done} patient(s) reused" in r.output


def test_explain_gives_clinical_values_in_clinical_units(tiny_features, tmp_path):
    import math

    r = run("fit", tiny_features, "--out", tmp_path / "m", "--feature-set", "clinical", "--folds", 3, "--repeats", 1)
    assert r.exit_code == 0, r.output
    r = run("predict", tmp_path / "m", tiny_features, "--out", tmp_path / "x.csv", "--explain")
    assert r.exit_code == 0, r.output
    ex = pd.read_csv(tmp_path / "x.csv")
    assert list(ex.columns[-6:]) == [f"top{k}_{c}" for k in (1, 2, 3) for c in ("name", "reading")]
    expected = {  # as a lab report writes them, from the value the model takes
        "log_lymph_count": ("lymphocyte count", lambda v: f"{math.exp(v):.2f} x10^9/L"),
        "age": ("age", lambda v: f"{math.floor(v)} years"),
        "gender_male": ("sex", lambda v: "male" if v == 1 else "female"),
    }
    for k in (1, 2, 3):
        for feature, value, name, reading in ex[
            [f"top{k}_{c}" for c in ("feature", "value", "name", "reading")]
        ].values:
            assert (name, reading) == (expected[feature][0], expected[feature][1](value))
    assert set(ex["top1_feature"]) | set(ex["top2_feature"]) | set(ex["top3_feature"]) == set(expected)


def test_progress_bar_shows_what_is_done_and_is_off_when_disabled():
    import io
    import threading

    from rich.console import Console

    from lympho_features.cli_messages import progress_bar

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    with progress_bar(console, "cross-validation", "fits", enabled=True) as progress:
        # Called from the worker threads that fit the folds.
        threads = [threading.Thread(target=progress, args=(done, 25)) for done in range(1, 8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        progress(12, 25)
    text = screen.getvalue()
    assert "cross-validation" in text and "12/25" in text and "fits" in text and "left" in text
    with progress_bar(console, "cross-validation", "fits", enabled=False) as progress:
        assert progress is None
