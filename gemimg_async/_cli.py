"""The `gemimg-async` command: `generate`, `batch`, `info`, `gallery`, `status` and `fake-server`.

This module reads the command line and turns every error into one line on stderr and an exit
status: 2 for a usage mistake (a flag, a job file, an output folder), 1 for a failure, 130 for an
interrupt. A traceback is shown only with `--debug`. What the commands do is `_commands`'.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from ._batchout import out_location
from ._cli_cost import add_cost_options
from ._cli_shards import add_shard_commands
from ._commands import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    batch,
    fake_server,
    gallery,
    generate,
    info,
)
from ._config import DEFAULT_MAX_CONCURRENCY
from ._dialects import DIALECTS, SIZE_STYLES
from ._exceptions import ConfigurationError, GemimgError, ValidationError
from ._jobtext import STDIN
from ._models import ASPECT_RATIOS
from ._sharing import add_sharing_options

__all__ = ["main"]

ENV_DIALECT = "GEMIMG_DIALECT"
ENV_SIZE_STYLE = "GEMIMG_SIZE_STYLE"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    _log_to_stderr(verbose=args.verbose)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - every error ends as one line and a status
        code, said = _judged(error)
        if args.debug:
            traceback.print_exc()
        print(f"gemimg-async: {said}", file=sys.stderr)  # noqa: T201
        return code


def _judged(error: Exception) -> tuple[int, str]:
    """The exit status and the line an error ends the command with."""
    if isinstance(error, (ConfigurationError, ValidationError)):
        return EXIT_USAGE, str(error)
    if isinstance(error, GemimgError):
        return EXIT_FAILED, f"{type(error).__name__}: {error}"
    if isinstance(error, OSError):
        return EXIT_FAILED, str(error)
    return EXIT_FAILED, (
        f"unexpected {type(error).__name__}: {error} (run again with --debug to see where; "
        "please report it)"
    )


class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time, so a live progress bar can move it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)  # noqa: T201
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _log_to_stderr(*, verbose: bool) -> None:
    """Warnings on stderr; with `-v`, every request too (the transport's lines)."""
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
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _at_least(low: float, kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value >= low:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"must be {noun} of at least {low:g}, not {text!r}")
        return value

    return parse


def _above_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gemimg-async",
        description="Generate images with Gemini 3 Pro Image through an OpenAI-compatible relay.",
    )
    version = importlib.metadata.version("gemimg-async")
    parser.add_argument("--version", action="version", version=f"gemimg-async {version}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not just its line"
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    one = commands.add_parser("generate", help="generate images from one prompt")
    one.add_argument("prompt")
    _add_request_options(one)
    one.add_argument("-n", type=_at_least(1, int), default=1, help="number of images (default 1)")
    one.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH_OR_URL",
        help="an input image (a file, an http(s) URL or a data: URI); repeat for several",
    )
    one.add_argument("--out", type=Path, default=Path("out"), help="folder (default ./out)")
    _add_connection_options(one)
    _add_metadata_option(one)
    one.set_defaults(run=generate)

    many = commands.add_parser(
        "batch",
        help="generate every job of a job file, resumably",
        description="Generate every job of JOBS into DIR, recording each in DIR/manifest.jsonl. "
        "Run the same command again to resume: saved jobs are skipped, failed ones sent again.",
    )
    many.add_argument(
        "jobs",
        type=Path,
        metavar="JOBS",
        help=f"a .jsonl, .csv or .txt job file (# starts a comment line in .txt); {STDIN} reads "
        "the jobs from stdin (JSONL when its first line is an object, else one prompt a line)",
    )
    many.add_argument(
        "--out",
        type=out_location,
        required=True,
        metavar="DIR",
        help="the folder for the images and manifest.jsonl, or object storage: "
        "s3://bucket/prefix (pip install 'gemimg-async[s3]')",
    )
    many.add_argument(
        "--encoding",
        help="the job file's encoding when it has no byte-order mark (default UTF-8), such as "
        "gbk, big5, shift_jis or cp1252",
    )
    _add_request_options(many)
    _add_connection_options(many)
    many.add_argument("--rpm", type=_above_zero, help="start at most this many requests a minute")
    add_sharing_options(many)
    many.add_argument(
        "--retry-unknown",
        action="store_true",
        help="send again jobs recorded outcome_unknown; they may have been billed, and may be "
        "billed twice",
    )
    many.add_argument(
        "--redo-changed",
        action="store_true",
        help="generate anew jobs whose prompt or options changed since they were saved under "
        "the same id (each is billed again)",
    )
    many.add_argument(
        "--progress-interval",
        type=_above_zero,
        default=10.0,
        metavar="SECONDS",
        help="seconds between status lines when stdout is no terminal (default 10)",
    )
    add_cost_options(many)
    _add_metadata_option(many)
    many.set_defaults(run=batch)

    show = commands.add_parser(
        "info",
        help="print where images came from",
        description="Print what each image says of itself: type, size, and the prompt, model, "
        "sizes, ids and time written into it (or into its .json sidecar).",
    )
    show.add_argument("files", nargs="+", type=Path, metavar="FILE")
    show.set_defaults(run=info)

    grid = commands.add_parser(
        "gallery",
        help="write a batch folder's index.html",
        description="Write DIR/index.html from DIR/manifest.jsonl: a grid of thumbnails (made "
        "once into DIR/.thumbs) with each prompt, model, size, status and cost; open it in a "
        "browser. Needs Pillow: pip install 'gemimg-async[gallery]'.",
    )
    grid.add_argument("folder", type=Path, metavar="DIR")
    grid.set_defaults(run=gallery)

    add_shard_commands(commands, many, _add_request_options)

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
    fake.add_argument(
        "--c2pa", action="store_true", help="mark images with a C2PA manifest, as Google does"
    )
    fake.add_argument(
        "--response-cost",
        type=float,
        metavar="DOLLARS",
        help="send LiteLLM's x-litellm-response-cost header: this much per image",
    )
    fake.add_argument("--url-file", type=Path, help="write the relay's URL here once it listens")
    fake.set_defaults(run=fake_server)
    return parser


def _add_metadata_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-metadata",
        dest="metadata",
        action="store_false",
        help="save images exactly as the relay sent them: no prompt, model or ids written into "
        "PNGs, no .json sidecars",
    )


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
    parser.add_argument("--base-url", help="the relay (default $GEMIMG_BASE_URL)")
    parser.add_argument(
        "--api-key", help="the key (default $GEMIMG_API_KEY; the variable keeps it out of ps)"
    )
    parser.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow an http:// relay that is not on this machine: the key travels unencrypted",
    )
    parser.add_argument(
        "--concurrency",
        type=_at_least(1, int),
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
