"""The `gemimg-async` command: `generate`, `batch` and `fake-server`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from ._bulk import BatchRun
from ._client import ENV_API_KEY, ENV_BASE_URL, Client
from ._config import DEFAULT_MAX_CONCURRENCY
from ._dialects import DIALECTS, SIZE_STYLES
from ._exceptions import ConfigurationError, GemimgError, ValidationError
from ._jobs import JobDefaults
from ._models import ASPECT_RATIOS
from ._progress import PlainProgress, Progress, RichProgress, rich_available
from ._summary import BatchSummary

__all__ = ["main"]

ENV_DIALECT = "GEMIMG_DIALECT"
ENV_SIZE_STYLE = "GEMIMG_SIZE_STYLE"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    _log_to_stderr(verbose=args.verbose)
    try:
        return int(args.run(args))
    except (ConfigurationError, ValidationError) as error:
        print(f"gemimg-async: {error}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    except GemimgError as error:
        print(f"gemimg-async: {type(error).__name__}: {error}", file=sys.stderr)  # noqa: T201
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time, so a live progress bar can move it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)  # noqa: T201
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _log_to_stderr(*, verbose: bool) -> None:
    logger = logging.getLogger("gemimg_async")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"
            if verbose
            else "gemimg-async: %(message)s"
        )
    )
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gemimg-async",
        description="Generate images with Gemini 3 Pro Image through an OpenAI-compatible relay.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="generate images from one prompt")
    generate.add_argument("prompt")
    _add_request_options(generate)
    generate.add_argument("-n", type=int, default=1, help="number of images (default 1)")
    generate.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="an input image (a file, an http(s) URL or a data: URI); repeat for several",
    )
    generate.add_argument("--out", type=Path, default=Path("out"), help="folder (default ./out)")
    _add_connection_options(generate)
    generate.set_defaults(run=_generate)

    batch = commands.add_parser(
        "batch",
        help="generate every job of a job file, resumably",
        description="Generate every job of JOBS into DIR, recording each in DIR/manifest.jsonl. "
        "Run the same command again to resume: saved jobs are skipped, failed ones sent again.",
    )
    batch.add_argument("jobs", type=Path, metavar="JOBS", help="a .jsonl, .csv or .txt job file")
    batch.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="the folder for the images and manifest.jsonl",
    )
    _add_request_options(batch)
    _add_connection_options(batch)
    batch.add_argument("--rpm", type=float, help="start at most this many requests a minute")
    batch.add_argument(
        "--retry-unknown",
        action="store_true",
        help="send again jobs recorded outcome_unknown; they may have been billed, and may be "
        "billed twice",
    )
    batch.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between status lines when stdout is no terminal (default 10)",
    )
    batch.set_defaults(run=_batch)

    fake = commands.add_parser(
        "fake-server", help="run the built-in fake relay, for demos and offline tests"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    fake.add_argument("--latency", type=float, default=0.0, help="seconds per generation")
    fake.add_argument("--key", default="sk-test", help="the API key it accepts (default sk-test)")
    fake.add_argument("--style", choices=("gradient", "noise"), default="gradient")
    fake.add_argument(
        "--sizes",
        choices=("ratio", "pixels"),
        default="ratio",
        help="pixels: honour only pixel sizes, as LiteLLM does (default ratio)",
    )
    fake.add_argument(
        "--chat-style",
        choices=("images", "markdown", "parts"),
        default="images",
        help="where chat answers put images (default images: message.images)",
    )
    fake.add_argument("--url-file", type=Path, help="write the relay's URL here once it listens")
    fake.set_defaults(run=_fake_server)
    return parser


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="standard", help="standard, 2k, 4k or a full model name")
    parser.add_argument("--size", help=f"aspect ratio, one of {', '.join(ASPECT_RATIOS)}")
    parser.add_argument(
        "--format",
        dest="response_format",
        choices=("url", "b64_json"),
        default="url",
        help="how the relay returns images (default url)",
    )


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", help=f"the relay (default ${ENV_BASE_URL})")
    parser.add_argument(
        "--api-key", help=f"the key (default ${ENV_API_KEY}; the variable keeps it out of ps)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_MAX_CONCURRENCY,
        help=f"generations in flight at once (default {DEFAULT_MAX_CONCURRENCY})",
    )
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default=os.environ.get(ENV_DIALECT) or "images",
        help=f"the API shape the relay speaks (default ${ENV_DIALECT}, or images)",
    )
    parser.add_argument(
        "--size-style",
        choices=SIZE_STYLES,
        default=os.environ.get(ENV_SIZE_STYLE) or None,
        help="how the size travels: ratio (16:9), pixels (1376x768), image_config (OpenRouter), "
        f"google (new-api's chat); default ${ENV_SIZE_STYLE}, or the dialect's own",
    )


def _client(args: argparse.Namespace, *, rpm: float | None = None) -> Client:
    return Client(
        args.api_key,
        args.base_url,
        max_concurrency=args.concurrency,
        rpm=rpm,
        dialect=args.dialect,
        size_style=args.size_style,
    )


def _generate(args: argparse.Namespace) -> int:
    async def run() -> None:
        async with _client(args) as client:
            result = await client.generate(
                args.prompt,
                model=args.model,
                size=args.size,
                n=args.n,
                images=args.image or None,
                response_format=args.response_format,
                save_to=args.out,
            )
        for path in result.paths:
            print(path)  # noqa: T201

    anyio.run(run)
    return EXIT_OK


def _batch(args: argparse.Namespace) -> int:
    defaults = JobDefaults(model=args.model, size=args.size, response_format=args.response_format)
    progress: Progress = (
        RichProgress()
        if sys.stdout.isatty() and rich_available()
        else PlainProgress(interval=args.progress_interval)
    )

    async def run() -> BatchSummary:
        async with _client(args, rpm=args.rpm) as client:
            batch = BatchRun(
                client,
                args.out,
                defaults=defaults,
                retry_unknown=args.retry_unknown,
                progress=progress,
            )
            with _CtrlC(batch, progress):
                return await batch.run(args.jobs)

    summary = anyio.run(run)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if not summary.ok:
        _hint(summary)
        return EXIT_FAILED
    return EXIT_OK


def _hint(summary: BatchSummary) -> None:
    lines = []
    if summary.failed or summary.refused:
        lines.append(
            "failed and refused jobs: see the manifest's lines with their errors; run the "
            "same command again to send them again"
        )
    if summary.outcome_unknown:
        lines.append(
            f"{summary.outcome_unknown} job(s) are outcome_unknown: they were sent and may have "
            "been billed; add --retry-unknown to send them again anyway"
        )
    if summary.bad_lines:
        lines.append(
            f"{len(summary.bad_lines)} bad line(s) of the job file were skipped (listed above)"
        )
    for line in lines:
        print(f"gemimg-async: {line}", file=sys.stderr)  # noqa: T201


class _CtrlC:
    """The first Ctrl-C stops taking jobs, the second abandons those in flight."""

    def __init__(self, batch: BatchRun, progress: Progress) -> None:
        self._batch = batch
        self._progress = progress
        self._loop = asyncio.get_running_loop()
        self._installed = False

    def __enter__(self) -> None:
        try:
            self._loop.add_signal_handler(signal.SIGINT, self._pressed)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
            return
        self._installed = True

    def __exit__(self, *_: object) -> None:
        if self._installed:
            self._loop.remove_signal_handler(signal.SIGINT)
            self._installed = False

    def _pressed(self) -> None:
        batch = self._batch
        if not batch.stopping:
            batch.stop()
            in_flight = batch.stats.in_flight
            print(  # noqa: T201
                f"stopping: finishing {in_flight} request{'s' if in_flight != 1 else ''} "
                "already sent (Ctrl-C again to abandon them)",
                file=sys.stderr,
                flush=True,
            )
            self._progress.update(batch.stats)
            return
        print("abandoning the requests in flight", file=sys.stderr, flush=True)  # noqa: T201
        batch.abort("abandoned by a second Ctrl-C after it was sent; it may have been billed")
        self.__exit__()  # a third Ctrl-C is Python's own KeyboardInterrupt


def _fake_server(args: argparse.Namespace) -> int:
    from .testing import FakeRelay, serve  # noqa: PLC0415 - the server is not the client's

    def ready(url: str) -> None:
        print(f"fake relay on {url} (key {args.key})", flush=True)  # noqa: T201
        if args.url_file:
            args.url_file.write_text(url)

    relay = FakeRelay(
        api_keys=frozenset({args.key}),
        host=args.host,
        port=args.port,
        latency=args.latency,
        image_style=args.style,
        sizes=args.sizes,
        chat_style=args.chat_style,
    )
    anyio.run(lambda: serve(relay, ready=ready))
    return EXIT_OK
