"""Keeping the API key out of what escapes: its repr hidden, and the frames of escaping errors
emptied.

An exception that leaves the library carries a traceback whose frames hold locals: aiohttp's
`_request` holds the request's headers, our transport holds the session. Error reporters (rich's
`show_locals`, `traceback.format_exception(capture_locals=True)`, Sentry-style tools) print
them. So the key travels as a `Secret`, whose repr never shows it, and every public call lets
its exceptions out through `forgetting()`, which empties the locals of the library's own frames
(and its dependencies'), never the caller's.
"""

from __future__ import annotations

import contextlib
import os
import sysconfig
from collections.abc import Iterator
from types import FrameType, TracebackType

__all__ = ["Secret", "forget_frames", "forgetting"]

_PACKAGES = frozenset(
    {
        "gemimg_async",
        "aiohttp",
        "aiohappyeyeballs",
        "aiofiles",
        "aiosignal",
        "anyio",
        "frozenlist",
        "multidict",
        "propcache",
        "yarl",
    }
)
"""The library and what it runs on: their frames are emptied, anyone else's are not."""
_STDLIB = os.path.realpath(sysconfig.get_paths()["stdlib"])


class Secret(str):
    """A string (the key, or a header that holds it) whose repr shows nothing of it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<secret>'"


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [error]
    while stack:
        link = stack.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        stack += [e for e in (link.__cause__, link.__context__) if e is not None]
        stack += [e for e in getattr(link, "exceptions", ()) if isinstance(e, BaseException)]


def _is_library(frame: FrameType) -> bool:
    module = frame.f_globals.get("__name__")
    if isinstance(module, str) and module.partition(".")[0] in _PACKAGES:
        return True
    filename = frame.f_code.co_filename
    return filename.startswith("<frozen") or os.path.realpath(filename).startswith(_STDLIB)


def forget_frames(error: BaseException) -> None:
    """Empty the locals of the finished library frames in the tracebacks of `error` and of what
    it chains; the caller's own frames, and frames still running, are left as they are."""
    for link in _chain(error):
        tb: TracebackType | None = link.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if _is_library(frame):
                with contextlib.suppress(RuntimeError):  # still running: its call is on the stack
                    frame.clear()
            tb = tb.tb_next


class forgetting:  # noqa: N801 - used as a context manager, like contextlib's
    """`with forgetting():` lets exceptions out with the library's frames emptied."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            forget_frames(exc)
