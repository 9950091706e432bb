"""Overlap-blended tiled inference on 2-D planes.

A network sees a tile of fixed size; an image of any size is covered by a global grid of tiles
that overlap, and each output pixel is the average of the tiles covering it, weighted by a
window that is flat in a tile's interior and tapers (raised cosine) over the overlap, with a
small floor so that pixels seen by one tile only keep a non-zero weight. Because the grid is
global and the weights are normalised by their sum, any region of the output can be computed on
its own (from the tiles that touch it) and agrees with the whole-image result: that is what lets
``pipeline`` write output chunks independently and in any order.

Style after MONAI's ``sliding_window_inference`` and cellpose's ``make_tiles``/``average_tiles``:
edge tiles are placed against the border (never padded with invented pixels), and an image
smaller than a tile gets a single tile of its own size (the network pads it by reflection to its
stride).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import FusionCancelled, InputError

#: Weight of a tile's outermost pixels relative to its interior.
WINDOW_FLOOR = 1e-3

#: A predictor maps two (N, h, w) float32 batches in [0, 1] to the fused (N, h, w) batch.
Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]
Progress = Callable[[int, int], None]


class TilingAdjusted(UserWarning):
    """The batch or tile size was reduced after the device ran out of memory."""


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start of every tile along one axis: a regular grid from 0 with the last tile placed
    against the border, so no tile reaches outside the image."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]


def taper(length: int, overlap: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """1-D window: 1 in the middle, a raised-cosine ramp over ``overlap`` pixels at each end.

    Two neighbouring ramps at the regular stride sum to one (a cross-fade), so blending
    does not change values where tiles agree.
    """
    window = np.ones(length, np.float64)
    ramp_len = min(overlap, length // 2)
    if ramp_len > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp_len) + 0.5) / ramp_len)
        window[:ramp_len] = ramp
        window[length - ramp_len :] = ramp[::-1]
    return np.maximum(window, floor).astype(np.float32)


def check_tiling(tile: int, overlap: int, multiple: int = 1) -> None:
    """Refuse settings that cannot make a grid (with the option names the user typed)."""
    if int(tile) != tile or tile < 1:
        raise InputError(f"tile must be a positive integer, got {tile}")
    if int(overlap) != overlap or overlap < 0:
        raise InputError(f"overlap must be a non-negative integer, got {overlap}")
    if tile % multiple:
        raise InputError(f"tile {tile} is not a multiple of the network stride {multiple}")
    if overlap >= tile:
        raise InputError(f"tile {tile} must be larger than the overlap {overlap}")


@dataclass(frozen=True)
class TileGrid:
    """The global grid of tiles over one (H, W) plane."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def tile_shape(self) -> tuple[int, int]:
        """Tiles are ``tile`` square, or the image's own size along an axis shorter than that."""
        return min(self.tile, self.height), min(self.tile, self.width)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @cached_property
    def ys(self) -> list[int]:
        return axis_starts(self.height, self.tile_shape[0], self.stride)

    @cached_property
    def xs(self) -> list[int]:
        return axis_starts(self.width, self.tile_shape[1], self.stride)

    @cached_property
    def window(self) -> np.ndarray:
        th, tw = self.tile_shape
        return np.outer(taper(th, self.overlap), taper(tw, self.overlap))

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def touching(self, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int]]:
        """Top-left corners of the tiles that overlap the region [y0, y1) x [x0, x1)."""
        th, tw = self.tile_shape
        rows = [y for y in self.ys if y < y1 and y + th > y0]
        cols = [x for x in self.xs if x < x1 and x + tw > x0]
        return [(y, x) for y in rows for x in cols]

    def reach(self, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int, int, int]:
        """Bounding box of the tiles touching a region: the source pixels it needs."""
        corners = self.touching(y0, y1, x0, x1)
        th, tw = self.tile_shape
        ys = [y for y, _ in corners]
        xs = [x for _, x in corners]
        return min(ys), max(ys) + th, min(xs), max(xs) + tw


def is_out_of_memory(error: BaseException) -> bool:
    """Out-of-memory errors of CUDA, MPS and the CPU allocator (they share no common type)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class BatchRunner:
    """Runs a predictor over tiles in batches, halving the batch on out-of-memory.

    The reduced batch is kept for later calls (the device will not have more memory next
    time) and reported once through a ``TilingAdjusted`` warning.
    """

    def __init__(self, predictor: Predictor, batch: int):
        if int(batch) != batch or batch < 1:
            raise InputError(f"batch must be a positive integer, got {batch}")
        self.predictor = predictor
        self.batch = int(batch)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out, start = [], 0
        while start < len(a):
            stop = start + self.batch
            try:
                out.append(np.asarray(self.predictor(a[start:stop], b[start:stop]), np.float32))
            except (RuntimeError, MemoryError) as error:
                if not is_out_of_memory(error) or self.batch == 1:
                    raise
                _free_device_memory()
                self.batch = max(1, self.batch // 2)
                warnings.warn(f"out of memory: batch reduced to {self.batch}", TilingAdjusted, stacklevel=2)
                continue
            start = stop
        return np.concatenate(out) if out else np.zeros((0,) + a.shape[1:], np.float32)


def local_workers() -> int:
    """How many tasks run at once on this machine: dask's ``num_workers`` setting, or the CPUs
    this process may use (as dask's local schedulers count them)."""
    import dask
    from dask.system import CPU_COUNT

    return int(dask.config.get("num_workers", None) or CPU_COUNT or os.cpu_count() or 1)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch on ``count`` threads in this process for the block, put back after. Workers running
    side by side take one each: they already use every core, and torch's own threads waiting on
    each other at every operation made a busy 2-core machine several times slower."""
    torch = sys.modules.get("torch")
    if torch is None:  # nothing runs torch here (a classical method)
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weighted_sum(
    runner: BatchRunner,
    a: np.ndarray,
    b: np.ndarray,
    grid: TileGrid,
    corners: Sequence[tuple[int, int]],
    box: Sequence[int],
    origin: tuple[int, int] = (0, 0),
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    workers: int = 1,
) -> np.ndarray:
    """The window-weighted sum of the predictions of the tiles at ``corners`` over the plane box
    [y0, y1) x [x0, x1), each tile clipped to the box.

    ``a`` and ``b`` are float32 windows of the plane whose top-left pixel is ``origin`` in plane
    coordinates; they must cover every tile. Tiles run in batches in the order given (summed in
    that order), up to ``workers`` batches at once, each on one torch thread; a single batch
    keeps torch's threads.
    """
    y0, y1, x0, x1 = box
    oy, ox = origin
    th, tw = grid.tile_shape
    total = len(corners)
    acc = np.zeros((y1 - y0, x1 - x0), np.float32)
    window = grid.window
    groups = [corners[first : first + runner.batch] for first in range(0, total, runner.batch)]

    def predict(group: Sequence[tuple[int, int]]) -> np.ndarray:
        if cancel is not None and cancel():
            raise FusionCancelled("fusion cancelled")
        ta = np.stack([a[y - oy : y - oy + th, x - ox : x - ox + tw] for y, x in group])
        tb = np.stack([b[y - oy : y - oy + th, x - ox : x - ox + tw] for y, x in group])
        return runner(ta, tb)

    done = 0
    if progress is not None:
        progress(0, total)
    parallel = workers > 1 and len(groups) > 1
    pool = ThreadPoolExecutor(min(workers, len(groups))) if parallel else None
    try:
        with torch_threads(1) if parallel else nullcontext():
            for group, fused in zip(groups, pool.map(predict, groups) if pool else map(predict, groups)):
                for (y, x), tile in zip(group, fused):
                    sy0, sy1, sx0, sx1 = max(y, y0), min(y + th, y1), max(x, x0), min(x + tw, x1)  # inside the box
                    inside = (slice(sy0 - y, sy1 - y), slice(sx0 - x, sx1 - x))
                    acc[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += window[inside] * tile[inside]
                done += len(group)
                if progress is not None:
                    progress(done, total)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return acc


def weight_sum(grid: TileGrid, region: Sequence[int]) -> np.ndarray:
    """The summed windows of every tile touching the region [y0, y1) x [x0, x1): what its
    weighted sum is divided by."""
    y0, y1, x0, x1 = region
    th, tw = grid.tile_shape
    weight = np.zeros((y1 - y0, x1 - x0), np.float32)
    for y, x in grid.touching(y0, y1, x0, x1):
        sy0, sy1, sx0, sx1 = max(y, y0), min(y + th, y1), max(x, x0), min(x + tw, x1)
        weight[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] += grid.window[sy0 - y : sy1 - y, sx0 - x : sx1 - x]
    return weight


def blend_region(
    runner: BatchRunner,
    a: np.ndarray,
    b: np.ndarray,
    grid: TileGrid,
    region: Sequence[int] | None = None,
    origin: tuple[int, int] = (0, 0),
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    workers: int = 1,
) -> np.ndarray:
    """Fuse the output region [y0, y1) x [x0, x1) of a plane from the tiles touching it.

    ``a`` and ``b`` are float32 windows of the plane whose top-left pixel is ``origin`` in
    plane coordinates; they must cover ``grid.reach(*region)``. Tiles are predicted in the
    grid's row-major order so that any region reproduces the whole-plane result.
    """
    region = tuple(region) if region is not None else (0, grid.height, 0, grid.width)
    corners = grid.touching(*region)
    acc = weighted_sum(runner, a, b, grid, corners, region, origin, progress, cancel, workers)
    fused: np.ndarray = acc / weight_sum(grid, region)
    return fused


def smaller_tile(tile: int, overlap: int, multiple: int) -> tuple[int, int] | None:
    """The next (tile, overlap) to try after a single tile did not fit, or None at the minimum."""
    new_tile = (tile // 2) // multiple * multiple
    if new_tile < max(multiple, 32):
        return None
    return new_tile, min(overlap, new_tile // 4)


def tiled_fuse(
    predictor: Predictor,
    a: np.ndarray,
    b: np.ndarray,
    tile: int = 256,
    overlap: int = 64,
    batch: int = 6,
    multiple: int = 1,
    progress: Progress | None = None,
    cancel: Callable[[], bool] | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, dict[str, int]]:
    """Fuse two whole float32 planes tile by tile, ``workers`` batches at once (see
    ``weighted_sum``).

    Returns the fused plane and the settings actually used: on out-of-memory the batch halves,
    and when even one tile does not fit the tile halves (a different grid, so the plane is
    started again) and a ``TilingAdjusted`` warning tells the caller.
    """
    check_tiling(tile, overlap, multiple)
    runner = BatchRunner(predictor, batch)
    while True:
        grid = TileGrid(a.shape[0], a.shape[1], tile, overlap)
        try:
            out = blend_region(runner, a, b, grid, progress=progress, cancel=cancel, workers=workers)
            return out, {"tile": tile, "overlap": overlap, "batch": runner.batch}
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            _free_device_memory()
            smaller = smaller_tile(tile, overlap, multiple)
            if smaller is None:
                raise MemoryError(f"out of memory even with one {tile}x{tile} tile per batch") from error
            tile, overlap = smaller
            warnings.warn(
                f"out of memory with one tile per batch: tile reduced to {tile}, overlap {overlap}",
                TilingAdjusted,
                stacklevel=2,
            )
