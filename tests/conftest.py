"""Shared fixtures: tiny synthetic cohorts drawn by the tests, and the real data when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from lympho_features.synthetic import make_cohort

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lymphocytosis"

requires_real_data = pytest.mark.skipif(
    not (REAL_DATA / "trainset").is_dir(), reason=f"real data not found at {REAL_DATA}"
)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A 12-patient synthetic cohort in the challenge layout (read-only for tests)."""
    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, n_patients=12, cells_per_patient=(5, 8), seed=1, size=160)
    return root


@pytest.fixture(scope="session")
def tiny_features(tiny_cohort, tmp_path_factory) -> Path:
    """Features extracted once from :func:`tiny_cohort`."""
    from lympho_features.extract import extract

    out = tmp_path_factory.mktemp("features")
    extract(tiny_cohort, out, jobs=1, progress=False)
    return out
