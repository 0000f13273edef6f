"""Loading the repository's scripts and benchmarks (files outside the package) as modules, for their tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(rel: str, name: str):
    """The module of the file at ``rel`` (relative to the repository root), imported under ``name``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
