"""Chunk digests: each output chunk's digest is recorded as it is written (with the digest of
the source windows it was fused from), kept in the finished output, and checked by a resume
and by ``verify_output``, so that a missing, truncated or altered chunk is found instead of
read as a silent block of zeros.

A digest is a 64-bit BLAKE2b of an array's dtype, shape and bytes: enough to catch damage and
edits, not meant against forgery. A chunk is named by its path in the store, ``LEVEL/I.J.K``
(level ``0`` is the full resolution; a TIFF output names its blocks the same way).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import OutputLayout, kind_of, open_image, tiff_description, tiff_missing_bytes
from .sources import reading


def digest(*arrays: np.ndarray) -> str:
    """The digest of arrays taken together: their dtypes, shapes (without axes of length 1, so
    a store's chunk of one plane and that plane's block agree) and values."""
    h = hashlib.blake2b(digest_size=8)
    for array in arrays:
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype.str}{[n for n in array.shape if n != 1]}".encode())
        h.update(array.data)
    return h.hexdigest()


def chunk_key(layout: OutputLayout, plane: tuple[int, ...], y0: int, x0: int) -> str:
    """The name of the full-resolution chunk that holds the block at (y0, x0) of ``plane``."""
    index = layout.store_index(plane, slice(y0, y0 + 1), slice(x0, x0 + 1))
    starts = [(i.start or 0) if isinstance(i, slice) else i for i in index]
    return "0/" + ".".join(str(start // size) for start, size in zip(starts, layout.store_chunks()))


class StoredChunks:
    """The chunks of a zarr store made by ``create_ome_zarr``, checked one by one."""

    def __init__(self, store: str) -> None:
        self.store = store
        self._arrays: dict[str, Any] = {}

    def problem(self, key: str, expected: str) -> str | None:
        """What is wrong with chunk ``key`` (missing, unreadable, or not what was written);
        None when it holds what was written."""
        import zarr

        level, name = key.split("/")
        if level not in self._arrays:
            self._arrays[level] = zarr.open_array(os.path.join(self.store, level), mode="r")
        array = self._arrays[level]
        coords = tuple(int(c) for c in name.split("."))
        separator = array.metadata.dimension_separator
        if not os.path.isfile(os.path.join(self.store, level, separator.join(map(str, coords)))):
            return "missing"
        return _check(key, lambda: array.get_block_selection(coords), expected)

    def pyramid(self, levels: list[str]) -> dict[str, str]:
        """The digests of every chunk of the downsampled ``levels``, as they are now."""
        import zarr

        digests = {}
        for level in levels:
            array = zarr.open_array(os.path.join(self.store, level), mode="r")
            for coords in np.ndindex(*array.cdata_shape):
                digests[f"{level}/{'.'.join(map(str, coords))}"] = digest(np.asarray(array.get_block_selection(coords)))
        return digests


@dataclass
class VerifyReport:
    """What ``verify_output`` found: how many chunks it checked, and one line per bad chunk."""

    out: str
    chunks: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"{self.out}: all {self.chunks} chunks present and as written"
        counted = f" ({len(self.problems)} of {self.chunks} chunks missing or damaged)" if self.chunks else ""
        return f"{self.out}: damaged{counted}; fuse it again with --overwrite"


def verify_output(out: str | os.PathLike[str]) -> VerifyReport:
    """Check a finished output of ``fuse_files``: every chunk present, readable and equal to
    what was written (its digest recorded at write time)."""
    out = str(out).rstrip("/")
    if not os.path.exists(out):
        raise InputError(f"{out}: no such file or directory")
    kind = kind_of(out)
    try:
        missing = tiff_missing_bytes(out) if kind == "tiff" else 0
        if missing:
            return VerifyReport(out, 0, [f"{out}: cut short: {missing} bytes of its image data are missing"])
        record = _record(out, kind)
    except (OSError, ValueError, KeyError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{out}: cannot read it as a fused output ({type(error).__name__}: {error})") from None
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in record["layout"].items()}
    layout = OutputLayout(**fields)
    chunks: dict[str, str] = record["chunks"]
    if kind == "zarr":
        stored = StoredChunks(out)
        problems = {key: stored.problem(key, expected) for key, expected in chunks.items()}
    else:
        problems = _tiff_problems(out, layout, chunks)
    lines = [f"{out}/{key}: {problem}" for key, problem in problems.items() if problem]
    return VerifyReport(out, len(chunks), lines)


def _record(out: str, kind: str) -> dict[str, Any]:
    """The ``fusionmamba`` record of a finished output: its layout and chunk digests."""
    if kind == "zarr":
        import zarr

        record = dict(zarr.open_group(out, mode="r").attrs.get("fusionmamba", {}))
    else:
        record = (tiff_description(out) or {}).get("fusionmamba", {})
    if not record.get("engine") or record.get("complete") is False:
        raise InputError(f"{out}: not a finished output of fusionmamba fuse")
    if "chunks" not in record:
        raise InputError(f"{out}: no chunk digests recorded (written by an older version); fuse it again to verify it")
    return record


def _tiff_problems(out: str, layout: OutputLayout, chunks: dict[str, str]) -> dict[str, str | None]:
    """What is wrong with each block of an OME-TIFF output (named as the chunks it was made of)."""
    data = open_image(out).data.reshape(layout.shape)
    height, width = layout.plane_shape
    problems: dict[str, str | None] = {}
    for plane in np.ndindex(*layout.lead):
        for y0 in range(0, height, layout.chunk):
            for x0 in range(0, width, layout.chunk):
                key = chunk_key(layout, plane, y0, x0)
                region = plane + (slice(y0, y0 + layout.chunk), slice(x0, x0 + layout.chunk))
                problems[key] = _check(key, partial(_block, data, layout, region), chunks.get(key, ""))
    return problems


def _block(data: Any, layout: OutputLayout, region: tuple[Any, ...]) -> np.ndarray:
    """A block of a memory-order image, as the store keeps it."""
    return layout.to_store(np.asarray(data[region]))


def _check(key: str, read: Callable[[], Any], expected: str) -> str | None:
    """What is wrong with the chunk that ``read`` returns: unreadable, or not what was written."""
    try:
        with reading(key):
            block = np.asarray(read())
    except InputError as error:
        return str(error).removeprefix(f"{key}: ")
    return None if digest(block) == expected else "damaged: its data differs from what was written"
