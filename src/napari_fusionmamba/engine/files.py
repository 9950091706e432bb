"""``fuse_files``: fusion of images too large for memory, streamed chunk by chunk into zarr /
OME-Zarr or OME-TIFF through dask, so memory is bounded by a chunk and a batch of tiles.

Every output chunk is the blend of all the tiles of the global grid that touch it, so the
result does not depend on the chunk size or on the scheduler (synchronous, threads, processes, a
dask.distributed cluster). Each tile runs once, in the task of the chunk where it starts; the
weighted sums of tiles that straddle a chunk border travel to the neighbouring chunk's task (a
strip ``overlap`` wide), so memory stays bounded by a chunk, its tiles and those strips.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import OutputLayout, add_pyramid, kind_of, zarr_to_tiff
from ..io.locks import exclusive
from .execute import RunId, check_scheduler, execute, fuse_tiles, running, write_chunk
from .job import FusionJob, prepare_job
from .options import FuseOptions
from .predictors import describe_engine
from .resume import Block, PartialRun, chunk_digests, chunk_name, open_partial, run_record, sound_chunks
from .sources import Source
from .tiling import TileGrid
from .verify import StoredChunks

#: Default chunk: the multiple of the tile stride nearest above this.
CHUNK_TARGET = 1024
DTYPES = ("float32", "source")


@dataclass
class FuseReport:
    """What ``fuse_files`` did."""

    out: str
    shape: tuple[int, ...]
    dtype: str
    axes: str
    pixel_size: tuple[float, ...] | None
    chunk: int
    chunks_total: int
    chunks_computed: int
    chunks_skipped: int
    tiles_computed: int  # each tile of the grid once, for the chunks computed
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)  # describe_engine: what fused, also in the file
    chunks_redone: int = 0  # done before, fused again: their sources changed or their data was damaged

    def summary(self) -> str:
        resumed = f", {self.chunks_skipped} already done" if self.chunks_skipped else ""
        if self.chunks_redone:
            resumed += f", {self.chunks_redone} fused again (sources changed or data damaged)"
        return (
            f"{self.out}: {'x'.join(map(str, self.shape))} {self.dtype} in {self.seconds:.1f} s "
            f"({self.chunks_computed} chunks, {self.tiles_computed} tiles computed{resumed})"
        )


def default_chunk(tile: int, overlap: int) -> int:
    """The multiple of the tile stride nearest above ``CHUNK_TARGET`` (see module docstring)."""
    stride = tile - overlap
    return stride * max(1, math.ceil(CHUNK_TARGET / stride))


def fuse_files(
    a: Any,
    b: Any,
    out: str | os.PathLike[str],
    options: FuseOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **keywords: Any,
) -> FuseReport:
    """Fuse two images (paths, or arrays) into ``out`` (.zarr / .ome.zarr: OME-Zarr 0.4;
    .tif / .tiff: tiled OME-TIFF), chunk by chunk.

    ``options`` (a ``FuseOptions``) and ``keywords`` (its fields: ``model=``, ``tile=``,
    ``scheduler=``, ``overwrite=`` ...) say how. The run is built in ``OUT.fusionmamba-partial``
    and moved to ``out`` only when complete, so ``out`` never holds a half-written image.
    Interrupted (Ctrl-C, kill, ``cancel``), the same call resumes where it stopped: finished
    chunks are skipped, unless their sources' pixels changed since or their stored data is
    missing or damaged (their digests say); other arguments refuse to resume unless
    ``overwrite``. ``progress(done, total)`` counts tiles (of every plane; those of finished
    chunks count as done), as each tile task ends (on a cluster: as each chunk ends).
    """
    start = time.perf_counter()
    options = FuseOptions.of(options, keywords)
    out = str(out).rstrip("/")
    if options.dtype not in DTYPES:
        raise InputError(f"unknown output dtype {options.dtype!r}: choose float32 or source")
    check_scheduler(options.scheduler)
    # Open the sources before judging the output, so a missing source is named first.
    names = tuple(
        str(x) if isinstance(x, (str, os.PathLike)) else n for x, n in zip((a, b), options.names or ("A", "B"))
    )
    job = prepare_job(a, b, FuseOptions.of(options, {"names": names}))
    kind = check_output(out, options.overwrite, [job.a, job.b])
    layout = output_layout(job, options)
    with exclusive(out, "this output"):
        partial = open_partial(out, run_record(job, layout, kind), layout, options.overwrite)
        blocks = plan_blocks(job, layout.chunk)
        finished, redone = sound_chunks(job, layout, partial, blocks)
        todo = [block for block in blocks if chunk_name(block[0], block[1][0], block[1][2]) not in finished]
        with running(cancel) as run_id:
            tiles = _run_blocks(job, layout, partial, todo, options.scheduler, progress, cancel, run_id)
        engine = describe_engine(options.model, options.method)
        finalise(out, kind, layout, partial, engine, chunk_digests(layout, partial, blocks))
    return FuseReport(
        out,
        layout.shape,
        str(np.dtype(layout.dtype)),
        layout.axes,
        layout.pixel_size,
        layout.chunk,
        len(blocks),
        len(todo),
        len(blocks) - len(todo),
        tiles,
        time.perf_counter() - start,
        {"tile": job.tile, "overlap": job.overlap, "batch": job.batch, "engine": job.engine.key},
        engine,
        redone,
    )


def check_output(out: str, overwrite: bool, sources: list[Source]) -> str:
    """The output's kind ("zarr" or "tiff"), after refusing outputs that cannot be written."""
    kind = kind_of(out)
    if kind == "picture":
        raise InputError(f"{out}: write fused images as .zarr/.ome.zarr or .tif/.tiff")
    full = os.path.abspath(out)
    for source in sources:
        if isinstance(source.ref, str) and _overlaps(out, source.ref):
            raise InputError(
                f"{out}: the output would overwrite the source {source.name} (or write in its store); "
                "choose another output"
            )
    if os.path.exists(out) and not overwrite:
        raise InputError(f"{out}: already exists (use --overwrite / overwrite=True to replace it)")
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise InputError(f"{out}: cannot write: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{out}: cannot write: folder {parent} is not writable")
    return kind


def _store_root(path: str) -> str:
    """The file, or the outermost ``.zarr`` folder, that holds ``path`` (symlinks resolved)."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i, part in enumerate(parts):
        if part.endswith(".zarr"):
            return os.sep.join(parts[: i + 1]) or os.sep
    return real


def _overlaps(out: str, source: str) -> bool:
    """Whether writing ``out`` (or its partial folder beside it) would replace the source, a
    store holding it, or write into the store that holds it, however the paths are spelt."""
    out_root, source_root = os.path.realpath(out), _store_root(source)
    return any(
        inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)
        for inner, outer in ((out_root, source_root), (source_root, out_root))
    )


def _output_dtype(job: FusionJob, dtype: str) -> np.dtype[Any]:
    if dtype == "float32":
        return np.dtype(np.float32)
    common = np.result_type(job.a.dtype, job.b.dtype)
    if common.kind == "f":
        return np.dtype(np.float32)
    if common.itemsize > 4:
        raise InputError(
            f"dtype source: {common} sources ({job.a.name}, {job.b.name}) have no "
            f"exact [0, 1] scaling; use dtype float32"
        )
    return common


def output_layout(job: FusionJob, options: FuseOptions) -> OutputLayout:
    """Shape, dtype, chunk and placement of the output: the sources' pixel size and A's origin
    (or B's, when only B says where it starts, or is the stack an image goes with), so the
    output lies where the sources lie."""
    chunk = int(options.chunk) if options.chunk is not None else default_chunk(job.tile, job.overlap)
    if chunk < 1:
        raise InputError(f"chunk must be a positive integer, got {chunk}")
    out_dtype = _output_dtype(job, options.dtype)
    a, b = job.a, job.b
    if (
        a.pixel_size is not None
        and b.pixel_size is not None
        and not np.allclose(a.pixel_size[-2:], b.pixel_size[-2:], rtol=1e-2)
    ):
        warnings.warn(f"pixel sizes differ ({a.pixel_size} and {b.pixel_size}); using {a.name}'s", stacklevel=3)
    spatial = len(job.out_axes.rstrip("S"))  # an image fused with a stack: the stack's sizes fit
    pixel_source = next((s for s in (a, b) if s.pixel_size is not None and len(s.pixel_size) == spatial), a)
    pixel = (
        pixel_source.pixel_size
        if pixel_source.pixel_size is not None and len(pixel_source.pixel_size) == spatial
        else None
    )
    if pixel is not None and not all(math.isfinite(v) and v > 0 for v in pixel):
        warnings.warn(f"{pixel_source.name}: pixel size {pixel} is not positive and finite; not written", stacklevel=3)
        pixel = None
    place = next((s for s in (a, b) if s.origin is not None and len(s.origin) == spatial), None)
    origin = place.origin if place is not None else None
    if origin is not None and not all(math.isfinite(v) for v in origin):
        origin = None
    return OutputLayout(
        job.out_shape, job.out_axes, out_dtype.str, chunk, pixel, pixel_source.unit if pixel else None, origin
    )


def plan_blocks(job: FusionJob, chunk: int) -> list[Block]:
    """Every output chunk of every plane, in order."""
    height, width = job.plane_shape
    return [
        (plane, (y, min(y + chunk, height), x, min(x + chunk, width)))
        for plane in np.ndindex(*job.lead)  # one () for a single plane
        for y in range(0, height, chunk)
        for x in range(0, width, chunk)
    ]


def _run_blocks(
    job: FusionJob,
    layout: OutputLayout,
    partial: PartialRun,
    todo: list[Block],
    scheduler: Any,
    progress: Callable[[int, int], None] | None,
    cancel: Callable[[], bool] | None,
    run_id: RunId,
) -> int:
    """Run the chunks not done yet as dask tasks of the run ``run_id`` (see ``execute.running``),
    with the tile tasks they need; returns the number of tiles run."""
    import dask

    grid, chunk, tag = job.grid(), layout.chunk, partial.run_hash[:8]
    job_node = dask.delayed(job, pure=True)
    groups = tile_groups(grid, chunk)
    group_of = {corner: key for key, corners in groups.items() for corner in corners}
    tiles: dict[tuple[tuple[int, ...], tuple[int, int, int]], Any] = {}  # tile tasks, by plane and group
    needs: dict[str, list[str]] = {}  # chunk task -> the tile tasks it waits on

    def chunk_task(plane: tuple[int, ...], region: tuple[int, int, int, int]) -> str:
        return f"chunk-{tag}-{chunk_name(plane, region[0], region[2])}"

    def parts(plane: tuple[int, ...], region: tuple[int, int, int, int]) -> list[Any]:
        """The weighted sums reaching ``region``, from the tile task of each group touching it."""
        needed = sorted({group_of[corner] for corner in grid.touching(*region)})
        for key in needed:
            if (plane, key) not in tiles:
                name = f"tiles-{tag}-{chunk_name(plane, *key[:2])}-{key[2]}"
                tiles[plane, key] = dask.delayed(fuse_tiles, pure=True)(
                    job_node, run_id, plane, groups[key], chunk, dask_key_name=name
                )
        needs[chunk_task(plane, region)] = [tiles[plane, key].key for key in needed]
        return [tiles[plane, key][(region[0], region[2])] for key in needed]

    writes = [dask.delayed(write_chunk, pure=True)(
        job_node, run_id, layout, partial.store, partial.done, plane, region, parts(plane, region),
        dask_key_name=chunk_task(plane, region))
        for plane, region in todo]  # fmt: skip
    tile_tasks = {tiles[plane, key].key: len(groups[key]) for plane, key in tiles}
    counter = TileCounter(len(grid) * math.prod(job.lead), tile_tasks, needs, progress)
    execute(writes, scheduler, counter, cancel)
    return sum(tile_tasks.values())


class TileCounter:
    """Tiles done, as tasks finish: a tile task's tiles when it ends, or (on a cluster, where
    only chunk tasks are seen) those of the tile tasks a chunk waited on when the chunk ends;
    the tiles not run in this call (finished chunks) count as done from the start."""

    def __init__(
        self,
        total: int,
        tile_tasks: dict[str, int],
        needs: dict[str, list[str]],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.total, self.tile_tasks, self.needs, self.progress = total, tile_tasks, needs, progress
        self.counted: set[str] = set()
        self.done = total - sum(tile_tasks.values())
        self._report()

    def __call__(self, key: str) -> None:
        names = (key, *self.needs.get(key, ()))
        fresh = [name for name in names if name in self.tile_tasks and name not in self.counted]
        if fresh:
            self.counted.update(fresh)
            self.done += sum(self.tile_tasks[name] for name in fresh)
            self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total)


#: "0" keeps every row of tiles whole (to time the split of the last one).
BALANCE_ENV = "FUSIONMAMBA_BALANCED_TASKS"


def tile_groups(grid: TileGrid, chunk: int) -> dict[tuple[int, int, int], list[tuple[int, int]]]:
    """The tiles of a plane in groups that one task runs: the tiles starting in one output chunk
    (keyed by its y0, x0), one row of them at a time (the group's index last): small tasks, so
    that the workers share even a one-chunk image.

    The last row of a chunk with an odd number of rows is cut in two near-equal pieces, so that
    two workers finish together: whole rows left a one-chunk 1024 px image's 5 rows of 5 tiles
    as 3 rows on one worker and 2 on the other, the other core idle for the last row; its last
    row as a piece of 3 and one of 2 tiles makes 13 and 12 tiles. One more source read per
    chunk, no more forward passes. The cut depends on the grid and the chunk only, never on the
    scheduler: the tasks, and so the sums and the output, are the same bit for bit on threads,
    processes and a cluster."""
    balance = os.environ.get(BALANCE_ENV, "1").strip() != "0"
    groups: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    for cy in range(0, grid.height, chunk):
        rows = [y for y in grid.ys if cy <= y < cy + chunk]
        for cx in range(0, grid.width, chunk):
            cols = [x for x in grid.xs if cx <= x < cx + chunk]
            tasks = [[(y, x) for x in cols] for y in rows] if cols else []
            if balance and len(tasks) % 2 and len(cols) > 1:
                half = -(-len(cols) // 2)
                tasks[-1:] = [tasks[-1][:half], tasks[-1][half:]]
            for index, corners in enumerate(tasks):
                groups[cy, cx, index] = corners
    return groups


def finalise(
    out: str, kind: str, layout: OutputLayout, partial: PartialRun, engine: dict[str, Any], chunks: dict[str, str]
) -> None:
    """Add the zarr pyramid (or write the TIFF), mark the store complete, record what fused it
    (``engine``), its layout and its chunks' digests (``chunks``, full resolution; the pyramid's
    are added), and move it into place (replacing an old output only now)."""
    import zarr

    store = partial.store
    if kind == "zarr":
        levels = add_pyramid(store, layout)
        chunks = {**chunks, **StoredChunks(store).pyramid([str(level) for level in range(1, levels + 1)])}
    record = {"engine": engine, "layout": asdict(layout), "chunks": chunks}
    group = zarr.open_group(store, mode="r+")
    group.attrs["fusionmamba"] = {"run": partial.run_hash, "complete": True, **record}
    if kind == "tiff":
        store = os.path.join(partial.folder, "out.tif")
        zarr_to_tiff(partial.store, layout, store, description={"fusionmamba": record})
    if os.path.isdir(out) and not os.path.islink(out):
        shutil.rmtree(out)
    elif os.path.lexists(out):
        os.remove(out)
    os.replace(store, out)
    shutil.rmtree(partial.folder)
