"""Fusion of whole images and of files too large for memory.

``fuse(a, b)`` fuses arrays in memory; ``fuse_files(a, b, out)`` streams files or stores to a
zarr / OME-Zarr / OME-TIFF output chunk by chunk through dask, so memory is bounded by a chunk
and a batch of tiles, not by the image. Both walk stacks plane by plane, fuse colour sources on
their luminance, and normalise each source once per image or stack (robust percentiles on a
downsampled view, never per tile, so that tiles agree).

Every output chunk is computed from all the tiles of the global grid that touch it
(``tiling.blend_region``), so the result does not depend on the chunk size or on the scheduler
(synchronous, threads, processes, a dask.distributed cluster). Tiles that straddle a chunk
border are computed once for each chunk they touch: the default chunk is a multiple of the
tile stride near 1024 px, which keeps that extra work to about (1 + stride / chunk)^2 - 1
(36% for tile 256, overlap 64).

Non-finite pixels are replaced after normalisation: NaN and -Inf by 0, +Inf by 1 (a warning
says so); percentiles ignore them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .io.files import atomic_path
from .errors import FusionCancelled, InputError
from .io.colour import rgb_to_ycrcb, ycrcb_to_rgb
from .io import OpenedImage, OutputLayout, Planes, add_pyramid, create_ome_zarr, guess_axes, kind_of, open_image, write_block, zarr_to_tiff
from .tiling import BatchRunner, TileGrid, blend_region, check_tiling, tiled_fuse

__all__ = ["fuse", "fuse_files", "FuseReport"]

#: Planes smaller than this along Y or X are refused (nothing to fuse).
MIN_SIDE = 8
#: Lower and upper percentiles mapped to 0 and 1.
PERCENTILES = (0.1, 99.9)
#: At most this many pixels per source are read to estimate the percentiles.
PERCENTILE_SAMPLE = 1 << 21
#: Default chunk: the multiple of the tile stride nearest above this.
CHUNK_TARGET = 1024
NORMALISE = ("percentile", "range", None)
DTYPES = ("float32", "source")
PARTIAL_SUFFIX = ".fusionmamba-partial"


# --- sources ------------------------------------------------------------------------------


@dataclass
class Source(Planes):
    """One input image: its name for messages, and a path (reopened in every process) or an
    array (numpy, dask or zarr)."""

    name: str
    ref: Any
    axes: str
    shape: tuple[int, ...]
    dtype: np.dtype
    pixel_size: tuple[float, ...] | None = None
    unit: str | None = None
    origin: tuple[float, ...] | None = None

    def data(self):
        """The lazy array (opened once per process for paths)."""
        if isinstance(self.ref, str):
            return _opened(self.ref).data
        return self.ref

    def read(self, plane: tuple[int, ...], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """A window of one plane as float32 (colour keeps its first three samples)."""
        index = tuple(plane) + (slice(y0, y1), slice(x0, x1)) + ((slice(0, 3),) if self.colour else ())
        window = self.data()[index]
        if hasattr(window, "compute"):
            window = window.compute(scheduler="synchronous", callbacks=())  # see _execute
        return np.asarray(window, dtype=np.float32)


_OPENED: dict[tuple, OpenedImage] = {}
#: Entries kept in the per-process caches (a napari session or a cluster worker lives long).
CACHE_SIZE = 4


def _remember(cache: dict, key, value):
    """Put ``value`` in a small insertion-ordered cache, forgetting the oldest entries."""
    cache[key] = value
    while len(cache) > CACHE_SIZE:
        cache.pop(next(iter(cache)))
    return value


def _opened(path: str) -> OpenedImage:
    """Sources opened in this process, reopened when the file changes."""
    if not os.path.exists(path):
        return open_image(path)  # raises, naming the path
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key in _OPENED:
        return _OPENED[key]
    return _remember(_OPENED, key, open_image(path))


def as_source(value, name: str) -> Source:
    """Wrap a path, an ``OpenedImage`` or an array, refusing data that cannot be fused."""
    if isinstance(value, (str, os.PathLike)):
        path = str(value)
        image = _opened(path)
        source = Source(path, path, image.axes, tuple(image.data.shape), np.dtype(image.data.dtype),
                        image.pixel_size, image.unit, image.origin)
    elif isinstance(value, OpenedImage):
        source = Source(value.path, value.data, value.axes, tuple(value.data.shape),
                        np.dtype(value.data.dtype), value.pixel_size, value.unit, value.origin)
    else:
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            value = np.asarray(value)
        try:
            axes = guess_axes(tuple(value.shape))
        except InputError as error:
            raise InputError(f"{name}: {error}") from None
        source = Source(name, value, axes, tuple(value.shape), np.dtype(value.dtype))
    kind = source.dtype.kind
    if kind == "b":
        raise InputError(f"{source.name}: boolean data (a mask?) cannot be fused; give an intensity image")
    if kind == "c":
        raise InputError(f"{source.name}: complex data cannot be fused; take its magnitude first")
    if kind not in "iuf":
        raise InputError(f"{source.name}: unsupported data type {source.dtype}")
    height, width = source.plane_shape
    if height < MIN_SIDE or width < MIN_SIDE:
        raise InputError(
            f"{source.name}: image too small ({height}x{width} pixels); at least {MIN_SIDE}x{MIN_SIDE} needed"
        )
    return source


def _check_pair(a: Source, b: Source) -> None:
    if a.plane_shape != b.plane_shape:
        raise InputError(
            f"spatial shapes differ: {a.name} is {a.plane_shape[0]}x{a.plane_shape[1]}, "
            f"{b.name} is {b.plane_shape[0]}x{b.plane_shape[1]} (the sources must be registered)"
        )
    if a.lead != b.lead:
        raise InputError(
            f"different numbers of planes: {a.name} has {_planes(a)}, {b.name} has {_planes(b)}"
        )


def _planes(source: Source) -> str:
    lead = source.axes[: len(source.lead)]
    return " x ".join(f"{n} {ax}" for ax, n in zip(lead, source.lead)) or "a single plane"


# --- normalisation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Normalisation:
    """Linear map of raw values to [0, 1], one per source and stack."""

    lo: float
    hi: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = (x - np.float32(self.lo)) / np.float32(self.hi - self.lo)
        y = np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0)
        return y.astype(np.float32, copy=False)


def _sample(source: Source) -> np.ndarray:
    """A strided view of every plane, about ``PERCENTILE_SAMPLE`` pixels in all, as float."""
    height, width = source.plane_shape
    planes = max(1, math.prod(source.lead))
    step = max(1, math.ceil(math.sqrt(height * width * planes / PERCENTILE_SAMPLE)))
    index = (Ellipsis, slice(None, None, step), slice(None, None, step))
    if source.colour:
        index = index + (slice(0, 3),)
    sample = source.data()[index]
    if hasattr(sample, "compute"):
        sample = sample.compute(scheduler="threads", callbacks=())  # local reads, even with a cluster client active
    sample = np.asarray(sample, dtype=np.float64)
    if source.colour:
        sample = rgb_to_ycrcb(sample)[0]
    return sample


def normalisation_of(source: Source, mode: str | None, percentiles=PERCENTILES) -> Normalisation:
    """One mapping to [0, 1] for a whole source (image or stack), so tiles and planes agree;
    training uses the same one."""
    if mode not in NORMALISE:
        raise InputError(f"unknown normalisation {mode!r}: choose percentile, range or None")
    if mode is None:
        return Normalisation(0.0, 1.0)
    if mode == "range" and source.dtype.kind in "iu":
        info = np.iinfo(source.dtype)
        return Normalisation(0.0 if info.min == 0 else float(info.min), float(info.max))
    sample = _sample(source)
    finite = np.isfinite(sample)
    if not finite.any():
        raise InputError(f"{source.name}: no finite pixels (all NaN or Inf)")
    if not finite.all():
        warnings.warn(
            f"{source.name}: non-finite pixels found; NaN and -Inf are fused as 0, +Inf as 1",
            stacklevel=3,
        )
    values = sample[finite]
    lo, hi = (np.percentile(values, percentiles) if mode == "percentile" else (values.min(), values.max()))
    if hi <= lo:  # a mostly flat image: fall back to the full range of the sample
        lo, hi = values.min(), values.max()
    if hi <= lo:  # constant: it carries no information, map it to 0
        hi = lo + 1.0
    return Normalisation(float(lo), float(hi))


# --- the network or a classical method, per process -----------------------------------------


@dataclass(frozen=True)
class Engine:
    """What fuses the tiles: a model (name or checkpoint path, or an in-memory module) or a
    classical method. Picklable; each process builds its predictor once (see ``_predictor``)."""

    key: str
    model: str | None = None
    method: str | None = None
    module: Any = None
    device: str = "auto"


#: Networks loaded in this process, by (engine key, device): each process loads a model once.
_PREDICTORS: dict[tuple[str, str], tuple[Callable, int]] = {}
#: How many times this process loaded a network (tests check that workers load once).
MODEL_LOADS = 0


def _load_network(name: str, device):
    """The network for a model name or checkpoint path, in eval mode on ``device``."""
    from .registry import load_model

    try:
        return load_model(name, device)
    except InputError as error:  # unknown name, bad checkpoint
        raise InputError(f"model {name}: {error}") from None


def _model_key(name: str) -> str:
    """Identity of a model for caching and resuming: its name plus the weights file's state."""
    from .registry import DEFAULT_MODEL, find_model

    name = DEFAULT_MODEL if name == "default" else name
    path = name if os.path.isfile(name) else None
    if path is None:
        try:
            entry = find_model(name)
        except InputError:
            return f"model:{name}"  # loading it will say what is wrong
        path = str(entry.path) if entry.path is not None else None
    if path is None:
        return f"model:{name}"
    stat = os.stat(path)
    return f"model:{name}:{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def _engine(model, method: str | None, device: str) -> Engine:
    """Check the model / method / device choice in the caller's process (clear errors early)."""
    from .quality.baselines import BASELINES
    from .model.devices import resolve_device

    resolve_device(device)  # a device that is not there fails here, before any output
    if method is not None:
        if model is not None:
            raise InputError("give either a model or a method, not both")
        if method not in BASELINES:
            raise InputError(f"unknown method {method!r}: choose one of {', '.join(BASELINES)}")
        return Engine(key=f"method:{method}", method=method, device=device)
    if model is None or isinstance(model, (str, os.PathLike)):
        name = str(model) if model is not None else "default"
        engine = Engine(key=_model_key(name), model=name, device=device)
        _predictor(engine)  # loads (and caches) it here, so a bad name fails before any output
        return engine
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return Engine(key=f"module:{digest.hexdigest()[:16]}", module=model, device=device)


def _predictor(engine: Engine) -> tuple[Callable, int]:
    """(predict(a_batch, b_batch) -> fused batch, tile multiple), built once per process."""
    global MODEL_LOADS
    cache_key = (engine.key, engine.device)
    if cache_key in _PREDICTORS:
        return _PREDICTORS[cache_key]
    if engine.method is not None:
        from .quality.baselines import BASELINES

        method = BASELINES[engine.method]

        def predict(a, b):
            return np.stack([method(x, y) for x, y in zip(a, b)])

        return _remember(_PREDICTORS, cache_key, (predict, 1))

    import torch

    from .model.devices import resolve_device

    device = resolve_device(engine.device)
    network = engine.module.eval().to(device) if engine.module is not None else _load_network(engine.model, device)
    MODEL_LOADS += 1

    def predict(a, b):
        with torch.inference_mode():
            ta = torch.from_numpy(np.ascontiguousarray(a)).to(device)[:, None]
            tb = torch.from_numpy(np.ascontiguousarray(b)).to(device)[:, None]
            return network(ta, tb)[:, 0].float().cpu().numpy()

    return _remember(_PREDICTORS, cache_key, (predict, network.stride))


# --- one fusion job ----------------------------------------------------------------------


@dataclass
class FusionJob:
    """Everything a process needs to fuse any region of any plane (picklable)."""

    a: Source
    b: Source
    norm_a: Normalisation
    norm_b: Normalisation
    engine: Engine
    tile: int
    overlap: int
    batch: int

    @property
    def colour(self) -> bool:
        return self.a.colour or self.b.colour

    @property
    def lead(self) -> tuple[int, ...]:
        return self.a.lead

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self.a.plane_shape

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.lead + self.plane_shape + ((3,) if self.colour else ())

    @property
    def out_axes(self) -> str:
        source = self.a if len(self.a.axes) >= len(self.b.axes) else self.b
        return source.axes.rstrip("S") + ("S" if self.colour else "")

    def grid(self) -> TileGrid:
        return TileGrid(*self.plane_shape, self.tile, self.overlap)

    def inputs(self, plane, y0, y1, x0, x1) -> tuple[np.ndarray, np.ndarray, tuple | None]:
        """Normalised luminance windows of both sources, and the chroma to put back."""
        chroma = None
        planes = []
        for source, norm in ((self.a, self.norm_a), (self.b, self.norm_b)):
            window = norm(source.read(plane, y0, y1, x0, x1))
            if source.colour:
                luma, cr, cb = rgb_to_ycrcb(window)
                if chroma is None:  # both colour: the colour of A is kept
                    chroma = (cr, cb)
                window = luma
            planes.append(np.clip(window, 0.0, 1.0))
        return planes[0], planes[1], chroma

    @staticmethod
    def finish(fused: np.ndarray, chroma: tuple | None) -> np.ndarray:
        if chroma is None:
            return fused.astype(np.float32, copy=False)
        return np.clip(ycrcb_to_rgb(fused, *chroma), 0.0, 1.0)

    def region(self, runner: BatchRunner, plane, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The fused block [y0, y1) x [x0, x1) of one plane (float32 in [0, 1])."""
        grid = self.grid()
        ry0, ry1, rx0, rx1 = grid.reach(y0, y1, x0, x1)
        a, b, chroma = self.inputs(plane, ry0, ry1, rx0, rx1)
        fused = blend_region(runner, a, b, grid, (y0, y1, x0, x1), origin=(ry0, rx0))
        if chroma is not None:
            chroma = tuple(c[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0] for c in chroma)
        return self.finish(fused, chroma)


def _prepare(a, b, model, method, tile, overlap, batch, device, normalise, names) -> FusionJob:
    names = names or ("A", "B")
    sa, sb = as_source(a, names[0]), as_source(b, names[1])
    _check_pair(sa, sb)
    engine = _engine(model, method, device)
    multiple = _predictor(engine)[1]
    check_tiling(tile, overlap, multiple)
    if int(batch) != batch or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch}")
    return FusionJob(sa, sb, normalisation_of(sa, normalise), normalisation_of(sb, normalise),
                     engine, int(tile), int(overlap), int(batch))


def fuse(
    a,
    b,
    model=None,
    tile: int = 256,
    overlap: int = 64,
    batch: int = 4,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    method: str | None = None,
    normalise: str | None = "percentile",
    names: tuple[str, str] | None = None,
) -> np.ndarray:
    """Fuse two registered images in memory.

    ``a`` and ``b``: arrays (numpy, dask, zarr), ``OpenedImage`` or paths, of one spatial shape;
    (Y, X), stacks (..., Y, X) with the same planes, colour (..., Y, X, 3|4) fused on luminance.
    ``model``: None (the shipped default), a model name or checkpoint path, or a FusionMamba
    module; ``method``: a ``baselines.BASELINES`` name instead of the network. ``normalise``:
    "percentile" (robust, default), "range" (integer dtype range / float min-max) or None (inputs
    already in [0, 1]). ``progress(done, total)`` counts tiles; ``cancel()`` returning True stops
    with ``FusionCancelled``. ``names`` label the inputs in error messages.
    Returns float32 in [0, 1] of shape (..., Y, X), plus a last axis of 3 when a source is colour.
    """
    job = _prepare(a, b, model, method, tile, overlap, batch, device, normalise, names)
    predict, multiple = _predictor(job.engine)
    out = np.empty(job.out_shape, np.float32)
    planes = list(np.ndindex(*job.lead))  # [()] for a single plane
    per_plane = len(job.grid())
    height, width = job.plane_shape
    settings = {"tile": job.tile, "overlap": job.overlap, "batch": job.batch}
    for i, plane in enumerate(planes):

        def report(done: int, total: int, i=i) -> None:
            if progress is not None:  # a smaller tile after out-of-memory changes ``total``
                progress(i * per_plane + round(done / max(total, 1) * per_plane), len(planes) * per_plane)

        la, lb, chroma = job.inputs(plane, 0, height, 0, width)
        fused, settings = tiled_fuse(predict, la, lb, settings["tile"], settings["overlap"], settings["batch"],
                                     multiple, progress=report, cancel=cancel)
        out[plane] = job.finish(fused, chroma)
    return out


# --- out of core ----------------------------------------------------------------------------


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
    tiles_computed: int  # tiles on chunk borders run once per chunk they touch
    seconds: float
    settings: dict = field(default_factory=dict)

    def summary(self) -> str:
        resumed = f", {self.chunks_skipped} already done" if self.chunks_skipped else ""
        return (f"{self.out}: {'x'.join(map(str, self.shape))} {self.dtype} in {self.seconds:.1f} s "
                f"({self.chunks_computed} chunks, {self.tiles_computed} tiles computed{resumed})")


def default_chunk(tile: int, overlap: int) -> int:
    """The multiple of the tile stride nearest above ``CHUNK_TARGET`` (see module docstring)."""
    stride = tile - overlap
    return stride * max(1, math.ceil(CHUNK_TARGET / stride))


def _identity(source: Source) -> Any:
    """What makes a source the same source again on a rerun (for resuming)."""
    if not isinstance(source.ref, str):
        return {"name": source.name, "shape": list(source.shape), "dtype": str(source.dtype)}
    path = os.path.abspath(source.ref)
    metadata = (".zarray", ".zattrs", ".zgroup", "zarr.json")
    # A store's metadata (its own and its arrays', one level down), never its many chunk files.
    files = [path] if os.path.isfile(path) else [
        os.path.join(folder, name) for folder in [path] + [e.path for e in os.scandir(path) if e.is_dir()]
        for name in metadata if os.path.isfile(os.path.join(folder, name))
    ]
    return {"path": path, "files": sorted((f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files)}


def _check_output(out: str, overwrite: bool, sources: list[Source]) -> str:
    kind = kind_of(out)
    if kind == "picture":
        raise InputError(f"{out}: write fused images as .zarr/.ome.zarr or .tif/.tiff")
    full = os.path.abspath(out)
    for source in sources:
        if isinstance(source.ref, str) and os.path.abspath(source.ref) == full:
            raise InputError(f"{out}: the output would overwrite the source {source.name}")
    if os.path.exists(out) and not overwrite:
        raise InputError(f"{out}: already exists (use --overwrite / overwrite=True to replace it)")
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise InputError(f"{out}: cannot write: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{out}: cannot write: folder {parent} is not writable")
    return kind


def _to_dtype(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype.kind in "iu":
        return np.round(block * np.iinfo(dtype).max).astype(dtype)
    return block.astype(dtype, copy=False)


_RUNNERS: dict[tuple[int, int], BatchRunner] = {}


def _run_chunk(job: FusionJob, layout: OutputLayout, store: str, done: str,
               plane: tuple[int, ...], y0: int, y1: int, x0: int, x1: int) -> int:
    """Fuse one output chunk, write it, then mark it done (a killed run redoes unmarked ones).
    Returns how many tiles it ran."""
    predict = _predictor(job.engine)[0]
    runner = _RUNNERS.setdefault((id(predict), job.batch), BatchRunner(predict, job.batch))
    block = job.region(runner, plane, y0, y1, x0, x1)
    write_block(store, layout, plane, y0, x0, _to_dtype(block, np.dtype(layout.dtype)))
    with open(os.path.join(done, _chunk_name(plane, y0, x0)), "w"):
        pass
    return len(job.grid().touching(y0, y1, x0, x1))


def _chunk_name(plane: tuple[int, ...], y0: int, x0: int) -> str:
    return "_".join(map(str, (*plane, y0, x0)))


LOCAL_SCHEDULERS = ("synchronous", "sync", "threads", "threading", "processes")


def _check_scheduler(scheduler) -> None:
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


def _execute(tasks: list, scheduler, progress: Callable[[int], None], cancel: Callable[[], bool] | None) -> int:
    """Run delayed chunk tasks on a local scheduler name or a dask.distributed client/address;
    returns the number of tiles they ran."""
    import dask

    if scheduler is None or scheduler in LOCAL_SCHEDULERS:
        def posttask(key, result, dsk, state, worker_id):
            if str(key).startswith("chunk-"):
                progress(1)

        def pretask(key, dsk, state):
            if cancel is not None and cancel():
                raise FusionCancelled("fusion cancelled")

        # Callbacks passed explicitly, never through dask's process-wide active set: a viewer
        # computing its own dask arrays meanwhile (napari's dask cache) must not see our tasks,
        # nor we its (dask.cache raises KeyError on tasks it did not start).
        # A callback is dask's 5-tuple (start, start_state, pretask, posttask, finish).
        return sum(dask.compute(*tasks, scheduler=scheduler or "threads",
                                callbacks=[(None, None, pretask, posttask, None)]))

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


def fuse_files(
    a,
    b,
    out: str,
    model=None,
    tile: int = 256,
    overlap: int = 64,
    batch: int = 4,
    device: str = "auto",
    method: str | None = None,
    chunk: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    scheduler=None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    normalise: str | None = "percentile",
    names: tuple[str, str] | None = None,
) -> FuseReport:
    """Fuse two images (paths, or arrays) into ``out`` (.zarr / .ome.zarr: OME-Zarr 0.4;
    .tif / .tiff: tiled OME-TIFF), chunk by chunk.

    The run is built in ``OUT.fusionmamba-partial`` and moved to ``out`` only when complete, so
    ``out`` never holds a half-written image. Interrupted (Ctrl-C, kill, ``cancel``), the same
    call resumes where it stopped: finished chunks are marked and skipped; other arguments
    refuse to resume unless ``overwrite``. ``scheduler``: None (threads), "synchronous",
    "threads", "processes", a ``distributed.Client`` or a scheduler address. ``dtype``:
    "float32" (values in [0, 1]) or "source" (the sources' common dtype, integers scaled to
    their full range). ``progress(done, total)`` counts chunks; ``names`` label array inputs in
    error messages. Array inputs are recognised on a rerun by name, shape, dtype and percentiles.
    """
    import dask

    start = time.perf_counter()
    out = str(out).rstrip("/")
    if dtype not in DTYPES:
        raise InputError(f"unknown output dtype {dtype!r}: choose float32 or source")
    _check_scheduler(scheduler)
    # Open the sources before judging the output, so a missing source is named first.
    names = tuple(str(x) if isinstance(x, (str, os.PathLike)) else n
                  for x, n in zip((a, b), names or ("A", "B")))
    job = _prepare(a, b, model, method, tile, overlap, batch, device, normalise, names)
    kind = _check_output(out, overwrite, [job.a, job.b])
    chunk = int(chunk) if chunk is not None else default_chunk(job.tile, job.overlap)
    if chunk < 1:
        raise InputError(f"chunk must be a positive integer, got {chunk}")
    out_dtype = np.dtype(np.float32) if dtype == "float32" else np.result_type(job.a.dtype, job.b.dtype)
    if out_dtype.kind == "f":
        out_dtype = np.dtype(np.float32)
    elif out_dtype.itemsize > 4:
        raise InputError(f"dtype source: {out_dtype} sources ({job.a.name}, {job.b.name}) have no "
                               f"exact [0, 1] scaling; use dtype float32")
    if job.a.pixel_size is not None and job.b.pixel_size is not None and not np.allclose(
        job.a.pixel_size[-2:], job.b.pixel_size[-2:], rtol=1e-2
    ):
        warnings.warn(f"pixel sizes differ ({job.a.pixel_size} and {job.b.pixel_size}); using {job.a.name}'s")
    pixel_source = job.a if job.a.pixel_size is not None else job.b
    pixel = None
    if pixel_source.pixel_size is not None and len(pixel_source.pixel_size) == len(job.out_axes.rstrip("S")):
        pixel = pixel_source.pixel_size
    # the output lies where A lies (or B, when only B says where it starts)
    place = job.a if job.a.origin is not None else job.b
    origin = place.origin if place.origin is not None and len(place.origin) == len(job.out_axes.rstrip("S")) else None
    layout = OutputLayout(job.out_shape, job.out_axes, out_dtype.str, chunk, pixel,
                          pixel_source.unit if pixel else None, origin)

    run = {
        "version": 1,
        "a": _identity(job.a), "b": _identity(job.b), "engine": job.engine.key,
        "tile": job.tile, "overlap": job.overlap, "chunk": chunk, "dtype": layout.dtype,
        "norm": [asdict(job.norm_a), asdict(job.norm_b)], "shape": list(layout.shape), "kind": kind,
    }
    run_hash = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()
    partial = out + PARTIAL_SUFFIX
    store, done, run_file = (os.path.join(partial, name) for name in ("out.zarr", "done", "run.json"))
    if os.path.exists(partial):
        try:
            with open(run_file) as handle:
                same = json.load(handle).get("hash") == run_hash
        except (OSError, ValueError):
            same = False
        if not same and not overwrite:
            raise InputError(
                f"{partial}: an unfinished run with other arguments is there; rerun it with the same "
                f"arguments to resume, or pass --overwrite / overwrite=True to start again"
            )
        if not same:
            shutil.rmtree(partial)
    if not os.path.exists(partial):
        os.makedirs(done)
        create_ome_zarr(store, layout, attrs={"fusionmamba": {"run": run_hash, "complete": False}},
                        name=os.path.basename(out))
        with atomic_path(run_file) as tmp:
            tmp.write_text(json.dumps({"hash": run_hash, "run": run}, indent=1, default=str))

    height, width = job.plane_shape
    planes = list(np.ndindex(*job.lead))  # [()] for a single plane
    blocks = [(p, y, min(y + chunk, height), x, min(x + chunk, width))
              for p in planes for y in range(0, height, chunk) for x in range(0, width, chunk)]
    finished = set(os.listdir(done))
    todo = [blk for blk in blocks if _chunk_name(blk[0], blk[1], blk[3]) not in finished]

    counter = [len(blocks) - len(todo)]

    def advance(n: int) -> None:
        counter[0] += n
        if progress is not None:
            progress(counter[0], len(blocks))

    advance(0)
    job_node = dask.delayed(job, pure=True)
    tasks = [dask.delayed(_run_chunk, pure=True)(
        job_node, layout, store, done, p, y0, y1, x0, x1,
        dask_key_name=f"chunk-{run_hash[:8]}-{_chunk_name(p, y0, x0)}") for p, y0, y1, x0, x1 in todo]
    tiles = _execute(tasks, scheduler, advance, cancel)

    _finalise(out, kind, store, layout, partial, run_hash)
    return FuseReport(out, layout.shape, str(np.dtype(layout.dtype)), layout.axes, layout.pixel_size, chunk,
                      len(blocks), len(todo), len(blocks) - len(todo), tiles, time.perf_counter() - start,
                      {"tile": job.tile, "overlap": job.overlap, "batch": job.batch, "engine": job.engine.key})


def _finalise(out: str, kind: str, store: str, layout: OutputLayout, partial: str, run_hash: str) -> None:
    """Add the zarr pyramid (or write the TIFF), mark the store complete and move it into place
    (replacing an old output only now)."""
    import zarr

    if kind == "zarr":
        add_pyramid(store, layout)
    group = zarr.open_group(store, mode="r+")
    group.attrs["fusionmamba"] = {"run": run_hash, "complete": True}
    if kind == "tiff":
        tiff = os.path.join(partial, "out.tif")
        zarr_to_tiff(store, layout, tiff)
        store = tiff
    if os.path.isdir(out) and not os.path.islink(out):
        shutil.rmtree(out)
    elif os.path.lexists(out):
        os.remove(out)
    os.replace(store, out)
    shutil.rmtree(partial)
