"""Running output chunks on a scheduler: dask's local schedulers (synchronous, threads,
processes) or a dask.distributed cluster, with progress and cancel.

Every tile of the global grid runs once: a ``fuse_tiles`` task runs the tiles that start in one
chunk and hands the window-weighted sums to each chunk they reach; a ``write_chunk`` task adds
up the sums its chunk receives, divides by the summed windows, writes the block and marks it
done. The result does not depend on the chunking or on the scheduler.

A run is registered in the process that starts it for as long as it runs (``running``): its
tasks that run there (synchronous and threads schedulers) share its ``BatchRunner`` (which keeps
a batch shrunk after out-of-memory), check its cancel between batches of tiles, and the run ends
only once they have stopped; a task of a run that has ended there stops at once. Tasks in other
processes (worker processes, a cluster's workers) keep one runner per process and run to their
end.
"""

from __future__ import annotations

import itertools
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import FusionCancelled, InputError
from ..io import OutputLayout, write_block
from .job import FusionJob
from .predictors import predictor
from .resume import mark_done
from .sources import LOCAL_SCHEDULERS, local_scheduler, remember
from .tiling import BatchRunner, local_workers, torch_threads, weight_sum, weighted_sum

#: Batch runners of tile tasks run outside their run's process (worker processes, a cluster's
#: workers), by (engine key, device, batch): one per process, kept for its next tasks.
_RUNNERS: dict[tuple[str, str, int], BatchRunner] = {}

#: A run's name in its tasks: the process that started it (a token drawn at import, which forked
#: workers share, and its process id, which they do not: a cluster's worker on another machine
#: may have the same id) and a number.
RunId = tuple[str, int, int]
_TOKEN = secrets.token_hex(8)


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


class _Run:
    """A run in progress in this process: its batch runner, its cancel check and how many of its
    tasks are running here."""

    def __init__(self, cancel: Callable[[], bool] | None) -> None:
        self.cancel = cancel
        self.runner: BatchRunner | None = None
        self.tasks = 0
        self.ended = False
        self.changed = threading.Condition()

    def cancelled(self) -> bool:
        """Whether its tasks should stop: the run has ended (cancelled or failed) or is cancelled."""
        return self.ended or (self.cancel is not None and self.cancel())

    def runner_for(self, job: FusionJob) -> BatchRunner:
        """Its batch runner, built by its first tile task here (a process that only schedules
        the tasks, for worker processes, builds none)."""
        with self.changed:
            if self.runner is None:
                self.runner = BatchRunner(predictor(job.engine)[0], job.batch)
            return self.runner

    @contextmanager
    def task(self) -> Iterator[None]:
        """One task of the run, refused once the run has ended or is cancelled."""
        with self.changed:
            if self.cancelled():
                raise FusionCancelled("fusion cancelled")
            self.tasks += 1
        try:
            yield
        finally:
            with self.changed:
                self.tasks -= 1
                self.changed.notify_all()

    def end(self) -> None:
        """Stop the run's tasks here (each at its next batch) and wait for them."""
        with self.changed:
            self.ended = True
            self.changed.wait_for(lambda: self.tasks == 0)


#: The runs in progress in this process.
_RUNS: dict[RunId, _Run] = {}
_RUN_NUMBERS = itertools.count()


@contextmanager
def running(cancel: Callable[[], bool] | None) -> Iterator[RunId]:
    """Register a run in this process while the block runs; when it ends (finished, failed or
    cancelled) its tasks here stop and are waited for, and its batch runner (and the network it
    holds) is forgotten."""
    run_id, run = (_TOKEN, os.getpid(), next(_RUN_NUMBERS)), _Run(cancel)
    _RUNS[run_id] = run
    try:
        yield run_id
    finally:
        del _RUNS[run_id]  # its tasks that start from now on stop at once
        run.end()


@contextmanager
def _task(run_id: RunId) -> Iterator[_Run | None]:
    """The run of a task started in the run's own process (None in another process); a task of
    a run that has ended or is cancelled raises ``FusionCancelled`` before doing anything."""
    if run_id[:2] != (_TOKEN, os.getpid()):
        yield None
        return
    run = _RUNS.get(run_id)
    if run is None:
        raise FusionCancelled("fusion cancelled")
    with run.task():
        yield run


def to_dtype(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A fused block in [0, 1] as the output dtype (integers scaled to [0, max]). Scaled in
    float64 and clipped: float32 rounds 2**31 - 1 up to 2**31, which wraps around in int32."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        scaled = np.round(block.astype(np.float64) * info.max)
        return np.clip(scaled, 0, info.max).astype(dtype)
    return block.astype(dtype, copy=False)


#: The weighted sums of some tiles over part of one chunk: (top, left, sums) in plane pixels.
Part = tuple[int, int, np.ndarray]


def _process_runner(job: FusionJob) -> BatchRunner:
    """The batch runner of a tile task run outside its run's process."""
    key = (job.engine.key, job.engine.device, job.batch)
    runner = _RUNNERS.get(key)
    if runner is None:
        runner = remember(_RUNNERS, key, BatchRunner(predictor(job.engine)[0], job.batch))
    return runner


def fuse_tiles(
    job: FusionJob, run_id: RunId, plane: tuple[int, ...], corners: list[tuple[int, int]], chunk: int
) -> dict[tuple[int, int], Part]:
    """Run the tiles at ``corners`` of one plane; returns their weighted sums cut by output
    chunk, keyed by each chunk's (y0, x0) (copies, so a chunk's part holds nothing else)."""
    grid = job.grid()
    th, tw = grid.tile_shape
    y0, y1 = min(y for y, _ in corners), max(y for y, _ in corners) + th
    x0, x1 = min(x for _, x in corners), max(x for _, x in corners) + tw
    with _task(run_id) as run:
        a, b, _ = job.inputs(job.read(plane, y0, y1, x0, x1))
        runner, cancel = (_process_runner(job), None) if run is None else (run.runner_for(job), run.cancelled)
        sums = weighted_sum(runner, a, b, grid, corners, (y0, y1, x0, x1), origin=(y0, x0), cancel=cancel)
    parts = {}
    for cy in range(y0 // chunk * chunk, y1, chunk):
        for cx in range(x0 // chunk * chunk, x1, chunk):
            top, left = max(cy, y0), max(cx, x0)
            crop = sums[top - y0 : min(cy + chunk, y1) - y0, left - x0 : min(cx + chunk, x1) - x0]
            parts[(cy, cx)] = (top, left, crop.copy())
    return parts


def write_chunk(
    job: FusionJob,
    run_id: RunId,
    layout: OutputLayout,
    store: str,
    done: str,
    plane: tuple[int, ...],
    region: tuple[int, int, int, int],
    parts: list[Part],
) -> None:
    """Blend one output chunk (``region`` = y0, y1, x0, x1) from the weighted sums of every tile
    reaching it, write it, then mark it done with the digests of its inputs and of what was
    written (a killed run redoes unmarked ones)."""
    y0, y1, x0, x1 = region
    with _task(run_id):  # nothing is written once the run has ended here
        sums = np.zeros((y1 - y0, x1 - x0), np.float32)
        for top, left, part in parts:
            sums[top - y0 : top - y0 + part.shape[0], left - x0 : left - x0 + part.shape[1]] += part
        block, inputs = job.finish_region(plane, y0, y1, x0, x1, sums / weight_sum(job.grid(), region))
        stored = to_dtype(block, np.dtype(layout.dtype))
        write_block(store, layout, plane, y0, x0, stored)
        mark_done(done, layout, plane, y0, x0, inputs, stored)


def execute(
    tasks: list[Any], scheduler: Any, progress: Callable[[str], None], cancel: Callable[[], bool] | None
) -> None:
    """Run delayed ``write_chunk`` tasks (named ``chunk-...``) on a local scheduler name or a
    dask.distributed client/address; ``progress(key)`` with the name of each task that finishes
    (every task on a local scheduler: tile tasks too; the chunk tasks on a cluster)."""
    if scheduler is None or scheduler in LOCAL_SCHEDULERS:
        return _execute_locally(tasks, scheduler or "threads", progress, cancel)
    return _execute_on_cluster(tasks, scheduler, progress, cancel)


def _one_torch_thread() -> None:
    """Torch on one thread in this worker process, and in torch imported later (see
    ``tiling.torch_threads``)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


#: Imported once by the process that forks the ``processes`` workers, so that the workers share
#: those pages (torch's, numba's, the package's: about 200 MiB) instead of each importing its own.
WORKER_PRELOAD = ["torch", "numba", "dask.array", "zarr", "tifffile", "napari_fusionmamba.engine.execute",
                  "napari_fusionmamba.model._scan_numba", "napari_fusionmamba.registry"]  # fmt: skip


def _process_pool(workers: int) -> Any:
    """Worker processes forked from a server that imported ``WORKER_PRELOAD`` (where the platform
    forks; spawned elsewhere, as dask does), each on one torch thread."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from dask.multiprocessing import initialize_worker_process

    context: Any = multiprocessing.get_context("spawn")
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(WORKER_PRELOAD)
    initializer = partial(initialize_worker_process, user_initializer=_one_torch_thread)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=initializer)


@contextmanager
def _one_torch_thread_per_worker(scheduler: str) -> Iterator[dict[str, Any]]:
    """The dask keywords and torch settings that give each local worker one torch thread, restored
    after the run (threads share this process's torch). Worker processes take one task at a time
    (dask sends 6 by default: a one-chunk image's 5 tile tasks all went to one worker)."""
    if scheduler == "processes":
        with _process_pool(local_workers()) as pool:
            yield {"pool": pool, "chunksize": 1}
    elif scheduler in ("threads", "threading"):
        with torch_threads(1):
            yield {}
    else:  # synchronous: one worker, torch keeps every core
        yield {}


def _execute_locally(
    tasks: list[Any], scheduler: str, progress: Callable[[str], None], cancel: Callable[[], bool] | None
) -> None:
    import dask

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        progress(str(key))

    def pretask(key: Any, dsk: Any, state: Any) -> None:
        if cancel is not None and cancel():
            raise FusionCancelled("fusion cancelled")

    # Callbacks passed explicitly, never through dask's process-wide active set: a viewer
    # computing its own dask arrays meanwhile (napari's dask cache) must not see our tasks,
    # nor we its (dask.cache raises KeyError on tasks it did not start).
    # A callback is dask's 5-tuple (start, start_state, pretask, posttask, finish).
    with _one_torch_thread_per_worker(scheduler) as keywords:
        callbacks = [(None, None, pretask, posttask, None)]
        dask.compute(*tasks, scheduler=local_scheduler(scheduler), callbacks=callbacks, **keywords)


def _execute_on_cluster(
    tasks: list[Any], scheduler: Any, progress: Callable[[str], None], cancel: Callable[[], bool] | None
) -> None:
    from distributed import Client, as_completed

    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = client.compute(tasks)
        for future in as_completed(futures):
            future.result()
            progress(str(future.key))
            if cancel is not None and cancel():
                client.cancel(futures)
                raise FusionCancelled("fusion cancelled")
    finally:
        if client is not scheduler:
            client.close()
