"""Where a job file's text comes from (a file, or stdin for `-`), in which encoding, and how
many jobs it holds: all checked once, before anything is sent.

The encoding is a byte-order mark's (UTF-8, UTF-16 or UTF-32), else the one asked for, else
UTF-8. A file that does not decode is said once, with a guess at its encoding; an empty one is
refused. Reading the rows is `_jobs`' work.
"""

from __future__ import annotations

import codecs
import io
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeAlias

import attrs

from ._exceptions import ValidationError

__all__ = ["STDIN", "JobKind", "JobText", "is_comment"]

STDIN = "-"
"""The job file name that means "read the jobs from stdin"."""

JobKind: TypeAlias = Literal["jsonl", "csv", "txt"]
_KINDS: Mapping[str, JobKind] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".txt": "txt",
}
_BOMS = (  # the longest first: a UTF-32 LE mark starts like a UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_GUESSES = ("gbk", "big5", "shift_jis", "euc-kr")
"""Multi-byte encodings tried, in order, on a file that is not UTF-8."""
_SAMPLE = 64 * 1024


def is_comment(line: str) -> bool:
    """A `.txt` line that starts with `#` (after blanks) is a comment, not a prompt."""
    return line.lstrip().startswith("#")


@attrs.frozen
class _Bytes:
    """Where the bytes are: a file, or stdin's, read whole."""

    path: Path | None
    data: bytes | None = attrs.field(repr=False)

    def open(self) -> io.BytesIO | io.BufferedReader:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return self.path.open("rb")


@attrs.frozen
class JobText:
    """A job file's text, checked: it decodes, and holds at least one job."""

    source: str
    """The name bad lines are reported under: the file's name, or `<stdin>`."""
    kind: JobKind
    folder: Path
    """Where relative input image paths are found: the file's folder (stdin: the current one)."""
    encoding: str
    total: int
    """About how many jobs it holds (its non-blank lines, less comments or a CSV header)."""
    _bytes: _Bytes = attrs.field(alias="bytes", repr=False)

    @classmethod
    def open(cls, jobs: str | os.PathLike[str], *, encoding: str | None = None) -> JobText:
        """Check the job file `jobs` (`-`: stdin, read whole) through once; ValidationError for
        one that is no job file, does not decode, or holds no job."""
        if encoding is not None:
            try:
                codecs.lookup(encoding)
            except LookupError:
                raise ValidationError(f"unknown encoding {encoding!r} (--encoding)") from None
        name = os.fspath(jobs)
        if name == STDIN:
            data = sys.stdin.buffer.read()
            kind: JobKind = "jsonl" if _first_line(data).startswith(b"{") else "txt"
            source, folder, head, where = "<stdin>", Path(), data[:4], _Bytes(None, data)
        else:
            path = Path(jobs)
            found = _KINDS.get(path.suffix.lower())
            if found is None:
                raise ValidationError(
                    f"{path}: a job file ends in {', '.join(_KINDS)}, "
                    f"not {path.suffix or 'nothing'!r}"
                )
            if not path.is_file():
                raise ValidationError(f"{path}: no such job file")
            try:
                with path.open("rb") as file:
                    head = file.read(4)
            except OSError as exc:
                raise ValidationError(f"{path}: cannot read it ({exc.strerror or exc})") from None
            kind, source, folder, where = found, path.name, path.parent, _Bytes(path, None)
        decoding = _encoding(head, encoding)
        total = _count(where, decoding, kind, name)
        return cls(source, kind, folder, decoding, total, where)

    def open_text(self) -> io.TextIOWrapper:
        """The text, line by line (`newline=""`, as the csv module wants). Bytes that no longer
        decode (a file changed since it was checked) come through as lone surrogates."""
        return io.TextIOWrapper(
            self._bytes.open(), encoding=self.encoding, errors="surrogateescape", newline=""
        )


def _count(where: _Bytes, encoding: str, kind: JobKind, name: str) -> int:
    """The jobs of the text, read through once: ValidationError when it does not decode or
    holds none."""
    count = 0
    try:
        with io.TextIOWrapper(where.open(), encoding=encoding, newline="") as file:
            for line in file:
                if line.strip() and not (kind == "txt" and is_comment(line)):
                    count += 1
    except UnicodeDecodeError:
        raise ValidationError(_undecodable(where, encoding, name)) from None
    total = max(count - 1, 0) if kind == "csv" else count
    if total == 0:
        holds = "a header row only" if count else "no line but blanks or # comments"
        raise ValidationError(f"{name} holds no job ({holds}): nothing to do")
    return total


def _undecodable(where: _Bytes, encoding: str, name: str) -> str:
    """One message for a file that does not decode: where, and which encoding to try."""
    with where.open() as raw:
        data = raw.read()
    codec = codecs.lookup(encoding).name
    said = "UTF-8" if codec.startswith("utf-8") else encoding
    line_of = ""
    if not codec.startswith(("utf-16", "utf-32")):  # lines split on b"\n" only here
        for number, line in enumerate(data.splitlines(), 1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError as exc:
                line_of = f" (line {number}: {line[exc.start : exc.start + 4]!r})"
                break
    guess = _guess(data[:_SAMPLE])
    hint = (
        f"it looks like {guess}: try --encoding {guess}"
        if guess is not None and guess != encoding
        else "name its encoding with --encoding, such as gbk, big5, shift_jis or cp1252"
    )
    return f"{name} is not {said}{line_of}; {hint}"


def _encoding(head: bytes, asked: str | None) -> str:
    """A byte-order mark's encoding, else `asked`, else UTF-8 (a UTF-8 mark skipped)."""
    for mark, encoding in _BOMS:
        if head.startswith(mark):
            return encoding
    if asked is None or codecs.lookup(asked).name == "utf-8":
        return "utf-8-sig"
    return asked


def _first_line(data: bytes) -> bytes:
    """The first line of stdin that holds anything but blanks or a `#` comment."""
    for line in data.lstrip(codecs.BOM_UTF8).splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(b"#"):
            return stripped
    return b""


def _guess(sample: bytes) -> str | None:
    """The encoding `sample` (not UTF-8) most likely is: a one-byte Western encoding when its
    non-ASCII bytes stand mostly alone (é between ASCII letters), else the first multi-byte
    encoding it decodes in; None when there is no telling."""
    sample = sample[: sample.rfind(b"\n") + 1] or sample  # whole lines: no character cut
    runs = re.findall(rb"[\x80-\xff]+", sample)
    if not runs:
        return None
    if 2 * sum(len(run) == 1 for run in runs) > len(runs):
        try:
            sample.decode("cp1252")
        except UnicodeDecodeError:
            return "latin-1"
        return "cp1252"
    for candidate in _GUESSES:
        try:
            sample.decode(candidate)
        except UnicodeDecodeError:
            continue
        return candidate
    return None
