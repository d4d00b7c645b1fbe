"""Headless Chromium driven over the DevTools protocol, with aiohttp's websocket client: enough
to load a page, run JavaScript, click, type and take a screenshot.

The protocol needs no driver package whose version must match the browser's (chromedriver), and
no client library (selenium, playwright): one Chromium process and one websocket.
"""

import asyncio
import base64
import contextlib
import itertools
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

INSTALL_HINT = (
    "no headless Chromium on PATH: install Debian's with `apt-get install chromium` "
    "(as root; .ci/run does) to run the gallery's browser test"
)
# What makes Chromium start here: no sandbox (root), no GPU, and none of its own traffic (the
# machine's closed network refuses it, many connections at a time).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
)
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium() -> str | None:
    """The Chromium executable on PATH, if any."""
    return next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )


class DevTools:
    """One websocket to the browser: commands by id, events by name."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self.events: list[dict[str, Any]] = []
        self._event_waiters: list[tuple[str, asyncio.Future]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            doc = message.json()
            if "id" in doc:
                future = self._waiting.pop(doc["id"], None)
                if future is not None and not future.done():
                    future.set_result(doc)
                continue
            self.events.append(doc)
            for name, future in list(self._event_waiters):
                if doc.get("method") == name and not future.done():
                    future.set_result(doc)
                    self._event_waiters.remove((name, future))

    def expect(self, method: str) -> asyncio.Future:
        """A future of the next event `method` (ask before causing it)."""
        future = asyncio.get_running_loop().create_future()
        self._event_waiters.append((method, future))
        return future

    async def send(self, method: str, session: str | None = None, **params: Any) -> dict:
        number = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        doc: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session is not None:
            doc["sessionId"] = session
        await self._ws.send_json(doc)
        answer = await future
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    async def aclose(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Page:
    """A tab: navigate, evaluate, click, type, screenshot."""

    def __init__(self, tools: DevTools, session: str) -> None:
        self.tools, self.session = tools, session

    async def send(self, method: str, **params: Any) -> dict:
        return await self.tools.send(method, self.session, **params)

    async def goto(self, url: str) -> None:
        loaded = self.tools.expect("Page.loadEventFired")
        await self.send("Page.navigate", url=url)
        await loaded

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of `expression` (awaited if a promise); RuntimeError if it throws."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def click(self, selector: str) -> None:
        """A real mouse click at the middle of the first element matching `selector`."""
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )

    async def type(self, selector: str, text: str) -> None:
        """Focus `selector`, select what it holds, and type `text` over it."""
        await self.evaluate(f"document.querySelector({selector!r}).select()")
        await self.send("Input.insertText", text=text)

    async def screenshot(self, *, width: int = 1280, height: int = 860) -> bytes:
        """The page as a PNG, `width` x `height` CSS pixels."""
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        shot = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and CSP violations the page reported so far."""
        found = []
        for event in self.tools.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", ""))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(str(params.get("args")))
        return found


@contextlib.asynccontextmanager
async def open_page(executable: str, profile: Path) -> AsyncIterator[Page]:
    """A fresh headless Chromium (its own empty profile in `profile`) and one page of it."""
    process = await asyncio.create_subprocess_exec(
        executable,
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    drain: asyncio.Task | None = None
    try:
        async with asyncio.timeout(60):
            while not (found := _LISTENING.search(await process.stderr.readline())):
                if process.stderr.at_eof():
                    raise RuntimeError("Chromium exited before opening its DevTools port")
        drain = asyncio.create_task(process.stderr.read())  # keep its log from filling the pipe
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(found[1].decode(), max_msg_size=0) as ws,
        ):
            tools = DevTools(ws)
            try:
                target = await tools.send("Target.createTarget", url="about:blank")
                attached = await tools.send(
                    "Target.attachToTarget", targetId=target["targetId"], flatten=True
                )
                page = Page(tools, attached["sessionId"])
                for domain in ("Page", "Runtime", "Log"):
                    await page.send(f"{domain}.enable")
                yield page
            finally:
                await tools.aclose()
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
