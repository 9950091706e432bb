"""Content-keyed resume: a run of ``fuse_files`` is built in ``OUT.fusionmamba-partial`` and
moved to ``OUT`` only when complete; finished chunks are marked there, so the same call after
an interruption (Ctrl-C, kill, cancel) redoes only the unmarked ones.

A run is keyed by a hash of what determines its result: the sources' identity (path, size and
modification time of files and store metadata, or an array's name, shape and dtype), the
engine, tiling, chunk, dtype, normalisations and output shape. Other arguments refuse to
resume unless the caller asks to overwrite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError
from ..io import OutputLayout, create_ome_zarr
from ..io.files import atomic_path
from .job import FusionJob
from .sources import Source

PARTIAL_SUFFIX = ".fusionmamba-partial"
RECORD_VERSION = 1


@dataclass(frozen=True)
class PartialRun:
    """The folder a run is built in: the zarr store, the done-markers and the run record."""

    folder: str
    run_hash: str

    @property
    def store(self) -> str:
        return os.path.join(self.folder, "out.zarr")

    @property
    def done(self) -> str:
        return os.path.join(self.folder, "done")

    @property
    def record(self) -> str:
        return os.path.join(self.folder, "run.json")

    def finished(self) -> set[str]:
        return set(os.listdir(self.done))


def source_identity(source: Source) -> dict[str, Any]:
    """What makes a source the same source again on a rerun."""
    if not isinstance(source.ref, str):
        return {"name": source.name, "shape": list(source.shape), "dtype": str(source.dtype)}
    path = os.path.abspath(source.ref)
    metadata = (".zarray", ".zattrs", ".zgroup", "zarr.json")
    # A store's metadata (its own and its arrays', one level down), never its many chunk files.
    files = (
        [path]
        if os.path.isfile(path)
        else [
            os.path.join(folder, name)
            for folder in [path] + [e.path for e in os.scandir(path) if e.is_dir()]
            for name in metadata
            if os.path.isfile(os.path.join(folder, name))
        ]
    )
    identity = {"path": path, "files": sorted((f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files)}
    return identity if source.channel is None else {**identity, "channel": source.channel}


def run_record(job: FusionJob, layout: OutputLayout, kind: str) -> dict[str, Any]:
    """Everything that determines a run's result, as JSON."""
    return {
        "version": RECORD_VERSION,
        "a": source_identity(job.a), "b": source_identity(job.b), "engine": job.engine.key,
        "tile": job.tile, "overlap": job.overlap, "chunk": layout.chunk, "dtype": layout.dtype,
        "norm": [asdict(job.norm_a), asdict(job.norm_b)], "shape": list(layout.shape), "kind": kind,
        "tint": asdict(job.tint) if job.tint is not None else None,
    }  # fmt: skip


def open_partial(out: str, record: dict[str, Any], layout: OutputLayout, overwrite: bool) -> PartialRun:
    """The partial folder of this run: the one there when it holds the same run (resume), a new
    one otherwise (replacing another run's only when ``overwrite``)."""
    run_hash = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
    partial = PartialRun(out + PARTIAL_SUFFIX, run_hash)
    if os.path.exists(partial.folder):
        try:
            with open(partial.record) as handle:
                same = json.load(handle).get("hash") == run_hash
        except (OSError, ValueError):
            same = False
        if not same and not overwrite:
            raise InputError(
                f"{partial.folder}: an unfinished run with other arguments is there; rerun it with the same "
                f"arguments to resume, or pass --overwrite / overwrite=True to start again"
            )
        if not same:
            shutil.rmtree(partial.folder)
    if not os.path.exists(partial.folder):
        os.makedirs(partial.done)
        create_ome_zarr(
            partial.store,
            layout,
            attrs={"fusionmamba": {"run": run_hash, "complete": False}},
            name=os.path.basename(out),
        )
        with atomic_path(partial.record) as tmp:
            tmp.write_text(json.dumps({"hash": run_hash, "run": record}, indent=1, default=str))
    return partial


def chunk_name(plane: tuple[int, ...], y0: int, x0: int) -> str:
    """The done-marker (and task) name of the chunk at (y0, x0) of ``plane``."""
    return "_".join(map(str, (*plane, y0, x0)))


def mark_done(done: str, plane: tuple[int, ...], y0: int, x0: int) -> None:
    with open(os.path.join(done, chunk_name(plane, y0, x0)), "w"):
        pass
