"""Libraries imported on first use, for modules that worker processes load but use them only in the main process.

A worker of ``lympho extract`` (local or Dask) imports :mod:`lympho_features.extract`
and everything it imports, but measures crops with NumPy and OpenCV alone:
importing pandas there cost ~0.3 s of CPU a worker process. Modules whose
pandas work is the main process's (building and reading tables) take
:data:`pd` from here instead of ``import pandas as pd``; the first attribute
read imports pandas.

Not ``lazy_loader.load`` nor ``importlib.util.LazyLoader``: both put a
placeholder ``pandas`` in ``sys.modules`` at once, so that a library's
optional ``try: import pandas`` in the worker finds it and loads all of it,
and a worker without pandas can no longer be told from one with it.
:class:`LazyModule` leaves ``sys.modules`` alone until an attribute is read.
"""

from __future__ import annotations

import importlib


class LazyModule:
    """A module imported the first time one of its attributes is read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module = None

    def __getattr__(self, attr: str):
        # Only called for names not found on the instance: the module's attributes.
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"


#: pandas, imported on first use.
pd = LazyModule("pandas")
