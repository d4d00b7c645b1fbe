"""The images dialect: `POST /v1/images/generations`, `data[i].url | b64_json` (../api.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
import yarl

from .._exceptions import APIError, MalformedResponseError, RefusalError
from .._jsonstream import Diverted, ImageStreamParser
from .._models import ImageRequest
from .._status import document_error
from ._base import Found, Outgoing, Reading, join

__all__ = ["ImagesDialect", "json_image"]


def json_image(ref: str) -> bytes:
    """`ref` as a JSON string; a data: URI's base64 (checked, so nothing to escape) is copied."""
    if not ref.startswith("data:"):
        return json.dumps(ref).encode()
    prefix, _, payload = ref.partition(",")
    return b"".join((json.dumps(prefix + ",").encode()[:-1], payload.encode("ascii"), b'"'))


@attrs.frozen
class ImagesDialect:
    """OpenAI's image API as relays serve it for Gemini."""

    name = "images"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def outgoing(self, base: yarl.URL, request: ImageRequest, images: Sequence[str]) -> Outgoing:
        return Outgoing(join(base, "v1/images/generations"), body(request, images))

    def parser(self) -> ImageStreamParser:
        return ImageStreamParser()

    def read(self, doc: Any, *, request_id: str | None) -> Reading:
        found = tuple(_images_in(doc))
        if not found:
            raise _no_image_error(doc, request_id)
        created = doc.get("created") if isinstance(doc, dict) else None
        if not isinstance(created, int) or isinstance(created, bool):
            created = None
        return Reading(found, created)


def body(request: ImageRequest, images: Sequence[str]) -> bytes:
    """The JSON body, with `images` as the encoded inputs.

    Joined as bytes rather than dumped: inline images are checked base64, megabytes each, and
    `json.dumps` would scan them all on the event loop.
    """
    doc: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
    if request.size is not None:
        doc["size"] = request.size
    doc["response_format"] = request.response_format
    doc["n"] = request.n
    head = json.dumps(doc, ensure_ascii=False).encode()
    if not images:
        return head
    values = [json_image(image) for image in images]
    image = values[0] if len(values) == 1 else b"[" + b",".join(values) + b"]"
    return b"".join((head[:-1], b', "image": ', image, b"}"))


def _images_in(doc: Any) -> list[Found]:
    """The images of `doc["data"]`, whichever field of each item holds one."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if isinstance(data, dict):
        data = [data]  # a relay that answers one image as an object
    if not isinstance(data, list):
        return []
    found = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            continue
        streamed = next(
            (
                value
                for key in ("b64_json", "url")
                if isinstance(value := item.get(key), Diverted) and value.size
            ),
            None,
        )
        url = item.get("url")
        inline = next(
            (v for k in ("b64_json", "url") if isinstance(v := item.get(k), str) and v), None
        )
        if streamed is not None:
            found.append(Found(index, path=(streamed.index, streamed.key)))
        elif isinstance(url, str) and url.startswith(("http://", "https://")):
            found.append(Found(index, url=url))
        elif inline is not None:  # an image where streaming did not look
            found.append(Found(index, inline=inline))
    return found


def _no_image_error(doc: Any, request_id: str | None) -> APIError:
    """What a 200 answer without an image means: a refusal, an error body, or garbage."""
    if isinstance(doc, dict):
        message, code = document_error(doc)
        if message is not None or "error" in doc:
            return RefusalError(
                f"the relay answered 200 with an error: {message or doc.get('error')}",
                status=200,
                code=code,
                request_id=request_id,
            )
        if doc.get("data") == []:
            return RefusalError(
                'the relay answered 200 with no image ("data": []): usually the model refused '
                "the prompt or an input image on safety grounds",
                status=200,
                request_id=request_id,
            )
    return MalformedResponseError(
        f"the relay answered 200 without an image: {str(doc)[:200]}",
        status=200,
        request_id=request_id,
    )
