"""One fusion job, picklable for any process: the two sources, their normalisations, the engine
and the tiling; ``fuse`` runs it in memory, ``files.fuse_files`` chunk by chunk.

Colour sources are fused on their luminance (YCrCb, as the paper does for PET/SPECT) and the
colour of A (or of the colour source) is put back; a gray source with a ``Tint`` (shown through a
colormap) gives the fused gray coloured by that colormap, two tinted sources the fused gray
coloured by both, mixed by how bright each source is shown (``io.colour.mix_tints``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.colour import Tint, mix_tints, rgb_to_ycrcb, ycrcb_to_rgb
from .options import FILE_ONLY, FuseOptions
from .predictors import Engine, choose_engine, predictor
from .sources import Normalisation, Source, as_source, check_pair, normalisation_of
from .tiling import TileGrid, check_tiling, local_workers, tiled_fuse
from .verify import digest

#: The Cr and Cb planes of a colour source, put back around the fused luminance.
Chroma = tuple[np.ndarray, np.ndarray]


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
    tint: Tint | None = None
    tint_b: Tint | None = None

    @property
    def colour(self) -> bool:
        return self.a.colour or self.b.colour or self.tint is not None or self.tint_b is not None

    @property
    def lead(self) -> tuple[int, ...]:
        """The stack's leading shape; a single image (no leading axes) goes with every plane."""
        return max(self.a.lead, self.b.lead, key=len)

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

    def read(self, plane: tuple[int, ...], y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """The windows of both sources, as read (what a chunk's result depends on, with the run's
        arguments: a resume checks their digest)."""
        return self.a.read(plane, y0, y1, x0, x1), self.b.read(plane, y0, y1, x0, x1)

    def inputs(self, windows: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray, Chroma | None]:
        """Normalised luminance of both windows, and the chroma to put back."""
        chroma: Chroma | None = None
        planes = []
        for window, source, norm in zip(windows, (self.a, self.b), (self.norm_a, self.norm_b)):
            window = norm(window)
            if source.colour:
                luma, cr, cb = rgb_to_ycrcb(window)
                if chroma is None:  # both colour: the colour of A is kept
                    chroma = (cr, cb)
                window = luma
            planes.append(np.clip(window, 0.0, 1.0))
        return planes[0], planes[1], chroma

    def finish(self, fused: np.ndarray, chroma: Chroma | None, shown: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The output of the fused luminance: its colour put back from ``chroma`` or the tints
        (``shown``: both sources as ``inputs`` gives them, over the same pixels)."""
        if self.tint is not None and self.tint_b is not None:
            return mix_tints(fused, *shown, self.tint, self.tint_b)
        tint = self.tint or self.tint_b
        if tint is not None:
            return tint(np.clip(fused, 0.0, 1.0))
        if chroma is None:
            return fused.astype(np.float32, copy=False)
        return np.asarray(np.clip(ycrcb_to_rgb(fused, *chroma), 0.0, 1.0), dtype=np.float32)

    def finish_region(
        self, plane: tuple[int, ...], y0: int, y1: int, x0: int, x1: int, fused: np.ndarray
    ) -> tuple[np.ndarray, str]:
        """The blended luminance ``fused`` of the block [y0, y1) x [x0, x1) of one plane as the
        output block (its colour put back; float32 in [0, 1]), and the digest of the source
        windows it was fused from."""
        ry0, ry1, rx0, rx1 = self.grid().reach(y0, y1, x0, x1)
        windows = self.read(plane, ry0, ry1, rx0, rx1)
        if not self.colour:  # nothing to put back: the sources are not needed again
            return fused.astype(np.float32, copy=False), digest(*windows)
        # the colour comes back from the sources as fused, over the block alone
        block = (slice(y0 - ry0, y1 - ry0), slice(x0 - rx0, x1 - rx0))
        la, lb, chroma = self.inputs((windows[0][block], windows[1][block]))
        return self.finish(fused, chroma, (la, lb)), digest(*windows)

    def input_digest(self, plane: tuple[int, ...], y0: int, y1: int, x0: int, x1: int) -> str:
        """The digest of the source windows the block [y0, y1) x [x0, x1) is fused from."""
        return digest(*self.read(plane, *self.grid().reach(y0, y1, x0, x1)))


def prepare_job(a: Any, b: Any, options: FuseOptions) -> FusionJob:
    """Check the sources, the engine and the tiling in the caller's process (errors before any
    output), and compute each source's normalisation once."""
    names = options.names or ("A", "B")
    sa, sb = (as_source(x, name, channel) for x, name, channel in zip((a, b), names, options.channels))
    check_pair(sa, sb)
    engine = choose_engine(options.model, options.method, options.device)
    multiple = predictor(engine)[1]
    check_tiling(options.tile, options.overlap, multiple)
    batch = options.batch
    if int(batch) != batch or batch < 1:
        raise InputError(f"batch must be a positive integer, got {batch}")
    norms = []
    for source, tint in ((sa, options.tint), (sb, options.tint_b)):
        if tint is not None and source.colour:
            raise InputError(f"{source.name} is a colour image: a colormap tints a gray source only")
        # with a tint's limits, fused as the user sees it
        limited = tint is not None and tint.limits is not None
        norms.append(Normalisation(*tint.limits) if limited else normalisation_of(source, options.normalise))
    norm_a, norm_b = norms
    tiling = (int(options.tile), int(options.overlap), int(batch))
    return FusionJob(sa, sb, norm_a, norm_b, engine, *tiling, options.tint, options.tint_b)


def _on_cpu(engine: Engine) -> bool:
    """Whether the engine runs on the CPU, where batches run side by side (on a GPU they would
    only share one device and its memory)."""
    if engine.method is not None:
        return True
    from ..model.devices import resolve_device

    return bool(resolve_device(engine.device).type == "cpu")


def fuse(
    a: Any,
    b: Any,
    options: FuseOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    **keywords: Any,
) -> np.ndarray:
    """Fuse two registered images in memory.

    ``a`` and ``b``: arrays (numpy, dask, zarr), ``OpenedImage`` or paths, of one spatial shape;
    (Y, X), stacks (..., Y, X) with the same planes (or one image and a stack: the image goes
    with every plane), colour (..., Y, X, 3|4) fused on luminance.
    ``options`` (a ``FuseOptions``) and ``keywords`` (its fields, e.g. ``model=``, ``tile=``)
    say how; the file-output options do not apply here. ``progress(done, total)`` counts tiles;
    ``cancel()`` returning True stops with ``FusionCancelled``. On the CPU, batches of tiles run
    side by side on as many threads as dask's local schedulers use, one torch thread each (as
    ``fuse_files``).
    Returns float32 in [0, 1] of shape (..., Y, X), plus a last axis of 3 when a source is colour.
    """
    given = sorted(set(keywords) & set(FILE_ONLY))
    if given:
        raise TypeError(f"fuse() takes no {', '.join(given)}: those shape a file output (see fuse_files)")
    job = prepare_job(a, b, FuseOptions.of(options, keywords))
    predict, multiple = predictor(job.engine)
    out = np.empty(job.out_shape, np.float32)
    planes = list(np.ndindex(*job.lead))  # [()] for a single plane
    per_plane = len(job.grid())
    height, width = job.plane_shape
    settings = {"tile": job.tile, "overlap": job.overlap, "batch": job.batch}
    workers = local_workers() if _on_cpu(job.engine) else 1  # as fuse_files' local workers run them
    for i, plane in enumerate(planes):

        def report(done: int, total: int, i: int = i) -> None:
            if progress is not None:  # a smaller tile after out-of-memory changes ``total``
                progress(i * per_plane + round(done / max(total, 1) * per_plane), len(planes) * per_plane)

        la, lb, chroma = job.inputs(job.read(plane, 0, height, 0, width))
        fused, settings = tiled_fuse(
            predict,
            la,
            lb,
            settings["tile"],
            settings["overlap"],
            settings["batch"],
            multiple,
            progress=report,
            cancel=cancel,
            workers=workers,
        )
        out[plane] = job.finish(fused, chroma, (la, lb))
    return out
