"""The chat dialect: `POST /v1/chat/completions` with the image in the message (LiteLLM,
OpenRouter, new-api). The image comes back in `message.images[i].image_url.url`, as Markdown in
`message.content` (`![image](data:image/png;base64,...)`), or in a list of content parts."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import yarl

from .._exceptions import APIError
from .._jsonstream import ANY_INDEX, MARKDOWN, STREAM_REF, URL_OR_DATA, DivertedText, Schema
from .._models import ImageRequest
from .._status import printable
from ._base import (
    Found,
    Outgoing,
    Reading,
    SizeStyle,
    blob,
    created_of,
    dump,
    join,
    keep_last,
    merged,
    missing_endpoint,
)
from ._base import no_image as _no_image
from ._sizing import check_style, model_and_size
from ._usage import usage_of
from .images import json_image

__all__ = ["ChatDialect"]

_MESSAGE = ("choices", ANY_INDEX, "message")
_SCHEMA = Schema.of(
    {
        (*_MESSAGE, "images", ANY_INDEX, "image_url", "url"): URL_OR_DATA,
        (*_MESSAGE, "images", ANY_INDEX, "image_url"): URL_OR_DATA,
        (*_MESSAGE, "images", ANY_INDEX, "url"): URL_OR_DATA,
        (*_MESSAGE, "image", "url"): URL_OR_DATA,  # older LiteLLM
        (*_MESSAGE, "content"): MARKDOWN,
        (*_MESSAGE, "content", ANY_INDEX, "text"): MARKDOWN,
        (*_MESSAGE, "content", ANY_INDEX, "image_url", "url"): URL_OR_DATA,
        (*_MESSAGE, "content", ANY_INDEX, "image_url"): URL_OR_DATA,
    }
)
# An image in a text: one streamed out of it, or a Markdown image of an http(s) URL.
_IN_TEXT = re.compile(
    rf"!\[[^\]\n]*\]\(\s*(?:{STREAM_REF}(\d+)|(https?://[^\s)]+))\s*\)|{STREAM_REF}(\d+)"
)


def _style(_: object, __: object, value: str) -> None:
    check_style(value, ("image_config", "google", "ratio", "pixels"), "chat")


@attrs.frozen
class ChatDialect:
    """Chat completions with image output. `size_style` says how the size travels: the
    default `image_config` is OpenRouter's; new-api's chat wants `google`."""

    size_style: SizeStyle = attrs.field(default="image_config", validator=_style)
    modalities: tuple[str, ...] = ("image", "text")
    name = "chat"

    @property
    def schema(self) -> Schema:
        return _SCHEMA

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def outgoing(self, base: yarl.URL, request: ImageRequest, images: Sequence[str]) -> Outgoing:
        model, size = model_and_size(request, self.size_style)
        content: list[Any] = [{"type": "text", "text": request.prompt}]
        content += [
            {"type": "image_url", "image_url": {"url": blob(i)}} for i in range(len(images))
        ]
        doc: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "modalities": list(self.modalities),
            **size,
        }
        if request.n > 1:
            doc["n"] = request.n
        body = dump(merged(doc, request.extra_body), [json_image(image) for image in images])
        return Outgoing(join(base, "v1/chat/completions"), body)

    def read(self, doc: Any, request: ImageRequest, *, request_id: str | None) -> Reading:
        choices = doc.get("choices") if isinstance(doc, dict) else None
        choices = [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []
        found: list[Found] = []
        texts: list[str] = []
        for choice in choices:
            message = choice.get("message")
            if isinstance(message, dict):
                found += _message_images(message, texts)
        text = "\n".join(t for t in texts if t) or None
        if not found:
            reasons = {c.get("finish_reason") for c in choices}
            raise _refusal(doc, request_id, text, "content_filter" in reasons, bool(choices))
        usage = usage_of(doc.get("usage")) if isinstance(doc, dict) else None
        return Reading(tuple(keep_last(found, request.n)), created_of(doc), usage, text)

    def explain(self, error: APIError) -> None:
        if missing_endpoint(error):
            error.hint = (
                "this relay has no /v1/chat/completions: try dialect='images', "
                "or dialect='gemini' for Google's native API"
            )


def _message_images(message: dict[str, Any], texts: list[str]) -> list[Found]:
    """The images of one message, in order: those in its content, then its `images`."""
    found: list[Found] = []
    content = message.get("content")
    parts = content if isinstance(content, list) else [content]
    for part in parts:
        if isinstance(part, dict):
            image = part.get("image_url")
            image = image.get("url") if isinstance(image, dict) else image
            if (one := Found.of(image)) is not None:
                found.append(one)
            part = part.get("text")  # noqa: PLW2901 - a text part is read like a text
        found += _text_images(part, texts)
    listed = message.get("images")
    image = message.get("image")
    for item in [*(listed if isinstance(listed, list) else []), image]:
        value = item.get("image_url", item.get("url")) if isinstance(item, dict) else None
        value = value.get("url") if isinstance(value, dict) else value
        if (one := Found.of(value)) is not None:
            found.append(one)
    return found


def _text_images(text: Any, texts: list[str]) -> Iterator[Found]:
    """The images a content text holds (streamed data: URLs, Markdown https images), in order;
    what is left of the text goes to `texts`."""
    if isinstance(text, DivertedText):
        images, plain = text.images, text.text
    elif isinstance(text, str):
        images, plain = (), text
    else:
        return
    for match in _IN_TEXT.finditer(plain):
        number = match[1] or match[3]
        if number is None:
            yield Found(url=match[2])
        elif int(number) < len(images) and (one := Found.of(images[int(number)])) is not None:
            yield one
    texts.append(printable(_IN_TEXT.sub("", plain)).strip())


def _refusal(
    doc: Any, request_id: str | None, text: str | None, filtered: bool, answered: bool
) -> APIError:
    if filtered:
        why = "the relay answered 200 with no image (finish_reason content_filter): the model "
        why += "refused the prompt or an input image on safety grounds"
        return _no_image(doc, request_id, why=why, code="content_filter")
    if text:
        why = f"the model answered without an image: {text[:300]}"
        return _no_image(doc, request_id, why=why)
    empty = "the relay answered 200 with an empty message and no image"
    return _no_image(doc, request_id, why=empty if answered else None)
