"""Weakly supervised cell scores: reading cells, weights, the cell model, and that it never sees held-out patients."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lympho_features.errors import CellScoreError, FeaturesFolderError
from lympho_features.feature_sets import CELL_MODEL_BLOCKS, MORPH_PREFIX, PATIENT_SUMMARIES
from lympho_features.folders import load_cells
from lympho_features.model import (
    CellScoreAggregator,
    CellScorer,
    Cohort,
    FoldFeatures,
    cell_weights,
    cross_validate_sets,
)


def synthetic_cells(n_patients=24, seed=0, shift=1.5, patient_code=False, truth=False):
    """Patients half tumoral; tumoral patients have a share of cells shifted on ``atypia``.

    With ``patient_code``, every cell carries a random constant of its patient (no relation to the label):
    a cell model can memorise training patients through it, but it says nothing about new patients.
    With ``truth``, a boolean column ``truth_atypical`` (not a feature) says which cells were shifted.
    """
    rng = np.random.default_rng(seed)
    rows, labels = [], {}
    for p in range(n_patients):
        pid = f"P{p}"
        y = p % 2
        labels[pid] = y
        code = rng.normal()
        n = int(rng.integers(15, 40))
        for c in range(n):
            atypical = y == 1 and rng.random() < 0.6
            row = {
                "patient_id": pid,
                "image": f"{pid}/{c:03d}.jpg",
                "qc_ok": c % 10 != 9,
                "qc_reason": "ok" if c % 10 != 9 else "touching_cells",
                "atypia": rng.normal() + shift * atypical,
                "noise": rng.normal(),
            }
            if patient_code:
                row["code"] = code + rng.normal(0, 0.01)
            if truth:
                row["truth_atypical"] = bool(atypical)
            rows.append(row)
    return pd.DataFrame(rows), pd.Series(labels)


def test_load_cells_reads_a_file_a_features_folder_or_shards(tmp_path):
    cells, _ = synthetic_cells(4)
    cells.to_parquet(tmp_path / "cells.parquet")
    pd.testing.assert_frame_equal(load_cells(tmp_path), load_cells(tmp_path / "cells.parquet"))
    shards = tmp_path / "sharded" / "cells"
    shards.mkdir(parents=True)
    for pid, g in cells.groupby("patient_id"):
        g.to_parquet(shards / f"{pid}.parquet")
    from_shards = load_cells(tmp_path / "sharded")  # no cells.parquet there: the shards are read
    assert len(from_shards) == len(cells) and set(from_shards["patient_id"]) == set(cells["patient_id"])
    assert len(load_cells(shards)) == len(cells)
    with pytest.raises(FeaturesFolderError, match="not found"):
        load_cells(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cells.parquet").write_text("not parquet")
    with pytest.raises(FeaturesFolderError, match="cells.parquet"):
        load_cells(tmp_path / "bad")


def test_weights_give_every_patient_and_both_classes_the_same_weight():
    pid = np.array(["a"] * 10 + ["b"] * 2 + ["c"] * 5)
    y = np.array([1] * 12 + [0] * 5)
    w = cell_weights(pid, y)
    per_patient = pd.Series(w).groupby(pid).sum()
    assert per_patient["a"] == pytest.approx(per_patient["b"])
    assert per_patient["c"] == pytest.approx(per_patient["a"] + per_patient["b"])
    assert w.mean() == pytest.approx(1.0)


def test_inner_models_keep_the_weights_of_every_training_cell():
    # The inner and selected models train on subsets of one binned Dataset of every training cell: LightGBM
    # gives a subset its parent's weights (each patient weighing the same over all its cells).
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    pid = np.repeat(["a", "b", "c", "d"], [10, 2, 5, 3])
    y = np.repeat([1, 1, 0, 0], [10, 2, 5, 3])
    w = cell_weights(pid, y)
    data = lgb.Dataset(rng.normal(size=(20, 2)), label=y, weight=w, params={"verbosity": -1}, free_raw_data=False)
    data.construct()
    rows = np.array([0, 3, 10, 11, 12, 19])
    sub = CellScorer._subset(data, rows).construct()
    np.testing.assert_allclose(sub.get_field("weight"), w[rows])


def test_cell_model_learns_planted_cell_signal_and_scores_out_of_fold():
    cells, labels = synthetic_cells(30)
    scorer = CellScorer(n_estimators=40, inner_folds=3).fit(cells, labels)
    # Only cells that passed QC, of labelled patients, are learned from.
    assert len(scorer.oof_scores_) == int(cells["qc_ok"].sum())
    assert "atypia" in scorer.features_ and "qc_ok" not in scorer.features_
    agg = CellScoreAggregator().transform(scorer.oof_scores_, labels.index)
    assert roc_auc_score(labels, agg["cellscore__mean"]) > 0.85
    assert roc_auc_score(labels, agg["cellscore__frac_gt50"]) > 0.85


def test_cell_explanations_add_up_to_the_score_and_name_the_planted_feature():
    cells, labels = synthetic_cells(30, seed=4)
    scorer = CellScorer(n_estimators=40, inner_folds=3).fit(cells, labels)
    why = scorer.explain_cells(cells)
    scores = scorer.score_cells(cells)["score"].to_numpy()
    assert list(why.columns) == scorer.features_ and len(why) == len(scores)
    assert set(why.index) == set(cells.index[cells["qc_ok"]])  # usable cells only, their rows of `cells`
    # Each row plus the model's expected value is the logit of the cell's score.
    logit = np.log(scores / (1 - scores))
    expected = logit - why.sum(axis=1).to_numpy()
    assert np.allclose(expected, expected[0], atol=1e-6)
    # The cells it scores most tumoral are so because of `atypia` (the planted signal), not `noise`.
    top = np.argsort(-scores)[:20]
    assert (why["atypia"].to_numpy()[top] > why["noise"].to_numpy()[top]).all()


def test_out_of_fold_scores_cannot_memorise_patients():
    # A patient-identifying cell feature lets the model memorise its training patients: in-sample scores
    # separate the classes, the out-of-fold scores the patient model learns from must not.
    cells, labels = synthetic_cells(30, shift=0.0, patient_code=True)
    scorer = CellScorer(n_estimators=60, min_child_samples=5, inner_folds=3).fit(cells, labels)
    agg = CellScoreAggregator()
    in_sample = agg.transform(scorer.score_cells(cells), labels.index)["cellscore__mean"]
    oof = agg.transform(scorer.oof_scores_, labels.index)["cellscore__mean"]
    assert roc_auc_score(labels, in_sample) > 0.95
    assert roc_auc_score(labels, oof) < 0.75


def test_positive_selection_learns_atypical_cells_not_the_tumoral_patients_normal_ones():
    # A tumoral patient's blood keeps normal lymphocytes (40 % of its cells here): labelled tumoral with
    # their patient, they teach the model that normal cells are somewhat tumoral. Leaving out the tumoral
    # patients' cells that score like reactive ones, the model scores those normal cells as reactive.
    cells, labels = synthetic_cells(40, seed=2, shift=2.0, truth=True)
    new, new_labels = synthetic_cells(40, seed=3, shift=2.0, truth=True)
    new = new[new["qc_ok"]]
    tumoral_normal = new["truth_atypical"].eq(False).to_numpy() & new_labels.reindex(new["patient_id"]).eq(1).to_numpy()
    reactive = new_labels.reindex(new["patient_id"]).eq(0).to_numpy()
    gaps = {}
    for q in (None, 0.9):
        scorer = CellScorer(n_estimators=40, inner_folds=3, positive_quantile=q).fit(cells, labels)
        assert scorer.features_ == ["atypia", "noise"]  # the truth column is not a feature
        s = scorer.score_cells(new)["score"].to_numpy()
        gaps[q] = s[tumoral_normal].mean() - s[reactive].mean()
        # Atypical cells still score above both kinds of normal cell.
        assert roc_auc_score(new["truth_atypical"], s) > 0.85
        # The out-of-fold scores (what the patient model learns from) still rank the patients.
        agg = CellScoreAggregator().transform(scorer.oof_scores_, labels.index)
        assert roc_auc_score(labels, agg["cellscore__mean"]) > 0.85
    assert gaps[0.9] < 0.5 * gaps[None]


def test_positive_selection_keeps_reactive_cells_and_the_tumoral_cells_above_their_quantile():
    scorer = CellScorer(positive_quantile=0.5)
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.15, 0.35, 0.6, 0.9])
    rows = np.arange(8)
    # Reactive median 0.25: every reactive cell stays, tumoral cells at 0.35, 0.6 and 0.9 stay.
    np.testing.assert_array_equal(scorer._selected(rows, scores, y), [0, 1, 2, 3, 5, 6, 7])
    np.testing.assert_array_equal(scorer._selected(rows[2:], scores, y), [2, 3, 6, 7])  # quantile of these rows
    # No tumoral cell above the reactive quantile, a missing score or one class only: nothing is left out.
    low = np.where(y == 1, 0.0, scores)
    np.testing.assert_array_equal(scorer._selected(rows, low, y), rows)
    np.testing.assert_array_equal(scorer._selected(rows, np.where(rows == 3, np.nan, scores), y), rows)
    np.testing.assert_array_equal(scorer._selected(rows[:4], scores, y), rows[:4])


def test_positive_selection_needs_three_inner_folds():
    # With two inner folds no model has seen neither fold: nothing is selected, the plain model is fitted.
    cells, labels = synthetic_cells(16, seed=6)
    plain = CellScorer(n_estimators=20, inner_folds=2).fit(cells, labels)
    selected = CellScorer(n_estimators=20, inner_folds=2, positive_quantile=0.9).fit(cells, labels)
    pd.testing.assert_frame_equal(plain.oof_scores_, selected.oof_scores_)
    np.testing.assert_array_equal(plain.score_cells(cells)["score"], selected.score_cells(cells)["score"])
    three = CellScorer(n_estimators=20, inner_folds=3, positive_quantile=0.9).fit(cells, labels)
    assert not np.allclose(three.score_cells(cells)["score"], plain.score_cells(cells)["score"])


def test_out_of_fold_scores_cannot_memorise_patients_with_positive_selection():
    # The cells that train inner fold i's model are selected by models that saw neither fold i nor the
    # cells' own fold: a memorisable patient code must not carry fold i's labels into its scores. Selecting
    # with the first-stage out-of-fold scores instead (their models saw fold i) gave an AUC of 0.70 here
    # (0.69-0.78 over six seeds, against 0.48-0.58 for this selection).
    cells, labels = synthetic_cells(60, shift=0.0, patient_code=True, seed=5)
    scorer = CellScorer(n_estimators=60, min_child_samples=5, inner_folds=4, positive_quantile=0.9)
    scorer.fit(cells, labels)
    oof = CellScoreAggregator().transform(scorer.oof_scores_, labels.index)["cellscore__mean"]
    assert roc_auc_score(labels, oof) < 0.63


@pytest.mark.parametrize("feature_set", ["cellscore", "image"])
def test_held_out_patients_never_reach_the_cell_model(monkeypatch, feature_set):
    cells, labels = synthetic_cells(20, patient_code=True, shift=0.0)
    seen: list[set] = []
    original = CellScorer.fit

    def spy(self, cells_arg, labels_arg):
        seen.append(set(cells_arg["patient_id"]) | set(pd.Series(labels_arg).index))
        return original(self, cells_arg, labels_arg)

    monkeypatch.setattr(CellScorer, "fit", spy)
    patients = pd.DataFrame(
        {
            "patient_id": labels.index,
            "label": labels.to_numpy(),
            "age": 60.0,
            "gender": "M",
            "lymph_count": 5.0,
            "n_cells": 1,
        }
    )
    cohort = Cohort.from_tables(patients, cells)
    res = cross_validate_sets(cohort, labels.to_numpy(), [feature_set], folds=4, repeats=2, seed=3)
    pred = res[feature_set].predictions
    assert len(seen) == 8
    for (_, f), g in pred.groupby(["repeat", "fold"]):
        held_out = set(g["patient_id"])
        fits = [s for s in seen if not (s & held_out)]
        assert fits, f"fold {f}: every cell model saw a held-out patient"
    # Each fit saw exactly the training patients of one fold: never a held-out one.
    folds_of_fit = [{p for p in labels.index if p not in s} for s in seen]
    held = [set(g["patient_id"]) for _, g in pred.groupby(["repeat", "fold"])]
    assert sorted(map(sorted, folds_of_fit)) == sorted(map(sorted, held))
    # A memorisable patient code is worthless on unseen patients (no leak to exploit).
    assert res[feature_set].summary["roc_auc_mean"] < 0.8


def test_morphology_cell_model_leaves_stain_colour_out():
    # The label is planted in a colour column only: the cell model on every feature finds it, the cellmorph one
    # (no colour_*) cannot, and its summaries get their own column names.
    cells, labels = synthetic_cells(32, shift=0.0)
    rng = np.random.default_rng(1)
    cells["color_nucleus_od_mean"] = rng.normal(size=len(cells)) + 1.5 * labels.reindex(cells["patient_id"]).to_numpy()
    scorer = CellScorer(n_estimators=30, exclude_prefixes=("color_",), inner_folds=3).fit(cells, labels)
    assert scorer.features_ == ["atypia", "noise"]
    patients = pd.DataFrame(
        {"patient_id": labels.index, "label": labels.to_numpy(), "age": 60.0, "gender": "F", "lymph_count": 4.0}
    )
    cohort = Cohort.from_tables(patients, cells)
    res = cross_validate_sets(cohort, labels.to_numpy(), ["cellscore", "cellmorph"], folds=4, repeats=1)
    assert res["cellscore"].summary["roc_auc_mean"] > 0.85
    assert res["cellmorph"].summary["roc_auc_mean"] < 0.75
    assert res["cellscore"].summary["n_features"] == res["cellmorph"].summary["n_features"] == len(PATIENT_SUMMARIES)


def test_patient_model_takes_each_cell_blocks_summaries_and_reads_older_models():
    # The patient inputs of a cell-model block are the block's own summaries (its scores' centre, not their tails);
    # a model fitted when every summary was an input (feature_names_ with q90 and frac_gt70) still reads new
    # patients, since transform computes every summary and keeps the model's columns.
    cells, labels = synthetic_cells(24)
    patients = pd.DataFrame(
        {"patient_id": labels.index, "label": labels.to_numpy(), "age": 60.0, "gender": "F", "lymph_count": 4.0}
    )
    cohort = Cohort.from_tables(patients, cells)
    ff = FoldFeatures(("clinical", "cellmorph", "cellatyp"), cell_params={"n_estimators": 20, "inner_folds": 2})
    ff.fit(cohort, labels.to_numpy())
    for block in ("cellmorph", "cellatyp"):
        spec = CELL_MODEL_BLOCKS[block]
        assert [c for c in ff.feature_names_ if c.startswith(spec.prefix)] == [spec.prefix + s for s in spec.summaries]
    assert MORPH_PREFIX + "q90" not in ff.feature_names_
    older = [*ff.feature_names_, MORPH_PREFIX + "q90", MORPH_PREFIX + "frac_gt70"]
    old = FoldFeatures.fitted(ff.blocks, (), older, ff.cell_scorers_, None)
    X = old.transform(cohort)
    assert list(X.columns) == older
    scores = ff.cell_scorers_["cellmorph"].score_cells(cells)
    q90 = scores.groupby(scores["patient_id"].astype(str))["score"].quantile(0.9)
    np.testing.assert_allclose(X[MORPH_PREFIX + "q90"].to_numpy(), q90.reindex(X.index).to_numpy())


def test_cell_model_round_trips_through_text_and_json(tmp_path):
    cells, labels = synthetic_cells(12)
    scorer = CellScorer(n_estimators=20, inner_folds=2).fit(cells, labels)
    scorer.save(tmp_path / "cell_model.txt", tmp_path / "cell_model.json")
    back = CellScorer.load(tmp_path / "cell_model.txt", tmp_path / "cell_model.json")
    assert back.features_ == scorer.features_ and back.get_params() == scorer.get_params()
    np.testing.assert_allclose(back.score_cells(cells)["score"], scorer.score_cells(cells)["score"])
    # The typical training cell (median of each feature over the usable training cells) travels with it.
    ok = cells[cells["qc_ok"]]
    assert back.feature_medians_ == scorer.feature_medians_
    assert np.isclose(back.feature_medians_["atypia"], ok["atypia"].median())
    with pytest.raises(CellScoreError, match="missing.txt not found"):
        CellScorer.load(tmp_path / "missing.txt", tmp_path / "cell_model.json")
    with pytest.raises(CellScoreError, match="lack"):
        scorer.score_cells(cells.drop(columns=["atypia"]))


def test_fit_refuses_one_class_or_no_usable_cell():
    cells, labels = synthetic_cells(6)
    with pytest.raises(CellScoreError, match="one class"):
        CellScorer().fit(cells, labels.map(lambda _: 1))
    with pytest.raises(CellScoreError, match="no usable cell"):
        CellScorer().fit(cells.assign(qc_ok=False), labels)


def test_aggregator_summarises_each_patient():
    scores = pd.DataFrame({"patient_id": ["a", "a", "a", "a", "b"], "score": [0.1, 0.2, 0.6, 0.9, 0.4]})
    out = CellScoreAggregator(quantiles=(0.5,), cutoffs=(0.5, 0.7)).transform(scores, ["b", "a", "z"])
    assert list(out.columns) == ["cellscore__mean", "cellscore__median", "cellscore__frac_gt50", "cellscore__frac_gt70"]
    assert list(out.index) == ["b", "a", "z"]
    assert out.loc["a", "cellscore__mean"] == pytest.approx(0.45)
    assert out.loc["a", "cellscore__median"] == pytest.approx(0.4)
    assert out.loc["a", "cellscore__frac_gt50"] == pytest.approx(0.5)
    assert out.loc["a", "cellscore__frac_gt70"] == pytest.approx(0.25)
    assert out.loc["b", "cellscore__frac_gt50"] == 0.0
    assert out.loc["z"].isna().all()


def test_cross_validation_does_not_depend_on_parallel_jobs():
    cells, labels = synthetic_cells(32)
    patients = pd.DataFrame(
        {"patient_id": labels.index, "label": labels.to_numpy(), "age": 60.0, "gender": "F", "lymph_count": 4.0}
    )
    cohort = Cohort.from_tables(patients, cells)
    a = cross_validate_sets(cohort, labels.to_numpy(), ["clinical+cellscore"], folds=4, repeats=1, n_jobs=1)
    b = cross_validate_sets(cohort, labels.to_numpy(), ["clinical+cellscore"], folds=4, repeats=1, n_jobs=2)
    pd.testing.assert_frame_equal(a["clinical+cellscore"].predictions, b["clinical+cellscore"].predictions)
    assert a["clinical+cellscore"].summary["roc_auc_mean"] > 0.8  # the planted cell signal reaches the patients


def test_cell_model_blocks_are_the_feature_sets_cell_score_blocks():
    # The names live in feature_sets (no scikit-learn import for the command line), the models in model.cellscore.
    from lympho_features.feature_sets import BLOCKS, CELL_MODEL_BLOCKS, CELL_SCORE_BLOCKS, cell_model_block

    assert tuple(CELL_MODEL_BLOCKS) == CELL_SCORE_BLOCKS and set(CELL_SCORE_BLOCKS) <= set(BLOCKS)
    prefixes = [spec.prefix for spec in CELL_MODEL_BLOCKS.values()]
    assert len(set(prefixes)) == len(prefixes)
    for block, spec in CELL_MODEL_BLOCKS.items():
        assert cell_model_block(f"{spec.prefix}mean") == block
    assert cell_model_block("nc_ratio__mean") is None and cell_model_block("cnn_pc0__mean") is None


def test_default_and_image_cell_models_leave_acquisition_fragile_families_out():
    """The cell models of the default and image configurations never read LBP, radial or the finest granularity
    columns (another lab's focus and compression move them), nor colour; the all-measurement model still does."""
    from lympho_features.model import FoldFeatures

    rng = np.random.default_rng(0)
    rows = []
    for p in range(16):
        for _ in range(12):
            rows.append(
                {
                    "patient_id": f"P{p}",
                    "qc_ok": True,
                    "shape_nucleus_area": rng.normal(p % 2, 1),
                    "lbp_nucleus_u4": rng.normal(),
                    "radial_nucleus_ring1": rng.normal(),
                    "granularity_nucleus_r1": rng.normal(),
                    "granularity_nucleus_r2": rng.normal(),
                    "granularity_nucleus_r3": rng.normal(),
                    "color_nucleus_od_mean": rng.normal(),
                    "haralick_contrast_d1": rng.normal(),
                }
            )
    cells = pd.DataFrame(rows)
    labels = pd.Series({f"P{p}": p % 2 for p in range(16)})
    ff = FoldFeatures(("cellscore", "cellmorph", "cellatyp"), random_state=0)
    scorers = {
        b: ff._cell_scorer(b).set_params(n_estimators=10, inner_folds=3).fit(cells, labels)
        for b in ("cellscore", "cellmorph", "cellatyp")
    }
    for b in ("cellmorph", "cellatyp"):
        fragile = ("lbp_", "radial_", "color_", "granularity_nucleus_r1", "granularity_nucleus_r2")
        assert not [f for f in scorers[b].features_ if f.startswith(fragile)], b
        assert {"shape_nucleus_area", "haralick_contrast_d1", "granularity_nucleus_r3"} <= set(scorers[b].features_)
    assert {"lbp_nucleus_u4", "radial_nucleus_ring1", "granularity_nucleus_r1"} <= set(scorers["cellscore"].features_)
