"""A batch's output folder: the images it holds by job id, and what dead runs left behind
(whether it can take files at all is `_folders.check_folder`)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from ._sinks import TEMP_PREFIX
from ._tempfiles import remove_if_abandoned

__all__ = ["FolderImages", "image_key"]

_IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "gif"})
_STALE_TEMP_SECONDS = 15 * 60
"""Where a temporary file's lock cannot tell (no locks there), one untouched this long belongs to
a dead process (downloads time out at 60 s between chunks)."""


@attrs.frozen
class FolderImages:
    """The images a folder holds, by job id and index: `{id}_{i}.{ext}` (symlinks are not)."""

    names: frozenset[str]
    by_job: Mapping[str, Mapping[int, str]]

    @classmethod
    def scan(cls, folder: Path, *, sweep: bool = True) -> FolderImages:
        """One pass over `folder`; with `sweep`, temporary files of dead processes are removed on
        the way (a batch does so as it starts, holding the folder's lock)."""
        names: list[str] = []
        now = time.time()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(TEMP_PREFIX) and name.endswith(".part"):
                    if sweep:
                        _remove_abandoned(entry, now)
                    continue
                if image_key(name) is not None and not entry.is_symlink():
                    names.append(name)
        return cls.from_names(names)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> FolderImages:
        """The images among `names` (a listing of a folder or an object store's prefix)."""
        found: set[str] = set()
        by_job: dict[str, dict[int, str]] = {}
        for name in names:
            key = image_key(name)
            if key is not None:
                found.add(name)
                by_job.setdefault(key[0], {})[key[1]] = name
        return cls(frozenset(found), by_job)

    def complete(self, job_id: str, n: int) -> tuple[str, ...] | None:
        """The names of images 0..n-1 of `job_id`, when all are here."""
        found = self.by_job.get(job_id, {})
        if all(index in found for index in range(n)):
            return tuple(found[index] for index in range(n))
        return None


def image_key(name: str) -> tuple[str, int] | None:
    """The job id and index of an image named `{id}_{i}.{ext}`; None for any other name."""
    stem, dot, extension = name.rpartition(".")
    job_id, underscore, index = stem.rpartition("_")
    if not (dot and underscore and index.isascii() and index.isdigit()):
        return None
    if extension.lower() not in _IMAGE_EXTENSIONS:
        return None
    return job_id, int(index)


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
