"""What each `gemimg-async` command does (`_cli` reads the command line and reports errors).

Every check a user can fail is made before a client exists, and says it with the flag's name:
`--out`, `--base-url`, `--api-key`; the library's own messages name its Python arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

import anyio

from ._bulk import BatchRun
from ._client import ENV_API_KEY, ENV_BASE_URL, Client
from ._dialects import base_url
from ._dryrun import dry_run
from ._exceptions import ConfigurationError
from ._folders import BATCH_PROBE_BYTES, check_folder
from ._gallery import build_gallery, require_pillow
from ._info import read_info
from ._jobs import JobDefaults
from ._jobtext import JobText
from ._limiter import SharedLimiter
from ._prices import DEFAULT_PRICES, Prices
from ._progress import PlainProgress, Progress, RichProgress, rich_available
from ._sharing import endpoints_of, limiter_of
from ._summary import BatchSummary

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "batch",
    "fake_server",
    "gallery",
    "generate",
    "info",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _client(
    args: argparse.Namespace,
    *,
    rpm: float | None = None,
    prices: Prices = DEFAULT_PRICES,
    limiter: SharedLimiter | None = None,
) -> Client:
    """The relay's client, its key and URL checked first with the flags' names (or the
    relays of --endpoints)."""
    endpoints = endpoints_of(args)
    key, url = (None, None) if endpoints else _relay(args)
    return Client(
        key,
        url,
        endpoints=endpoints,
        max_concurrency=args.concurrency,
        rpm=rpm,
        allow_insecure_http=args.allow_insecure_http,
        dialect=args.dialect,
        size_style=args.size_style,
        prices=prices,
        metadata=args.metadata,
        limiter=limiter,
    )


def _relay(args: argparse.Namespace) -> tuple[str, str]:
    key = args.api_key if args.api_key is not None else os.environ.get(ENV_API_KEY)
    if args.api_key is not None and not args.api_key.strip():
        raise ConfigurationError(
            f"--api-key is empty: give the key, or leave --api-key out and set {ENV_API_KEY}"
        )
    if not key:
        raise ConfigurationError(
            f"no API key: set {ENV_API_KEY} (or pass --api-key, which others can see in ps)"
        )
    url = args.base_url or os.environ.get(ENV_BASE_URL)
    if not url:
        raise ConfigurationError(
            f"no relay: pass --base-url (such as https://api.example.com) or set {ENV_BASE_URL}"
        )
    try:
        base_url(url, allow_insecure_http=True)
    except ConfigurationError:
        raise ConfigurationError(
            f"--base-url must be an http(s) URL such as https://api.example.com, not {url!r}"
        ) from None
    try:
        base_url(url, allow_insecure_http=args.allow_insecure_http)
    except ConfigurationError:
        raise ConfigurationError(
            f"--base-url {url} would send the API key unencrypted: use https, or add "
            "--allow-insecure-http for a relay you trust on your own network"
        ) from None
    return key, url


def generate(args: argparse.Namespace) -> int:
    check_folder(args.out, what="--out", probe_bytes=BATCH_PROBE_BYTES)
    client = _client(args)

    async def run() -> None:
        async with client:
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


def batch(args: argparse.Namespace) -> int:
    defaults = JobDefaults(model=args.model, size=args.size, response_format=args.response_format)
    jobs = JobText.open(args.jobs, encoding=args.encoding)
    prices = Prices.from_file(args.prices) if args.prices is not None else DEFAULT_PRICES
    in_store = not isinstance(args.out, Path)  # s3://bucket/prefix: `_batchout`
    if in_store and (args.dry_run or args.gallery):
        raise ConfigurationError(
            f"--{'dry-run' if args.dry_run else 'gallery'} reads a folder, not {args.out}: "
            "leave it out (gemimg-async status reads object storage)"
        )
    if args.dry_run:
        found = dry_run(
            jobs,
            args.out,
            defaults=defaults,
            prices=prices,
            max_cost=args.max_cost,
            retry_unknown=args.retry_unknown,
            redo_changed=args.redo_changed,
            shard=args.shard,
        )
        print("\n".join(found.lines()))  # noqa: T201
        return EXIT_OK if found.ok else EXIT_USAGE
    if args.gallery:
        require_pillow()  # said before anything is paid for
    if not in_store:  # a store is checked by the run, before anything is sent
        check_folder(args.out, what="--out", probe_bytes=BATCH_PROBE_BYTES)
    limiter = limiter_of(args)
    client = _client(args, rpm=args.rpm, prices=prices, limiter=limiter)
    progress: Progress = (
        RichProgress()
        if sys.stdout.isatty() and rich_available()
        else PlainProgress(interval=args.progress_interval)
    )

    async def run() -> BatchSummary:
        async with client:
            run = BatchRun(
                client,
                args.out,
                defaults=defaults,
                retry_unknown=args.retry_unknown,
                progress=progress,
                redo_changed=args.redo_changed,
                encoding=args.encoding,
                max_cost=args.max_cost,
                shard=args.shard,
            )
            try:
                with _CtrlC(run, progress):
                    return await run.run(jobs)
            finally:
                if limiter is not None:
                    await limiter.aclose()

    summary = anyio.run(run)
    if args.gallery:
        _gallery_after(args.out)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if not summary.ok:
        _hint(summary)
        return EXIT_FAILED
    return EXIT_OK


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _hint(summary: BatchSummary) -> None:
    lines = []
    if summary.failed or summary.refused:
        lines.append(
            "failed and refused jobs: see the manifest's lines with their errors; run the "
            "same command again to send them again"
        )
    if summary.outcome_unknown:
        lines.append(
            f"{_plural(summary.outcome_unknown, 'job is', 'jobs are')} outcome_unknown: sent, "
            "and may have been billed; add --retry-unknown to send them again anyway (with "
            "the same Idempotency-Key)"
        )
    if summary.changed:
        lines.append(
            f"{_plural(summary.changed, 'job', 'jobs')} changed since they were saved (same "
            "id, another prompt or options) and were left as they were: rerun with "
            "--redo-changed to generate them anew (each is billed again), or give them new ids"
        )
    if summary.bad_lines:
        lines.append(
            f"{len(summary.bad_lines)} bad line(s) of the job file were skipped (listed above)"
        )
    if summary.capped:
        lines.append("the cost cap stopped the batch: run it again with a higher --max-cost")
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
        in_flight = batch.stats.in_flight
        if not batch.stopping:
            batch.stop()
            _say(
                f"stopping: finishing {_plural(in_flight, 'request', 'requests')} already sent "
                "(Ctrl-C again to abandon them)"
            )
            self._progress.update(batch.stats)
            return
        _say(
            f"abandoning {_plural(in_flight, 'request', 'requests')} in flight: sent, so "
            "perhaps billed, they are recorded outcome_unknown and the next run holds them "
            "back; add --retry-unknown to send them again (with the same Idempotency-Key)"
            if in_flight
            else "abandoning: nothing was in flight"
        )
        batch.abort("abandoned by a second Ctrl-C after it was sent; it may have been billed")
        self.__exit__()  # a third Ctrl-C is Python's own KeyboardInterrupt


def _gallery_after(out: Path) -> None:
    """The gallery of a batch that ran: a failure to write it is said, and is not the batch's."""
    try:
        page = build_gallery(out)
    except (OSError, ConfigurationError) as exc:
        _say(f"gemimg-async: the gallery could not be written: {exc}")
    else:
        _say(f"gallery: {page}")


def info(args: argparse.Namespace) -> int:
    """What each file says of itself; a file that cannot be read is one line on stderr (2)."""
    failed = False
    for path in args.files:
        try:
            found = read_info(path)
        except (OSError, ValueError) as exc:
            said = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"gemimg-async: {path}: {said}", file=sys.stderr)  # noqa: T201
            failed = True
            continue
        print("\n".join(found.lines()))  # noqa: T201
    return EXIT_USAGE if failed else EXIT_OK


def gallery(args: argparse.Namespace) -> int:
    try:
        page = build_gallery(args.folder)
    except FileNotFoundError as exc:  # no manifest: a folder that holds no batch
        raise ConfigurationError(str(exc)) from None
    print(page)  # noqa: T201
    return EXIT_OK


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201


def fake_server(args: argparse.Namespace) -> int:
    from .testing import FakeRelay, serve  # noqa: PLC0415 - the server is not the client's

    def ready(url: str) -> None:
        print(f"fake relay on {url} (key {args.key})", flush=True)  # noqa: T201
        if args.url_file:
            Path(args.url_file).write_text(url)

    relay = FakeRelay(
        api_keys=frozenset({args.key}),
        host=args.host,
        port=args.port,
        latency=args.latency,
        image_style=args.style,
        sizes=args.sizes,
        chat_style=args.chat_style,
        c2pa=args.c2pa,
        response_cost=args.response_cost,
    )
    anyio.run(lambda: serve(relay, ready=ready))
    return EXIT_OK
