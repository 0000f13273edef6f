"""A LightGBM model predicted through the library's C API, without importing the ``lightgbm`` package.

``import lightgbm`` imports scikit-learn (for lightgbm's scikit-learn interface): about 1.5 s of CPU,
which every ``lympho extract`` worker paid for the cell-type gate alone, more than the gate's own
predictions over a run of a hundred patients. :class:`NativeBooster` loads the package's compiled library
(``lib_lightgbm``, found without importing the package) with :mod:`ctypes` and makes the calls that
``lightgbm.Booster(model_str=...).predict(X)`` makes (load the model from its text; predict a float64
matrix, every iteration, normal output), so its predictions are the package's, bit for bit
(``tests/test_celltype.py`` compares them). Anything else asked of it (feature importance, saving...) is
handed to a ``lightgbm.Booster`` built from the same text on first use.

:func:`booster_from_text` picks it when the library is found and the installed lightgbm is a version whose
C API these calls match (:data:`C_API_VERSIONS`), else returns a ``lightgbm.Booster``.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Major versions of lightgbm whose C API has the signatures used here (unchanged from 3.0 to 4.x).
C_API_VERSIONS = ("3", "4")

# Constants of LightGBM's c_api.h.
_PREDICT_NORMAL = 0
_DTYPE_FLOAT64 = 1
_ROW_MAJOR = 1


def _library_paths() -> list[Path]:
    """Where the lightgbm package keeps its compiled library (the places ``lightgbm.libpath`` looks)."""
    spec = importlib.util.find_spec("lightgbm")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return []
    package = Path(next(iter(spec.submodule_search_locations)))
    name = {"win32": "lib_lightgbm.dll", "darwin": "lib_lightgbm.dylib"}.get(sys.platform, "lib_lightgbm.so")
    return [folder / name for folder in (package.parent, package / "bin", package / "lib")]


@lru_cache(maxsize=1)
def native_library() -> ctypes.CDLL | None:
    """The lightgbm package's compiled library, loaded once a process; None where it cannot be used.

    None when lightgbm is not installed, is not a version of :data:`C_API_VERSIONS`, or its library is
    not where the package keeps it or does not load.
    """
    try:
        version = importlib.metadata.version("lightgbm")
    except importlib.metadata.PackageNotFoundError:
        return None
    if version.split(".")[0] not in C_API_VERSIONS:
        return None
    for path in _library_paths():
        if path.is_file():
            try:
                lib = ctypes.cdll.LoadLibrary(str(path))
            except OSError:
                return None
            lib.LGBM_GetLastError.restype = ctypes.c_char_p
            return lib
    return None


class NativeBooster:
    """A LightGBM model loaded from its text and predicted through :func:`native_library`.

    Parameters
    ----------
    model_str : str
        The model, as ``lightgbm.Booster.model_to_string`` (or a saved model file) writes it.
    lib : ctypes.CDLL, optional
        The library (default: :func:`native_library`, which must not be None).

    Raises
    ------
    ValueError
        The library refuses the text (LightGBM's message).
    """

    def __init__(self, model_str: str, lib: ctypes.CDLL | None = None):
        self._lib = lib or native_library()
        if self._lib is None:
            raise ValueError("the LightGBM library cannot be loaded")
        self._model_str = model_str
        self._full = None
        self._handle = ctypes.c_void_p()
        iterations = ctypes.c_int(0)
        self._call(
            "LGBM_BoosterLoadModelFromString",
            ctypes.c_char_p(model_str.encode("utf-8")),
            ctypes.byref(iterations),
            ctypes.byref(self._handle),
        )
        self._num_class = self._get_int("LGBM_BoosterGetNumClasses")

    def _call(self, name: str, *args) -> None:
        if getattr(self._lib, name)(*args) != 0:
            raise ValueError(self._lib.LGBM_GetLastError().decode("utf-8", "replace"))

    def _get_int(self, name: str) -> int:
        out = ctypes.c_int(0)
        self._call(name, self._handle, ctypes.byref(out))
        return out.value

    def num_feature(self) -> int:
        """Number of input features."""
        return self._get_int("LGBM_BoosterGetNumFeature")

    def num_model_per_iteration(self) -> int:
        """Trees per boosting iteration (the number of classes of a multiclass model)."""
        return self._get_int("LGBM_BoosterNumModelPerIteration")

    def feature_name(self) -> list[str]:
        """Names of the input features, in order."""
        n = self.num_feature()
        size = 256
        while True:
            buffers = [ctypes.create_string_buffer(size) for _ in range(n)]
            pointers = (ctypes.c_char_p * n)(*map(ctypes.addressof, buffers))
            got, needed = ctypes.c_int(0), ctypes.c_size_t(0)
            self._call(
                "LGBM_BoosterGetFeatureNames",
                self._handle,
                ctypes.c_int(n),
                ctypes.byref(got),
                ctypes.c_size_t(size),
                ctypes.byref(needed),
                pointers,
            )
            if needed.value <= size:
                return [b.value.decode("utf-8") for b in buffers[: got.value]]
            size = needed.value

    def predict(self, X) -> np.ndarray:
        """``lightgbm.Booster.predict(X)``: one value per row, or one row of class probabilities (multiclass).

        Parameters
        ----------
        X : array-like, shape (n_rows, n_features)
            Read as float64 (NaN: missing).
        """
        X = np.ascontiguousarray(X, np.float64)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D matrix of features, got shape {X.shape}")
        nrow, ncol = X.shape
        if nrow == 0:
            return np.zeros((0, self._num_class) if self._num_class > 1 else 0)
        n = ctypes.c_int64(0)
        self._call(
            "LGBM_BoosterCalcNumPredict",
            self._handle,
            ctypes.c_int(nrow),
            ctypes.c_int(_PREDICT_NORMAL),
            ctypes.c_int(0),
            ctypes.c_int(-1),
            ctypes.byref(n),
        )
        out = np.empty(n.value, np.float64)
        written = ctypes.c_int64(0)
        self._call(
            "LGBM_BoosterPredictForMat",
            self._handle,
            X.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_int(_DTYPE_FLOAT64),
            ctypes.c_int32(nrow),
            ctypes.c_int32(ncol),
            ctypes.c_int(_ROW_MAJOR),
            ctypes.c_int(_PREDICT_NORMAL),
            ctypes.c_int(0),  # first iteration
            ctypes.c_int(-1),  # every iteration (a model read from text has no best iteration)
            ctypes.c_char_p(b""),
            ctypes.byref(written),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
        )
        if written.value != out.size:
            raise ValueError("LightGBM wrote fewer predictions than it announced")
        return out.reshape(nrow, -1) if out.size != nrow else out

    def __getattr__(self, name: str):
        # Everything else of lightgbm.Booster, from the same model text, imported on first use.
        if name.startswith("_"):
            raise AttributeError(name)
        if self._full is None:
            import lightgbm

            self._full = lightgbm.Booster(model_str=self._model_str)
        return getattr(self._full, name)

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle is not None and handle.value and getattr(self, "_lib", None) is not None:
            self._lib.LGBM_BoosterFree(handle)
            self._handle = None


def booster_from_text(model_str: str):
    """A model to predict with: :class:`NativeBooster` where the library can be used, else ``lightgbm.Booster``.

    Raises
    ------
    ValueError
        The text is not a LightGBM model (LightGBM's message).
    """
    lib = native_library()
    if lib is not None:
        return NativeBooster(model_str, lib)
    import lightgbm

    try:
        return lightgbm.Booster(model_str=model_str)
    except lightgbm.basic.LightGBMError as exc:
        raise ValueError(str(exc)) from None
