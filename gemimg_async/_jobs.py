"""Job files: `.jsonl`, `.csv` and `.txt` read lazily into `ImageRequest`s, each with an id.

A bad line is reported with its number and skipped; it never stops the rest. A job that names no
`id` gets one derived from what it asks for, so a re-run finds it again; every job also gets a
`fingerprint` of what it asks, so a job changed under its id is noticed. The text itself (its
encoding, stdin, an empty file) is `_jobtext`'s.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias, cast

import attrs

from ._exceptions import ValidationError
from ._jobtext import JobText, is_comment
from ._models import ImageRequest, Model, ResponseFormat, is_file_ref, resolve_model

__all__ = [
    "BadLine",
    "JobDefaults",
    "content_id",
    "fingerprint",
    "iterable_jobs",
    "read_jobs",
    "text_jobs",
]

_ID_FIELDS = ("prompt", "model", "size", "n", "images", "response_format")
_ASKED_FIELDS = ("prompt", "model", "size", "n", "images", "extra_body")
"""What a job asks of the model: how the image travels back (response_format) is not of it."""


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


def _digest(request: ImageRequest, fields: tuple[str, ...]) -> str:
    doc = {name: getattr(request, name) for name in fields}
    doc["images"] = list(request.images)
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def content_id(request: ImageRequest) -> str:
    """The id of a job that names none: 16 hex digits of a hash of what it asks for."""
    return _digest(request, _ID_FIELDS)


def fingerprint(request: ImageRequest) -> str:
    """16 hex digits of a hash of what `request` asks of the model (prompt, model, size, n,
    input images as written, extra_body): a job whose fingerprint changed under its id asks for
    something else than what was saved."""
    return _digest(request, _ASKED_FIELDS)


def read_jobs(
    path: str | os.PathLike[str],
    *,
    defaults: JobDefaults = JobDefaults(),
    on_bad_line: Callable[[BadLine], None] | None = None,
    encoding: str | None = None,
) -> Iterator[ImageRequest]:
    """The jobs of a `.jsonl`, `.csv` or `.txt` file (`-`: stdin) as requests, each with an id,
    read lazily.

    The file is read in the encoding its byte-order mark says, else `encoding`, else UTF-8; in
    a `.txt` file, lines starting with `#` are comments. A bad line goes to `on_bad_line` (with
    its number) and is skipped. A job without an `id` gets `content_id`, with `-2`, `-3`... for
    repeats in file order. Local input images are relative to the file's folder. Raises
    ValidationError at once for a file that cannot be a job file: a wrong suffix, missing, not
    in its encoding, or holding no job.
    """
    jobs = text_jobs(JobText.open(path, encoding=encoding), defaults, on_bad_line)
    return (request for request, _ in jobs)


def text_jobs(
    text: JobText,
    defaults: JobDefaults = JobDefaults(),
    on_bad_line: Callable[[BadLine], None] | None = None,
    check: Callable[[ImageRequest], None] | None = None,
) -> Iterator[tuple[ImageRequest, str]]:
    """`read_jobs` of a checked job file, each request with its `fingerprint`; `check` may
    find more wrong with a request (a ValueError: its line is bad)."""
    if text.kind == "csv":
        with text.open_text() as file:
            _csv_columns(next(csv.reader(file), []), text.source)
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "txt": _txt_rows}[text.kind](text)
    return _assign_ids(
        _requests(rows, defaults, text.folder, check), text.source, on_bad_line or _ignore_bad_line
    )


def _ignore_bad_line(_: BadLine) -> None:
    pass


def _check_decoded(*values: str) -> None:
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadJobError("bytes that are not of the file's encoding") from None


_Row: TypeAlias = "tuple[int, Mapping[str, Any] | str]"
"""A line number and the job's fields, or the reason the line is bad."""


def _jsonl_rows(text: JobText) -> Iterator[_Row]:
    with text.open_text() as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                _check_decoded(line)
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


def _txt_rows(text: JobText) -> Iterator[_Row]:
    with text.open_text() as file:
        for number, line in enumerate(file, 1):
            prompt = line.strip()
            if prompt and not is_comment(prompt):
                try:
                    _check_decoded(prompt)
                except _BadJobError as exc:
                    yield number, str(exc)
                else:
                    yield number, {"prompt": prompt}


_CSV_FIELDS = ("prompt", "id", "model", "size", "n", "images", "image", "response_format")


def _csv_columns(header: list[str], source: str) -> list[str]:
    columns = [name.strip().lower() for name in header]
    unknown = [name for name in columns if name not in _CSV_FIELDS]
    if unknown or "prompt" not in columns:
        problem = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "no prompt"
        raise ValidationError(
            f"{source}: {problem} in the header row; the columns are {', '.join(_CSV_FIELDS)}"
        )
    return columns


def _csv_rows(text: JobText) -> Iterator[_Row]:
    with text.open_text() as file:
        reader = csv.reader(file)
        columns = _csv_columns(next(reader), text.source)
        start = reader.line_num + 1
        for row in reader:
            number, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            try:
                _check_decoded(*row)
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


_Numbered: TypeAlias = "tuple[int, ImageRequest | str, str | None, str]"
"""A line number; its request, or the reason it is bad; the `content_id` and `fingerprint` of
the job as written (the id only when it names none)."""


def _requests(
    rows: Iterator[_Row],
    defaults: JobDefaults,
    folder: Path,
    check: Callable[[ImageRequest], None] | None = None,
) -> Iterator[_Numbered]:
    """Each row as a request (defaults filled, local images found beside the job file), with
    the `content_id` and `fingerprint` of the job as written; or the reason it is bad."""
    for number, row in rows:
        if isinstance(row, str):
            yield number, row, None, ""
            continue
        try:
            request = ImageRequest.from_json(defaults.fill(row))
        except (ValueError, TypeError) as exc:  # ValidationError is a ValueError
            yield number, str(exc), None, ""
            continue
        derived = None if request.id is not None else content_id(request)
        asked = fingerprint(request)
        if any(map(is_file_ref, request.images)):
            located = tuple(
                str(folder / ref) if is_file_ref(ref) else ref for ref in request.images
            )
            request = attrs.evolve(request, images=located)
        try:
            if check is not None:
                check(request)
        except ValueError as exc:  # ValidationError is a ValueError
            yield number, str(exc), None, ""
            continue
        yield number, request, derived, asked


def _assign_ids(
    requests: Iterable[_Numbered], source: str, on_bad_line: Callable[[BadLine], None]
) -> Iterator[tuple[ImageRequest, str]]:
    """Every request with a unique id: its own, or its `content_id` (`-2`, `-3`... for repeats);
    and its fingerprint."""
    first_line: dict[str, int] = {}
    repeats: dict[str, int] = {}
    for number, job, derived, asked in requests:
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
        yield request, asked


def iterable_jobs(
    jobs: Iterable[ImageRequest], on_bad_line: Callable[[BadLine], None]
) -> Iterator[tuple[ImageRequest, str]]:
    """Requests given as values, each with a unique id and its fingerprint."""

    def numbered() -> Iterator[_Numbered]:
        for number, job in enumerate(jobs, 1):
            if isinstance(cast("object", job), ImageRequest):
                yield number, job, None, fingerprint(job)
            else:
                yield number, f"expected an ImageRequest, got {job!r:.80}", None, ""

    return _assign_ids(numbered(), "<jobs>", on_bad_line)
