"""A batch's output folder: whether it can take files, the images it holds by job id, and what
dead runs left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import attrs

from ._exceptions import ConfigurationError
from ._sinks import TEMP_PREFIX
from ._tempfiles import remove_if_abandoned

__all__ = ["FolderImages", "check_folder"]

_IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "gif"})
_STALE_TEMP_SECONDS = 15 * 60
"""Where a temporary file's lock cannot tell (no locks there), one untouched this long belongs to
a dead process (downloads time out at 60 s between chunks)."""
_PROBE_BYTES = 64 * 1024
"""What a folder must take at the start: less cannot hold a single image."""
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def check_folder(folder: Path, *, what: str = "the output folder") -> None:
    """Make `folder` if missing and write a little to it, so that a folder that cannot take
    images is refused before anything is paid for: ConfigurationError saying why and what to do
    (`what` names the folder in it, say `--out`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        if folder.is_symlink() and not folder.exists():
            raise ConfigurationError(
                f"{what} {folder} is a symbolic link to nothing: point it at a folder"
            ) from None
        file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if file == folder:
            raise ConfigurationError(
                f"{what} {folder} is a file, not a folder: name a folder (it is made if missing)"
            ) from None
        raise ConfigurationError(
            f"{what} {folder} cannot be made: {file or 'a part of its path'} is a file, "
            "not a folder"
        ) from None
    except OSError as exc:
        raise _refused(folder, what, exc) from None
    probe = folder / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}.part"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # EXCL: no symlink
    except OSError as exc:
        raise _refused(folder, what, exc) from None
    try:
        os.write(fd, bytes(_PROBE_BYTES))
    except OSError as exc:
        raise _refused(folder, what, exc) from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()


def _refused(folder: Path, what: str, exc: OSError) -> ConfigurationError:
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return ConfigurationError(
            f"{what} {folder} takes no more data ({reason}): free some space, or choose "
            "another folder"
        )
    return ConfigurationError(
        f"cannot create files in {what} {folder} ({reason}): choose a folder you can write to"
    )


@attrs.frozen
class FolderImages:
    """The images a folder holds, by job id and index: `{id}_{i}.{ext}` (symlinks are not)."""

    names: frozenset[str]
    by_job: Mapping[str, Mapping[int, str]]

    @classmethod
    def scan(cls, folder: Path, *, sweep: bool = True) -> FolderImages:
        """One pass over `folder`; with `sweep`, temporary files of dead processes are removed on
        the way (a batch does so as it starts, holding the folder's lock)."""
        names: set[str] = set()
        by_job: dict[str, dict[int, str]] = {}
        now = time.time()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(TEMP_PREFIX) and name.endswith(".part"):
                    if sweep:
                        _remove_abandoned(entry, now)
                    continue
                stem, dot, extension = name.rpartition(".")
                job_id, underscore, index = stem.rpartition("_")
                if not (dot and underscore and index.isascii() and index.isdigit()):
                    continue
                if extension.lower() in _IMAGE_EXTENSIONS and not entry.is_symlink():
                    names.add(name)
                    by_job.setdefault(job_id, {})[int(index)] = name
        return cls(frozenset(names), by_job)

    def complete(self, job_id: str, n: int) -> tuple[str, ...] | None:
        """The names of images 0..n-1 of `job_id`, when all are here."""
        found = self.by_job.get(job_id, {})
        if all(index in found for index in range(n)):
            return tuple(found[index] for index in range(n))
        return None


def _remove_abandoned(entry: os.DirEntry[str], now: float) -> None:
    """Remove a temporary file no live process writes: at once where its lock tells, after
    `_STALE_TEMP_SECONDS` untouched where it cannot."""
    path = Path(entry.path)
    if remove_if_abandoned(path) is not None:
        return
    try:
        if now - entry.stat(follow_symlinks=False).st_mtime > _STALE_TEMP_SECONDS:
            path.unlink()
    except FileNotFoundError:
        pass
