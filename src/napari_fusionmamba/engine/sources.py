"""The two images to fuse: wrapping paths and arrays as ``Source`` (refusing what cannot be
fused, with messages that name the input), and one normalisation per source and stack.

Normalisation is computed once per image or stack, from robust percentiles of a downsampled
view, never per tile, so that tiles and planes agree. Non-finite pixels are replaced after
normalisation: NaN and -Inf by 0, +Inf by 1 (a warning says so); percentiles ignore them.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import FusionMambaError, ImageReadError, InputError
from ..io import OpenedImage, Planes, guess_axes, open_image
from ..io.colour import rgb_to_ycrcb

#: Planes smaller than this along Y or X are refused (nothing to fuse).
MIN_SIDE = 8
#: Lower and upper percentiles mapped to 0 and 1.
PERCENTILES = (0.1, 99.9)
#: At most this many pixels per source are read to estimate the percentiles.
PERCENTILE_SAMPLE = 1 << 21
NORMALISE = ("percentile", "range", None)

K = TypeVar("K")
V = TypeVar("V")


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
    channel: int | None = None  # of a path's C axis

    def data(self) -> Any:
        """The lazy array (opened once per process for paths)."""
        if isinstance(self.ref, str):
            return _opened(self.ref, self.channel).data
        return self.ref

    def read(self, plane: tuple[int, ...], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """A window of one plane as float32 (colour keeps its first three samples)."""
        plane = tuple(plane)[len(plane) - len(self.lead) :]  # a single image goes with every plane
        index = plane + (slice(y0, y1), slice(x0, x1)) + ((slice(0, 3),) if self.colour else ())
        with reading(self.name):
            window = self.data()[index]
            if hasattr(window, "compute"):
                window = window.compute(scheduler=local_scheduler("synchronous"), callbacks=())  # see _execute
            return np.asarray(window, dtype=np.float32)


#: The names of dask's local schedulers.
LOCAL_SCHEDULERS = ("synchronous", "sync", "threads", "threading", "processes")


def local_scheduler(name: str) -> Any:
    """dask's local scheduler ``name`` (one of ``LOCAL_SCHEDULERS``) as the function itself:
    given a name, dask first imports dask.distributed to look for a client, 0.7 s of every
    process's first computation."""
    import dask.local
    import dask.multiprocessing
    import dask.threaded

    functions = (dask.local.get_sync,) * 2 + (dask.threaded.get,) * 2 + (dask.multiprocessing.get,)
    return dict(zip(LOCAL_SCHEDULERS, functions))[name]


@contextmanager
def reading(name: str) -> Iterator[None]:
    """Turn a reader's failure on damaged data found mid-run (a corrupt chunk, a truncated TIFF:
    the codecs raise ValueError, RuntimeError or OSError) into one ``ImageReadError`` line."""
    try:
        yield
    except (ValueError, RuntimeError, OSError, KeyError) as error:
        if isinstance(error, FusionMambaError):
            raise
        detail = " ".join(str(error).split())[:300]
        raise ImageReadError(f"{name}: cannot read (damaged data? {type(error).__name__}: {detail})") from None


_OPENED: dict[tuple[str, int, int, int | None], OpenedImage] = {}
#: Entries kept in the per-process caches (a napari session or a cluster worker lives long).
CACHE_SIZE = 4


def remember(cache: dict[K, V], key: K, value: V) -> V:
    """Put ``value`` in a small insertion-ordered cache, forgetting the oldest entries."""
    cache[key] = value
    while len(cache) > CACHE_SIZE:
        cache.pop(next(iter(cache)))
    return value


def _opened(path: str, channel: int | None = None) -> OpenedImage:
    """Sources opened in this process (one channel of them, when given), reopened when the file
    changes."""
    if not os.path.exists(path):
        return open_image(path)  # raises, naming the path
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size, channel)
    if key in _OPENED:
        return _OPENED[key]
    image = open_image(path)
    return remember(_OPENED, key, image if channel is None else image.channel(channel))


def as_source(value: Any, name: str, channel: int | None = None) -> Source:
    """Wrap a path, an ``OpenedImage`` or an array, refusing data that cannot be fused;
    ``channel`` picks one channel of a file's (or ``OpenedImage``'s) C axis."""
    if channel is not None and isinstance(value, OpenedImage):
        value = value.channel(channel)
    elif channel is not None and not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{name}: a channel is picked from a file or an OpenedImage, whose axes name C")
    if isinstance(value, (str, os.PathLike)):
        path = str(value)
        image = _opened(path, channel)
        source = Source(
            path if channel is None else f"{path} (channel {channel})",
            path,
            image.axes,
            tuple(image.data.shape),
            np.dtype(image.data.dtype),
            image.pixel_size,
            image.unit,
            image.origin,
            channel,
        )
    elif isinstance(value, OpenedImage):
        source = Source(
            value.path,
            value.data,
            value.axes,
            tuple(value.data.shape),
            np.dtype(value.data.dtype),
            value.pixel_size,
            value.unit,
            value.origin,
        )
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


def check_pair(a: Source, b: Source) -> None:
    if a.plane_shape != b.plane_shape:
        raise InputError(
            f"spatial shapes differ: {a.name} is {a.plane_shape[0]}x{a.plane_shape[1]}, "
            f"{b.name} is {b.plane_shape[0]}x{b.plane_shape[1]} (the sources must be registered)"
        )
    if a.lead != b.lead and a.lead and b.lead:  # a single image goes with every plane of a stack
        raise InputError(f"different numbers of planes: {a.name} has {_planes(a)}, {b.name} has {_planes(b)}")


def _planes(source: Source) -> str:
    lead = source.axes[: len(source.lead)]
    return " x ".join(f"{n} {ax}" for ax, n in zip(lead, source.lead)) or "a single plane"


@dataclass(frozen=True)
class Normalisation:
    """Linear map of raw values to [0, 1], one per source and stack."""

    lo: float
    hi: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = (x - np.float32(self.lo)) / np.float32(self.hi - self.lo)
        y = np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=0.0)
        return np.asarray(y, dtype=np.float32)


def _sample(source: Source) -> np.ndarray:
    """A strided view of every plane, about ``PERCENTILE_SAMPLE`` pixels in all, as float."""
    height, width = source.plane_shape
    planes = max(1, math.prod(source.lead))
    step = max(1, math.ceil(math.sqrt(height * width * planes / PERCENTILE_SAMPLE)))
    index: tuple[Any, ...] = (Ellipsis, slice(None, None, step), slice(None, None, step))
    if source.colour:
        index = index + (slice(0, 3),)
    with reading(source.name):
        sample = source.data()[index]
        if hasattr(sample, "compute"):
            # local reads, even with a cluster client active
            sample = sample.compute(scheduler=local_scheduler("threads"), callbacks=())
        values = np.asarray(sample, dtype=np.float64)
    return rgb_to_ycrcb(values)[0] if source.colour else values


def normalisation_of(source: Source, mode: str | None, percentiles: tuple[float, float] = PERCENTILES) -> Normalisation:
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
    lo, hi = np.percentile(values, percentiles) if mode == "percentile" else (values.min(), values.max())
    if hi <= lo:  # a mostly flat image: fall back to the full range of the sample
        lo, hi = values.min(), values.max()
    if hi <= lo:  # constant: it carries no information, map it to 0
        hi = lo + 1.0
    return Normalisation(float(lo), float(hi))
