"""Content-keyed resume: a run of ``fuse_files`` is built in ``OUT.fusionmamba-partial`` and
moved to ``OUT`` only when complete; each finished chunk is marked there with the digest of the
source windows it was fused from and of what was written, so the same call after an
interruption (Ctrl-C, kill, cancel) redoes the unmarked chunks, and the marked ones whose
sources changed since (a file edited or replaced, an array changed in memory) or whose stored
data is missing or damaged.

A run is keyed by a hash of its arguments: the sources' names, axes, shape and dtype, the
engine, tiling, normalisations (so sources whose percentiles changed do not resume) and the
output layout. Other arguments refuse to resume unless the caller asks to overwrite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import OutputLayout, create_ome_zarr
from ..io.files import atomic_path
from .job import FusionJob
from .sources import Source
from .verify import StoredChunks, chunk_key, digest

#: One output chunk: its plane index and its region (y0, y1, x0, x1).
Block = tuple[tuple[int, ...], tuple[int, int, int, int]]

PARTIAL_SUFFIX = ".fusionmamba-partial"
RECORD_VERSION = 2


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


def source_identity(source: Source) -> dict[str, Any]:
    """What names a source on a rerun; its content is checked chunk by chunk (``sound_chunks``)."""
    name = os.path.abspath(source.ref) if isinstance(source.ref, str) else source.name
    identity = {"name": name, "axes": source.axes, "shape": list(source.shape), "dtype": str(source.dtype)}
    return identity if source.channel is None else {**identity, "channel": source.channel}


def run_record(job: FusionJob, layout: OutputLayout, kind: str) -> dict[str, Any]:
    """Everything that determines a run's result, as JSON."""
    return {
        "version": RECORD_VERSION,
        "a": source_identity(job.a), "b": source_identity(job.b), "engine": job.engine.key,
        "tile": job.tile, "overlap": job.overlap, "norm": [asdict(job.norm_a), asdict(job.norm_b)],
        "layout": asdict(layout), "kind": kind, "tint": asdict(job.tint) if job.tint is not None else None,
        **({"tint_b": asdict(job.tint_b)} if job.tint_b is not None else {}),
    }  # fmt: skip


def open_partial(out: str, record: dict[str, Any], layout: OutputLayout, overwrite: bool) -> PartialRun:
    """The partial folder of this run: the one there when it holds the same run (resume), a new
    one otherwise (replacing another run's only when ``overwrite``)."""
    run_hash = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
    partial = PartialRun(out + PARTIAL_SUFFIX, run_hash)
    if os.path.exists(partial.folder):
        try:
            with open(partial.record) as handle:
                earlier = json.load(handle)
        except (OSError, ValueError):
            earlier = {}
        same = earlier.get("hash") == run_hash
        if not same and not overwrite:
            raise InputError(
                f"{partial.folder}: an unfinished run with other arguments is there{_differences(earlier, record)}; "
                f"rerun it with the same arguments to resume, or pass --overwrite / overwrite=True to start again"
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


#: The record's fields in words, for the message that refuses to resume.
FIELDS = {"a": "source A", "b": "source B", "engine": "model or method", "norm": "the sources' percentiles",
          "layout": "output layout", "kind": "output format", "tint": "colormap",
          "tint_b": "colormap of B"}  # fmt: skip


def _differences(earlier: dict[str, Any], record: dict[str, Any]) -> str:
    """Which of the record's fields differ from the earlier run's, in words."""
    before = earlier.get("run")
    if not isinstance(before, dict):
        return ""
    now = json.loads(json.dumps(record, default=str))
    changed = [FIELDS.get(key, key) for key in now if before.get(key) != now[key]]
    return f" ({', '.join(changed)} differ)" if changed else ""


def mark_done(
    done: str, layout: OutputLayout, plane: tuple[int, ...], y0: int, x0: int, inputs: str, stored: np.ndarray
) -> None:
    """Mark a written chunk with the digests of its inputs and of ``stored``, what was written."""
    with open(os.path.join(done, chunk_name(plane, y0, x0)), "w") as handle:
        json.dump({"inputs": inputs, "chunk": digest(layout.to_store(stored))}, handle)


def _marker(partial: PartialRun, plane: tuple[int, ...], y0: int, x0: int) -> dict[str, str]:
    """A chunk's done-marker ({} when missing, or cut short by a kill)."""
    try:
        with open(os.path.join(partial.done, chunk_name(plane, y0, x0))) as handle:
            marker = json.load(handle)
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def sound_chunks(
    job: FusionJob, layout: OutputLayout, partial: PartialRun, blocks: list[Block]
) -> tuple[set[str], int]:
    """The marked chunks that a resume keeps (their source windows and their stored data are as
    recorded), and how many marked chunks it must fuse again."""
    stored = StoredChunks(partial.store)
    keep, marked = set(), 0
    for plane, (y0, y1, x0, x1) in blocks:
        marker = _marker(partial, plane, y0, x0)
        if not marker:
            continue
        marked += 1
        if (
            marker.get("inputs") == job.input_digest(plane, y0, y1, x0, x1)
            and stored.problem(chunk_key(layout, plane, y0, x0), str(marker.get("chunk"))) is None
        ):
            keep.add(chunk_name(plane, y0, x0))
    return keep, marked - len(keep)


def chunk_digests(layout: OutputLayout, partial: PartialRun, blocks: list[Block]) -> dict[str, str]:
    """The digests of the full-resolution chunks of a finished run, from their markers."""
    return {
        chunk_key(layout, plane, y0, x0): _marker(partial, plane, y0, x0)["chunk"] for plane, (y0, _, x0, _) in blocks
    }
