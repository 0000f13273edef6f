"""The errors lympho raises on purpose, under one base class.

Every message names what is wrong and where (the file, the CSV row, the patient), so the
CLI prints it on one line and exits 1; a traceback means a bug in lympho, not in the input.
Each stage raises its own subclass, so a caller can catch one stage's problems or all of them
(``except LymphoError``).
"""

from __future__ import annotations


class LymphoError(Exception):
    """A problem with the user's input or environment that stops the command; the message says why."""


class DatasetError(LymphoError):
    """A problem with the user's input that stops the run; the message names the file or row."""


class ImageError(LymphoError):
    """One image cannot be used; the message is the recorded skip reason."""


class OutputLockedError(LymphoError):
    """The output folder is being written by another run."""


class CellScoreError(LymphoError):
    """A cells table or a saved cell model that cannot be used; the message says why."""


class AggregatorError(LymphoError):
    """An embeddings table or a saved aggregator that cannot be used; the message says why."""


class ModelError(LymphoError):
    """A model folder or a features table that cannot be used; the message says why."""


class FeaturesFolderError(ModelError):
    """A features folder (written by ``lympho extract`` / ``lympho embed``) lacks a file or has an unreadable one;
    the message names the file (:class:`lympho_features.folders.FeaturesFolder`)."""


class ModelFolderError(ModelError):
    """A model folder (written by ``lympho fit``) lacks a file or has an unreadable one; the message names the
    file (:class:`lympho_features.folders.ModelFolder`)."""


class ModelMetadataError(ModelFolderError):
    """model.json does not follow the schema; the message names the file and the key."""


class FeaturesMismatchError(ModelError):
    """A features folder measured otherwise (features version, segmentation or feature settings) than the
    features a model was fitted on; the message names every difference and what to re-run."""


class ReportError(LymphoError):
    """A model or features folder the report cannot use; the message says why."""


class EmbedError(LymphoError):
    """A problem that stops ``lympho embed`` (missing torch, bad weights, no CUDA...); the message says why."""


class SettingsError(LymphoError, ValueError):
    """A setting outside what it can mean (a negative area, a fraction above 1...); the message names the setting."""


class OutputError(LymphoError):
    """An output path that cannot be written (a file where a folder is expected, no permission...); checked before any work."""


class AcquisitionError(LymphoError, ValueError):
    """A re-acquisition shift that cannot be applied (unknown step, bad value, not an RGB crop)."""
