"""The gemini dialect: Google's native `POST {base}/v1beta/models/{model}:generateContent`, as
Google and the relays that pass it through serve it. Tiers are `imageSize` on the base model;
parts marked `"thought": true` are the model's drafts, never the result."""

from __future__ import annotations

import mimetypes
import urllib.parse
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import yarl

from .._exceptions import APIError
from .._jsonstream import ANY_INDEX, BASE64, Schema
from .._models import ImageRequest
from .._sizes import base_model, tier_of
from .._status import printable
from ._base import Found, Outgoing, Reading, blob, dump, join, keep_last, merged, missing_endpoint
from ._base import no_image as _no_image
from ._usage import usage_of_google

__all__ = ["GeminiDialect"]

_PARTS = ("candidates", ANY_INDEX, "content", "parts", ANY_INDEX)
_SCHEMA = Schema.of(
    {(*_PARTS, "inlineData", "data"): BASE64, (*_PARTS, "inline_data", "data"): BASE64}
)


@attrs.frozen
class GeminiDialect:
    """Google's generateContent. The key goes in `x-goog-api-key`, or, for relays that want
    it, in a Bearer header (`auth="bearer"`)."""

    auth: Literal["x-goog-api-key", "bearer"] = attrs.field(
        default="x-goog-api-key", validator=attrs.validators.in_(("x-goog-api-key", "bearer"))
    )
    modalities: tuple[str, ...] = ("IMAGE",)
    name = "gemini"

    @property
    def schema(self) -> Schema:
        return _SCHEMA

    def auth_headers(self, api_key: str) -> dict[str, str]:
        if self.auth == "bearer":
            return {"Authorization": f"Bearer {api_key}"}
        return {"x-goog-api-key": api_key}

    def outgoing(self, base: yarl.URL, request: ImageRequest, images: Sequence[str]) -> Outgoing:
        model = urllib.parse.quote(base_model(request.model), safe="")
        parts: list[dict[str, Any]] = [{"text": request.prompt}]
        blobs: list[bytes] = []
        for image in images:
            if image.startswith("data:"):
                head, _, payload = image.partition(",")
                media_type = head.removeprefix("data:").partition(";")[0]
                parts.append({"inlineData": {"mimeType": media_type, "data": blob(len(blobs))}})
                blobs.append(b'"' + payload.encode("ascii") + b'"')
            else:
                parts.append({"fileData": {"mimeType": _guess_type(image), "fileUri": image}})
        config: dict[str, Any] = {"responseModalities": list(self.modalities)}
        image_config: dict[str, str] = {}
        if request.size is not None:
            image_config["aspectRatio"] = request.size
        if (tier := tier_of(request.model)) is not None:
            image_config["imageSize"] = tier
        if image_config:
            config["imageConfig"] = image_config
        if request.n > 1:
            config["candidateCount"] = request.n
        doc = {"contents": [{"role": "user", "parts": parts}], "generationConfig": config}
        body = dump(merged(doc, request.extra_body), blobs)
        return Outgoing(join(base, f"v1beta/models/{model}:generateContent"), body)

    def read(self, doc: Any, request: ImageRequest, *, request_id: str | None) -> Reading:
        candidates = doc.get("candidates") if isinstance(doc, dict) else None
        candidates = (
            [c for c in candidates if isinstance(c, dict)] if isinstance(candidates, list) else []
        )
        found: list[Found] = []
        texts: list[str] = []
        for candidate in candidates:
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts if isinstance(parts, list) else []:
                if isinstance(part, dict) and part.get("thought") is not True:
                    found += _part_images(part, texts)
        text = "\n".join(texts) or None
        if not found:
            raise _refusal(doc, candidates, request_id, text)
        usage = usage_of_google(doc.get("usageMetadata"))
        return Reading(tuple(keep_last(found, request.n)), None, usage, text)

    def explain(self, error: APIError) -> None:
        if missing_endpoint(error):
            error.hint = (
                "this relay has no v1beta/models/...:generateContent: try dialect='images' "
                "or dialect='chat'"
            )


def _guess_type(url: str) -> str:
    guessed, _ = mimetypes.guess_type(yarl.URL(url).path)
    return guessed if guessed and guessed.startswith("image/") else "image/png"


def _part_images(part: dict[str, Any], texts: list[str]) -> list[Found]:
    inline = part.get("inlineData", part.get("inline_data"))
    if isinstance(inline, dict) and (one := Found.of(inline.get("data"))) is not None:
        return [one]
    file = part.get("fileData", part.get("file_data"))
    if isinstance(file, dict):
        uri = file.get("fileUri", file.get("file_uri"))
        if isinstance(uri, str) and uri.startswith(("http://", "https://")):
            return [Found(url=uri)]
    if isinstance(part.get("text"), str) and part["text"].strip():
        texts.append(printable(part["text"]).strip())
    return []


def _refusal(
    doc: Any, candidates: list[dict[str, Any]], request_id: str | None, text: str | None
) -> APIError:
    """Why no image came: the prompt was blocked, a finish reason, or what the model said."""
    feedback = doc.get("promptFeedback") if isinstance(doc, dict) else None
    blocked = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if isinstance(blocked, str):
        why = f"the prompt was blocked ({printable(blocked)[:100]}): the model made no image"
        return _no_image(doc, request_id, why=why, code=blocked)
    for candidate in candidates:
        reason = candidate.get("finishReason")
        if isinstance(reason, str) and reason != "STOP":
            detail = candidate.get("finishMessage")
            why = f"the model made no image (finishReason {printable(reason)[:100]})"
            why += f": {printable(detail)[:500]}" if isinstance(detail, str) and detail else ""
            return _no_image(doc, request_id, why=why, code=reason)
    if text:
        return _no_image(doc, request_id, why=f"the model answered without an image: {text[:300]}")
    empty = isinstance(doc, dict) and "candidates" in doc
    return _no_image(
        doc, request_id, why="the relay answered 200 with no candidate" if empty else None
    )
