"""How the cell-type gate is built (scripts/build_celltype_gate.py) and how its stability is measured, on synthetic crops."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
import pytest

from lympho_features.celltype import CELL_TYPES
from lympho_features.synthetic import synthetic_crop
from tests.scripts import load_script


@pytest.fixture(scope="module")
def build():
    return load_script("scripts/build_celltype_gate.py", "build_celltype_gate")


def _table(n_patients: int = 3, per_patient: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"patient_id": f"P{p}", "image": f"P{p}/c{i}.png", "um_per_px": 0.16 + 0.01 * p}
            for p in range(n_patients)
            for i in range(per_patient)
        ]
    )


def test_magnification_multiplies_mag_steps_only(build):
    assert build.magnification("none") == 1.0
    assert build.magnification("mag:1.6+jpeg:60") == pytest.approx(1.6)
    assert build.magnification("mag:0.8+blur:0.5+mag:1.25") == pytest.approx(1.0)
    assert build.magnification("magrt:0.8") == 1.0  # back to the same pixel size


def test_augment_plan_is_deterministic_and_measures_each_copy_at_its_pixel_size(build):
    table = _table()
    settings = {**build.AUGMENT, "copies": 3}
    plan = build.augment_plan(table, settings)
    assert len(plan) == 3 * len(table)
    pd.testing.assert_frame_equal(plan, build.augment_plan(table.sample(frac=1, random_state=1), settings))
    assert set(plan["image"]) == {f"aug{k}/{r}" for r in table["image"] for k in range(3)}
    # Each copy's pixel size: the original's / its magnification, times a ruler error within the stated range.
    um0 = plan["source"].map(dict(zip(table["image"], table["um_per_px"], strict=True)))
    ruler = plan["um_per_px"] * plan["shift"].map(build.magnification) / um0
    lo, hi = settings["ruler_error"]
    assert ruler.between(lo, hi).all() and ruler.std() > 0
    # Copies of one crop are different laboratories.
    assert plan.groupby("source")["shift"].nunique().gt(1).any()


def test_augment_plan_draws_a_fixed_sample_per_patient(build):
    table = _table(per_patient=10)
    plan = build.augment_plan(table, {**build.AUGMENT, "copies": 1}, per_patient=4)
    assert plan.groupby("patient_id")["source"].nunique().eq(4).all()
    again = build.augment_plan(table, {**build.AUGMENT, "copies": 1}, per_patient=4)
    assert plan["source"].tolist() == again["source"].tolist()
    other_seed = build.augment_plan(table, {**build.AUGMENT, "copies": 1, "seed": 1}, per_patient=4)
    assert plan["source"].tolist() != other_seed["source"].tolist()


def test_measure_plan_reacquires_and_measures_each_copy(build, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "P0").mkdir()
    rgb = synthetic_crop(rng).rgb
    cv2.imwrite(str(tmp_path / "P0" / "c0.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    plan = pd.DataFrame(
        [
            {
                "patient_id": "P0",
                "source": "P0/c0.png",
                "image": f"aug{k}/P0/c0.png",
                "copy": k,
                "shift": s,
                "um_per_px": um,
            }
            for k, (s, um) in enumerate([("none", 0.1627), ("mag:1.25+hema:1.3", 0.1627 / 1.25)])
        ]
    )
    out = build.measure_plan(tmp_path, plan, jobs=1)
    assert out["image"].tolist() == plan["image"].tolist()
    assert out["um_per_px"].tolist() == plan["um_per_px"].tolist()
    assert out["nucleus_area"].notna().all() and "gate_ring_od_rbc" in out
    # The same cell re-acquired at x1.25 and measured at its own pixel size: about the same area in um^2.
    a0, a1 = out["nucleus_area"]
    assert abs(a1 / a0 - 1) < 0.15
    assert not out.iloc[0][["nucleus_area", "cell_area"]].equals(out.iloc[1][["nucleus_area", "cell_area"]])


def _features(n: int, rng: np.random.Generator, centre: float) -> np.ndarray:
    return rng.normal(centre, 1.0, size=(n, 2))


def test_fit_gate_teaches_copies_of_the_taught_crops_only(build):
    pytest.importorskip("lightgbm")
    rng = np.random.default_rng(0)
    inputs = ["f0", "f1"]
    pbc = pd.DataFrame(
        [
            {"patient_id": t, "image": f"{t}/{i}", "cell_type_true": t, "nucleus_area": 1.0, "f0": x, "f1": y}
            for j, t in enumerate(CELL_TYPES)
            for i, (x, y) in enumerate(_features(30, rng, 4.0 * j))
        ]
    )
    train = pd.DataFrame(
        [
            {"patient_id": f"P{p}", "image": f"P{p}/{i}", "qc_ok": True, "is_not_lymphocyte": False,
             "nucleus_area": 1.0, "f0": x, "f1": y}
            for p in range(3)
            for i, (x, y) in enumerate(_features(20, rng, 0.0))
        ]
    )  # fmt: skip
    # Copies of the neutrophils shifted far away: taught as neutrophils, the gate calls that region neutrophil.
    neu = pbc[pbc["cell_type_true"] == "neutrophil"]
    pbc_aug = neu.assign(source=neu["image"], image="aug0/" + neu["image"], copy=0, f0=neu["f0"] + 100.0)
    lym = train.assign(source=train["image"], image="aug0/" + train["image"], copy=0, f0=train["f0"] - 100.0)
    params = {**build.PARAMS, "min_data_in_leaf": 3}
    booster = build.fit_gate(pbc, train, inputs, rounds=30, params=params, pbc_aug=pbc_aug, train_aug=lym)
    p = booster.predict(np.array([[104.0, 4.0], [-100.0, 0.0]]))
    assert p[0].argmax() == CELL_TYPES.index("neutrophil")
    assert p[1].argmax() == 0
    # Copies of crops left out of the fit (another fold's) are not taught: the far region is not neutrophil.
    booster = build.fit_gate(
        pbc[pbc["cell_type_true"] != "neutrophil"], train, inputs, rounds=30, params=params, pbc_aug=pbc_aug
    )
    assert booster.predict(np.array([[104.0, 4.0]]))[0].argmax() != CELL_TYPES.index("neutrophil")


def test_gate_shares_counts_newly_gated_crops():
    site = load_script("benchmarks/site_robustness.py", "site_robustness")
    base = pd.DataFrame(
        {"patient_id": "P1", "crop": ["a", "b", "c", "d"], "qc_reason": ["ok", "not_lymphocyte", "ok", "blur"]}
    )
    shifted = pd.DataFrame({"patient_id": "P1", "crop": ["a", "b", "c"], "qc_reason": ["not_lymphocyte", "ok", "ok"]})
    g0, g1, new = site.gate_shares(base, shifted)
    assert (g0, g1, new) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert all(math.isnan(v) for v in site.gate_shares(base, shifted.iloc[:0]))
