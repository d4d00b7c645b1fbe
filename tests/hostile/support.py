"""Helpers shared by the hardening tests: clients, folders, the CLI in a thread or a process,
and the walk over everything an escaping exception lets a reporter read."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

import anyio

import gemimg_async as gi
import gemimg_async._cli
from gemimg_async.testing import FakeClock

API_KEY = "sk-test"  # what the session's FakeRelay (tests/conftest.py) accepts
SECRET = "sk-live-7Hq2ZxVb94LmTpQe0sSecretKeyDoNotLeak"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"


def once(base_url: str, key: str = API_KEY, **kwargs) -> gi.Client:
    """A client that sends every request exactly once, with instant sleeps."""
    return gi.Client(key, base_url, retry=gi.RetryPolicy.never(), clock=FakeClock(), **kwargs)


def temp_files(folder: Path) -> list[Path]:
    """The client's temporary image files under `folder` (`.gemimg-*.part`)."""
    return sorted(folder.rglob(".gemimg-*")) if folder.is_dir() else []


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in {".png", ".jpg", ".webp", ".gif"})


def is_complete_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END)


def unwritable_folder(tmp_path: Path) -> Path:
    """An existing folder this process cannot create files in.

    Permission bits do not stop root, so as root it is /sys, which refuses new files to root
    too: only trying to create a file tells that folder from a writable one (os.access says
    yes), which is also the only check that holds for read-only mounts and ACLs.
    """
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


async def wait_for(condition: Callable[[], object], within: float = 20) -> None:
    """Poll `condition` (another party's state, with no event to wait on) until it holds."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110 - polling another process's files
            await anyio.sleep(0.01)


# --- the command line --------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "GEMIMG_API_KEY": API_KEY, **extra}
    env.pop("GEMIMG_BASE_URL", None)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gemimg_async", *args]


async def run_cli(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, **kwargs
) -> subprocess.CompletedProcess[bytes]:
    """`gemimg-async ARGS` in a subprocess, to the end (the relay answers on this loop)."""
    with anyio.fail_after(60):
        return await anyio.run_process(
            command(*args), cwd=cwd, env=env or child_env(), check=False, **kwargs
        )


def _main(args: list[str]) -> int:
    try:
        return gi._cli.main(args)
    except SystemExit as exit_:  # argparse's usage errors; it must not end the test session
        return exit_.code if isinstance(exit_.code, int) else 1


async def main_in_thread(*args: str) -> int:
    """`gi._cli.main(ARGS)` with its own event loop in a worker thread; its exit status."""
    return await anyio.to_thread.run_sync(_main, list(args))


# --- what an escaping exception lets a reporter read -------------------------------------------


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error` and every exception chained to it or grouped in it."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [e for e in (current.__cause__, current.__context__) if e is not None]
        stack += list(getattr(current, "exceptions", ()))


def _attributes(value: object) -> Iterator[object]:
    """The attribute values of an object: its __dict__ and its slots (attrs classes)."""
    with_dict = getattr(value, "__dict__", None)
    if isinstance(with_dict, dict):
        yield from with_dict.values()
    for cls in type(value).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name != "__weakref__" and hasattr(value, name):
                try:
                    yield getattr(value, name)
                except Exception:  # noqa: BLE001, S112 - a slot that will not read shows nothing
                    continue


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken repr shows nothing to a reporter either
        return f"<repr failed: {type(exc).__name__}>"


def reprs_of(value: object, depth: int = 3, *, attributes: bool = True) -> Iterator[str | bytes]:
    """repr of `value`, of what its mappings and sequences hold (down to `depth`), and of its
    attributes, one level: what a reporter that prints locals, or a curious debugger, reads.

    Plain str and bytes stand for their repr (which holds a key exactly when they do) without
    the copy: request bodies are megabytes. Their subclasses show their repr, as reporters do.
    """
    if type(value) in (str, bytes):
        yield value  # type: ignore[misc]
        return
    yield _safe_repr(value)
    if depth <= 0:
        return
    if isinstance(value, Mapping):
        for key, item in list(value.items()):
            yield _safe_repr(key)
            yield from reprs_of(item, depth - 1, attributes=attributes)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in list(value):
            yield from reprs_of(item, depth - 1, attributes=attributes)
    elif attributes and not isinstance(value, (str, bytes, int, float, type)):
        for item in _attributes(value):
            yield from reprs_of(item, depth - 1, attributes=False)


def _frames(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def readable_texts(error: BaseException) -> Iterator[tuple[str, str | bytes]]:
    """(where, text) for everything an escaping `error` shows: its chain's str, repr and
    attributes, tracebacks formatted with their locals (as `capture_locals=True`, rich's
    show_locals and Sentry-style reporters print them), and the repr of every local of every
    frame, with what those locals hold."""
    formatted = traceback.TracebackException.from_exception(error, capture_locals=True)
    yield "format_exception(capture_locals=True)", "".join(formatted.format())
    for link in _chain(error):
        name = type(link).__name__
        yield f"{name}: str", str(link)
        for text in reprs_of(link):
            yield f"{name}: repr or attribute", text
        for tb in _frames(link.__traceback__):
            code = tb.tb_frame.f_code
            for local, value in list(tb.tb_frame.f_locals.items()):
                for text in reprs_of(value):
                    yield f"{name}: local {local!r} of {code.co_name} ({code.co_filename})", text


def where_readable(error: BaseException, secret: str) -> list[str]:
    """Where `secret` can be read from `error`, escaping as it is; [] when nowhere."""
    as_bytes = secret.encode()
    return sorted(
        {
            where
            for where, text in readable_texts(error)
            if (secret if isinstance(text, str) else as_bytes) in text
        }
    )
