import numpy as np
import pandas as pd
import pytest

from lympho_features.aggregate import aggregate_cells, build_patient_table, cell_feature_columns


def cells_table():
    return pd.DataFrame(
        {
            "patient_id": ["A", "A", "A", "B", "B"],
            "image": ["A/1", "A/2", "A/3", "B/1", "B/2"],
            "qc_ok": [True, True, False, True, True],
            "qc_reason": ["ok", "ok", "smudge", "ok", "ok"],
            "is_smudge": [False, False, True, False, False],
            "nc_ratio": [0.5, 0.7, 0.99, 0.8, 0.8],
        }
    )


def test_aggregates_use_qc_ok_cells_only_and_count_flags():
    agg = aggregate_cells(cells_table()).set_index("patient_id")
    assert agg.loc["A", "n_cells"] == 3 and agg.loc["A", "n_cells_ok"] == 2
    assert agg.loc["A", "nc_ratio__mean"] == pytest.approx(0.6)
    assert agg.loc["A", "nc_ratio__std"] == pytest.approx(0.1)
    assert agg.loc["A", "frac_is_smudge"] == pytest.approx(1 / 3)
    assert agg.loc["B", "nc_ratio__median"] == pytest.approx(0.8)
    assert agg.loc["B", "frac_is_smudge"] == 0


def test_feature_columns_exclude_meta_and_flags():
    assert cell_feature_columns(cells_table()) == ["nc_ratio"]


def test_patient_table_keeps_patients_without_cells():
    clinical = pd.DataFrame(
        {
            "patient_id": ["A", "B", "C"],
            "label": pd.array([1, 0, None], dtype="Int64"),
            "age": [70.0, 40.0, 50.0],
            "gender": ["M", "F", None],
            "lymph_count": [20.0, 5.0, 7.0],
        }
    )
    table = build_patient_table(clinical, cells_table()).set_index("patient_id")
    assert table.loc["C", "n_cells"] == 0
    assert np.isnan(table.loc["C", "nc_ratio__mean"])
    assert table["label"].dtype == "Int64" and pd.isna(table.loc["C", "label"])


def test_informational_flag_on_kept_cells_is_counted_and_cells_stay_in_aggregates():
    cells = cells_table()
    cells["qc_neighbour_split"] = [True, False, False, True, True]  # cell kept after cutting a neighbour off
    cells["is_granulocyte"] = [False, False, True, False, False]
    agg = aggregate_cells(cells).set_index("patient_id")
    assert agg.loc["A", "frac_qc_neighbour_split"] == pytest.approx(1 / 3)
    assert agg.loc["B", "frac_qc_neighbour_split"] == 1.0
    assert agg.loc["A", "frac_is_granulocyte"] == pytest.approx(1 / 3)
    assert agg.loc["B", "nc_ratio__mean"] == pytest.approx(0.8)  # flagged-but-ok cells are measured
    assert "qc_neighbour_split__mean" not in agg.columns
