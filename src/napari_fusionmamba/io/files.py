"""Files written so that a crash or a cancel never leaves a half-written one under the final
name, and the check that keeps readers away from files that would block them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def not_regular(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` must not be opened, when it exists but is neither a regular file nor a
    folder (a named pipe, a device, a socket): reading one can block forever. None otherwise."""
    if os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path)):
        return f"{path}: not a regular file (a named pipe, device or socket); give a file or a folder"
    return None


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file beside ``path`` (same folder, so the final move is atomic) to write
    into: it replaces ``path`` when the block ends without error and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def free_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when nothing is there, else the first free ``NAME-2.EXT``, ``NAME-3.EXT``...
    (every suffix kept: ``out.ome.zarr`` -> ``out-2.ome.zarr``), for outputs that must never
    replace an earlier result."""
    path = Path(path)
    if not os.path.lexists(path):
        return path
    stem = path.name.split(".", 1)[0]
    suffix = path.name[len(stem) :]
    number = 2
    while os.path.lexists(path.with_name(f"{stem}-{number}{suffix}")):
        number += 1
    return path.with_name(f"{stem}-{number}{suffix}")
