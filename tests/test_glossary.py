"""The glossary of clinician names: every column named, clinical values as a lab writes them, docs in step."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from lympho_features.features import FEATURE_DESCRIPTIONS
from lympho_features.glossary import (
    AREA_UNIT,
    GLOSSARY,
    LENGTH_UNIT,
    clinician_name,
    format_input_value,
    format_value,
    glossary_markdown,
    term,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "features.md"


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        ("log_lymph_count", math.log(8.3), "8.30 ×10⁹/L"),  # the model's log of the count, shown as the count
        ("lymph_count", 8.3, "8.30 ×10⁹/L"),  # the column as stored
        ("lymph_count", 12.345, "12.35 ×10⁹/L"),
        ("age", 67.99, "67 years"),  # completed years
        ("age", 8.0, "8 years"),
        ("gender_male", 1.0, "male"),
        ("gender_male", 0.0, "female"),
        ("gender", "F", "female"),
        ("log_lymph_count", float("nan"), "missing"),
        ("age", None, "missing"),
    ],
)
def test_clinical_inputs_are_written_as_a_lab_report_would(name, value, shown):
    assert format_input_value(name, value) == shown


def test_ascii_units_for_files():
    assert format_input_value("log_lymph_count", math.log(8.3), ascii=True) == "8.30 x10^9/L"
    assert format_input_value("nucleus_area", 1234.5, ascii=True) == "1,234 um^2"  # µm² has no ASCII spelling


def test_every_per_cell_column_and_summary_has_a_clinician_name_and_unit():
    for col in FEATURE_DESCRIPTIONS:
        t = term(col)
        assert t is not None, col
        assert "_" not in t.name, (col, t.name)  # a name, not a column spelled with spaces
    # sizes carry the length or area unit (one change when the crops get a physical scale)
    assert term("nc_rim_width_max").unit == LENGTH_UNIT and term("shape_nucleus_area").unit == AREA_UNIT
    assert format_value("nc_rim_width_max__mean", 6.23) == f"6.23 {LENGTH_UNIT}"
    assert term("nc_rim_width_max__mean").name == "thickest cytoplasm rim, mean over cells"
    # shares in percent, a share of cells above a score cut-off too
    assert format_value("lbp_nucleus_u6", 0.057) == "5.7%"
    assert format_value("cellscore_morph__frac_gt50", 0.42) == "42%"
    assert "cell score" in clinician_name("cellscore_morph__q90")
    assert clinician_name("not_a_column") == "not a column"


def test_docs_glossary_table_is_generated_from_the_glossary():
    doc = DOC.read_text(encoding="utf-8")
    section = re.search(r"<!-- glossary:start[^>]*-->\n(.*?)<!-- glossary:end -->", doc, re.S)
    assert section, "docs/features.md lacks its glossary table"
    assert section.group(1) == glossary_markdown(), (
        "docs/features.md's glossary is out of date: paste lympho_features.glossary.glossary_markdown() in it"
    )
    rows = [r for r in section.group(1).splitlines() if r.startswith("| `")]
    assert len(rows) == len(GLOSSARY) and all(f"| `{c}` |" in section.group(1) for c in GLOSSARY)


def test_format_value_handles_arrays_scalars():
    assert format_value("nucleus_area", np.float32(1500.0)) == f"1,500 {AREA_UNIT}"
