"""The lock that keeps two writers of one output (or one run folder) apart: ``exclusive``."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import InputError

LOCK_SUFFIX = ".fusionmamba-lock"


def _alive(holder: dict[str, Any]) -> bool:
    """Whether a lock's holder may still run: always, when it is on another machine."""
    if holder.get("pid") is None:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return isinstance(holder.get("pid"), int)
    return True


def _read_lock(lock: str) -> dict[str, Any]:
    try:
        with open(lock) as handle:
            return _holder(handle.read())
    except FileNotFoundError:
        return {}  # released meanwhile
    except OSError:
        return {"pid": None}


def _holder(text: str) -> dict[str, Any]:
    """The holder a lock file names; an unreadable one names none and is taken over as stale."""
    try:
        holder = json.loads(text)
    except ValueError:
        return {"pid": None}
    return holder if isinstance(holder, dict) else {"pid": None}


#: Attempts at taking a lock that other processes keep replacing, before giving up.
ATTEMPTS = 20


def _take(lock: str, tmp: str, path: str | os.PathLike[str], what: str) -> None:
    """Link the finished record ``tmp`` as ``lock``, taking over a stale lock. A stale lock is
    removed only under an ``flock`` of that very file, after checking that ``lock`` still names
    it: of two processes finding one stale lock, exactly one removes it and links its own, and
    the other then finds that new, live holder (a plain rename-then-remove could remove it)."""
    for _ in range(ATTEMPTS):
        try:
            os.link(tmp, lock)
            return
        except FileExistsError:
            pass
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            continue  # released meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(lock).st_ino != os.fstat(fd).st_ino:
                    continue  # taken over meanwhile: look at the new holder
            except FileNotFoundError:
                continue
            with open(fd, closefd=False) as handle:
                holder = _holder(handle.read())
            if _alive(holder):
                raise InputError(
                    f"{path}: {what} is in use by process {holder.get('pid')} on {holder.get('host')} (started "
                    f"{holder.get('started')}); wait for it to finish or stop it (its lock: {lock})"
                )
            os.unlink(lock)
        finally:
            os.close(fd)  # releases the flock
    raise InputError(f"{path}: cannot take the lock {lock}; remove it if no other process writes {path}")


@contextmanager
def exclusive(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold ``PATH.fusionmamba-lock`` while writing ``path`` (``what`` names it in messages): a
    second writer is refused at once with the holder's pid, host and start time; a lock left by
    a process that died on this machine is taken over. The lock file is created with its
    content in one step (a hard link of a finished temporary file), so it is never seen empty."""
    lock = f"{path}{LOCK_SUFFIX}"
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(lock)}.", suffix=".tmp", dir=os.path.dirname(lock) or ".")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
        _take(lock, tmp, path, what)
    finally:
        os.unlink(tmp)
    try:
        yield
    finally:
        if _read_lock(lock) == record:
            os.remove(lock)
