"""Helpers for the tests that run ``lympho`` in another process (Ctrl-C, kill -9, exit codes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

#: Processes started by the tests run the package of this checkout, whatever their working folder.
CHECKOUT_ENV = {**os.environ, "COLUMNS": "300", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def wait_for_shards(proc, out: Path, n: int, timeout: float = 120.0) -> None:
    """Wait until the extraction running in ``proc`` has written ``n`` patient shards under ``out/cells``."""
    deadline = time.monotonic() + timeout
    while len(list((out / "cells").glob("*.parquet"))) < n:
        assert proc.poll() is None, f"extraction ended before it was interrupted: {proc.stderr.read()!r}"
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.005)
