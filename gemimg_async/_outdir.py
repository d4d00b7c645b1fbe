"""A batch's output folder: the images it holds by job id, and what dead runs left behind."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import attrs

from ._sinks import TEMP_PREFIX

__all__ = ["FolderImages"]

_IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "gif"})
_STALE_TEMP_SECONDS = 15 * 60
"""A temporary image file untouched this long belongs to a dead process (downloads time out at
60 s between chunks)."""


@attrs.frozen
class FolderImages:
    """The images a folder holds, by job id and index: `{id}_{i}.{ext}`."""

    names: frozenset[str]
    by_job: Mapping[str, Mapping[int, str]]

    @classmethod
    def scan(cls, folder: Path) -> FolderImages:
        """One pass over `folder`; stale temporary files of dead runs are removed on the way."""
        names: set[str] = set()
        by_job: dict[str, dict[int, str]] = {}
        now = time.time()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(TEMP_PREFIX) and name.endswith(".part"):
                    _remove_stale(entry, now)
                    continue
                stem, dot, extension = name.rpartition(".")
                job_id, underscore, index = stem.rpartition("_")
                if not (dot and underscore and index.isascii() and index.isdigit()):
                    continue
                if extension.lower() in _IMAGE_EXTENSIONS:
                    names.add(name)
                    by_job.setdefault(job_id, {})[int(index)] = name
        return cls(frozenset(names), by_job)

    def complete(self, job_id: str, n: int) -> tuple[str, ...] | None:
        """The names of images 0..n-1 of `job_id`, when all are here."""
        found = self.by_job.get(job_id, {})
        if all(index in found for index in range(n)):
            return tuple(found[index] for index in range(n))
        return None


def _remove_stale(entry: os.DirEntry[str], now: float) -> None:
    try:
        if now - entry.stat().st_mtime > _STALE_TEMP_SECONDS:
            Path(entry.path).unlink()
    except FileNotFoundError:
        pass
