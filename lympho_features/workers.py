"""Where the per-patient tasks run: local worker processes, or a Dask cluster through joblib."""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager

from .dataset import DatasetError
from .shards import _one_line


def cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


@contextmanager
def parallel(jobs: int, backend: str, scheduler: str | None):
    """A joblib ``Parallel`` for the backend, and the threads each task may use (None: leave as is)."""
    from joblib import Parallel

    if backend == "local":
        n_workers = cores() if jobs < 0 else max(1, jobs)
        # jobs x threads <= cores: a single process keeps the libraries' defaults.
        threads = None if n_workers == 1 else max(1, cores() // n_workers)
        yield Parallel(n_jobs=jobs, return_as="generator_unordered"), threads
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise DatasetError("--backend dask needs the dask extra: pip install 'lympho-features[dask]'") from None
    from joblib import parallel_config

    with ExitStack() as stack:
        if scheduler in (None, "local"):
            n_workers = cores() if jobs < 0 else max(1, jobs)
            cluster = stack.enter_context(
                LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None)
            )
            stack.enter_context(Client(cluster))
        else:
            try:
                stack.enter_context(Client(scheduler, timeout="10s"))
            except (OSError, TimeoutError, ValueError) as exc:
                raise DatasetError(f"cannot reach the Dask scheduler at {scheduler}: {_one_line(exc)}") from None
        stack.enter_context(parallel_config(backend="dask"))
        # One thread per task: a Dask worker runs as many tasks as it has threads.
        yield Parallel(n_jobs=-1, return_as="generator_unordered"), 1
