"""What the test files share besides fixtures (those are in conftest.py): names, image bytes,
readers of PNGs, clients and folders, a poll, and a real redis-server.

PNGs to send are made by `gemimg_async.testing.png()`; the other image types are built here.
"""

import base64
import contextlib
import functools
import io
import json
import socket
import struct
import subprocess
import sys
import time
import traceback
import uuid
import zlib
from pathlib import Path

import aiohttp
import anyio
import attrs

from gemimg_async import MANIFEST_NAME, Client, RetryPolicy
from gemimg_async._provenance import KEYWORDS
from gemimg_async.testing import FakeClock, FakeRelay, _images

API_KEY = "sk-test"  # what the shared relays (conftest) accept
SECRET = "sk-live-7Hq2ZxVb94LmTpQe0sSecretKeyDoNotLeak"
STANDARD = "gemini-3-pro-image-preview"
TIER_2K = "gemini-3-pro-image-preview-2k"
TIER_4K = "gemini-3-pro-image-preview-4k"
PROMPT_4K = "a harbour at night, 4K"  # one prompt, so the relay renders each 4K image once
FORMATS = ("url", "b64_json")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MANIFEST_KEYS = {
    "id",
    "status",
    "paths",
    "error",
    "attempts",
    "request_ids",
    "idempotency_keys",
    "model",
    "size",
    "started",
    "finished",
}
SIXTEEN_BYTES = base64.b64encode(b"\x89PNG0123456789ab").decode()
"""Base64 of a PNG signature and eight bytes: enough for a relay's magic-byte check."""


# --- image bytes -------------------------------------------------------------------------------


def bytes_id(value: object) -> str | None:
    """A short test id for a long bytes parameter (pytest would print every byte)."""
    return f"{len(value)}-bytes" if isinstance(value, bytes) and len(value) > 16 else None


def jpeg(width: int = 4, height: int = 3, *, sof: int = 0xC0, fill: bool = False) -> bytes:
    """A JPEG's SOI, APP0, DQT, a start-of-frame `sof` with its size, and EOI; `fill` puts a
    fill byte before the DQT marker."""
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    dqt = b"\xff\xdb\x00\x43\x00" + bytes(64)
    frame = b"\x08" + struct.pack(">HH", height, width) + b"\x03" + b"\x01\x11\x00" * 3
    start = b"\xff" + bytes([sof]) + struct.pack(">H", 2 + len(frame)) + frame
    return b"\xff\xd8" + app0 + (b"\xff" if fill else b"") + dqt + start + b"\xff\xd9"


def webp_lossless(width: int = 5, height: int = 6) -> bytes:
    """A lossless (VP8L) WEBP header with its canvas size."""
    bits = (width - 1) | ((height - 1) << 14)
    payload = b"\x2f" + bits.to_bytes(4, "little") + bytes(11)
    return _riff(b"VP8L", payload)


def webp_lossy(width: int, height: int) -> bytes:
    """A lossy (VP8) WEBP header with its frame size."""
    payload = b"\x00\x00\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(10)
    return _riff(b"VP8 ", payload)


def webp_extended(width: int, height: int) -> bytes:
    """An extended (VP8X) WEBP header with its canvas size."""
    payload = b"\x10\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    payload += (height - 1).to_bytes(3, "little")
    return _riff(b"VP8X", payload)


def _riff(fourcc: bytes, payload: bytes) -> bytes:
    chunk = fourcc + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def gif(width: int = 7, height: int = 8, version: bytes = b"89a") -> bytes:
    """A GIF header with its logical screen size."""
    return b"GIF" + version + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b" * 8


def uri(data: bytes, media_type: str = "image/png") -> str:
    """`data` as a base64 data: URI labelled `media_type`."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


@functools.cache
def big_png() -> bytes:
    """A valid ~5.9 MB PNG of random pixels: its request body cannot all sit in socket buffers."""
    return _images._noise_png(1400, 1400)


# --- reading PNGs ------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    """Check the PNG signature and an 8-bit RGB IHDR, read by hand; return (width, height)."""
    assert data[:8] == PNG_SIGNATURE, data[:16]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)
    return width, height


def file_png_size(path: Path) -> tuple[int, int]:
    """`png_size` of the PNG file at `path`, from its first bytes."""
    with path.open("rb") as file:
        return png_size(file.read(26))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (kind, payload) chunks, checking every CRC."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        payload = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        offset += 12 + length
    return chunks


def untagged(data: bytes | Path) -> bytes:
    """A PNG (its bytes, or its file) without the `iTXt` chunks of our provenance: the relay's
    bytes, when tagging changed nothing else."""
    data = data.read_bytes() if isinstance(data, Path) else data
    if not data.startswith(PNG_SIGNATURE):
        return data
    ours = {keyword.encode("latin-1") for keyword in KEYWORDS.values()}
    kept, offset = [data[:8]], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, end = data[offset + 4 : offset + 8], offset + 12 + length
        keyword = data[offset + 8 : end].partition(b"\x00")[0]
        if not (kind == b"iTXt" and keyword in ours):
            kept.append(data[offset:end])
        offset = end
    return b"".join(kept)


def png_pixels_intact(path: Path) -> bool:
    """Whether every chunk's CRC holds and the image data inflates to width x height pixels."""
    data = path.read_bytes()
    width, height = png_size(data)
    idat = b"".join(payload for kind, payload in png_chunks(data) if kind == b"IDAT")
    return len(zlib.decompress(idat)) == height * (1 + 3 * width)


def is_complete_png(path: Path) -> bool:
    """Whether the file at `path` starts as a PNG and ends with its IEND chunk."""
    data = path.read_bytes()
    return data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END)


# --- clients -----------------------------------------------------------------------------------


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def once(base_url: str, key: str = API_KEY, **kwargs) -> Client:
    """A client that sends every request exactly once, with instant sleeps."""
    return Client(key, base_url, retry=RetryPolicy.never(), clock=FakeClock(), **kwargs)


@contextlib.asynccontextmanager
async def slow_client(latency: float, max_concurrency: int):
    """A relay of its own that takes `latency` per generation, and a client for it."""
    async with (
        FakeRelay(api_keys=API_KEY, latency=latency) as relay,
        Client(API_KEY, relay.url, max_concurrency=max_concurrency, clock=FakeClock()) as client,
    ):
        yield relay, client


def texts_of(error: BaseException) -> list[str]:
    """str and repr of an error and of every error chained to it, and its full traceback."""
    texts, seen, current = [], set(), error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), *map(str, current.args)]
        current = current.__cause__ or current.__context__
    texts.append("".join(traceback.format_exception(error)))
    return texts


def keys(relay: FakeRelay) -> list[str | None]:
    """The Idempotency-Key of every generation request the relay got."""
    return [request.idempotency_key for request in relay.requests]


def ids(relay: FakeRelay) -> tuple[str, ...]:
    """The request id the relay gave every generation request."""
    return tuple(request.request_id for request in relay.requests)


def is_uuid4(value: str | None) -> bool:
    try:
        return uuid.UUID(value or "").version == 4
    except ValueError:
        return False


def prompts_sent(relay: FakeRelay) -> list[str]:
    return [request.prompt for request in relay.requests]


async def served_pngs(relay, prompt, *, n=1, model=STANDARD, size=None) -> list[bytes]:
    """The PNGs the relay serves for `prompt`, decoded by hand from a plain b64_json answer."""
    payload = {"model": model, "prompt": prompt, "n": n, "response_format": "b64_json"}
    if size is not None:
        payload["size"] = size
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{relay.url}/v1/images/generations",
            json=payload,
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response,
    ):
        assert response.status == 200
        doc = await response.json()
    return [base64.b64decode(item["b64_json"]) for item in doc["data"]]


async def reference(relay, prompt, *, n=1, model=STANDARD, size=None) -> list[bytes]:
    """`served_pngs`, then the relay's records wiped so the test counts only the client."""
    pngs = await served_pngs(relay, prompt, n=n, model=model, size=size)
    relay.reset()
    return pngs


# --- the fake relay over plain aiohttp ---------------------------------------------------------


def body(**fields):
    """A valid generation body, with `fields` changed."""
    return {"model": STANDARD, "prompt": "a red fox in the snow", **fields}


async def post(session, relay, payload, *, headers=AUTH):
    """POST a generation; return (status, headers, raw body)."""
    data = io.BytesIO(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    url = f"{relay.url}/v1/images/generations"
    async with session.post(url, data=data, headers=headers) as response:
        return response.status, response.headers, await response.read()


async def generate(session, relay, **fields):
    """POST a valid generation and return the parsed 200 answer."""
    status, _, raw = await post(session, relay, body(**fields))
    assert status == 200, raw
    return json.loads(raw)


async def fetch(session, url, *, headers=None):
    """GET `url`; return (status, headers, raw body)."""
    async with session.get(url, headers=headers) as response:
        return response.status, response.headers, await response.read()


async def a_file_url(relay, session):
    """The URL of a fresh image on the relay's file host."""
    return (await generate(session, relay))["data"][0]["url"]


def error_of(raw):
    """The `error` object of an error answer that holds nothing else."""
    parsed = json.loads(raw)
    assert set(parsed) == {"error"}
    return parsed["error"]


# --- folders and batches -----------------------------------------------------------------------


def no_temp_files(folder: Path) -> bool:
    """No hidden or `.part` file is left in `folder`."""
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".part"]


def listing(folder: Path) -> list[str]:
    """Every name in `folder`, hidden `.gemimg-*.part` files included."""
    return sorted(path.name for path in folder.iterdir())


def write_jobs(folder: Path, name: str, lines: list[str] | str) -> Path:
    """A job file `folder/name` of `lines` (or of that text)."""
    path = folder / name
    text = lines if isinstance(lines, str) else "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*docs: dict) -> list[str]:
    return [json.dumps(doc, ensure_ascii=False) for doc in docs]


def manifest_lines(out: Path) -> list[dict]:
    """Every line of the manifest, each of which must be valid JSON."""
    return [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]


def latest(out: Path) -> dict[str, dict]:
    """The latest manifest line of each job id."""
    return {doc["id"]: doc for doc in manifest_lines(out)}


# --- waiting -----------------------------------------------------------------------------------


async def wait_for(condition) -> None:
    """Poll `condition` (another task's, server's or process's state, with no event to wait on)
    until it holds; TimeoutError after 20 seconds."""
    with anyio.fail_after(20):
        while not condition():  # noqa: ASYNC110 - polling another party's state
            await anyio.sleep(0.005)


# --- redis-server ------------------------------------------------------------------------------

REDIS_INSTALL_HINT = "redis-server is not installed: apt-get install redis-server (Debian, Ubuntu)"


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(port: int) -> bool:
    """Whether a Redis server on 127.0.0.1:`port` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """Ask `process` to end (SIGTERM); kill it if it has not within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@attrs.define
class RedisServer:
    """A real `redis-server` (Debian's package) on 127.0.0.1, without persistence, in `folder`;
    `stop()` and `start()` again keep its port, to play an outage."""

    executable: str
    folder: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        for _ in range(5):  # a free port can be taken between the look and the bind
            port = self.port or free_port()
            process = subprocess.Popen(  # noqa: S603 - our own argument list
                [
                    *(self.executable, "--port", str(port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
                    *("--daemonize", "no", "--loglevel", "warning"),
                    *("--logfile", str(self.folder / "redis.log")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                if redis_answers(port):
                    self.port, self.process = port, process
                    return self
                time.sleep(0.02)
            process.kill()
            process.wait()
        log = self.folder / "redis.log"
        raise RuntimeError(f"redis-server did not start: {log.read_text() if log.exists() else ''}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


# --- an S3-compatible server -------------------------------------------------------------------

S3_INSTALL_HINT = "moto[server] and s3fs are not installed: pip install -e '.[dev]'"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
"""Dummy credentials: the local server takes any."""


@attrs.define
class S3Server:
    """moto's S3-compatible server (`moto[server]`, from the package index) in a process of its
    own on 127.0.0.1, so that memory measured in the tests is the client's alone, and Ray
    workers reach it like any other process."""

    log: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def environment(self) -> dict[str, str]:
        """The variables that point boto (s3fs) at this server, with dummy credentials, and
        keep it off any real account: no config files, no instance metadata."""
        return {
            **S3_CREDENTIALS,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.url,
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self) -> "S3Server":
        for _ in range(5):  # a free port can be taken between the look and the bind
            port = free_port()
            with self.log.open("ab") as log:
                process = subprocess.Popen(  # noqa: S603 - our own argument list
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdout=log,
                    stderr=log,
                )
            deadline = time.monotonic() + 30
            while process.poll() is None and time.monotonic() < deadline:
                if _answers_http(port):
                    self.port, self.process = port, process
                    return self
                time.sleep(0.05)
            process.kill()
            process.wait()
        raise RuntimeError(f"moto's server did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def _answers_http(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return sock.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False
