"""One reader for each kind of folder lympho writes and reads back: a features folder and a model folder.

A features folder is written by ``lympho extract`` (``patients.parquet``, ``cells.parquet`` or its
``cells/`` shards, ``manifest.json``) and ``lympho embed`` (``embeddings.parquet``); a model folder by
``lympho fit`` (``model.txt``, ``model.json``, ``cv_predictions.csv`` and the files of its fitted input
stages). Every problem with a file is raised as one error class per kind of folder
(:class:`~lympho_features.errors.FeaturesFolderError`, :class:`~lympho_features.errors.ModelFolderError`,
both :class:`~lympho_features.errors.ModelError`) whose message names the file and what to run.

Only pandas and the schema of model.json are imported here; LightGBM only when a model is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .errors import FeaturesFolderError, ModelFolderError
from .schema import validate_model_metadata


def load_cells(path: str | Path) -> pd.DataFrame:
    """Read the per-cell table written by ``lympho extract``.

    Parameters
    ----------
    path : str or Path
        A features folder (``cells.parquet`` in it, else its ``cells/`` shards),
        a single Parquet file, or a folder of Parquet shards.

    Returns
    -------
    DataFrame
        One row per cell; ``patient_id`` as strings.

    Raises
    ------
    FeaturesFolderError
        Naming the missing or unreadable file.
    """
    path = Path(path)
    if path.is_dir() and (path / "cells.parquet").is_file():
        path = path / "cells.parquet"
    elif path.is_dir() and (path / "cells").is_dir():
        path = path / "cells"
    elif path.is_dir() and (path / "patients.parquet").is_file():
        raise FeaturesFolderError(f"{path} has neither cells.parquet nor cells/ shards: re-run `lympho extract`")
    if path.is_file():
        cells = _read_parquet(path, f"{path} is not a readable Parquet file")
    elif path.is_dir():
        shards = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        if not shards:
            raise FeaturesFolderError(f"{path} has no cells.parquet and no Parquet shard: run `lympho extract` first")
        frames = [f for f in (_read_parquet(s, f"cell shard {s} is unreadable") for s in shards) if len(f)]
        cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["patient_id"])
    else:
        raise FeaturesFolderError(f"{path} not found: no per-cell table (run `lympho extract` first)")
    if "patient_id" not in cells.columns:
        raise FeaturesFolderError(f"{path} has no patient_id column")
    cells["patient_id"] = cells["patient_id"].astype(str)
    return cells


def _read_parquet(path: Path, problem: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated classes for a damaged file
        raise FeaturesFolderError(f"{problem}: {exc}") from None


def read_json(path: str | Path, error: type[Exception]):
    """A JSON file of a folder lympho wrote; ``error`` (the reader's class) names the file when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise error(f"{path} is not valid JSON: {exc}") from None


def read_lightgbm(path: str | Path, error: type[Exception]):
    """A LightGBM model in its text format, as a ``lightgbm.Booster``; ``error`` names the file when it is not one."""
    import lightgbm as lgb

    try:
        return lgb.Booster(model_file=str(path))
    except Exception as exc:  # LightGBM raises its own LightGBMError, or OSError
        raise error(f"{path} is not a LightGBM model: {exc}") from None


class FeaturesFolder:
    """A folder written by ``lympho extract`` (and possibly ``lympho embed``), read one table at a time.

    Parameters
    ----------
    path : str or Path
        The features folder.
    embeddings_dir : str or Path, optional
        Where ``embeddings.parquet`` is, when not in ``path`` (``--embeddings``).

    Every method raises :class:`~lympho_features.errors.FeaturesFolderError` naming the file.
    """

    PATIENTS = "patients.parquet"
    MANIFEST = "manifest.json"
    EMBEDDINGS = "embeddings.parquet"

    def __init__(self, path: str | Path, embeddings_dir: str | Path | None = None):
        self.path = Path(path)
        self.embeddings_dir = Path(embeddings_dir) if embeddings_dir is not None else None

    def __repr__(self) -> str:
        return f"FeaturesFolder({str(self.path)!r})"

    def patients(self) -> pd.DataFrame:
        """``patients.parquet``: one row per patient (clinical values, label, per-patient aggregates)."""
        path = self.path / self.PATIENTS
        if not path.is_file():
            raise FeaturesFolderError(f"{path} not found: run `lympho extract` first")
        return _read_parquet(path, f"{path} is not a readable Parquet file")

    def cells(self) -> pd.DataFrame:
        """The per-cell table (``cells.parquet``, else the ``cells/`` shards); see :func:`load_cells`."""
        return load_cells(self.path)

    def manifest(self) -> dict:
        """``manifest.json`` (settings, crop folder, versions), or an empty dict when the folder has none."""
        path = self.path / self.MANIFEST
        if not path.is_file():
            return {}
        manifest = read_json(path, FeaturesFolderError)
        if not isinstance(manifest, dict):
            raise FeaturesFolderError(f"{path}: expected a JSON object, found {type(manifest).__name__}")
        return manifest

    def embeddings(self) -> pd.DataFrame:
        """``embeddings.parquet`` of ``lympho embed``, from ``embeddings_dir`` when given."""
        folder = self.embeddings_dir or self.path
        path = folder / self.EMBEDDINGS
        if not path.is_file():
            raise FeaturesFolderError(
                f"{path} not found: CNN features need `lympho embed DATA_DIR --out {folder}` first"
            )
        return _read_parquet(path, f"{path} is not a readable Parquet file")


class ModelFolder:
    """A folder written by ``lympho fit``, read one file at a time.

    ``model.json`` is checked against its schema (:mod:`lympho_features.schema`) as it is read. Every
    method raises :class:`~lympho_features.errors.ModelFolderError` (or its
    :class:`~lympho_features.errors.ModelMetadataError`) naming the file.

    Parameters
    ----------
    path : str or Path
        The model folder.
    """

    MODEL_TXT = "model.txt"
    MODEL_JSON = "model.json"
    CV_PREDICTIONS = "cv_predictions.csv"
    #: The embedding aggregator of a ``cnn`` model (the cell models' files: ``CELL_MODEL_BLOCKS``).
    AGGREGATOR = "aggregator.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """The path of one of the folder's files."""
        return self.path / name

    def _require(self) -> None:
        for name in (self.MODEL_JSON, self.MODEL_TXT):
            if not (self.path / name).is_file():
                raise ModelFolderError(
                    f"{self.path / name} not found: is {self.path} a folder written by `lympho fit`?"
                )

    def metadata(self) -> dict:
        """``model.json``, validated against the schema."""
        self._require()
        path = self.path / self.MODEL_JSON
        return validate_model_metadata(read_json(path, ModelFolderError), path)

    def booster(self, metadata: dict):
        """``model.txt`` as a ``lightgbm.Booster``, checked against the inputs ``metadata`` lists."""
        self._require()
        path = self.path / self.MODEL_TXT
        booster = read_lightgbm(path, ModelFolderError)
        if booster.num_feature() != len(metadata["features"]):
            raise ModelFolderError(
                f"{path} has {booster.num_feature()} features but {self.MODEL_JSON} lists {len(metadata['features'])}"
            )
        return booster

    def cv_predictions(self) -> pd.DataFrame | None:
        """``cv_predictions.csv`` (``patient_id`` as strings), or None when the folder has none or it is unreadable."""
        try:
            return pd.read_csv(self.path / self.CV_PREDICTIONS, dtype={"patient_id": str})
        except (OSError, ValueError):
            return None

    def training_patient_ids(self) -> set[str] | None:
        """The patients the model was trained on, read from ``cv_predictions.csv`` (None without it)."""
        cvp = self.cv_predictions()
        if cvp is None or "patient_id" not in cvp.columns:
            return None
        return set(cvp["patient_id"].dropna())
