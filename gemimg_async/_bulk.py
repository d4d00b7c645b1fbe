"""Bulk jobs: a job file in, images and a manifest out, resumable after any stop.

Data flows one way::

    jobs file --read_jobs--> ImageRequest (with an id) --BatchRun--> Client.map
        --> OUT/{id}_{i}.{ext} (fsynced, then renamed into place)
        --> one line of OUT/manifest.jsonl (written once the images are in place)

The manifest is append-only: one `os.write` of a whole line per finished job on an `O_APPEND`
descriptor, then an fsync. The latest line of an id is that job's state. A kill -9 leaves at worst
no line for the jobs it interrupted (power loss: a torn last line, which the next run cuts off).

Before a job is handed to `Client.map` (which sends it at once) its id goes to a send log beside
the manifest, `OUT/.manifest-sent.jsonl`. A job in the send log with no manifest line after it was
in flight when a run died: the next run records it `outcome_unknown` (it may have been billed)
instead of paying for it again, unless its images are on disk, which makes it `saved`. The send log
is emptied once every job it names has its line.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import hashlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast, get_args

import anyio
import attrs

from ._client import Client
from ._exceptions import (
    AuthenticationError,
    ConfigurationError,
    ContentPolicyError,
    OutcomeUnknownError,
    RefusalError,
    ValidationError,
)
from ._models import ImageRequest, Model, ResponseFormat, resolve_model
from ._results import Outcome
from ._sinks import _TEMP_PREFIX

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:
    from ._progress import Progress

__all__ = [
    "MANIFEST_NAME",
    "STATUSES",
    "BadLine",
    "BatchRun",
    "BatchStats",
    "BatchSummary",
    "JobDefaults",
    "ManifestEntry",
    "Status",
    "content_id",
    "read_jobs",
    "read_manifest",
    "run_batch",
]

log = logging.getLogger("gemimg_async")

Status: TypeAlias = Literal["saved", "refused", "failed", "outcome_unknown"]
STATUSES: tuple[Status, ...] = get_args(Status)

MANIFEST_NAME = "manifest.jsonl"
_SENT_LOG_NAME = ".manifest-sent.jsonl"
_JOB_KINDS: Mapping[str, Literal["jsonl", "csv", "txt"]] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".txt": "txt",
}
_ID_FIELDS = ("prompt", "model", "size", "n", "images", "response_format")
_IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "gif"})
_PASSED_THROUGH = ("http://", "https://", "data:")
_STALE_TEMP_SECONDS = 15 * 60
"""A temporary image file untouched this long belongs to a dead process (downloads time out at
60 s between chunks)."""
_TICK = 0.5
_UNAUTHORIZED = 401
_ABANDONED = "abandoned after it was sent, when the batch was aborted; it may have been billed"
_DANGLING = (
    "in flight when an earlier run ended without recording it (killed?); it may have been billed"
)


# --- jobs --------------------------------------------------------------------------------------


@attrs.frozen
class JobDefaults:
    """Values for the fields a job leaves out (the CLI's flags); the job file's own values win."""

    model: str = attrs.field(default=Model.STANDARD.value, converter=resolve_model)
    size: str | None = None
    n: int = 1
    response_format: ResponseFormat = "url"

    def __attrs_post_init__(self) -> None:
        ImageRequest(  # the same checks as every job: bad defaults are a usage error, found now
            "-", model=self.model, size=self.size, n=self.n, response_format=self.response_format
        )

    def fill(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """`fields` with every default it lacks (None counts as lacking)."""
        filled = {key: value for key, value in fields.items() if value is not None}
        for key in ("model", "size", "n", "response_format"):
            value = getattr(self, key)
            if key not in filled and value is not None:
                filled[key] = value
        return filled


@attrs.frozen
class BadLine:
    """A line of a job file that was skipped, and why."""

    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


class _BadJobError(Exception):
    """One job's line is unusable; the message says why."""


def content_id(request: ImageRequest) -> str:
    """The id of a job that names none: 16 hex digits of a hash of what it asks for."""
    doc = {name: getattr(request, name) for name in _ID_FIELDS}
    doc["images"] = list(request.images)
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def read_jobs(
    path: str | os.PathLike[str],
    *,
    defaults: JobDefaults = JobDefaults(),
    on_bad_line: Callable[[BadLine], None] | None = None,
) -> Iterator[ImageRequest]:
    """The jobs of a `.jsonl`, `.csv` or `.txt` file as requests, each with an id, read lazily.

    A bad line goes to `on_bad_line` (with its number) and is skipped. A job without an `id` gets
    `content_id`, with `-2`, `-3`... for repeats in file order. Local input images are relative to
    the file's folder. Raises ValidationError at once for a file that cannot be a job file.
    """
    path = Path(path)
    kind = _JOB_KINDS.get(path.suffix.lower())
    if kind is None:
        raise ValidationError(
            f"{path}: a job file ends in {', '.join(_JOB_KINDS)}, not {path.suffix or 'nothing'!r}"
        )
    if not path.is_file():
        raise ValidationError(f"{path}: no such job file")
    if kind == "csv":
        with _open_text(path) as file:
            _csv_columns(next(csv.reader(file), []), path)
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "txt": _txt_rows}[kind](path)
    return _assign_ids(
        _requests(rows, defaults, path.parent), path.name, on_bad_line or _ignore_bad_line
    )


def count_jobs(path: str | os.PathLike[str]) -> int:
    """About how many jobs `path` holds (its non-blank lines), to show progress against."""
    with Path(path).open("rb") as file:
        count = sum(1 for line in file if line.strip())
    return max(count - 1, 0) if Path(path).suffix.lower() == ".csv" else count


def _ignore_bad_line(_: BadLine) -> None:
    pass


def _open_text(path: Path) -> io.TextIOWrapper:
    # surrogateescape: a line with bytes that are not UTF-8 becomes one bad line, not a crash
    return path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")


def _check_utf8(*values: str) -> None:
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadJobError("not valid UTF-8") from None


_Row: TypeAlias = "tuple[int, Mapping[str, Any] | str]"
"""A line number and the job's fields, or the reason the line is bad."""


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    with _open_text(path) as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                _check_utf8(line)
                doc = json.loads(line.rstrip("\r\n"))
            except _BadJobError as exc:
                yield number, str(exc)
                continue
            except json.JSONDecodeError as exc:
                yield number, f"not valid JSON: {exc.msg} (column {exc.pos + 1})"
                continue
            if not isinstance(doc, dict):
                yield number, f"expected a JSON object, got {type(doc).__name__}"
                continue
            yield number, doc


def _txt_rows(path: Path) -> Iterator[_Row]:
    with _open_text(path) as file:
        for number, line in enumerate(file, 1):
            prompt = line.strip()
            if prompt:
                try:
                    _check_utf8(prompt)
                except _BadJobError as exc:
                    yield number, str(exc)
                else:
                    yield number, {"prompt": prompt}


_CSV_FIELDS = ("prompt", "id", "model", "size", "n", "images", "image", "response_format")


def _csv_columns(header: list[str], path: Path) -> list[str]:
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name not in _CSV_FIELDS]
    if unknown or "prompt" not in columns:
        problem = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "no prompt"
        raise ValidationError(
            f"{path}: {problem} in the header row; the columns are {', '.join(_CSV_FIELDS)}"
        )
    return columns


def _csv_rows(path: Path) -> Iterator[_Row]:
    with _open_text(path) as file:
        reader = csv.reader(file)
        columns = _csv_columns(next(reader), path)
        start = reader.line_num + 1
        for row in reader:
            number, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            try:
                _check_utf8(*row)
                yield number, _csv_fields(columns, row)
            except _BadJobError as exc:
                yield number, str(exc)


def _csv_fields(columns: list[str], row: list[str]) -> dict[str, Any]:
    if len(row) > len(columns):
        raise _BadJobError(f"{len(row)} cells, but the header names {len(columns)} columns")
    fields: dict[str, Any] = {}
    for name, cell in zip(columns, row, strict=False):
        value = cell.strip()
        if not value:
            continue
        if name == "n":
            try:
                fields[name] = int(value)
            except ValueError:
                raise _BadJobError(f"n must be a whole number, not {value!r}") from None
        elif name in ("images", "image"):
            fields[name] = _csv_images(value)
        else:
            fields[name] = value
    return fields


def _csv_images(value: str) -> list[str]:
    """A JSON array of images, or images separated by `|`."""
    if value.startswith("["):
        try:
            images = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _BadJobError(f"images is not a valid JSON array: {exc.msg}") from None
        if not isinstance(images, list):
            raise _BadJobError("images must be a JSON array or images separated by '|'")
        return cast("list[str]", images)
    return [part.strip() for part in value.split("|") if part.strip()]


def _requests(
    rows: Iterator[_Row], defaults: JobDefaults, folder: Path
) -> Iterator[tuple[int, ImageRequest | str, str | None]]:
    """Each row as a request (defaults filled, local images found beside the job file), with
    the `content_id` of the job as written when it names no id; or the reason it is bad."""
    for number, row in rows:
        if isinstance(row, str):
            yield number, row, None
            continue
        try:
            request = ImageRequest.from_json(defaults.fill(row))
        except (ValueError, TypeError) as exc:  # ValidationError is a ValueError
            yield number, str(exc), None
            continue
        derived = None if request.id is not None else content_id(request)
        if any(not ref.startswith(_PASSED_THROUGH) for ref in request.images):
            located = tuple(
                ref if ref.startswith(_PASSED_THROUGH) else str(folder / ref)
                for ref in request.images
            )
            request = attrs.evolve(request, images=located)
        yield number, request, derived


def _assign_ids(
    requests: Iterable[tuple[int, ImageRequest | str, str | None]],
    source: str,
    on_bad_line: Callable[[BadLine], None],
) -> Iterator[ImageRequest]:
    """Every request with a unique id: its own, or its `content_id` (`-2`, `-3`... for repeats)."""
    first_line: dict[str, int] = {}
    repeats: dict[str, int] = {}
    for number, job, derived in requests:
        if isinstance(job, str):
            on_bad_line(BadLine(source, number, job))
            continue
        request = job
        if request.id is None:
            base = derived or content_id(request)
            count = repeats.get(base, 0) + 1
            job_id = base if count == 1 else f"{base}-{count}"
            while job_id in first_line:
                count += 1
                job_id = f"{base}-{count}"
            repeats[base] = count
            request = attrs.evolve(request, id=job_id)
        elif request.id in first_line:
            first = first_line[request.id]
            on_bad_line(
                BadLine(source, number, f"duplicate id {request.id!r} (first on line {first})")
            )
            continue
        assert request.id is not None
        first_line[request.id] = number
        yield request


def _iterable_jobs(
    jobs: Iterable[ImageRequest], on_bad_line: Callable[[BadLine], None]
) -> Iterator[ImageRequest]:
    def numbered() -> Iterator[tuple[int, ImageRequest | str, str | None]]:
        for number, job in enumerate(jobs, 1):
            if isinstance(cast("object", job), ImageRequest):
                yield number, job, None
            else:
                yield number, f"expected an ImageRequest, got {job!r:.80}", None

    return _assign_ids(numbered(), "<jobs>", on_bad_line)


# --- manifest ----------------------------------------------------------------------------------


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r:.80}")
    return tuple(value)


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string or null, got {value!r:.80}")
    return value


@attrs.frozen(kw_only=True)
class ManifestEntry:
    """One line of the manifest: how a job ended. `paths` are relative to the manifest's folder."""

    id: str
    status: Status
    paths: tuple[str, ...] = ()
    error: str | None = None
    """`"{ExceptionType}: {message}"` when the job has no images."""
    attempts: int = 0
    request_ids: tuple[str, ...] = ()
    idempotency_keys: tuple[str, ...] = ()
    model: str | None = None
    size: str | None = None
    started: float = 0.0
    """Unix time the request got its place in the pool."""
    finished: float = 0.0
    prompt: str | None = None

    @classmethod
    def from_outcome(cls, outcome: Outcome) -> ManifestEntry:
        request, error = outcome.request, outcome.error
        assert request.id is not None
        key = outcome.idempotency_key
        return cls(
            id=request.id,
            status=status_of(error),
            paths=tuple(path.name for path in outcome.paths),
            error=None if error is None else f"{type(error).__name__}: {error}",
            attempts=outcome.attempts,
            request_ids=outcome.request_ids,
            idempotency_keys=(key,) if key else (),
            model=request.model,
            size=request.size,
            started=outcome.started,
            finished=outcome.finished,
            prompt=request.prompt,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "paths": list(self.paths),
            "error": self.error,
            "attempts": self.attempts,
            "request_ids": list(self.request_ids),
            "idempotency_keys": list(self.idempotency_keys),
            "model": self.model,
            "size": self.size,
            "started": round(self.started, 3),
            "finished": round(self.finished, 3),
            "prompt": self.prompt,
        }

    def to_line(self) -> bytes:
        """The entry as one manifest line: JSON, newline-terminated, no other newline in it."""
        return json.dumps(self.to_json(), ensure_ascii=False).encode("utf-8", "replace") + b"\n"

    @classmethod
    def from_json(cls, doc: Any) -> ManifestEntry:
        """An entry from a parsed line; ValueError when it is none. Unknown keys are ignored."""
        if not isinstance(doc, dict):
            # ValueError, not TypeError: every kind of bad line is one error to the reader
            raise ValueError("a manifest line is a JSON object")  # noqa: TRY004
        job_id, status = doc.get("id"), doc.get("status")
        if not isinstance(job_id, str) or status not in STATUSES:
            raise ValueError("a manifest line needs an id and a known status")
        attempts, started, finished = (doc.get(k, 0) for k in ("attempts", "started", "finished"))
        if not all(isinstance(v, (int, float)) for v in (attempts, started, finished)):
            raise ValueError("attempts, started and finished are numbers")
        return cls(
            id=job_id,
            status=status,
            paths=_strings(doc.get("paths", [])),
            error=_optional_str(doc.get("error")),
            attempts=int(attempts),
            request_ids=_strings(doc.get("request_ids", [])),
            idempotency_keys=_strings(doc.get("idempotency_keys", [])),
            model=_optional_str(doc.get("model")),
            size=_optional_str(doc.get("size")),
            started=float(started),
            finished=float(finished),
            prompt=_optional_str(doc.get("prompt")),
        )


def status_of(error: BaseException | None) -> Status:
    """The manifest status of a job that ended with `error` (None: it has its images)."""
    if error is None:
        return "saved"
    if isinstance(error, (RefusalError, ContentPolicyError)):
        return "refused"
    if isinstance(error, OutcomeUnknownError):
        return "outcome_unknown"
    return "failed"


@attrs.frozen
class _Scan:
    """What a manifest holds: the latest entry per id, where that line starts, and where the
    last complete line ends."""

    entries: dict[str, ManifestEntry]
    starts: dict[str, int]
    good_size: int
    size: int


def _scan(path: Path) -> _Scan:
    entries: dict[str, ManifestEntry] = {}
    starts: dict[str, int] = {}
    offset = good = 0
    bad_at: int | None = None  # the start of the last line, when it is not a valid entry
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return _Scan(entries, starts, 0, 0)
    with file:
        for number, line in enumerate(file, 1):
            if bad_at is not None:
                log.warning("%s:%d: not a manifest entry; ignored", path, number - 1)
                bad_at = None
            start, offset = offset, offset + len(line)
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("torn")  # noqa: TRY301 - one path for every bad line
                entry = ManifestEntry.from_json(json.loads(line))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                bad_at = start
                continue
            entries[entry.id] = entry
            starts[entry.id] = start
            good = offset
    return _Scan(entries, starts, good if bad_at is not None else offset, offset)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, ManifestEntry]:
    """The latest entry of every id in the manifest at `path` (a torn last line is left out)."""
    return _scan(Path(path)).entries


# --- the journal: manifest and send log, for one run -------------------------------------------


def _append(fd: int, data: bytes) -> None:
    """One write of a whole line: a kill cannot interleave it with another."""
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(errno.ENOSPC, f"wrote {written} of {len(data)} bytes of a manifest line")


@attrs.define
class _Journal:
    """The manifest and the send log of one folder, locked for one run."""

    folder: Path
    entries: dict[str, ManifestEntry]
    """The latest entry per id."""
    _fd: int
    _sent_fd: int
    _starts: dict[str, int]
    """Where the latest line of each id starts in the manifest."""
    _size: int
    _unsynced: bool = False

    @classmethod
    def open(cls, folder: Path) -> _Journal:
        """Lock the folder's manifest, read it, and cut a torn last line off."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _lock(fd, folder)
            scan = _scan(path)
            if scan.good_size != scan.size:
                log.warning(
                    "%s: cut off a torn last line (%d bytes)", path, scan.size - scan.good_size
                )
                os.ftruncate(fd, scan.good_size)
                os.fsync(fd)
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
            sent_fd = os.open(folder / _SENT_LOG_NAME, flags, 0o644)
        except BaseException:
            os.close(fd)
            raise
        return cls(folder, scan.entries, fd, sent_fd, scan.starts, scan.good_size)

    def dangling(self) -> list[dict[str, Any]]:
        """The jobs a dead run sent and never recorded (from the send log)."""
        with Path(self.folder / _SENT_LOG_NAME).open("rb") as file:
            sent = []
            for line in file:
                try:
                    doc = json.loads(line)
                    job_id, at = doc["id"], doc["at"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line: its job was not handed over yet
                if self._starts.get(job_id, -1) < at:
                    sent.append(doc)
        return sent

    def mark_sent(self, request: ImageRequest, started: float) -> None:
        """Note, before `request` is sent, that it is about to be (no fsync: a kill -9 keeps
        written data; the next manifest fsync makes it durable)."""
        doc = {
            "id": request.id,
            "at": self._size,
            "n": request.n,
            "model": request.model,
            "size": request.size,
            "started": round(started, 3),
            "prompt": request.prompt,
        }
        _append(
            self._sent_fd, json.dumps(doc, ensure_ascii=False).encode("utf-8", "replace") + b"\n"
        )

    def write(self, entry: ManifestEntry) -> None:
        """Append `entry`'s line; `sync` makes it durable."""
        line = entry.to_line()
        _append(self._fd, line)
        self._starts[entry.id] = self._size
        self._size += len(line)
        self.entries[entry.id] = entry
        self._unsynced = True

    async def sync(self) -> None:
        if self._unsynced:
            self._unsynced = False
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(os.fsync, self._fd)

    def forget_sent(self) -> None:
        """Empty the send log: every job in it has its manifest line, synced."""
        os.ftruncate(self._sent_fd, 0)

    def close(self) -> None:
        os.close(self._sent_fd)
        os.close(self._fd)  # releases the lock


def _lock(fd: int, folder: Path) -> None:
    if sys.platform == "win32":  # no flock: one batch per folder is then the user's care
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigurationError(
            f"another gemimg-async batch is writing to {folder}: wait for it, or use another --out"
        ) from None


@attrs.frozen
class _Images:
    """The images a folder holds, by job id and index: `{id}_{i}.{ext}`."""

    names: frozenset[str]
    by_job: Mapping[str, Mapping[int, str]]

    @classmethod
    def scan(cls, folder: Path) -> _Images:
        """One pass over `folder`; stale temporary files of dead runs are removed on the way."""
        names: set[str] = set()
        by_job: dict[str, dict[int, str]] = {}
        now = time.time()
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(_TEMP_PREFIX) and name.endswith(".part"):
                    _remove_stale(entry, now)
                    continue
                stem, dot, extension = name.rpartition(".")
                job_id, underscore, index = stem.rpartition("_")
                if not (dot and underscore and index.isascii() and index.isdigit()):
                    continue
                if extension.lower() in _IMAGE_EXTENSIONS:
                    names.add(name)
                    by_job.setdefault(job_id, {})[int(index)] = name
        return cls(frozenset(names), by_job)

    def complete(self, job_id: str, n: int) -> tuple[str, ...] | None:
        """The names of images 0..n-1 of `job_id`, when all are here."""
        found = self.by_job.get(job_id, {})
        if all(index in found for index in range(n)):
            return tuple(found[index] for index in range(n))
        return None


def _remove_stale(entry: os.DirEntry[str], now: float) -> None:
    try:
        if now - entry.stat().st_mtime > _STALE_TEMP_SECONDS:
            Path(entry.path).unlink()
    except FileNotFoundError:
        pass


# --- the run -----------------------------------------------------------------------------------


@attrs.frozen
class BatchStats:
    """A batch as it runs, for progress displays."""

    total: int | None
    """About how many jobs the job file holds; None when unknown."""
    saved: int
    """Jobs saved by this run."""
    failed: int
    """Jobs of this run that ended without images: refused, failed or outcome_unknown."""
    skipped: int
    """Jobs not sent: done by an earlier run."""
    bad_lines: int
    in_flight: int
    images: int
    """Images saved by this run."""
    elapsed: float
    limit: int
    """The client's in-flight limit now (lower while the relay throttles)."""
    stopping: bool = False

    @property
    def done(self) -> int:
        """Jobs read and settled: saved, failed, skipped or bad."""
        return self.saved + self.failed + self.skipped + self.bad_lines

    @property
    def images_per_minute(self) -> float:
        return self.images * 60.0 / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every job is done, at this run's pace so far; None when unknown or
        stopping."""
        finished = self.saved + self.failed
        if self.total is None or finished == 0 or self.elapsed <= 0 or self.stopping:
            return None
        return max(self.total - self.done, 0) * self.elapsed / finished


@attrs.frozen(kw_only=True)
class BatchSummary:
    """How a batch ended: the final state of every job met, this run or before."""

    saved: int
    refused: int
    failed: int
    outcome_unknown: int
    skipped: int
    """Of those, jobs not sent by this run (done before, or outcome_unknown kept as it is)."""
    sent: int
    images: int
    """Images saved by this run."""
    bad_lines: tuple[BadLine, ...]
    elapsed: float
    manifest: Path
    interrupted: bool
    """Stopped or aborted before every job was read: run again to go on."""
    halted: str | None = None
    """Why the batch stopped taking jobs on its own (the relay rejected the key)."""

    @property
    def counts(self) -> dict[Status, int]:
        return {status: getattr(self, status) for status in STATUSES}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """Every job saved, no bad line, nothing left."""
        return (
            self.saved == self.total
            and not self.bad_lines
            and not self.interrupted
            and self.halted is None
        )


def _no_jobs() -> dict[Status, int]:
    return dict.fromkeys(STATUSES, 0)


@attrs.define
class BatchRun:
    """One batch: jobs in, images and `OUT/manifest.jsonl` out. Use once: `await run.run(jobs)`.

    `stop()` takes no new job and lets the requests already sent finish (they are paid for);
    `abort()` cancels those too and records each as `outcome_unknown`. Both are safe to call from
    a signal handler on the event loop.
    """

    client: Client
    out_dir: Path = attrs.field(converter=Path)
    defaults: JobDefaults = JobDefaults()
    retry_unknown: bool = False
    """Send again jobs recorded `outcome_unknown`: they may have been billed already."""
    progress: Progress | None = None
    _stopping: bool = attrs.field(init=False, default=False)
    _abort_reason: str | None = attrs.field(init=False, default=None)
    _scope: anyio.CancelScope = attrs.field(init=False, factory=anyio.CancelScope)
    _in_flight: dict[str, ImageRequest] = attrs.field(init=False, factory=dict)
    _counts: dict[Status, int] = attrs.field(init=False, factory=_no_jobs)
    """The final state of every job met."""
    _ran: dict[Status, int] = attrs.field(init=False, factory=_no_jobs)
    """... of the jobs this run sent."""
    _skipped: int = attrs.field(init=False, default=0)
    _images: int = attrs.field(init=False, default=0)
    _bad_lines: list[BadLine] = attrs.field(init=False, factory=list)
    _total: int | None = attrs.field(init=False, default=None)
    _began: float | None = attrs.field(init=False, default=None)
    _halted: str | None = attrs.field(init=False, default=None)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def aborting(self) -> bool:
        return self._abort_reason is not None

    def stop(self) -> None:
        """Take no new job; the requests already sent finish and are recorded."""
        self._stopping = True

    def abort(self, reason: str = _ABANDONED) -> None:
        """Cancel what is in flight at once; each such job is recorded `outcome_unknown`."""
        self._stopping = True
        self._abort_reason = reason
        self._scope.cancel()

    @property
    def stats(self) -> BatchStats:
        return BatchStats(
            total=self._total,
            saved=self._ran["saved"],
            failed=sum(self._ran.values()) - self._ran["saved"],
            skipped=self._skipped,
            bad_lines=len(self._bad_lines),
            in_flight=len(self._in_flight),
            images=self._images,
            elapsed=0.0 if self._began is None else time.monotonic() - self._began,
            limit=self.client.stats.limit,
            stopping=self._stopping,
        )

    async def run(self, jobs: str | os.PathLike[str] | Iterable[ImageRequest]) -> BatchSummary:
        """Run every job not done yet; returns the summary. ValidationError for a bad job file."""
        if self._began is not None:
            raise RuntimeError("a BatchRun runs once")
        self._began = time.monotonic()
        if isinstance(jobs, (str, os.PathLike)):
            requests = read_jobs(jobs, defaults=self.defaults, on_bad_line=self._bad_line)
            self._total = count_jobs(jobs)
        else:
            requests = _iterable_jobs(jobs, self._bad_line)
            self._total = len(jobs) if isinstance(jobs, (list, tuple)) else None
        journal = _Journal.open(self.out_dir)
        summary: BatchSummary | None = None
        try:
            if self.progress is not None:
                self.progress.start(self.stats)
            images = _Images.scan(self.out_dir)
            await self._settle_dangling(journal, images)
            async with _background(self._tick() if self.progress is not None else None):
                await self._send_all(journal, self._to_send(requests, journal, images))
            journal.forget_sent()  # every job sent has its line now, synced
            summary = self._summary(journal)
        finally:
            journal.close()
            if self.progress is not None:
                self.progress.update(self.stats)
                self.progress.finish(summary)
        return summary

    def _bad_line(self, bad: BadLine) -> None:
        self._bad_lines.append(bad)
        log.warning("%s:%d: skipped: %s", bad.source, bad.line, bad.reason)

    async def _tick(self) -> None:
        assert self.progress is not None
        while True:
            await anyio.sleep(_TICK)
            self.progress.update(self.stats)

    async def _settle_dangling(self, journal: _Journal, images: _Images) -> None:
        """Record the jobs a dead run sent without recording them."""
        dangling = journal.dangling()
        for doc in dangling:
            names = images.complete(doc["id"], int(doc.get("n", 1)))
            journal.write(
                ManifestEntry(
                    id=doc["id"],
                    status="saved" if names else "outcome_unknown",
                    paths=names or (),
                    error=None if names else _DANGLING,
                    model=doc.get("model"),
                    size=doc.get("size"),
                    started=float(doc.get("started", 0.0)),
                    finished=time.time(),
                    prompt=doc.get("prompt"),
                )
            )
        if dangling:
            unknown = sum(1 for doc in dangling if journal.entries[doc["id"]].status != "saved")
            log.warning(
                "%d job(s) were in flight when an earlier run ended without recording them: "
                "%d have their images on disk (saved), %d are outcome_unknown (may have been "
                "billed; sent again only with --retry-unknown)",
                len(dangling),
                len(dangling) - unknown,
                unknown,
            )
        await journal.sync()
        journal.forget_sent()

    def _to_send(
        self, requests: Iterator[ImageRequest], journal: _Journal, images: _Images
    ) -> Iterator[ImageRequest]:
        """The jobs to send, marked sent as `Client.map` takes them (it sends each at once)."""
        for request in requests:
            if self._stopping:
                return
            assert request.id is not None
            prior = journal.entries.get(request.id)
            if prior is not None and prior.status == "saved":
                if all(name in images.names for name in prior.paths):
                    self._skip(prior)
                    continue
                log.warning(
                    "%s: recorded saved, but its images are gone: sending it again", request.id
                )
            elif prior is None or prior.status == "outcome_unknown":
                names = images.complete(request.id, request.n)
                if names is not None:  # the images landed, the line did not: a crash between
                    entry = ManifestEntry(
                        id=request.id,
                        status="saved",
                        paths=names,
                        model=request.model,
                        size=request.size,
                        started=time.time(),
                        finished=time.time(),
                        prompt=request.prompt,
                    )
                    journal.write(entry)
                    self._skip(entry)
                    continue
                if prior is not None and not self.retry_unknown:
                    self._skip(prior)
                    continue
            journal.mark_sent(request, time.time())
            self._in_flight[request.id] = request
            yield request

    def _skip(self, entry: ManifestEntry) -> None:
        self._skipped += 1
        self._counts[entry.status] += 1

    async def _send_all(self, journal: _Journal, requests: Iterator[ImageRequest]) -> None:
        # map is an async generator (annotated AsyncIterator): aclose() cancels what it runs
        outcomes = cast(
            "AsyncGenerator[Outcome, None]",
            self.client.map(requests, save_to=self.out_dir, overwrite=True),
        )
        try:
            with self._scope:
                async for outcome in outcomes:
                    entry = ManifestEntry.from_outcome(outcome)
                    journal.write(entry)
                    del self._in_flight[entry.id]
                    self._counts[entry.status] += 1
                    self._ran[entry.status] += 1
                    self._images += len(entry.paths)
                    self._halt_on(outcome.error)
                    await journal.sync()
        finally:
            with anyio.CancelScope(shield=True):
                await outcomes.aclose()
                self._abandon(journal)
                await journal.sync()

    def _halt_on(self, error: Exception | None) -> None:
        """A rejected key (401) will fail every job: stop taking them. (403 may be one model's.)"""
        rejected = isinstance(error, AuthenticationError) and error.status == _UNAUTHORIZED
        if rejected and self._halted is None:
            self._halted = f"the relay rejected the API key: {error}"
            log.error("%s; taking no more jobs", self._halted)
            self.stop()

    def _abandon(self, journal: _Journal) -> None:
        """Record the jobs cancelled in flight: sent, so perhaps billed."""
        if not self._in_flight:
            return
        images = _Images.scan(self.out_dir)
        now = time.time()
        for job_id, request in list(self._in_flight.items()):
            names = images.complete(job_id, request.n)
            entry = ManifestEntry(
                id=job_id,
                status="saved" if names else "outcome_unknown",
                paths=names or (),
                error=None if names else (self._abort_reason or _ABANDONED),
                model=request.model,
                size=request.size,
                finished=now,
                prompt=request.prompt,
            )
            journal.write(entry)
            del self._in_flight[job_id]
            self._counts[entry.status] += 1
            self._ran[entry.status] += 1
            self._images += len(entry.paths)

    def _summary(self, journal: _Journal) -> BatchSummary:
        assert self._began is not None
        return BatchSummary(
            saved=self._counts["saved"],
            refused=self._counts["refused"],
            failed=self._counts["failed"],
            outcome_unknown=self._counts["outcome_unknown"],
            skipped=self._skipped,
            sent=sum(self._ran.values()),
            images=self._images,
            bad_lines=tuple(self._bad_lines),
            elapsed=time.monotonic() - self._began,
            manifest=journal.folder / MANIFEST_NAME,
            interrupted=self._stopping and self._halted is None,
            halted=self._halted,
        )


async def run_batch(
    client: Client,
    jobs: str | os.PathLike[str] | Iterable[ImageRequest],
    out_dir: str | os.PathLike[str],
    *,
    defaults: JobDefaults = JobDefaults(),
    retry_unknown: bool = False,
    progress: Progress | None = None,
    stop: anyio.Event | None = None,
    abort: anyio.Event | None = None,
) -> BatchSummary:
    """Generate every job of `jobs` (a job file, or requests) into `out_dir`, resuming what an
    earlier run left; see `BatchRun`. Setting `stop` or `abort` does what `BatchRun.stop()` and
    `BatchRun.abort()` do."""
    batch = BatchRun(
        client, out_dir, defaults=defaults, retry_unknown=retry_unknown, progress=progress
    )

    async def on(event: anyio.Event | None, action: Callable[[], None]) -> None:
        if event is not None:
            await event.wait()
            action()

    async with _background(on(stop, batch.stop), on(abort, batch.abort)):
        return await batch.run(jobs)


@asynccontextmanager
async def _background(*coroutines: Coroutine[Any, Any, None] | None) -> AsyncIterator[None]:
    """Run `coroutines` beside the body, cancelled when it ends. Plain tasks rather than a task
    group, so that the body's own exceptions come out as they are, not in an ExceptionGroup."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines if coroutine is not None]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*tasks, return_exceptions=True)
