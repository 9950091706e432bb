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
