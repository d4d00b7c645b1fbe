"""Where an image came from: the fields written into its PNG text chunks, or into a sidecar.

Each field has a PNG keyword (the registered `Description`, `Software` and `Creation Time` where
one fits, so that other tools show them) and a JSON name for sidecars. Values are text: prompts in
any language, which PNG's `iTXt` chunks carry as UTF-8.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.metadata
from collections.abc import Mapping
from typing import Any

import attrs

from ._sizes import Asked, Delivered

__all__ = ["KEYWORDS", "Provenance", "software"]

KEYWORDS: Mapping[str, str] = {
    "prompt": "Description",
    "model": "Model",
    "asked": "Size Asked",
    "delivered": "Size Delivered",
    "job_id": "Job Id",
    "request_id": "Request Id",
    "idempotency_key": "Idempotency Key",
    "created": "Creation Time",
    "software": "Software",
}
"""Each field's PNG keyword, in the order they are written."""
_FIELDS = {keyword: name for name, keyword in KEYWORDS.items()}


@functools.cache
def software() -> str:
    """`gemimg-async {version}`: the library that wrote a file (read once: reading a package's
    metadata scans the path, half a millisecond that every answer would otherwise cost the
    loop)."""
    try:
        return f"gemimg-async {importlib.metadata.version('gemimg-async')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        return "gemimg-async"


@functools.lru_cache(maxsize=64)  # a client's few asks
def _said(asked: Asked) -> str:
    return str(asked)


@functools.lru_cache(maxsize=4)  # images saved in the same second
def _utc(seconds: int) -> str:
    """Unix seconds as UTC ISO 8601: `2026-11-27T14:05:09Z`."""
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"provenance fields are strings, not {value!r:.40}")  # noqa: TRY004
    return value


@attrs.frozen(kw_only=True)
class Provenance:
    """What an image says of itself: the prompt and model that made it, the size asked and
    delivered, the job, request and idempotency key, when, and by which library version."""

    prompt: str | None = attrs.field(default=None, converter=_text)
    model: str | None = attrs.field(default=None, converter=_text)
    asked: str | None = attrs.field(default=None, converter=_text)
    """The tier and ratio asked: `4K 16:9 (5504x3072)`."""
    delivered: str | None = attrs.field(default=None, converter=_text)
    """The pixel size made and the tier it was judged: `1376x768 (1K, smaller)`."""
    job_id: str | None = attrs.field(default=None, converter=_text)
    request_id: str | None = attrs.field(default=None, converter=_text)
    idempotency_key: str | None = attrs.field(default=None, converter=_text)
    created: str | None = attrs.field(default=None, converter=_text)
    """UTC, ISO 8601: `2026-11-27T14:05:09Z`."""
    software: str | None = attrs.field(default=None, converter=_text)

    @classmethod
    def of(
        cls,
        *,
        prompt: str | None,
        model: str | None,
        asked: Asked | None = None,
        job_id: str | None = None,
        request_id: str | None = None,
        idempotency_key: str | None = None,
        created: float,
    ) -> Provenance:
        """The provenance of an image being saved: `created` is Unix time; the library version
        is this one's. `delivered` is filled in from the pixels (`with_size`)."""
        return cls(
            prompt=prompt,
            model=model,
            asked=None if asked is None else _said(asked),
            job_id=job_id,
            request_id=request_id,
            idempotency_key=idempotency_key,
            created=_utc(int(created)),
            software=software(),
        )

    def with_size(self, width: int, height: int, asked: Asked | None = None) -> Provenance:
        """This provenance with `delivered` judged from the pixel size against `asked` (kept as
        it is when already set)."""
        if self.delivered is not None:
            return self
        delivered = (
            f"{width}x{height}" if asked is None else str(Delivered.judge(asked, width, height))
        )
        return Provenance(  # not attrs.evolve: this runs for every image saved
            prompt=self.prompt,
            model=self.model,
            asked=self.asked,
            delivered=delivered,
            job_id=self.job_id,
            request_id=self.request_id,
            idempotency_key=self.idempotency_key,
            created=self.created,
            software=self.software,
        )

    def to_fields(self) -> dict[str, str]:
        """PNG keyword -> text, in `KEYWORDS` order; fields without a value left out."""
        return {
            keyword: value
            for name, keyword in KEYWORDS.items()
            if (value := getattr(self, name)) is not None
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Provenance | None:
        """The provenance a PNG's text chunks hold; None when they hold none of its fields."""
        found = {_FIELDS[k]: v for k, v in fields.items() if k in _FIELDS}
        return cls(**found) if found else None

    def to_json(self) -> dict[str, str]:
        """JSON name -> text (a sidecar's fields); fields without a value left out."""
        return {name: value for name in KEYWORDS if (value := getattr(self, name)) is not None}

    @classmethod
    def from_json(cls, doc: Any) -> Provenance:
        """From `to_json`'s object; unknown names are ignored, ValueError for a non-string."""
        if not isinstance(doc, Mapping):
            raise ValueError("provenance is a JSON object")  # noqa: TRY004 - one error for bad files
        return cls(**{name: doc[name] for name in KEYWORDS if name in doc})
