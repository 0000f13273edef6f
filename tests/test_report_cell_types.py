"""The report shows the cell-type gate: other cells among a patient's crops, in words, with examples to check."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lympho_features.aggregate import SHARE_TYPES
from lympho_features.model import fit_model, load_patients, save_model
from lympho_features.report import load_inputs, write_report
from lympho_features.report.cell_types import HIGH_OTHER_CELL_SHARE, TYPE_WORDS, other_cells


@pytest.fixture(scope="module")
def gated_features(tiny_cohort, tmp_path_factory) -> Path:
    """The tiny cohort extracted with the cell-type gate on, and other cells among every patient's crops.

    The synthetic lymphocytes are drawn at real size and the gate keeps them, so some crops of every patient
    are then typed as the gate would type other cells (40 %, 5 % or 15 % of a patient's crops, at least one;
    neutrophils, erythroblasts and monocytes with varied probabilities): left out of the measurements, and
    their shares in patients.parquet.
    """
    from lympho_features.extract import extract
    from lympho_features.measure import ExtractSettings

    out = tmp_path_factory.mktemp("gated")
    extract(tiny_cohort, out, jobs=1, settings=ExtractSettings(cell_type_gate=True), progress=False)
    cells, patients = pd.read_parquet(out / "cells.parquet"), pd.read_parquet(out / "patients.parquet")
    types = ("neutrophil", "erythroblast", "monocyte")
    for j, pid in enumerate(sorted(cells["patient_id"].unique())):
        rows = cells.index[cells["patient_id"] == pid]
        n_other = max(1, int(len(rows) * (0.4, 0.05, 0.15)[j % 3]))
        for k, i in enumerate(rows[:n_other]):
            cells.loc[i, ["cell_type", "cell_type_prob"]] = types[k % 3], 0.5 + 0.05 * (k % 9)
        cells.loc[rows[:n_other], ["is_not_lymphocyte", "qc_ok", "qc_reason"]] = True, False, "not_lymphocyte"
        pc = cells.loc[rows]
        for t in SHARE_TYPES:
            patients.loc[patients["patient_id"] == pid, f"share_{t}"] = float((pc["cell_type"] == t).mean())
    cells.to_parquet(out / "cells.parquet")
    patients.to_parquet(out / "patients.parquet")
    return out


@pytest.fixture(scope="module")
def gated_model(gated_features, tmp_path_factory) -> Path:
    """A clinical-only model of the gated features (few crops are left to measure)."""
    out = tmp_path_factory.mktemp("gated_model")
    model, cv = fit_model(load_patients(gated_features), "clinical", folds=3, repeats=1, seed=0)
    save_model(model, cv, out)
    return out


def _pages(doc: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"id='p-([^']+)'>(.*?)</article>", doc, re.S)}


def _with_cells(features: Path, tmp_path: Path, edit) -> Path:
    """A copy of a features folder with cells.parquet and patients.parquet as ``edit(cells, patients)`` returns them."""
    feats = tmp_path / "edited"
    shutil.copytree(features, feats)
    cells, patients = pd.read_parquet(feats / "cells.parquet"), pd.read_parquet(feats / "patients.parquet")
    cells, patients = edit(cells, patients)
    cells.to_parquet(feats / "cells.parquet")
    patients.to_parquet(feats / "patients.parquet")
    return feats


def test_patient_page_says_which_crops_look_like_other_cells_and_shows_the_surest(gated_model, gated_features):
    inp = load_inputs(gated_model, gated_features)
    cells = inp.cells
    doc = write_report(gated_model, gated_features, gated_features.parent / "gated_report").path.read_text()
    pages = _pages(doc)
    for i, pid in enumerate(inp.patients["patient_id"]):
        pc = cells[cells["patient_id"] == pid]
        found = other_cells(inp, i)
        others = pc[pc["cell_type"].isin(SHARE_TYPES)]
        assert found is not None and found.n_other == len(others) and found.n_crops == len(pc)
        page = pages[pid]
        block = page.split("class='othercells")[1].split("<details")[0]
        for t in found.types:
            crops = others[others["cell_type"] == t.cell_type]
            n = len(crops)
            one, several = TYPE_WORDS[t.cell_type]
            # In words, with the count and share of the patient's crops; the gate was on: left out.
            looks = f"looks like {one} and was" if n == 1 else f"look like {several} and were"
            words = f"{n} of {len(pc)} crops ({n / len(pc):.0%}) {looks} left out of the measurements."
            assert words in block, (pid, words)
            assert crops["is_not_lymphocyte"].all() and not crops["qc_ok"].any()
            # Up to six example crops, the gate's most confident first.
            expected = crops.sort_values(["cell_type_prob", "image"], ascending=[False, True])["image"][:6]
            assert [im for im, _ in t.examples] == list(expected)
            section = block.split(words)[1].split("class='othertype'")[0]
            assert re.findall(r'alt="([^"]+)"', section) == list(expected)
        # The warning tag where the share reaches the threshold, linked to the block.
        high = len(others) / len(pc) >= HIGH_OTHER_CELL_SHARE
        assert ("many other cells</a>" in page) == high and (f"href='#p-{pid}-other'" in page) == high
        # The examples are not shown a second time among the flagged cells.
        flagged = page.split("Flagged cells")[1].split("class='othercells")[0] if "Flagged cells" in page else ""
        shown = {im for t in found.types for im, _ in t.examples}
        assert not shown & set(re.findall(r'alt="([^"]+)"', flagged))
        assert not flagged or "other cells are shown below, by type" in flagged
    # The summary table: each patient's share of other cells; the cohort: patients over the threshold.
    table = doc.split('id="patients"')[1].split("</table>")[0]
    assert "<th>other cells</th>" in table
    share = inp.patients.set_index("patient_id")[[f"share_{t}" for t in SHARE_TYPES]].sum(axis=1)
    n_high = int((share >= HIGH_OTHER_CELL_SHARE).sum())
    assert f"<b>{n_high}</b><span>patients with 10% or more other cells (cell-type gate)</span>" in doc
    for pid, s in share.items():
        row = table.split(f"href='#p-{pid}'")[1].split("</tr>")[0]
        assert f"{s:.0%}</" in row


def test_nothing_is_shown_for_a_patient_without_other_cells(gated_model, gated_features, tmp_path):
    def all_lymphocytes(cells, patients):
        p0 = cells["patient_id"] == "P0"
        cells.loc[p0, "cell_type"] = "lymphocyte"
        cells.loc[p0, ["is_not_lymphocyte"]] = False
        cells.loc[p0, "qc_ok"], cells.loc[p0, "qc_reason"] = True, "ok"
        patients.loc[patients["patient_id"] == "P0", [f"share_{t}" for t in SHARE_TYPES]] = 0.0
        return cells, patients

    feats = _with_cells(gated_features, tmp_path, all_lymphocytes)
    inp = load_inputs(gated_model, feats)
    i0 = int(np.flatnonzero(inp.patients["patient_id"] == "P0")[0])
    assert other_cells(inp, i0) is None
    pages = _pages(write_report(gated_model, feats, tmp_path / "r").path.read_text())
    assert "class='othercells" not in pages["P0"] and "many other cells" not in pages["P0"]
    assert "class='othercells" in pages["P1"]


def test_one_crop_in_words_and_the_gate_off(gated_model, gated_features, tmp_path):
    # One neutrophil among P0's crops, measured as a lymphocyte: extraction without the gate (its lobe rules
    # did not flag it). The page says so rather than "left out".
    def one_neutrophil(cells, patients):
        p0 = cells.index[cells["patient_id"] == "P0"]
        cells.loc[p0, "cell_type"], cells.loc[p0, "qc_ok"], cells.loc[p0, "qc_reason"] = "lymphocyte", True, "ok"
        cells.loc[p0[0], "cell_type"], cells.loc[p0[0], "cell_type_prob"] = "neutrophil", 0.91
        return cells, patients

    feats = _with_cells(gated_features, tmp_path, one_neutrophil)
    inp = load_inputs(gated_model, feats)
    i0 = int(np.flatnonzero(inp.patients["patient_id"] == "P0")[0])
    inp.manifest["settings"]["cell_type_gate"] = False
    found = other_cells(inp, i0)
    n = int((inp.cells["patient_id"] == "P0").sum())
    assert [t.sentence for t in found.types] == [
        f"1 of {n} crops ({1 / n:.0%}) looks like a neutrophil; it was measured as a lymphocyte "
        "(the cell-type gate was off at extraction)"
    ]
    assert found.types[0].examples[0][1] == "probability 0.91"
    assert found.high == (1 / n >= HIGH_OTHER_CELL_SHARE)


def test_features_without_the_gate_show_no_cell_types(gated_model, gated_features, tmp_path):
    def no_gate(cells, patients):
        return cells.drop(columns=["cell_type", "cell_type_prob"]), patients.drop(
            columns=[f"share_{t}" for t in SHARE_TYPES]
        )

    feats = _with_cells(gated_features, tmp_path, no_gate)
    doc = write_report(gated_model, feats, tmp_path / "r").path.read_text()
    assert "class='othercells" not in doc and "other cells</th>" not in doc and "more other cells" not in doc
    assert "many other cells" not in doc
