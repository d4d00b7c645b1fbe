"""Request and result values: frozen, validated on construction, and serialisable to JSON."""

from __future__ import annotations

import base64
import binascii
import enum
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias

import attrs

from ._base64 import encode
from ._config import MAX_INLINE_IMAGE_BYTES, MAX_INPUT_IMAGES
from ._exceptions import (
    InvalidCountError,
    InvalidImageError,
    InvalidModelError,
    InvalidPromptError,
    InvalidResponseFormatError,
    InvalidSizeError,
    TooManyImagesError,
    ValidationError,
)
from ._media import sniff

__all__ = [
    "ASPECT_RATIOS",
    "GeneratedImage",
    "ImageInput",
    "ImageRequest",
    "Model",
    "ResponseFormat",
    "Timings",
    "Usage",
    "check_stem",
    "data_uri",
    "image_media_type",
    "is_file_ref",
    "resolve_model",
]

ResponseFormat: TypeAlias = Literal["url", "b64_json"]
ImageInput: TypeAlias = "str | os.PathLike[str] | bytes"
"""An input image: an http(s) URL, a data: URI, a local file path, or the image's bytes."""

ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
"""The ratios the model documents; relays may turn any other into 1:1 without a word."""

_RESPONSE_FORMATS = ("url", "b64_json")
_SIZE = re.compile(r"\s*(\d{1,3})\s*[:xX\u00d7]\s*(\d{1,3})\s*")
_DATA_URI = re.compile(r"data:(image/[a-z0-9.+-]+)?(;[^,]*)?,", re.IGNORECASE)
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class Model(enum.StrEnum):
    """The three Gemini 3 Pro Image tiers relays serve. Any other model name passes through."""

    STANDARD = "gemini-3-pro-image-preview"
    RES_2K = "gemini-3-pro-image-preview-2k"
    RES_4K = "gemini-3-pro-image-preview-4k"


_ALIASES = {
    "standard": Model.STANDARD,
    "1k": Model.STANDARD,
    "2k": Model.RES_2K,
    "4k": Model.RES_4K,
}


def resolve_model(model: Model | str) -> str:
    """The full model name for a `Model`, an alias ("standard", "2k", "4k") or a full name."""
    if isinstance(model, Model):
        return model.value
    if not isinstance(model, str) or not model.strip():
        raise InvalidModelError(
            f"model must be a Model, a full model name or one of {sorted(_ALIASES)}, not {model!r}"
        )
    name = model.strip()
    alias = _ALIASES.get(name.lower())
    return alias.value if alias else name


def _normalize_size(size: str | None) -> str | None:
    if size is None:
        return None
    match = _SIZE.fullmatch(size) if isinstance(size, str) else None
    if not match or 0 in (int(match[1]), int(match[2])):
        raise InvalidSizeError(
            f"size must be an aspect ratio W:H such as '16:9' (one of {', '.join(ASPECT_RATIOS)}), "
            f"not {size!r}"
        )
    return f"{int(match[1])}:{int(match[2])}"


def _image_refs(images: ImageInput | Sequence[ImageInput] | None) -> tuple[str, ...]:
    if images is None or (isinstance(images, tuple) and not images):  # the default, at once
        return ()
    if isinstance(images, (str, bytes, os.PathLike)):
        images = [images]
    return tuple(_image_ref(image) for image in images)


def _image_ref(image: ImageInput) -> str:
    """An input as the string the request keeps: a URL, a data: URI or a file path."""
    if isinstance(image, bytes):
        return data_uri(image, source="the given bytes")
    if isinstance(image, os.PathLike):
        return os.fspath(image)
    if not isinstance(image, str) or not image:
        raise InvalidImageError(
            "each image must be an http(s) URL, a data: URI, a file path or bytes, "
            f"not {image!r:.80}"
        )
    if image.startswith("data:"):
        return _labelled_data_uri(image)
    return image


def is_file_ref(ref: str) -> bool:
    """Whether an image reference names a local file (read when the request is sent), rather
    than an http(s) URL or a data: URI (sent as they are)."""
    return not ref.startswith(("http://", "https://", "data:"))


def _extra_body(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A copy of `value` if it is a JSON object of JSON values; ValidationError otherwise."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValidationError(f"extra_body must be a JSON object, not {value!r:.80}")
    try:
        return dict(json.loads(json.dumps(value, allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"extra_body must hold JSON values only: {exc}") from exc


def check_stem(stem: str, *, what: str = "stem") -> str:
    """`stem` if it can name files inside a folder; ValidationError if it could escape it."""
    if not (isinstance(stem, str) and _ID.fullmatch(stem)):
        raise ValidationError(
            f"{what} must be 1-128 letters, digits, '.', '_' or '-', not starting with '.' "
            f"or '-': it names files. Got {stem!r:.140}"
        )
    return stem


def data_uri(data: bytes, *, source: str) -> str:
    """`data` as a data: URI, typed by its magic bytes. InvalidImageError when it is no image."""
    return f"data:{image_media_type(data, source=source)};base64,{encode(data).decode()}"


def image_media_type(data: bytes, *, source: str) -> str:
    """The media type of the image `data` holds; InvalidImageError when it is none, or too big
    to send inline."""
    if len(data) > MAX_INLINE_IMAGE_BYTES:
        raise InvalidImageError(
            f"{source} is {len(data) / 1e6:.1f} MB; the model takes inline images up to "
            f"{MAX_INLINE_IMAGE_BYTES / 1e6:.1f} MB: shrink it or pass a URL"
        )
    info = sniff(data[:64])
    if info is None:
        raise InvalidImageError(f"{source} is not a PNG, JPEG, WEBP or GIF image")
    return info.media_type


def _labelled_data_uri(uri: str) -> str:
    """`uri` checked to hold base64 of an image, and labelled with the type its bytes show."""
    match = _DATA_URI.match(uri)
    if not match or not (match[2] or "").lower().endswith("base64"):
        raise InvalidImageError(
            f"a data: URI image must look like 'data:image/png;base64,...', not {uri[:40]!r}"
        )
    if (len(uri) - match.end()) * 3 // 4 > MAX_INLINE_IMAGE_BYTES:
        raise InvalidImageError(
            f"a data: URI image holds over {MAX_INLINE_IMAGE_BYTES / 1e6:.1f} MB, the most the "
            "model takes inline: shrink it or pass a URL"
        )
    head = uri[match.end() : match.end() + 88]
    try:
        decoded = base64.b64decode(head[: len(head) // 4 * 4], validate=True)
    except binascii.Error as exc:
        raise InvalidImageError("a data: URI image does not hold valid base64") from exc
    info = sniff(decoded)
    if info is None:
        raise InvalidImageError("a data: URI image is not a PNG, JPEG, WEBP or GIF image")
    if match[1] == info.media_type:
        return uri
    return f"data:{info.media_type};base64,{uri[match.end() :]}"


def _visible(text: str) -> bool:
    """Whether `text` shows anything: a character that is neither whitespace nor a control or
    format character (NUL, zero-width space and joiners, word joiner, BOM)."""
    first = text[:1]
    if first.isprintable() and not first.isspace() and first:
        return True  # most prompts: their first character
    return any(char.isprintable() and not char.isspace() for char in text)


_REPR_MAX = 80


def _short(images: tuple[str, ...]) -> str:
    """Long data: URIs shortened, so a repr stays readable."""
    return repr(
        tuple(f"{ref[:32]}...({len(ref)} chars)" if len(ref) > _REPR_MAX else ref for ref in images)
    )


@attrs.frozen(kw_only=True)
class ImageRequest:
    """One generation to ask of the relay, validated before anything is sent.

    `images` keeps http(s) URLs and data: URIs as given and local paths as paths (read when the
    request is sent); bytes become a data: URI at once. `id` is yours: it names the saved files
    (`{id}_{i}.png`) and is echoed on results and outcomes, but never sent.
    """

    prompt: str = attrs.field(kw_only=False)
    model: str = attrs.field(default=Model.STANDARD.value, converter=resolve_model)
    size: str | None = attrs.field(default=None, converter=_normalize_size)
    n: int = 1
    images: tuple[str, ...] = attrs.field(default=(), converter=_image_refs, repr=_short)
    response_format: ResponseFormat = "url"
    id: str | None = None
    allow_any_size: bool = False
    idempotency_key: str | None = None
    """The Idempotency-Key to send; None gives each send a fresh one. Set it to resend a request
    that may have been billed: a relay that honours the header then bills it once."""
    extra_body: dict[str, Any] | None = attrs.field(default=None, converter=_extra_body)
    """Fields merged into the request body (objects key by key): what a relay adds of its own."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not _visible(self.prompt):
            raise InvalidPromptError(
                "prompt must hold something visible: it is empty once whitespace, NULs and "
                f"zero-width characters are left out (got {self.prompt!r:.40})"
            )
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise InvalidCountError(f"n must be a whole number of at least 1, not {self.n!r}")
        if self.size is not None and self.size not in ASPECT_RATIOS and not self.allow_any_size:
            raise InvalidSizeError(
                f"size {self.size!r} is not one of the documented ratios "
                f"({', '.join(ASPECT_RATIOS)}); relays may silently answer 1:1. "
                "Pass allow_any_size=True to send it anyway"
            )
        if self.response_format not in _RESPONSE_FORMATS:
            raise InvalidResponseFormatError(
                f"response_format must be 'url' or 'b64_json', not {self.response_format!r}"
            )
        if len(self.images) > MAX_INPUT_IMAGES:
            raise TooManyImagesError(
                f"{len(self.images)} input images given; the model takes at most {MAX_INPUT_IMAGES}"
            )
        if self.id is not None:
            check_stem(self.id, what="id")
        if self.idempotency_key is not None and not (
            isinstance(self.idempotency_key, str) and _HEADER_TOKEN.fullmatch(self.idempotency_key)
        ):
            raise ValidationError(
                "idempotency_key must be 1-255 printable ASCII characters without spaces, "
                f"not {self.idempotency_key!r:.80}"
            )

    def to_json(self) -> dict[str, Any]:
        """This request as a JSON-ready dict of the fields that differ from their defaults."""
        doc: dict[str, Any] = {"prompt": self.prompt}
        for field in attrs.fields(ImageRequest)[1:]:
            value = getattr(self, field.name)
            if value != field.default:
                doc[field.name] = list(value) if isinstance(value, tuple) else value
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageRequest:
        """A request from a JSON object with the field names above (`image` is taken too)."""
        fields = {f.name for f in attrs.fields(cls)}
        extra = set(doc) - fields - {"image"}
        if extra:
            raise ValueError(f"unknown field(s): {', '.join(sorted(extra))}")
        kwargs = dict(doc)
        if "image" in kwargs:
            kwargs["images"] = kwargs.pop("image")
        return cls(**kwargs)


@attrs.frozen
class GeneratedImage:
    """One image of a result: where it is (URL, bytes in memory, or a file) and what it is."""

    index: int
    url: str | None = None
    """The image host's URL, valid for about 24 hours; None when the relay sent the bytes."""
    data: bytes | None = attrs.field(
        default=None, repr=lambda d: f"<{len(d)} bytes>" if d else "None"
    )
    path: Path | None = None
    media_type: str | None = None
    width: int | None = None
    height: int | None = None
    byte_size: int | None = None


@attrs.frozen
class Usage:
    """Tokens the relay says a generation used (None where it did not say)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    image_tokens: int | None = None
    """Of the output: 1,120 per 1K or 2K image, 2,000 per 4K image for this model."""
    total_tokens: int | None = None


@attrs.frozen
class Timings:
    """Seconds spent per phase of one generation."""

    queued: float = 0.0
    """Waiting for a place in the client's pool and its rate limit."""
    generating: float = 0.0
    """From the first byte sent to the last byte of the relay's answer, retries included."""
    saving: float = 0.0
    """Downloading URLs and writing files after the answer."""

    @property
    def total(self) -> float:
        return self.queued + self.generating + self.saving
