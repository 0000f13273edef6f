"""`lympho report` and `predict --explain` on a tiny synthetic cohort; the report opened in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lympho_features.cli import app
from lympho_features.model import PatientClassifier, fit_model, load_model, load_patients, model_matrix, save_model
from lympho_features.report import (
    ReportError,
    calibration_bins,
    configuration_words,
    describe_feature,
    explain_predictions,
    feature_family,
    load_inputs,
    operating_points,
    select_gallery,
    shap_contributions,
    short_label,
    waterfall,
    wilson_interval,
    write_report,
)

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
SECTIONS = ("caveats", "cohort", "performance", "explanation", "patients", "provenance")


@pytest.fixture(scope="module")
def tiny_model(tiny_features, tmp_path_factory) -> Path:
    """A model of the 12-patient cohort whose trees do split.

    The default ``min_child_samples=8`` leaves 12 patients with stumps that
    never split (every SHAP value 0), so the final model is refitted with
    smaller leaves: the report must explain real contributions.
    """
    out = tmp_path_factory.mktemp("model")
    patients = load_patients(tiny_features)
    model, cv = fit_model(patients, "clinical+morphology", folds=3, repeats=2, seed=0)
    X = model_matrix(patients)[model.features].to_numpy(float)
    model.classifier = PatientClassifier(min_child_samples=2, random_state=0).fit(X, patients["label"].astype(int))
    model.metadata["params"] = model.classifier.get_params()
    save_model(model, cv, out)
    return out


@pytest.fixture(scope="module")
def tiny_report(tiny_model, tiny_features, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    res = write_report(tiny_model, tiny_features, out)
    assert res.path == out / "index.html" and res.n_patients == 12
    return res.path


# ------------------------------------------------------------- content ----
def test_report_is_one_self_contained_file(tiny_report, tiny_features):
    doc = tiny_report.read_text()
    for sid in SECTIONS:
        assert f'id="{sid}"' in doc, sid
    patients = load_patients(tiny_features)
    assert doc.count("<article class='patient'") == len(patients)
    for pid in patients["patient_id"]:
        assert f"id='p-{pid}'" in doc
    srcs = re.findall(r"<img[^>]*\ssrc=\"([^\"]*)\"", doc)
    assert len(srcs) == doc.count("<img") and len(srcs) > 10
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs)
    assert not re.search(r"https?://", doc)
    assert "<script" not in doc.lower() and "<link" not in doc.lower()
    assert "Content-Security-Policy" in doc and "default-src 'none'" in doc
    # Print CSS: one patient per page.
    assert re.search(r"\.patient\s*{\s*break-before:\s*page", doc.split("@media print")[1])
    # Cell galleries come from the crops: gallery images are JPEG thumbnails.
    assert doc.count("data:image/jpeg;base64,") >= len(patients)
    assert "crop not found" not in doc


def test_report_shows_cv_metrics_and_calls_of_the_model(tiny_report, tiny_model, tiny_features):
    doc = tiny_report.read_text()
    meta = json.loads((tiny_model / "model.json").read_text())
    ba = f"{meta['cv']['balanced_accuracy_mean']:.3f} ± {meta['cv']['balanced_accuracy_std']:.3f}"
    assert ba in doc
    assert f"threshold {meta['threshold']:.3f}" in doc
    # How the threshold was set is said as it was: the fixed balanced point here, nothing tuned.
    assert meta["threshold"] == 0.5 and "0.5, the neutral point" in doc and "chosen on each fold" not in doc
    preds = explain_predictions(tiny_model, tiny_features)
    n_t = int(preds["prediction"].sum())
    assert f"<b>{n_t} / {len(preds) - n_t}</b><span>called tumoral / reactive (in-sample" in doc
    # Each patient's page shows its own probability.
    for pid, p in zip(preds["patient_id"], preds["probability"], strict=True):
        page = doc.split(f"id='p-{pid}'")[1].split("<article")[0]
        assert f"<div class='prob'>{p:.2f}</div>" in page


def _pages(doc: str) -> dict[str, str]:
    """Each patient's page of a report, by patient ID."""
    return {m.group(1): m.group(2) for m in re.finditer(r"id='p-([^']+)'>(.*?)</article>", doc, re.S)}


def test_patient_cards_flag_the_calls_predict_calls_uncertain(tiny_model, tiny_features, tmp_path):
    from lympho_features.model import predict

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    meta = json.loads((model / "model.json").read_text())
    proba = predict(model, tiny_features).set_index("patient_id")["probability"]
    # a band holding the patients on one side of the median probability, and only them
    mid = float(np.median(proba))
    meta["threshold"], meta["refer"] = mid, {"below": 0.0, "above": float(proba.max() - mid) + 1e-9}
    (model / "model.json").write_text(json.dumps(meta))
    flagged = predict(model, tiny_features).set_index("patient_id")["uncertain"]
    assert 0 < flagged.sum() < len(flagged)
    doc = write_report(model, tiny_features, tmp_path / "r").path.read_text()
    pages = _pages(doc)
    assert set(pages) == set(flagged.index)
    for pid, page in pages.items():
        assert ("uncertain: refer</span>" in page) == bool(flagged[pid]), pid
        assert "close to threshold" not in page
    assert f"<b>{int(flagged.sum())}</b><span>uncertain: refer to flow cytometry" in doc
    # a model written before the refer band: the card falls back on the distance to the threshold
    del meta["refer"]
    (model / "model.json").write_text(json.dumps(meta))
    doc = write_report(model, tiny_features, tmp_path / "r2").path.read_text()
    pages = _pages(doc)
    for pid, page in pages.items():
        assert ("close to threshold" in page) == (abs(proba[pid] - mid) < 0.1) and "uncertain: refer" not in page
    assert "uncertain: refer to flow cytometry" not in doc


def test_held_out_labelled_patients_are_scored_apart_from_the_training_ones(tiny_model, tiny_features, tmp_path):
    from lympho_features.model import predict

    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    title = "On this report's labelled patients the model never saw"
    # every patient of the features folder trained the model: cross-validation says it all
    assert title not in write_report(model, tiny_features, tmp_path / "r0").path.read_text()
    # pretend the model never saw four of them (as if they were new patients with a known outcome)
    cvp = pd.read_csv(model / "cv_predictions.csv", dtype={"patient_id": str})
    ids = sorted(cvp["patient_id"].unique())
    new = ids[:4]
    cvp[~cvp["patient_id"].isin(new)].to_csv(model / "cv_predictions.csv", index=False)
    doc = write_report(model, tiny_features, tmp_path / "r").path.read_text()
    section = doc[doc.index(title) :]
    section = section[: section.index("</table>")]
    calls = predict(model, tiny_features).set_index("patient_id").loc[new]
    labels = load_patients(tiny_features).set_index("patient_id")["label"].loc[new].astype(int)
    found = int(((labels == 1) & (calls["prediction"] == 1)).sum())
    assert (
        f"<b>4</b><span>labelled patients ({int(labels.sum())} tumoral, {int((labels == 0).sum())} reactive)" in section
    )
    assert f"{found} found" in section
    wrong = calls.index[calls["prediction"] != labels]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr[^>]*><td><a href='#p-([^']+)'>.*?</tr>", doc)}
    for pid in new:
        assert rows[pid].startswith("<tr class='miss'>") == (pid in wrong)
    # without cv_predictions.csv nobody can tell which patients trained the model: all counted, with a caution
    (model / "cv_predictions.csv").unlink()
    doc = write_report(model, tiny_features, tmp_path / "r2").path.read_text()
    assert title not in doc and "On this report's labelled patients</h3>" in doc
    assert "cannot be told</b>" in doc and f"<b>{len(ids)}</b><span>labelled patients" in doc


def test_shap_contributions_add_up_to_the_model_probability(tiny_model, tiny_features):
    booster, meta = load_model(tiny_model)
    X = model_matrix(load_patients(tiny_features))[meta["features"]].to_numpy(float)
    contrib, base = shap_contributions(booster, X)
    assert contrib.shape == X.shape
    proba = 1 / (1 + np.exp(-(base + contrib.sum(1))))
    np.testing.assert_allclose(proba, booster.predict(X), rtol=1e-6, atol=1e-9)


def test_waterfall_shows_the_probability_reached_after_each_input(tiny_model, tiny_features, tmp_path):
    inp = load_inputs(tiny_model, tiny_features)
    for i in range(len(inp.patients)):
        wf = waterfall(inp, i, n_top=len(inp.features))  # every input shown: the last step is the model's
        assert len(wf.steps) == len(inp.features)
        assert np.isclose(wf.steps[-1].probability, inp.proba[i])
        assert np.isclose(wf.final_probability, inp.proba[i])
    # the page shows each of those probabilities, rounded to 2 decimals
    doc = write_report(tiny_model, tiny_features, tmp_path).path.read_text()
    page = _pages(doc)[inp.patients["patient_id"].iat[0]]
    shown = [float(p) for p in re.findall(r"<span class='sub small'>p ([0-9.]+)</span></td>", page)]
    expected = [s.probability for s in waterfall(inp, 0).steps]
    assert np.allclose(shown, expected, atol=0.006) and len(shown) == len(expected)


def test_predict_explain_adds_top_contributions_after_the_contract(tiny_model, tiny_features, tmp_path):
    r = runner.invoke(app, ["predict", str(tiny_model), str(tiny_features), "--out", str(tmp_path / "p.csv")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["predict", str(tiny_model), str(tiny_features), "--out", str(tmp_path / "e.csv"), "--explain"]
    )
    assert r.exit_code == 0, r.output
    plain, ex = pd.read_csv(tmp_path / "p.csv"), pd.read_csv(tmp_path / "e.csv")
    # The plain contract columns come first, unchanged; the explanation columns follow them.
    assert list(ex.columns[:3]) == ["patient_id", "probability", "prediction"]
    assert list(ex.columns[: plain.shape[1]]) == list(plain.columns)
    top = [f"top{k}_{c}" for k in (1, 2, 3) for c in ("feature", "value", "contribution")]
    assert list(ex.columns[plain.shape[1] : plain.shape[1] + len(top)]) == top  # then top{k}_name, top{k}_reading
    pd.testing.assert_frame_equal(ex[plain.columns], plain)
    assert (ex["top1_contribution"].abs() >= ex["top2_contribution"].abs()).all()
    assert (ex["top2_contribution"].abs() >= ex["top3_contribution"].abs()).all()
    # Values are the patient's own model inputs.
    X = model_matrix(load_patients(tiny_features)).set_index("patient_id")
    for _, row in ex.iterrows():
        assert np.isclose(X.at[row["patient_id"], row["top1_feature"]], row["top1_value"], equal_nan=True)
    r = runner.invoke(
        app, ["predict", str(tiny_model), str(tiny_features), "--out", str(tmp_path / "k.csv"), "--explain", "--kaggle"]
    )
    assert r.exit_code == 2 and "--explain" in r.output and "Traceback" not in r.output


def test_report_cli_and_its_errors(tiny_model, tiny_features, tmp_path):
    r = runner.invoke(app, ["report", str(tiny_model), str(tiny_features), "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r" / "index.html").is_file() and "12 patients" in r.output
    r = runner.invoke(app, ["report", str(tmp_path / "nope"), str(tiny_features), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 1 and "model.json" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r2" / "index.html").exists()
    # Features that do not match the model: one clear line.
    feats = tmp_path / "feats"
    feats.mkdir()
    load_patients(tiny_features)[["patient_id", "label", "age", "gender", "lymph_count"]].to_parquet(
        feats / "patients.parquet"
    )
    r = runner.invoke(app, ["report", str(tiny_model), str(feats), "--out", str(tmp_path / "r3")])
    assert r.exit_code == 1 and ("lack" in r.output or "do not match" in r.output) and "Traceback" not in r.output


def test_report_without_crops_or_cv_file_still_renders(tiny_model, tiny_features, tmp_path):
    feats = tmp_path / "feats"
    shutil.copytree(tiny_features, feats)
    man = json.loads((feats / "manifest.json").read_text())
    man["data_dir"] = str(tmp_path / "moved_away")
    (feats / "manifest.json").write_text(json.dumps(man))
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "cv_predictions.csv").unlink()
    res = write_report(model, feats, tmp_path / "r")
    doc = res.path.read_text()
    assert "crop not found" in doc and res.n_thumbnails == 0
    assert any("moved_away" in w for w in res.warnings) and any("cv_predictions" in w for w in res.warnings)
    assert "Reliability diagram" not in doc and 'id="patients"' in doc


def test_ablation_and_cell_score_are_shown_when_present(tiny_model, tiny_features, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    meta = json.loads((model / "model.json").read_text())
    # `lympho fit` records an ablation table; without one the report has no ablation section.
    meta.pop("ablation", None)
    (model / "model.json").write_text(json.dumps(meta))
    assert "Ablation" not in write_report(model, tiny_features, tmp_path / "r0").path.read_text()
    meta["ablation"] = {
        "clinical": {"balanced_accuracy_mean": 0.812, "roc_auc_mean": 0.9},
        "all": {"balanced_accuracy_mean": 0.871, "roc_auc_mean": 0.937, "ba_diff_ci": [-0.01, 0.05]},
    }
    (model / "model.json").write_text(json.dumps(meta))
    feats = tmp_path / "feats"
    shutil.copytree(tiny_features, feats)
    cells = pd.read_parquet(feats / "cells.parquet")
    cells["cell_score"] = np.linspace(0, 1, len(cells))
    cells.to_parquet(feats / "cells.parquet")
    doc = write_report(model, feats, tmp_path / "r").path.read_text()
    assert "Ablation" in doc and "0.871" in doc and "[-0.010, 0.050]" in doc
    # cell scores in cells.parquet: every patient page shows the cells on each side of the neutral score
    assert doc.count("<h4>Cells pushing toward tumoral</h4>") == 12
    assert doc.count("<h4>Cells pushing toward reactive</h4>") == 12


def test_ablation_table_of_lympho_fit_is_laid_out_for_reading(tiny_features, tmp_path):
    # The table `lympho fit` stores: every metric it holds (specificity included), in a fixed order, each
    # configuration's inputs in words, this model's row and the reference marked.
    patients = load_patients(tiny_features)
    model, cv = fit_model(
        patients, "clinical+morphology", folds=3, repeats=2, seed=0, ablation=("clinical",), n_boot=50
    )
    save_model(model, cv, tmp_path / "m")
    doc = write_report(tmp_path / "m", tiny_features, tmp_path / "r").path.read_text()
    section = doc[doc.index("Ablation: what each kind of input adds") :]
    section = section[: section.index("</table>")]
    headers = re.findall(r"<th>(.*?)</th>", section)
    assert headers == [
        "configuration",
        "inputs",
        "n",
        "balanced accuracy",
        "ROC AUC",
        "sensitivity",
        "specificity",
        "Brier",
        "ΔBA vs clinical [95%]",
        "ΔAUC vs clinical [95%]",
        "P(better BA)",
    ]
    rows = [re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>")[1])]
    by_name = {re.sub(r"<[^>]+>", "", r[0]).replace(" (this model)", ""): r for r in rows}
    assert set(by_name) == {"clinical+morphology", "clinical"}
    mine, ref = by_name["clinical+morphology"], by_name["clinical"]
    assert "(this model)" in mine[0] and "(this model)" not in ref[0]
    assert ref[1] == "age, sex, lymphocyte count"
    assert mine[1] == "age, sex, lymphocyte count + per-patient summaries of every cell measurement"
    stored = {r["configuration"]: r for r in model.metadata["ablation"]}
    for name, r in by_name.items():
        assert r[6] == f"{stored[name]['specificity']:.3f}"
        assert r[3].startswith(f"{stored[name]['balanced_accuracy']:.3f} ± ")
    assert ref[8] == "(reference)" and re.fullmatch(r"\[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", mine[8])


def test_configuration_words_name_each_block_once():
    assert configuration_words("all") == "age, sex, lymphocyte count + number of crops + atypical-cell score"
    # dropping the crop count removes the block it is the only input of
    assert configuration_words("all-n_cells") == "age, sex, lymphocyte count + atypical-cell score"
    assert configuration_words("image-n_cells") == "atypical-cell score"
    assert configuration_words("not+a+set") == ""


def test_gallery_picks_the_most_extreme_cells_of_the_driving_features(tiny_model, tiny_features):
    inp = load_inputs(tiny_model, tiny_features)
    medians = {f: float(np.nanmedian(inp.X[:, j])) for j, f in enumerate(inp.features)}
    checked = 0
    for i in range(len(inp.patients)):
        pid = inp.patients["patient_id"].iat[i]
        pc = inp.cells[inp.cells["patient_id"] == pid]
        ok = pc[pc["qc_ok"]]
        used: set[str] = set()
        for g in select_gallery(inp, i, medians, per_group=2):
            images = [im for im, _ in g.cells]
            assert set(images) <= set(pc["image"]) and not used & set(images)
            if g.title.startswith("Flagged"):
                flagged = pc[~pc["qc_ok"] | pc["is_smudge"] | pc["is_not_lymphocyte"]]
                assert set(images) <= set(flagged["image"])
                continue
            if g.side in ("highest", "lowest"):
                vals = ok.set_index("image")[g.feature].dropna()
                shown, rest = vals.loc[images], vals.drop(list(used | set(images)), errors="ignore")
                if len(rest):
                    assert shown.min() >= rest.max() if g.side == "highest" else shown.max() <= rest.min()
                    checked += 1
            used |= set(images)
    assert checked > 0


def test_plain_language_descriptions_cover_every_input(tiny_model):
    _, meta = load_model(tiny_model)
    for f in meta["features"]:
        assert feature_family(f) != "other", f
        text = describe_feature(f)
        assert text and text != f and "_" not in text.split(";")[0], (f, text)
    assert "chromatin contrast" in describe_feature("haralick_contrast_d1__mean")
    assert "spread" in describe_feature("nc_ratio__std")
    assert "90th percentile" in describe_feature("shape_nucleus_area__q90")


def test_cell_score_inputs_say_which_cell_model_and_which_summary():
    atyp = describe_feature("cellscore_atyp__frac_gt70")
    assert atyp.startswith("how much each cell looks like the atypical cells of tumoral patients")
    assert atyp.endswith("share of the patient's cells scoring above 0.70")
    assert "stain colour left out" in describe_feature("cellscore_morph__mean")
    assert "stain colour included" in describe_feature("cellscore__q90")
    assert describe_feature("cellscore__q90").endswith("90th percentile over the patient's cells")
    assert short_label("cellscore_atyp__frac_gt50") == "atypical-cell score · share > 0.50"
    assert short_label("cellscore_morph__mean") == "cell score (no colour) · mean"
    assert short_label("cellscore__q10") == "cell score (all measurements) · q10"


def test_cnn_inputs_are_labelled_as_learned_features():
    # `fit --feature-set all+cnn` names its inputs cnn_pc<k>__<stat>; the report must not pass them off as morphology.
    for name in ("cnn_pc0__mean", "cnn_pc13__std"):
        assert feature_family(name) == "learned"
        text = describe_feature(name)
        assert text.startswith("learned feature") and "no plain-language meaning" in text
    assert feature_family("nc_ratio__mean") != "learned"


def test_calibration_bins_and_wilson_interval():
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    p = np.array([0.05, 0.08, 0.12, 0.55, 0.58, 0.52, 0.95, 0.99])
    bins = calibration_bins(y, p, 10)
    assert bins["count"].sum() == len(y)
    first = bins.iloc[0]
    assert first["count"] == 2 and first["observed_rate"] == 0 and np.isclose(first["mean_predicted"], 0.065)
    mid = bins[bins["bin_low"] == 0.5].iloc[0]
    assert mid["count"] == 3 and np.isclose(mid["observed_rate"], 2 / 3)
    lo, hi = wilson_interval(8, 10)
    assert np.isclose(lo, 0.490, atol=1e-3) and np.isclose(hi, 0.943, atol=1e-3)


def test_demo_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["demo", "--out", "art", "--patients", "12", "--jobs", "2"])
    assert r.exit_code == 0, r.output
    doc = (tmp_path / "reports" / "demo" / "index.html").read_text()
    assert doc.count("<article class='patient'") == 12


def test_report_error_is_raised_for_an_empty_features_table(tiny_model, tiny_features, tmp_path):
    feats = tmp_path / "f"
    feats.mkdir()
    load_patients(tiny_features).iloc[:0].to_parquet(feats / "patients.parquet")
    with pytest.raises(ReportError, match="no patient"):
        write_report(tiny_model, feats, tmp_path / "r")


# ------------------------------------------------------------- browser ----
class HeadlessChromium:
    """Minimal DevTools-protocol client over ``--remote-debugging-pipe`` (no websocket, no extra package)."""

    def __init__(self, binary: str, width: int = 1200, height: int = 1600):
        self.profile = tempfile.mkdtemp(prefix="lympho-chromium-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def wire_fds():  # the protocol pipe is fd 3 (commands in) and fd 4 (replies out)
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args, preexec_fn=wire_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.w = os.fdopen(to_chrome_w, "wb", buffering=0)
        self.r = os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buf = b""
        self.n = 0
        self.events: list[dict] = []
        self.session = None

    def _recv(self) -> dict:
        while b"\0" not in self.buf:
            chunk = self.r.read(1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._recv()
            if reply.get("id") == self.n:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def open(self, url: str, timeout: float = 30) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in {timeout} s")
            self.events.append(self._recv())

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        return res["result"].get("value")

    def console_errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(str(p.get("exceptionDetails", {}).get("text")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def broken_images(self) -> dict:
        return self.evaluate(
            "({n: document.images.length, broken: Array.from(document.images)"
            ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 60))})"
        )

    def screenshot(self, path: Path, element_id: str | None = None, height: int = 1600) -> None:
        import base64

        if element_id:
            box = self.evaluate(
                f"(() => {{ const r = document.getElementById({json.dumps(element_id)}).getBoundingClientRect();"
                " return {x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height}; })()"
            )
            clip = {"x": 0, "y": box["y"], "width": 1200, "height": min(box["h"], 2400), "scale": 1}
        else:
            clip = {"x": 0, "y": 0, "width": 1200, "height": height, "scale": 1}
        shot = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True})
        Path(path).write_bytes(base64.b64decode(shot["data"]))

    def pdf_pages(self) -> int:
        import base64

        pdf = base64.b64decode(self.send("Page.printToPDF", {"preferCSSPageSize": True})["data"])
        return len(re.findall(rb"/Type\s*/Page[^s]", pdf))

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.w, self.r):
            f.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    b = HeadlessChromium(CHROMIUM)
    yield b
    b.close()


def test_report_renders_in_chromium_with_every_image_and_no_console_error(browser, tiny_report, tmp_path):
    browser.open(tiny_report.resolve().as_uri())
    imgs = browser.broken_images()
    assert imgs["n"] == tiny_report.read_text().count("<img") and imgs["n"] > 10
    assert imgs["broken"] == []
    assert browser.console_errors() == []
    title = browser.evaluate("document.querySelector('h1').innerText")
    assert "lymphocytosis" in title
    assert browser.evaluate("document.querySelectorAll('article.patient').length") == 12
    assert browser.evaluate("document.body.scrollHeight") > 3000
    shot = tmp_path / "report.png"
    browser.screenshot(shot)
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    browser.screenshot(tmp_path / "patient.png", element_id="p-P0")
    # On screen: gallery cells large enough to read the chromatin; the strip of every crop folded.
    size = "(s) => Array.from(document.querySelectorAll(s)).map(e => e.getBoundingClientRect().width)"
    assert min(browser.evaluate(f"({size})('.gallery .cell img')")) >= 120
    assert browser.evaluate("Array.from(document.querySelectorAll('details.allcells')).every(d => !d.open)")
    assert browser.evaluate("document.querySelector('.wf tr.axis .ticks span') !== null")
    # Printing: each of the 12 patient pages starts a new sheet.
    assert browser.pdf_pages() >= 12 + 3


def test_printed_patient_pages_keep_to_eight_cells_a_group(browser, tiny_model, tiny_features, tmp_path):
    # With cell scores, up to 12 cells a side on screen; on paper the thumbnails shrink, 8 a group at most,
    # and the folded strip of every crop stays out, so a patient keeps to its page.
    feats = _with_cell_scores(tiny_features, tmp_path, 0.55)
    cells = pd.read_parquet(feats / "cells.parquet")  # twice as many cells (the copies' crops are not found)
    copies = cells.assign(image=cells["image"].str.replace(".", "_copy.", regex=False))
    pd.concat([cells, copies], ignore_index=True).to_parquet(feats / "cells.parquet")
    doc = write_report(tiny_model, feats, tmp_path / "r").path
    browser.open(doc.resolve().as_uri())
    size = "(s) => Array.from(document.querySelectorAll(s)).map(e => e.getBoundingClientRect().width)"
    shown = (
        "Array.from(document.querySelectorAll('.gallery')).map(g => Array.from(g.children)"
        ".filter(c => getComputedStyle(c).display !== 'none').length)"
    )
    assert max(browser.evaluate(shown)) > 8  # on screen
    browser.send("Emulation.setEmulatedMedia", {"media": "print"})
    assert max(browser.evaluate(f"({size})('.gallery .cell img')")) <= 80
    assert max(browser.evaluate(shown)) == 8
    assert browser.evaluate("getComputedStyle(document.querySelector('details.allcells')).display") == "none"


def test_browser_check_catches_broken_images_and_blocked_requests(browser, tmp_path):
    """The browser check can fail: a corrupt inline image and an external image are both reported."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\"></head><body>"
        '<img src="data:image/png;base64,iVBORw0KGgoAAAAAAA"><img src="http://127.0.0.1:9/x.png"></body></html>'
    )
    browser.open(page.as_uri())
    imgs = browser.broken_images()
    assert imgs["n"] == 2 and len(imgs["broken"]) == 2
    assert any("Content Security Policy" in e or "127.0.0.1" in e for e in browser.console_errors())


def test_report_of_a_model_whose_inputs_come_from_a_cell_model(tiny_features, tmp_path):
    # `image` is crops + the atypical-cell model: its inputs are computed from the cells by the
    # model's own stages, not read from patients.parquet.
    patients = load_patients(tiny_features)
    cells = pd.read_parquet(tiny_features / "cells.parquet")
    model, cv = fit_model(patients, "image", folds=3, repeats=1, seed=0, cells=cells)
    assert any(f.startswith("cellscore_atyp") for f in model.features)
    save_model(model, cv, tmp_path / "model")
    doc = write_report(tmp_path / "model", tiny_features, tmp_path / "r").path.read_text()
    assert "Cells pushing toward tumoral" in doc and "Cells pushing toward reactive" in doc
    inp = load_inputs(tmp_path / "model", tiny_features)
    assert inp.cell_contrib is not None and set(inp.cell_contrib.index) <= set(inp.cells.index)
    # 12 synthetic patients are too few for the cell model's trees to split (every contribution 0, no
    # reason given): plant scores and contributions to check what the captions say.
    pid = inp.patients["patient_id"].iat[0]
    mine = [ix for ix in inp.cells.index[inp.cells["patient_id"] == pid] if ix in inp.cell_contrib.index]
    inp.cells.loc[mine, "cell_score"] = np.linspace(0.9, 0.6, len(mine))  # all look tumoral
    planted = inp.cell_contrib * 0.0
    planted.loc[mine, "shape_nucleus_area"] = 0.8
    planted.loc[mine, "nc_ratio"] = 0.3
    planted.loc[mine, "haralick_contrast_d1"] = -0.5  # toward reactive: not a reason to call it tumoral
    inp.cell_contrib = planted
    # High or low against the cell model's typical (median) training cell: plant the medians too.
    inp.cell_medians = {"shape_nucleus_area": 0.0, "nc_ratio": 2.0}
    groups = {g.direction: g for g in select_gallery(inp, 0, {})}
    tumoral = groups["tumoral"]
    assert tumoral.title == "Cells pushing toward tumoral" and tumoral.cells
    assert not groups["reactive"].cells and "None of the patient's" in groups["reactive"].note
    # In a clinician's words, with units, no column names and no log-odds.
    for _, caption in tumoral.cells:
        assert re.fullmatch(
            r"cell score 0\.\d\d\nlarge nucleus \([0-9.,]+ µm²\)\nlow N:C ratio \(0\.\d\d\)", caption
        ), caption
    # A feature without a plain reading says "high" or "low", with its glossary name.
    planted.loc[mine, "nc_ratio"] = 0.0
    planted.loc[mine, "lbp_nucleus_u4"] = 0.3
    inp.cell_medians["lbp_nucleus_u4"] = -1.0
    tumoral = next(g for g in select_gallery(inp, 0, {}) if g.direction == "tumoral")
    assert tumoral.cells
    for _, caption in tumoral.cells:
        assert re.search(r"\nhigh chromatin edges \([0-9.]+%\)$", caption), caption
        assert "_" not in caption and "lbp" not in caption


def test_patient_pages_compare_with_the_training_patients(tiny_model, tiny_features, tmp_path):
    # Percentiles come from the reference ranges stored with the model, so one new patient alone
    # is still placed among the training patients (not at the 50th percentile of a cohort of one).
    _, meta = load_model(tiny_model)
    assert meta.get("reference")
    patients = load_patients(tiny_features)
    one = tmp_path / "one"
    one.mkdir()
    patients.iloc[[0]].to_parquet(one / "patients.parquet")
    few = tmp_path / "few"
    few.mkdir()
    patients.iloc[[0]].assign(n_cells_ok=1, lymph_count=np.nan).to_parquet(few / "patients.parquet")
    inp = load_inputs(tiny_model, one)
    assert inp.reference is not None
    from lympho_features.model import reference_percentile

    j = inp.features.index("log_lymph_count")
    expected = reference_percentile(float(inp.X[0, j]), meta["reference"], "log_lymph_count")
    assert np.isclose(inp.percentile_ranks[0, j], expected)
    doc = write_report(tiny_model, one, tmp_path / "r").path.read_text()
    assert "compare the patient with the 12 training patients of the model" in doc
    # The patient card says how the threshold was set: fixed at 0.5 for this model.
    assert "threshold 0.500, the neutral point of a model that weighs both classes equally" in doc
    assert "few crops" not in doc
    # ... and when the patient has fewer crops passing QC than any training patient.
    doc = write_report(tiny_model, few, tmp_path / "r3").path.read_text()
    assert "few crops" in doc and "1 crop(s) passed QC, fewer than any training patient had" in doc
    assert "missing values" in doc and "lymphocyte count missing: the call rests on the other inputs" in doc
    # The model was given the training median for it, and the waterfall says so.
    inp = load_inputs(tiny_model, few)
    k = meta["reference"]["percentiles"].index(50)
    j = inp.features.index("log_lymph_count")
    assert inp.X[0, j] == meta["reference"]["inputs"]["log_lymph_count"]["all"][k]
    assert any(s.value.startswith("missing (training median") for s in waterfall(inp, 0, len(inp.features)).steps)
    assert "training medians: reactive" in doc
    # A model saved without reference ranges (older versions) still reports, against the report's patients.
    old = tmp_path / "old"
    shutil.copytree(tiny_model, old)
    meta.pop("reference")
    (old / "model.json").write_text(json.dumps(meta))
    doc = write_report(old, tiny_features, tmp_path / "r2").path.read_text()
    assert "compare the patient with the others of this report" in doc and "training medians" not in doc


def test_operating_points_keep_the_asked_sensitivity():
    rng = np.random.default_rng(0)
    rows = []
    for r in range(3):
        y = rng.integers(0, 2, 200)
        p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
        rows.append(pd.DataFrame({"repeat": r, "label": y, "probability": p}))
    cvp = pd.concat(rows, ignore_index=True)
    table = operating_points(cvp, 0.5)
    assert list(table["operating_point"]) == [
        "the model's threshold",
        "sensitivity at least 0.90",
        "sensitivity at least 0.95",
        "sensitivity at least 0.98",
    ]
    first = table.iloc[0]
    y, p = cvp["label"], cvp["probability"]
    assert np.isclose(first["sensitivity"], (p[y == 1] >= 0.5).mean(), atol=0.02)
    # Higher sensitivity targets: lower thresholds, sensitivity reached (pooled), specificity paid for it.
    assert table["threshold"].is_monotonic_decreasing
    for target, row in zip((0.90, 0.95, 0.98), table.iloc[1:].itertuples(), strict=True):
        assert (p[y == 1] >= row.threshold).mean() >= target
    assert table["specificity"].iloc[1:].is_monotonic_decreasing
    assert np.allclose(table["reactive_cleared_per_100"], 100 * table["specificity"])


def test_report_states_the_fixed_threshold_and_other_operating_points(tiny_report):
    doc = tiny_report.read_text()
    assert "use the fixed threshold 0.500" in doc and "chosen on all out-of-fold probabilities" not in doc
    assert "Other operating points" in doc and "sensitivity at least 0.95" in doc


def test_markup_in_patient_ids_and_file_names_is_escaped(tiny_model, tiny_features, tmp_path):
    # Patient IDs and crop file names come from the user's folders: the page shows them as text, never as markup.
    from html.parser import HTMLParser

    feats = tmp_path / "feats"
    shutil.copytree(tiny_features, feats)
    patients = pd.read_parquet(feats / "patients.parquet")
    cells = pd.read_parquet(feats / "cells.parquet")
    evil = {"P0": "<script>alert(1)</script>", "P1": '"><img src=x onerror=alert(2)>'}
    patients["patient_id"] = patients["patient_id"].replace(evil)
    cells["patient_id"] = cells["patient_id"].replace(evil)
    cells.loc[cells.index[0], "image"] = "P0/<b onmouseover=alert(3)>.jpg"  # a crop name with markup (not found)
    patients.to_parquet(feats / "patients.parquet")
    cells.to_parquet(feats / "cells.parquet")
    doc = write_report(tiny_model, feats, tmp_path / "r").path.read_text()

    class Page(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.tags, self.text, self.attrs = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.attrs += [(tag, k, v) for k, v in attrs]

        def handle_data(self, data):
            self.text.append(data)

    page = Page()
    page.feed(doc)
    assert "script" not in page.tags and "<script" not in doc.lower()
    assert not any(k.startswith("on") for _, k, _ in page.attrs)  # no event handler slipped in as an attribute
    assert all(v.startswith("data:image/") for t, k, v in page.attrs if t == "img" and k == "src")
    text = "".join(page.text)
    for pid in evil.values():
        assert f"Patient {pid}" in text  # shown as typed, as text
    # the anchors stay plain identifiers
    assert "id='p-_script_alert_1___script_'" in doc


# ------------------------------------------------ what a clinician reads ----
def _with_cell_scores(tiny_features, tmp_path, low: float = 0.0, high: float = 1.0) -> Path:
    """A copy of the tiny features whose cells carry a cell score (as a model with a cell model gives them)."""
    feats = tmp_path / "scored"
    shutil.copytree(tiny_features, feats)
    cells = pd.read_parquet(feats / "cells.parquet")
    cells["cell_score"] = np.random.default_rng(0).uniform(low, high, len(cells)).round(3)
    cells.to_parquet(feats / "cells.parquet")
    return feats


def test_gallery_shows_the_cells_pushing_each_way_the_call_first(tiny_model, tiny_features, tmp_path):
    feats = _with_cell_scores(tiny_features, tmp_path)
    inp = load_inputs(tiny_model, feats)
    for i in range(len(inp.patients)):
        groups = select_gallery(inp, i, {}, per_direction=3)
        called_tumoral = inp.proba[i] >= inp.threshold
        directions = [g.direction for g in groups if g.direction]
        assert directions == (["tumoral", "reactive"] if called_tumoral else ["reactive", "tumoral"])
        pc = inp.cells[inp.cells["patient_id"] == inp.patients["patient_id"].iat[i]].set_index("image")
        for g in groups[:2]:
            shown = pc.loc[[im for im, _ in g.cells], "cell_score"]
            side = pc["cell_score"][pc["cell_score"] > 0.5 if g.direction == "tumoral" else pc["cell_score"] < 0.5]
            assert len(shown) == min(3, len(side))  # capped, and every side shows what it has
            if g.direction == "tumoral":  # the most tumoral-looking first, and the highest of the patient
                assert shown.is_monotonic_decreasing and (not len(shown) or shown.min() >= side.nlargest(3).min())
            else:
                assert shown.is_monotonic_increasing and (not len(shown) or shown.max() <= side.nsmallest(3).max())
            assert g.title == f"Cells pushing toward {g.direction}"
    # on the page: a reactive call's gallery never opens on the tumoral side, and 12 a side by default
    doc = write_report(tiny_model, feats, tmp_path / "r").path.read_text()
    for pid, page in _pages(doc).items():
        i = int(np.flatnonzero(inp.patients["patient_id"] == pid)[0])
        first = re.search(r"<h4>Cells pushing toward (\w+)</h4>", page).group(1)
        assert first == ("tumoral" if inp.proba[i] >= inp.threshold else "reactive"), pid
    assert select_gallery(inp, 0, {})[0].cells and len(select_gallery(inp, 0, {})[0].cells) <= 12


def test_every_crop_is_in_a_folded_strip(tiny_report, tiny_features):
    doc = tiny_report.read_text()
    cells = pd.read_parquet(tiny_features / "cells.parquet")
    for pid, page in _pages(doc).items():
        n = int((cells["patient_id"] == pid).sum())
        strip = re.search(
            r"<details class='allcells'><summary>All (\d+) crops of this patient.*?</details>", page, re.S
        )
        assert strip and int(strip.group(1)) == n, pid
        assert strip.group(0).count("<div class='mini'>") == n and strip.group(0).count("data:image/jpeg") == n


def test_waterfall_has_a_probability_axis_a_start_said_once_and_each_meaning_once(tiny_model, tiny_features, tmp_path):
    from lympho_features.report.language import input_meaning

    inp = load_inputs(tiny_model, tiny_features)
    for i in range(len(inp.patients)):
        wf = waterfall(inp, i, n_top=len(inp.features))
        positions, labels = zip(*wf.ticks, strict=True)
        assert list(positions) == sorted(positions) and [float(x) for x in labels] == sorted(float(x) for x in labels)
        assert "0.5" in labels and all(0 <= x <= 100 for x in positions)
        # the threshold (0.5) sits at the 0.5 tick
        assert np.isclose(positions[labels.index("0.5")], wf.threshold_left)
        keys = [input_meaning(s.input)[0] for s in wf.steps if s.meaning]
        assert len(keys) == len(set(keys))  # a meaning shared by several inputs is said once
        later = [s for s in wf.steps if s.input and not s.meaning and feature_family(s.input) != "clinical"]
        assert later  # ... so the later inputs of a measurement carry only their name
        assert all(input_meaning(s.input)[0] in keys for s in later)
    doc = write_report(tiny_model, tiny_features, tmp_path).path.read_text()
    page = html.unescape(next(iter(_pages(doc).values())))
    assert page.count("Start: the model's average score over its 12 training patients") == 1
    assert page.count("<tr class='axis'>") == 2


def test_patient_table_rows_are_red_where_the_shown_call_disagrees(tiny_model, tiny_features, tmp_path):
    from lympho_features.model import predict

    doc = write_report(tiny_model, tiny_features, tmp_path / "r").path.read_text()
    calls = predict(tiny_model, tiny_features).set_index("patient_id")["prediction"]
    labels = load_patients(tiny_features).set_index("patient_id")["label"]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr[^>]*><td><a href='#p-([^']+)'>.*?</tr>", doc)}
    assert set(rows) == set(calls.index)
    for pid, row in rows.items():
        assert row.startswith("<tr class='miss'>") == (calls[pid] != labels[pid]), pid
        call = "tumoral" if calls[pid] else "reactive"
        assert re.search(rf"<td><span class=\"tag {call[0]}\">{call}</span>", row), pid


def test_qc_table_has_one_row_per_check(tiny_model, tiny_features, tmp_path):
    feats = tmp_path / "f"
    shutil.copytree(tiny_features, feats)
    cells = pd.read_parquet(feats / "cells.parquet")
    # smudge cells flagged behind an earlier check only: the smudge row still counts them
    behind = cells.index[cells["qc_reason"] != "smudge"][:3]
    cells.loc[behind, "is_smudge"] = True
    cells.to_parquet(feats / "cells.parquet")
    doc = write_report(tiny_model, feats, tmp_path / "r").path.read_text()
    section = doc[doc.index("<h3>Quality control of the crops</h3>") :]
    section = section[: section.index("</table>")]
    rows = [re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", section.split("<tbody>")[1])]
    outcomes = [r[0] for r in rows]
    assert len(outcomes) == len(set(outcomes)) and not {"is_smudge", "is_not_lymphocyte"} & set(outcomes)
    smudge = next(r for r in rows if r[0] == "smudge")
    assert int(smudge[1].replace(",", "")) == int((cells["qc_reason"] == "smudge").sum())
    assert int(smudge[3].replace(",", "")) == int(cells["is_smudge"].sum()) >= 3
    total = sum(int(r[1].replace(",", "")) for r in rows)
    assert total == len(cells)  # each crop counted once in the first-failed-check column


def test_strongest_inputs_heading_says_how_many_are_listed(tiny_report, tiny_features, tmp_path):
    def listed(doc):
        head = re.search(r"<h3>((?:The|All) \d+ [^<]*)</h3>\s*<table", doc)
        table = doc[head.end() : doc.index("</table>", head.end())]
        return head.group(1), table.count("<tr>") - 1  # the header row

    title, n = listed(tiny_report.read_text())
    assert title == "The 15 strongest inputs" and n == 15
    patients = load_patients(tiny_features)
    model, cv = fit_model(patients, "clinical", folds=3, repeats=1, seed=0)
    save_model(model, cv, tmp_path / "m")
    title, n = listed(write_report(tmp_path / "m", tiny_features, tmp_path / "r").path.read_text())
    assert n == len(model.features) == 3 and title == "All 3 inputs, strongest first"
