"""The cell-type gate: its measurements, the shipped model, and how extract, aggregate and inspect use it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lympho_features import celltype
from lympho_features.aggregate import SHARE_TYPES, aggregate_cells, cell_feature_columns
from lympho_features.celltype import CELL_TYPES, UNKNOWN, apply_gate, default_gate, gate_measurements, type_cells
from lympho_features.extract import ExtractSettings, measure_cell, measure_crop
from lympho_features.segment import segment_cell
from lympho_features.synthetic import patient_crops, synthetic_crop

PBC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc"

#: Synthetic cells of each kind (synthetic.py, which draws lymphocytes at real sizes relative to the red cells:
#: a nucleus about 10 um across by default), then non-lymphocytes drawn after their textbook look.
LYMPHOCYTES = {
    "lymphocyte (synthetic.py's default)": {},
    "oval nucleus": {"elongation": 1.3},
    "small mature, CLL-like: thin rim, dense chromatin": {
        "nucleus_radius": 26,
        "cell_radius": 29,
        "chromatin_contrast": 18,
    },
    "large reactive, wide cytoplasm": {"nucleus_radius": 33, "cell_radius": 48, "chromatin_contrast": 14},
    "notched (cleaved) nucleus": {"nucleus_radius": 31, "cell_radius": 38, "notch": 0.3},
}
GATED = ExtractSettings(cell_type_gate=True)
OTHERS = {
    "neutrophil-like: 3 lobes, fine lilac granules": {
        "lobes": 3, "nucleus_radius": 30, "cell_radius": 42, "granules": 0.3, "granule_colour": (190, 140, 190),
    },
    "eosinophil-like: 2 lobes, dense orange granules": {
        "lobes": 2, "nucleus_radius": 30, "cell_radius": 44, "granules": 0.45, "granule_colour": (215, 110, 80),
    },
    "basophil-like: 2 lobes under dark purple granules": {
        "lobes": 2, "nucleus_radius": 28, "cell_radius": 40, "granules": 0.5, "granule_colour": (80, 40, 110),
    },
    "monocyte-like: large pale cell, kidney nucleus": {
        "nucleus_radius": 34, "cell_radius": 60, "notch": 0.6, "cytoplasm_colour": (200, 195, 215),
    },
}  # fmt: skip


def _rows(kwargs: dict, n: int = 4) -> list[dict]:
    return [measure_crop(synthetic_crop(np.random.default_rng(seed), **kwargs).rgb, GATED) for seed in range(n)]


def test_shipped_gate_loads_with_its_provenance():
    gate = default_gate()
    assert gate.classes == CELL_TYPES
    assert 0 < gate.threshold < 1
    meta = gate.meta
    assert meta["training"]["pbc"]["sha256"] and meta["training"]["trainset"]["sha256"]
    assert "lightgbm" in meta["library_versions"]
    # Taught on re-acquired copies within issue 17's ranges (magnification, stain strength...), settings recorded.
    aug = meta["training"]["augmentation"]
    assert aug["copies"] >= 1 and aug["pbc_copies"] > 0 and aug["trainset_copies"] > 0
    assert aug["ranges"]["hema"] == [0.7, 1.3] and aug["ranges"]["mag"] == [0.75, 1.6]
    # Stain colour stays out of the inputs: it moves from lab to lab.
    assert not [c for c in gate.inputs if c.startswith("color_")]
    # Package data, not a pickle.
    root = Path(celltype.__file__).parent / "data"
    assert celltype.read_gate_text(root / celltype.GATE_FILES[0]).startswith("tree")
    assert json.loads((root / "celltype_gate.json").read_text())["inputs"] == list(gate.inputs)


def test_synthetic_lymphocytes_are_kept():
    for name, kwargs in LYMPHOCYTES.items():
        rows = _rows(kwargs)
        kept = [r["cell_type"] == "lymphocyte" and not r["is_not_lymphocyte"] for r in rows]
        assert sum(kept) >= 3, (name, [(r["cell_type"], round(r["cell_type_prob"], 2)) for r in rows])


def test_synthetic_patients_cells_are_lymphocytes_to_the_gate():
    # The crops of `lympho demo` and of the tests' cohorts: were they drawn too small or too smooth, the gate
    # (learned on real crops) would gate them out and leave the demo's patients without cells.
    rng = np.random.default_rng(7)
    for tumoral in (False, True):
        crops = [c for _ in range(3) for c in patient_crops(rng, tumoral, 8)]
        rows = [measure_crop(c.rgb, GATED) for c in crops]
        kept = np.mean([r["cell_type"] == "lymphocyte" for r in rows])
        assert kept >= 0.85, (tumoral, kept, [r["cell_type"] for r in rows])


def test_synthetic_other_cells_are_gated_out_with_their_reason():
    for name, kwargs in OTHERS.items():
        rows = _rows(kwargs)
        flagged = [r for r in rows if r["is_not_lymphocyte"]]
        assert len(flagged) >= 3, (name, [(r["cell_type"], round(r["cell_type_prob"], 2)) for r in rows])
        for r in flagged:
            assert r["cell_type"] in CELL_TYPES[1:] and 0 < r["cell_type_prob"] <= 1
            # not_lymphocyte unless an earlier check (off centre, border, size, touching) failed first
            assert r["qc_reason"] in ("not_lymphocyte", "nucleus_off_centre", "nucleus_at_border",
                                      "nucleus_too_small", "nucleus_too_large", "touching_cells")  # fmt: skip
            assert not r["qc_ok"]


def test_granules_raise_the_ring_granularity():
    clear = synthetic_crop(np.random.default_rng(3), nucleus_radius=28, cell_radius=42)
    grainy = synthetic_crop(np.random.default_rng(3), nucleus_radius=28, cell_radius=42, granules=0.4)
    g0 = gate_measurements(clear.rgb, segment_cell(clear.rgb))
    g1 = gate_measurements(grainy.rgb, segment_cell(grainy.rgb))
    assert g1["gate_cyto_granularity"] > 1.5 * g0["gate_cyto_granularity"]
    assert g1["gate_ring_granularity"] > g0["gate_ring_granularity"]


def test_the_gate_decides_by_default():
    assert ExtractSettings().cell_type_gate is True
    kwargs = OTHERS["monocyte-like: large pale cell, kidney nucleus"]
    crop = synthetic_crop(np.random.default_rng(0), **kwargs).rgb
    default, gated = measure_crop(crop), measure_crop(crop, GATED)
    assert gated["is_not_lymphocyte"] and gated["qc_reason"] == "not_lymphocyte"
    assert {k: default[k] for k in ("cell_type", "is_not_lymphocyte", "qc_reason", "qc_ok")} == {
        k: gated[k] for k in ("cell_type", "is_not_lymphocyte", "qc_reason", "qc_ok")
    }


def test_without_the_gate_the_rules_decide_and_the_type_is_still_written():
    kwargs = OTHERS["monocyte-like: large pale cell, kidney nucleus"]
    crop = synthetic_crop(np.random.default_rng(0), **kwargs).rgb
    plain, gated = measure_crop(crop, ExtractSettings(cell_type_gate=False)), measure_crop(crop, GATED)
    assert plain["cell_type"] == gated["cell_type"] and plain["cell_type_prob"] == gated["cell_type_prob"]
    rules = plain["is_granulocyte"] or plain["is_monocyte"] or plain["is_pyknotic"]
    assert plain["is_not_lymphocyte"] == rules


def test_no_nucleus_is_unknown_and_not_flagged():
    row = measure_crop(np.full((224, 224, 3), 240, np.uint8), GATED)
    assert row["qc_reason"] == "no_nucleus" and row["cell_type"] == UNKNOWN
    assert not row["is_not_lymphocyte"] and np.isnan(row["cell_type_prob"])
    assert not [k for k in row if k.startswith("gate_")]  # the gate's own inputs never reach cells.parquet


def test_gate_decides_the_reason_and_the_lymphocyte_threshold():
    gate = default_gate()
    row = measure_cell(synthetic_crop(np.random.default_rng(0)).rgb)
    p = gate.probabilities(pd.DataFrame([row]))[0]
    assert p.sum() == pytest.approx(1.0)
    strict = celltype.CellTypeGate(gate.booster, gate.classes, gate.inputs, float(p[0]) + 1e-6, gate.meta)
    lenient = celltype.CellTypeGate(gate.booster, gate.classes, gate.inputs, float(p[0]) - 1e-6, gate.meta)
    a, b = dict(row), dict(row)
    apply_gate([a], strict)
    apply_gate([b], lenient)
    assert a["is_not_lymphocyte"] and a["qc_reason"] == "not_lymphocyte" and a["cell_type"] != "lymphocyte"
    assert a["cell_type_prob"] == pytest.approx(np.delete(p, 0).max())
    assert not b["is_not_lymphocyte"] and b["cell_type"] == "lymphocyte" and b["cell_type_prob"] == pytest.approx(p[0])
    # the segmentation's lobe rule alone no longer fails a cell the gate keeps
    c = dict(row, is_not_lymphocyte=True, qc_reason="not_lymphocyte", qc_ok=False)
    apply_gate([c], lenient)
    assert c["qc_reason"] in ("ok", "smudge", "blur") and c["qc_ok"] == (c["qc_reason"] == "ok")


def test_missing_inputs_are_named():
    with pytest.raises(celltype.CellTypeGateError, match="needs columns"):
        default_gate().probabilities(pd.DataFrame({"nucleus_area": [30.0]}))


def test_shares_per_patient_and_cell_type_kept_out_of_features():
    cells = pd.DataFrame(
        {
            "patient_id": ["A"] * 4 + ["B"] * 2,
            "image": [f"{i}.jpg" for i in range(6)],
            "qc_ok": [True, False, False, True, True, True],
            "qc_reason": ["ok", "not_lymphocyte", "not_lymphocyte", "ok", "ok", "ok"],
            "is_not_lymphocyte": [False, True, True, False, False, False],
            "cell_type": ["lymphocyte", "neutrophil", "monocyte", "lymphocyte", "lymphocyte", "lymphocyte"],
            "cell_type_prob": [0.9, 0.8, 0.7, 0.95, 0.9, 0.9],
            "nucleus_area": [30.0, 40.0, 50.0, 32.0, 31.0, 29.0],
        }
    )
    assert "cell_type_prob" not in cell_feature_columns(cells)
    p = aggregate_cells(cells).set_index("patient_id")
    assert p.loc["A", "share_neutrophil"] == pytest.approx(0.25)
    assert p.loc["A", "share_monocyte"] == pytest.approx(0.25)
    assert p.loc["B", [f"share_{t}" for t in SHARE_TYPES]].sum() == 0
    # morphology over qc_ok cells only: the neutrophil and the monocyte do not enter
    assert p.loc["A", "nucleus_area__mean"] == pytest.approx(31.0)
    assert "cell_type_prob__mean" not in p.columns


def test_share_columns_are_not_model_inputs():
    from lympho_features.model import feature_columns

    patients = pd.DataFrame(
        {"patient_id": ["A", "B"], "label": [0, 1], "age": [50.0, 70.0], "gender": ["M", "F"],
         "lymph_count": [5.0, 20.0], "n_cells": [10, 20], "share_neutrophil": [0.1, 0.0],
         "nucleus_area__mean": [30.0, 31.0]}
    )  # fmt: skip
    cols = feature_columns(patients, "clinical+morphology")
    assert "nucleus_area__mean" in cols and "share_neutrophil" not in cols


@pytest.mark.skipif(not (PBC / "neutrophil").is_dir(), reason="../shared/data/pbc is absent")
def test_pbc_neutrophils_and_lymphocytes_sorted():
    """In-sample on PBC (the gate trained on these crops): a check that extract's path reproduces the training rows."""
    from lympho_features.dataset import read_image

    out = {}
    um = default_gate().meta["training"]["pbc"]["scale"]["run_red_cell_um_per_px"]
    for folder in ("lymphocyte", "neutrophil"):
        files = sorted((PBC / folder).glob("*.jpg"))[:12]
        rows = [measure_crop(read_image(f)[0], GATED, um_per_px=um) for f in files]
        out[folder] = np.mean([r["is_not_lymphocyte"] for r in rows])
    assert out["lymphocyte"] <= 1 / 12 and out["neutrophil"] >= 11 / 12


def test_type_cells_empty_table():
    gate = default_gate()
    empty = pd.DataFrame(columns=list(gate.inputs))
    assert type_cells(empty, gate).empty


def test_extract_with_the_gate_writes_types_shares_and_excludes_other_cells(tiny_cohort, tmp_path):
    from lympho_features.extract import extract

    extract(tiny_cohort, tmp_path / "out", jobs=1, progress=False, settings=ExtractSettings(cell_type_gate=True))
    cells = pd.read_parquet(tmp_path / "out" / "cells.parquet")
    patients = pd.read_parquet(tmp_path / "out" / "patients.parquet").set_index("patient_id")
    assert set(cells["cell_type"]) <= {*CELL_TYPES, UNKNOWN}
    typed = cells["cell_type"] != UNKNOWN
    assert cells.loc[typed, "cell_type_prob"].between(0, 1).all()
    # is_not_lymphocyte is the gate's call, and such a crop never passes QC
    assert (cells.loc[typed, "is_not_lymphocyte"] == (cells.loc[typed, "cell_type"] != "lymphocyte")).all()
    assert not (cells["qc_ok"] & cells["is_not_lymphocyte"]).any()
    flagged = cells["is_not_lymphocyte"] & ~cells["qc_reason"].isin(
        ["nucleus_off_centre", "nucleus_at_border", "nucleus_too_small", "nucleus_too_large", "touching_cells"]
    )
    assert (cells.loc[flagged, "qc_reason"] == "not_lymphocyte").all()
    for t in SHARE_TYPES:
        expected = (cells["cell_type"] == t).groupby(cells["patient_id"]).mean()
        assert np.allclose(patients.loc[expected.index, f"share_{t}"], expected)
    assert not [c for c in cells.columns if c.startswith("gate_")]


def test_inspect_shows_one_cell_type(tiny_cohort, tmp_path):
    from lympho_features.montage import inspect_folder

    _, rows = inspect_folder(tiny_cohort, n=4, only="cell_type=lymphocyte")
    assert rows and all(r["cell_type"] == "lymphocyte" for r in rows)


def test_inspect_cli_refuses_an_unknown_cell_type(tiny_cohort, tmp_path):
    from typer.testing import CliRunner

    from lympho_features.cli import app

    r = CliRunner().invoke(
        app, ["inspect", str(tiny_cohort), "--out", str(tmp_path / "m.png"), "--only", "cell_type=blast"]
    )
    assert r.exit_code == 2 and "cell_type= must name one of" in r.output
    assert not (tmp_path / "m.png").exists()


def test_the_shipped_gate_was_learned_from_features_of_this_version():
    # The gate reads per-cell features (sizes, granularity): a change of how they are measured
    # (FEATURES_VERSION) must come with a gate rebuilt by scripts/build_celltype_gate.py.
    from lympho_features.extract import FEATURES_VERSION

    assert default_gate().meta["features_version"] == FEATURES_VERSION


def _gate_crops():
    """Synthetic crops of every kind, and a blank one (no nucleus)."""
    kinds = [*LYMPHOCYTES.values(), *OTHERS.values()]
    crops = [synthetic_crop(np.random.default_rng(i), **kw).rgb for i, kw in enumerate(kinds)]
    return [*crops, np.full((224, 224, 3), 240, np.uint8)]


def test_the_gate_predicts_as_lightgbm_itself():
    lightgbm = pytest.importorskip("lightgbm")
    from importlib import resources

    gate = default_gate()
    with resources.as_file(resources.files("lympho_features") / "data" / celltype.GATE_FILES[0]) as path:
        text = celltype.read_gate_text(path)
    reference = lightgbm.Booster(model_str=text)
    X = np.random.default_rng(0).normal(size=(200, len(gate.inputs))) * 20
    X[np.random.default_rng(1).random(X.shape) < 0.1] = np.nan  # missing values take the trees' default side
    assert np.array_equal(gate.booster.predict(X), reference.predict(X))
    assert np.array_equal(gate.booster.predict(X[:1]), reference.predict(X[:1]))
    assert list(gate.booster.feature_name()) == reference.feature_name() == list(gate.inputs)


def test_a_gate_reads_from_plain_or_gzip_compressed_text(tmp_path):
    """The shipped gate is its LightGBM text gzip-compressed; a plain text file of the same model reads the same."""
    root = Path(celltype.__file__).parent / "data"
    shipped = celltype.read_gate(root / celltype.GATE_FILES[0], root / celltype.GATE_FILES[1])
    plain = tmp_path / "gate.txt"
    plain.write_text(celltype.read_gate_text(root / celltype.GATE_FILES[0]))
    gate = celltype.read_gate(plain, root / celltype.GATE_FILES[1])
    X = np.random.default_rng(2).normal(size=(50, len(gate.inputs))) * 20
    assert np.array_equal(gate.booster.predict(X), shipped.booster.predict(X))
    broken = tmp_path / "gate.txt.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(celltype.CellTypeGateError, match="cannot read the cell-type gate"):
        celltype.read_gate(broken, root / celltype.GATE_FILES[1])


def test_loading_the_gate_does_not_import_lightgbm():
    # lightgbm imports scikit-learn: ~1.5 s of CPU in every extraction worker (lightgbm_native.py).
    import subprocess
    import sys

    from lympho_features.lightgbm_native import native_library

    if native_library() is None:
        pytest.skip("LightGBM's library is not usable here: the gate falls back to lightgbm.Booster")
    code = (
        "import sys, numpy as np; from lympho_features.celltype import default_gate; g = default_gate(); "
        "g.booster.predict(np.zeros((2, len(g.inputs)))); print('lightgbm' in sys.modules, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_apply_gate_calls_as_type_cells():
    rows = [measure_cell(rgb) for rgb in _gate_crops()]
    typed = type_cells(pd.DataFrame(rows))
    apply_gate(rows, flag=False)
    assert [r["cell_type"] for r in rows] == typed["cell_type"].tolist()
    np.testing.assert_array_equal([r["cell_type_prob"] for r in rows], typed["cell_type_prob"].to_numpy(float))
    assert rows[-1]["cell_type"] == UNKNOWN


def test_apply_gate_names_inputs_missing_from_every_row():
    with pytest.raises(celltype.CellTypeGateError, match="needs columns"):
        apply_gate([{"nucleus_area": 30.0, "qc_reason": "ok"}])


def test_gate_without_hue_measures_the_rest_alike():
    assert not celltype.gate_reads_hue()  # the shipped gate: no stain hue (scripts/build_celltype_gate.py)
    for rgb in _gate_crops():
        seg = segment_cell(rgb)
        full, lean = gate_measurements(rgb, seg), gate_measurements(rgb, seg, hue=False)
        for key in celltype.GATE_KEYS:
            if key in celltype.HUE_KEYS:
                assert np.isnan(lean[key])
            else:
                assert lean[key] == full[key] or (np.isnan(lean[key]) and np.isnan(full[key])), key
    crop = _gate_crops()[3]
    assert np.isnan(measure_cell(crop)["gate_ring_chroma"])
    assert np.isfinite(measure_cell(crop, gate_hue=True)["gate_ring_chroma"])


def test_cell_box_and_median_helpers_match_numpy():
    for rgb in _gate_crops()[:-1]:
        seg = segment_cell(rgb)
        ys, xs = np.nonzero(seg.cell_mask | seg.nucleus_mask)
        box = celltype._cell_box(seg, 10)
        assert (box[0].start, box[0].stop) == (max(0, ys.min() - 10), min(224, ys.max() + 11))
        assert (box[1].start, box[1].stop) == (max(0, xs.min() - 10), min(224, xs.max() + 11))
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 11, 500):
        values = rng.normal(size=n).astype(np.float32)
        assert celltype._median(values) == np.median(values) and celltype._median(values).dtype == np.float32
    assert np.isnan(celltype._median(np.array([1.0, np.nan, 2.0], np.float32)))


def test_mean_std_helpers_match_numpy_bit_for_bit():
    # gate_measurements' means and spreads: the same float32 numbers as ndarray.mean() and .std() (the shipped
    # gate was fitted on those), on sizes around NumPy's pairwise-summation blocks, large offsets and NaN.
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 7, 8, 9, 127, 128, 129, 1000, 4099, 20000):
        for offset in (0.0, 1.5, 300.0):
            for dtype in (np.float32, np.float64):
                values = (rng.gamma(2.0, 0.4, size=n) + offset).astype(dtype)
                mean, sd = celltype._mean_std(values)
                assert mean == values.mean() and mean.dtype == dtype
                assert sd == values.std() and sd.dtype == dtype
                assert celltype._mean(values) == values.mean()
    mean, sd = celltype._mean_std(np.array([1.0, np.nan, 2.0], np.float32))
    assert np.isnan(mean) and np.isnan(sd)


def test_gate_reuses_the_segmentations_red_cell_od():
    # The red cells' OD of the gate without hue comes from the segmentation's own every-fourth-pixel OD sum
    # when it kept it (not for a tight crop); computed again from the crop, the measurements are the same.
    from dataclasses import replace

    crops = _gate_crops()[:-1]
    for rgb in crops:
        seg = segment_cell(rgb)
        assert seg.od_sum_every4 is not None and seg.od_sum_every4.shape == seg.nucleus_mask[::4, ::4].shape
        reused = gate_measurements(rgb, seg, hue=False)
        again = gate_measurements(rgb, replace(seg, od_sum_every4=None), hue=False)
        assert reused.keys() == again.keys()
        for key in reused:
            assert reused[key] == again[key] or (np.isnan(reused[key]) and np.isnan(again[key])), key
    # Another crop's OD is read when handed one: the reuse is real (the crop's pixels are not looked at again).
    seg, other = segment_cell(crops[0]), segment_cell(crops[1])
    swapped = gate_measurements(crops[0], replace(seg, od_sum_every4=other.od_sum_every4), hue=False)
    assert swapped["gate_nucleus_od_rbc"] != gate_measurements(crops[0], seg, hue=False)["gate_nucleus_od_rbc"]


@pytest.mark.parametrize(("option", "expected"), [([], True), (["--cell-type-gate"], True),
                                                  (["--no-cell-type-gate"], False)])  # fmt: skip
def test_extract_cli_gate_option(option, expected, tmp_path, monkeypatch):
    # The gate is on by default; the old spelling --cell-type-gate still works, --no-cell-type-gate turns it off.
    from typer.testing import CliRunner

    import lympho_features.extract as extract_mod
    from lympho_features.cli import app

    seen = {}

    def record(data_dir, out, clinical, jobs, settings, *args, **kwargs):
        seen["settings"] = settings
        raise SystemExit(0)

    monkeypatch.setattr(extract_mod, "extract", record)
    (tmp_path / "data").mkdir()
    r = CliRunner().invoke(app, ["extract", str(tmp_path / "data"), "--out", str(tmp_path / "f"), *option])
    assert r.exit_code == 0, r.output
    assert seen["settings"].cell_type_gate is expected


def test_a_model_refuses_features_typed_otherwise():
    # Features extracted with the gate off keep the other cells in the aggregates: not what the model saw.
    from lympho_features.domain import compare_settings

    with_gate = json.loads(json.dumps(ExtractSettings().to_dict()))
    without = json.loads(json.dumps(ExtractSettings(cell_type_gate=False).to_dict()))
    refused, notes = compare_settings(with_gate, without)
    assert refused == ["cell_type_gate false, the model's training features used true"] and notes == []


def test_cnn_embeddings_keep_lymphocytes_only():
    from lympho_features.model.inputs import Cohort, lymphocyte_embeddings

    cells = pd.DataFrame(
        {"patient_id": ["A", "A", "B", "B"], "image": ["1.jpg", "2.jpg", "1.jpg", "2.jpg"],
         "is_not_lymphocyte": [False, True, False, False]}
    )  # fmt: skip
    emb = pd.DataFrame(
        {"patient_id": ["A", "A", "B", "B", "B"], "image": ["1.jpg", "2.jpg", "1.jpg", "2.jpg", "3.jpg"],
         "cnn_0": [0.1, 0.2, 0.3, 0.4, 0.5]}
    )  # fmt: skip
    kept = lymphocyte_embeddings(emb, cells)
    # A's crop 2 is another cell type; B's crop 3 is not in cells.parquet and stays
    assert list(zip(kept["patient_id"], kept["image"], strict=True)) == [
        ("A", "1.jpg"), ("B", "1.jpg"), ("B", "2.jpg"), ("B", "3.jpg")
    ]  # fmt: skip
    patients = pd.DataFrame({"patient_id": ["A", "B"], "gender": ["M", "F"], "lymph_count": [5.0, 9.0]})
    cohort = Cohort.from_tables(patients, cells, emb)
    assert len(cohort.embeddings) == 4 and "2.jpg" not in set(
        cohort.embeddings.loc[cohort.embeddings.patient_id == "A", "image"]
    )
    # without the column (older cells tables) nothing is dropped
    assert len(lymphocyte_embeddings(emb, cells.drop(columns="is_not_lymphocyte"))) == 5
