"""The `gemimg-async` command: `generate`, `batch` and `fake-server`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from ._client import ENV_API_KEY, ENV_BASE_URL, Client
from ._config import DEFAULT_MAX_CONCURRENCY
from ._exceptions import ConfigurationError, GemimgError, ValidationError
from ._models import ASPECT_RATIOS

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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

    fake = commands.add_parser(
        "fake-server", help="run the built-in fake relay, for demos and offline tests"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    fake.add_argument("--latency", type=float, default=0.0, help="seconds per generation")
    fake.add_argument("--key", default="sk-test", help="the API key it accepts (default sk-test)")
    fake.add_argument("--style", choices=("gradient", "noise"), default="gradient")
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


def _generate(args: argparse.Namespace) -> int:
    async def run() -> None:
        async with Client(args.api_key, args.base_url, max_concurrency=args.concurrency) as client:
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
    )
    anyio.run(lambda: serve(relay, ready=ready))
    return EXIT_OK
