"""benchmarks/site_robustness.py's counting: changed and confident calls over repeats, and the lines over shifts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def site():
    return load_script("benchmarks/site_robustness.py", "site_robustness")


def _predictions(shifted: dict) -> pd.DataFrame:
    """Two repeats of 40 patients, well separated as acquired; ``shifted`` maps a shift to a function of p."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20, int), np.ones(20, int)]
    rows = []
    for r in range(2):
        p0 = np.clip(np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.15, y.size), 0.01, 0.99)
        for shift, f in {"none": lambda p: p, **shifted}.items():
            rows.append(
                pd.DataFrame(
                    {
                        "repeat": r,
                        "fold": 0,
                        "shift": shift,
                        "configuration": "clinical+cellmorph",
                        "patient_id": [f"P{i}" for i in range(y.size)],
                        "label": y,
                        "probability": f(p0),
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def test_summarise_counts_changes_and_confident_flips_over_repeats(site):
    # "swap" sends every patient to the other side of 0.5 in both repeats: every call changes, and those confident
    # on both sides count as flipped; "nudge" moves nobody across 0.5.
    pred = _predictions(
        {"swap": lambda p: 1 - p, "nudge": lambda p: np.where(p < 0.5, 0.9 * p, np.minimum(1.05 * p, 1.0))}
    )
    qc = {s: (1.0, 0.0) for s in ("none", "swap", "nudge")}
    t = site.summarise(pred, qc).set_index("shift")
    p0 = pred[pred["shift"] == "none"]["probability"].to_numpy()
    assert t.loc["swap", "calls_changed"] == 80  # 40 patients x 2 repeats
    assert 0 < t.loc["swap", "confident_flipped"] <= t.loc["swap", "calls_changed"]
    assert t.loc["swap", "mean_abs_dp"] == pytest.approx(np.mean(np.abs(1 - 2 * p0)))
    assert t.loc["nudge", "calls_changed"] == t.loc["nudge", "confident_flipped"] == 0
    assert t.loc["none", "delta_ba"] == 0 and t.loc["swap", "delta_ba"] < -0.5


def test_overall_lines_count_the_shifts_within_the_whole_target(site):
    table = pd.DataFrame(
        {
            "configuration": ["clinical+cellmorph"] * 4 + ["image"] * 2,
            "shift": ["none", "a", "b", "c", "none", "a"],
            "mean_abs_dp": [0.0, 0.02, 0.04, 0.02, 0.0, 0.04],
            "confident_flipped": [0, 0, 0, 1, 0, 0],
            "delta_ba": [0.0, -0.01, 0.0, 0.0, 0.0, -0.04],
        }
    )
    default, image = site.overall_lines(table, ["clinical+cellmorph", "image"])
    # a: within; b: |dp| over 0.03; c: a confident flip. The image model's 0.04 / -0.04 are within its 0.05.
    assert "mean |dp| 0.027" in default and "confident flips 1" in default and default.endswith("on 1")
    assert "over 1 shifts" in image and image.endswith("on 1")
