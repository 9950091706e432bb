"""Running output chunks on a scheduler: dask's local schedulers (synchronous, threads,
processes) or a dask.distributed cluster, with progress and cancel.

Each chunk task fuses every tile of the global grid that touches its region, writes the block
and marks it done, so the result does not depend on the chunking or on the scheduler. A chunk's
``BatchRunner`` (which keeps a batch shrunk after out-of-memory) is shared by the chunks of a
run in one process, and forgotten when the run ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import FusionCancelled, InputError
from ..io import OutputLayout, write_block
from .job import FusionJob
from .predictors import predictor
from .resume import mark_done
from .sources import remember
from .tiling import BatchRunner

LOCAL_SCHEDULERS = ("synchronous", "sync", "threads", "threading", "processes")

#: Batch runners of the runs in progress in this process, by (engine key, device, batch).
_RUNNERS: dict[tuple[str, str, int], BatchRunner] = {}


def check_scheduler(scheduler: Any) -> None:
    """Refuse a scheduler name that is not one, or an address without dask.distributed."""
    if scheduler is None or scheduler in LOCAL_SCHEDULERS or not isinstance(scheduler, str):
        return
    if ":" not in scheduler:
        raise InputError(
            f"unknown scheduler {scheduler!r}: use synchronous, threads, processes or a dask.distributed "
            f"scheduler address such as tcp://host:8786"
        )
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError(
            f"scheduler {scheduler}: dask.distributed is not installed (pip install 'napari-fusionmamba[distributed]')"
        ) from None


def _runner_key(job: FusionJob) -> tuple[str, str, int]:
    return (job.engine.key, job.engine.device, job.batch)


def forget_runners(job: FusionJob) -> None:
    """Drop this run's batch runner (and the network it holds) from this process."""
    _RUNNERS.pop(_runner_key(job), None)


def to_dtype(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A fused block in [0, 1] as the output dtype (integers scaled to [0, max]). Scaled in
    float64 and clipped: float32 rounds 2**31 - 1 up to 2**31, which wraps around in int32."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        scaled = np.round(block.astype(np.float64) * info.max)
        return np.clip(scaled, 0, info.max).astype(dtype)
    return block.astype(dtype, copy=False)


def run_chunk(
    job: FusionJob,
    layout: OutputLayout,
    store: str,
    done: str,
    plane: tuple[int, ...],
    region: tuple[int, int, int, int],
) -> int:
    """Fuse one output chunk (``region`` = y0, y1, x0, x1), write it, then mark it done with the
    digests of its inputs and of what was written (a killed run redoes unmarked ones). Returns
    how many tiles it ran."""
    y0, y1, x0, x1 = region
    runner = _RUNNERS.get(_runner_key(job))
    if runner is None:
        runner = remember(_RUNNERS, _runner_key(job), BatchRunner(predictor(job.engine)[0], job.batch))
    block, inputs = job.region(runner, plane, y0, y1, x0, x1)
    stored = to_dtype(block, np.dtype(layout.dtype))
    write_block(store, layout, plane, y0, x0, stored)
    mark_done(done, layout, plane, y0, x0, inputs, stored)
    return len(job.grid().touching(y0, y1, x0, x1))


def execute(
    tasks: list[Any], scheduler: Any, progress: Callable[[int], None], cancel: Callable[[], bool] | None
) -> int:
    """Run delayed chunk tasks on a local scheduler name or a dask.distributed client/address;
    returns the number of tiles they ran."""
    if scheduler is None or scheduler in LOCAL_SCHEDULERS:
        return _execute_locally(tasks, scheduler or "threads", progress, cancel)
    return _execute_on_cluster(tasks, scheduler, progress, cancel)


def _execute_locally(
    tasks: list[Any], scheduler: str, progress: Callable[[int], None], cancel: Callable[[], bool] | None
) -> int:
    import dask

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if str(key).startswith("chunk-"):
            progress(1)

    def pretask(key: Any, dsk: Any, state: Any) -> None:
        if cancel is not None and cancel():
            raise FusionCancelled("fusion cancelled")

    # Callbacks passed explicitly, never through dask's process-wide active set: a viewer
    # computing its own dask arrays meanwhile (napari's dask cache) must not see our tasks,
    # nor we its (dask.cache raises KeyError on tasks it did not start).
    # A callback is dask's 5-tuple (start, start_state, pretask, posttask, finish).
    results = dask.compute(*tasks, scheduler=scheduler, callbacks=[(None, None, pretask, posttask, None)])
    return int(sum(results))


def _execute_on_cluster(
    tasks: list[Any], scheduler: Any, progress: Callable[[int], None], cancel: Callable[[], bool] | None
) -> int:
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    tiles = 0
    try:
        futures = client.compute(tasks)
        for future in as_completed(futures):
            tiles += future.result()
            progress(1)
            if cancel is not None and cancel():
                client.cancel(futures)
                raise FusionCancelled("fusion cancelled")
    finally:
        if client is not scheduler:
            client.close()
    return tiles
