"""Temporary image files (`.gemimg-*.part`): held by their writer, so that one nobody holds is
a dead process's, however fresh.

A writer takes an exclusive `flock` on its temporary file as it creates it, and keeps it until
the file is placed or removed; a process that dies, even by kill -9, lets go of it. A sweep
(`remove_if_abandoned`) removes a file only when it can take that lock itself. Creating the file
and locking it are two steps, so each side checks that the name still is the file it locked: a
writer whose new file was swept in between makes another (`claim` says so).

Where locks do not exist (Windows, a filesystem without them) both say "cannot tell", and the
sweep goes by age instead (`_outdir`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

if sys.platform != "win32":
    import fcntl

__all__ = ["claim", "remove_if_abandoned"]


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def claim(fd: int, path: Path) -> bool:
    """Lock the temporary file just created at `path` (open as `fd`) for as long as `fd` is
    open. False when a sweep took it meanwhile: close `fd` and make another."""
    if sys.platform == "win32":
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a sweep holds it and is about to remove it
    except OSError:
        return True  # no locks here: sweeps go by age
    return _same_file(fd, path)


def remove_if_abandoned(path: Path) -> bool | None:
    """Remove the temporary file at `path` if no live process holds it. True when it is gone,
    False when a writer holds it, None when that cannot be told (no locks: judge by age)."""
    if sys.platform == "win32":
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return True
    except OSError:
        return None  # a symlink, or not ours to read
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return None
        if _same_file(fd, path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return True
    finally:
        os.close(fd)
