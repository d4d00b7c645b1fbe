"""Output folders: whether one can take images, checked before anything is paid for."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from ._exceptions import InvalidDestinationError
from ._sinks import TEMP_PREFIX

__all__ = ["BATCH_PROBE_BYTES", "check_folder"]

BATCH_PROBE_BYTES = 64 * 1024
"""What a batch's folder must take at the start: less cannot hold a single image."""
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def check_folder(folder: Path, *, what: str = "save_to", probe_bytes: int = 0) -> None:
    """Make `folder` if missing and write a little to it, so that a folder that cannot take
    images is refused before anything is paid for: InvalidDestinationError saying why and what to do
    (`what` names the folder in it, say `--out`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        if folder.is_symlink() and not folder.exists():
            raise InvalidDestinationError(
                f"{what} {folder} is a symbolic link to nothing: point it at a folder"
            ) from None
        file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if file == folder:
            raise InvalidDestinationError(
                f"{what} {folder} is a file, not a folder: name a folder (it is made if missing)"
            ) from None
        raise InvalidDestinationError(
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
        if probe_bytes:
            os.write(fd, bytes(probe_bytes))
    except OSError as exc:
        raise _refused(folder, what, exc) from None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()


def _refused(folder: Path, what: str, exc: OSError) -> InvalidDestinationError:
    reason = exc.strerror or str(exc)
    if exc.errno in _FULL:
        return InvalidDestinationError(
            f"{what} {folder} takes no more data ({reason}): free some space, or choose "
            "another folder"
        )
    return InvalidDestinationError(
        f"cannot create files in {what} {folder} ({reason}): choose a folder you can write to"
    )
