"""``FuseOptions``: every setting of a fusion in one place, shared by ``fuse``, ``fuse_files``, the
CLI and the fuse widget (instead of each spelling out a dozen keywords)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Options that only shape a file output (``fuse_files``); ``fuse`` refuses them as keywords.
FILE_ONLY = ("chunk", "dtype", "overwrite", "scheduler")


@dataclass(frozen=True)
class FuseOptions:
    """How to fuse.

    ``model``: None (the shipped default), a model name or checkpoint path, or a FusionMamba
    module; ``method``: a ``quality.baselines.BASELINES`` name instead of the network.
    ``tile`` / ``overlap`` / ``batch``: the tiling (tile a multiple of the network's stride).
    ``device``: "auto", "cpu", "cuda[:N]" or "mps". ``normalise``: "percentile" (robust,
    default), "range" (integer dtype range / float min-max) or None (inputs already in [0, 1]).
    ``names`` label array inputs in error messages. ``channels``: the channel of A and of B
    to fuse, for files with a C axis (None: all of them, plane by plane); one file may give
    both (fluorescence and phase contrast of one OME-TIFF). ``tint`` / ``tint_b``: an
    ``io.colour.Tint`` for a gray source A / B shown in colour: the source is normalised to the
    tint's limits (when it has them) and the fused gray is coloured by its colormap into RGB, so
    the result looks as the source was shown; with both, by both colormaps, mixed at each pixel
    by how bright each source is shown there (``io.colour.mix_tints``).

    File outputs only: ``chunk`` (output chunk side; default a multiple of the tile stride near
    1024), ``dtype`` ("float32" in [0, 1], or "source": the sources' common dtype, integers
    scaled to their full range), ``overwrite`` (replace an output or an unfinished run with
    other options) and ``scheduler`` (None = threads, "synchronous", "threads", "processes", a
    ``distributed.Client`` or a scheduler address).
    """

    model: Any = None
    method: str | None = None
    tile: int = 256
    overlap: int = 64
    batch: int = 6  # a row of tiles of the default chunk: one forward pass each
    device: str = "auto"
    normalise: str | None = "percentile"
    names: tuple[str, str] | None = None
    channels: tuple[int | None, int | None] = (None, None)
    tint: Any = None
    tint_b: Any = None
    chunk: int | None = None
    dtype: str = "float32"
    overwrite: bool = False
    scheduler: Any = None

    @classmethod
    def of(cls, options: FuseOptions | None, keywords: dict[str, Any]) -> FuseOptions:
        """``options`` (or the defaults) with ``keywords`` (field names) replacing fields; an
        unknown keyword is a ``TypeError`` naming it, as a misspelt argument would be."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise TypeError(f"unknown fusion option(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return dataclasses.replace(options or cls(), **keywords)
