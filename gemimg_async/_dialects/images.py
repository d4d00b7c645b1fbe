"""The images dialect: `POST /v1/images/generations`, `data[i].url | b64_json` (../api.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import attrs
import yarl

from .._exceptions import APIError
from .._jsonstream import ANY_INDEX, BASE64, URL_OR_DATA, Schema
from .._models import ImageRequest
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

__all__ = ["ImagesDialect", "json_image"]

_SCHEMA = Schema.of(
    {
        ("data", ANY_INDEX, "b64_json"): BASE64,
        ("data", ANY_INDEX, "url"): URL_OR_DATA,
        ("data", "b64_json"): BASE64,  # a relay that answers its one image as an object
        ("data", "url"): URL_OR_DATA,
    }
)
_ONLY_IMAGEN = re.compile(r"imagen|not supported model for image generation", re.IGNORECASE)


def json_image(ref: str) -> bytes:
    """`ref` as a JSON string; a data: URI's base64 (checked, so nothing to escape) is copied."""
    if not ref.startswith("data:"):
        return json.dumps(ref).encode()
    prefix, _, payload = ref.partition(",")
    return b"".join((json.dumps(prefix + ",").encode()[:-1], payload.encode("ascii"), b'"'))


def _style(_: object, __: object, value: str) -> None:
    check_style(value, ("ratio", "pixels", "image_config"), "images")


@attrs.frozen
class ImagesDialect:
    """OpenAI's image API as relays serve it for Gemini."""

    size_style: SizeStyle = attrs.field(default="ratio", validator=_style)
    name = "images"

    @property
    def schema(self) -> Schema:
        return _SCHEMA

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def outgoing(self, base: yarl.URL, request: ImageRequest, images: Sequence[str]) -> Outgoing:
        return Outgoing(join(base, "v1/images/generations"), self.body(request, images))

    def body(self, request: ImageRequest, images: Sequence[str]) -> bytes:
        """The JSON body, with `images` as the encoded inputs."""
        model, size = model_and_size(request, self.size_style)
        doc: dict[str, Any] = {"model": model, "prompt": request.prompt, **size}
        doc["response_format"] = request.response_format
        doc["n"] = request.n
        values = [json_image(image) for image in images]
        if values:
            doc["image"] = blob(0) if len(values) == 1 else [blob(i) for i in range(len(values))]
        return dump(merged(doc, request.extra_body), values)

    def read(self, doc: Any, request: ImageRequest, *, request_id: str | None) -> Reading:
        data = doc.get("data") if isinstance(doc, dict) else None
        items = [data] if isinstance(data, dict) else data if isinstance(data, list) else []
        found = [image for item in items if (image := _item_image(item)) is not None]
        if not found:
            raise _no_image(
                doc,
                request_id,
                why='the relay answered 200 with no image ("data": []): usually the model '
                "refused the prompt or an input image on safety grounds"
                if data == []
                else None,
            )
        usage = usage_of(doc.get("usage"))
        return Reading(tuple(keep_last(found, request.n)), created_of(doc), usage)

    def explain(self, error: APIError) -> None:
        if missing_endpoint(error) or _ONLY_IMAGEN.search(error.message):
            error.hint = (
                "this relay does not serve Gemini images on /v1/images/generations: "
                "try dialect='chat', or dialect='gemini' for Google's native API"
            )


def _item_image(item: Any) -> Found | None:
    """The image of one `data` item, whichever of its fields holds it."""
    if not isinstance(item, dict):
        return None
    return Found.of(item.get("b64_json")) or Found.of(item.get("url"))
