"""Starting the example web apps on real ports, with a relay behind them: the FastAPI app under
uvicorn in a subprocess, the aiohttp app in-process (`AppRunner` with handler cancellation, as
`web.run_app` in the example)."""

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
from aiohttp import web

from helpers import stop_process

EXAMPLES = Path(__file__).parents[2] / "examples"
POOL = 4
START_TIMEOUT = 60.0
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "uvicorn": {"level": "INFO", "handlers": ["stderr"]},
        "uvicorn.access": {"level": "WARNING"},
        "fastapi_app": {"level": "INFO", "handlers": ["stderr"]},
    },
}


@attrs.frozen
class App:
    """A running example app: its base `url`, the folder it saves to, and its log (FastAPI)."""

    name: str
    url: str
    save_dir: Path
    log: Path | None = None

    def logs(self) -> str:
        return self.log.read_text() if self.log is not None else ""


def settings(relay_url: str, save_dir: Path, **more: str) -> dict[str, str]:
    """The environment both apps read."""
    return {
        "GEMIMG_API_KEY": "sk-test",
        "GEMIMG_BASE_URL": relay_url,
        "GEMIMG_MAX_CONCURRENCY": str(POOL),
        "GEMIMG_SAVE_DIR": str(save_dir),
        "GEMIMG_DRAIN_SECONDS": "5",
        **more,
    }


@contextlib.contextmanager
def fastapi_app(relay_url: str, folder: Path, **more: str) -> Iterator[App]:
    """`uvicorn fastapi_app:app` on 127.0.0.1, port 0, in a subprocess; stopped with SIGTERM."""
    save_dir, log = folder / "images", folder / "uvicorn.log"
    config = folder / "logging.json"
    config.write_text(json.dumps(LOG_CONFIG))
    command = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(EXAMPLES)]
    command += ["--host", "127.0.0.1", "--port", "0", "--log-config", str(config)]
    env = {**os.environ, **settings(relay_url, save_dir, **more)}
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        url = _started(process, log)
        yield App("fastapi", url, save_dir, log)
    finally:
        stop_process(process, timeout=30)


def _started(process: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on (http://\S+)", log.read_text())
        if found:
            with urllib.request.urlopen(f"{found[1]}/health", timeout=10) as answer:  # noqa: S310
                assert answer.status == 200
            return found[1]
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    pytest.fail(f"uvicorn did not start:\n{log.read_text()}")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses read their module's names
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def aiohttp_app(relay_url: str, folder: Path, **more: str) -> AsyncIterator[App]:
    """The aiohttp example's app, served in-process on 127.0.0.1, port 0."""
    module = load_example("aiohttp_app")
    save_dir = folder / "images"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings(relay_url, save_dir, **more).items():
            patch.setenv(name, value)
        app = module.make_app()
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()  # the client is made here, from the environment
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield App("aiohttp", f"http://{host}:{port}", save_dir)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running(name: str, relay_url: str, folder: Path, **more: str) -> AsyncIterator[App]:
    if name == "fastapi":
        with fastapi_app(relay_url, folder, **more) as app:
            yield app
    else:
        async with aiohttp_app(relay_url, folder, **more) as app:
            yield app
