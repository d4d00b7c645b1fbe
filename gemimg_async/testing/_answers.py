"""The fake relay's answers in each dialect, shaped as real relays write them.

`data[i].b64_json | url` (images); `message.images`, Markdown in `message.content` or content
parts (chat); `candidates[i].content.parts` with ``"thought": true`` parts for drafts (gemini).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import attrs

from .._sizes import base_model
from ._dialects import DialectName, Generation
from ._faults import Fault, Quirk
from ._images import ImageKey, b64, image, palette
from ._wire import PLACEHOLDER, item_b64, item_url

__all__ = ["ChatStyle", "Picture", "Rendered", "refusal", "render", "write"]

ChatStyle: TypeAlias = Literal["images", "markdown", "parts"]
_TOKENS = {"1K": 1120, "2K": 1120, "4K": 2000}


@attrs.frozen
class Picture:
    """One image to put in an answer: its URL, or None for its base64 (a `PLACEHOLDER` in the
    document until it is framed)."""

    url: str | None = None
    draft: bool = False


@attrs.frozen
class Rendered:
    """The pictures of an answer, and the base64 of those sent inline, in order."""

    pictures: tuple[Picture, ...]
    payloads: tuple[bytes, ...]


async def render(
    generation: Generation,
    fault: Fault | None,
    *,
    style: Literal["gradient", "noise"],
    link: Callable[[ImageKey], str],
    c2pa: bool = False,
) -> Rendered:
    """The images of an answer: `n` (fewer with `Fault.fewer_images`), each after its drafts
    (`Fault.drafts`), as base64 or as URLs from `link`; with `c2pa`, each carrying a `caBX`."""
    count = generation.n
    if fault is not None and fault.kind == "fewer_images":
        count = min(count, fault.count)
    drafts = fault.count if fault is not None and fault.kind == "drafts" else 0
    quirk = fault.quirk_name if fault is not None else None
    inline = generation.inline or quirk in ("b64_when_url_asked", "data_uri_in_url")
    pictures: list[Picture] = []
    payloads: list[bytes] = []
    for number in range(count):
        shade = 0 if style == "noise" else palette(generation.prompt, number)
        key = ImageKey(generation.width, generation.height, style, shade, c2pa)
        for draft in [True] * drafts + [False]:
            if inline:
                payloads.append(await b64(await image(key)))
                pictures.append(Picture(draft=draft))
            else:
                pictures.append(Picture(link(key), draft=draft))
    return Rendered(tuple(pictures), tuple(payloads))


def write(
    generation: Generation,
    pictures: Sequence[Picture],
    quirk: Quirk | None,
    *,
    chat_style: ChatStyle,
) -> Any:
    """The answer's document, a `PLACEHOLDER` string where each inline picture's base64 goes
    (in order): drafts first, as relays that flatten them send them."""
    finals = sum(not p.draft for p in pictures)
    if generation.dialect == "images":
        items = [
            item_b64(quirk) if picture.url is None else item_url(quirk, picture.url)
            for picture in pictures
        ]
        return {"created": int(time.time()), "data": items, **_usage(generation, finals, "images")}
    if generation.dialect == "chat":
        return _chat_answer(generation, pictures, chat_style, finals)
    return _gemini_answer(generation, pictures, quirk, finals)


def _data_uri(picture: Picture) -> str:
    return picture.url if picture.url is not None else f"data:image/png;base64,{PLACEHOLDER}"


def _chat_answer(
    generation: Generation, pictures: Sequence[Picture], style: ChatStyle, finals: int
) -> dict[str, Any]:
    said = "Here is the image you asked for."
    message: dict[str, Any] = {"role": "assistant"}
    if style == "images":
        message["content"] = said
        message["images"] = [
            {"type": "image_url", "image_url": {"url": _data_uri(p)}, "index": 0} for p in pictures
        ]
    elif style == "markdown":
        lines = [f"![image]({_data_uri(p)})" for p in pictures]
        lines.insert(len(lines) - 1 if lines else 0, said)
        message["content"] = "\n".join(lines)
    else:
        message["content"] = [{"type": "text", "text": said}] + [
            {"type": "image_url", "image_url": {"url": _data_uri(p)}} for p in pictures
        ]
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": generation.model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
        **_usage(generation, finals, "chat"),
    }


def _gemini_answer(
    generation: Generation, pictures: Sequence[Picture], quirk: Quirk | None, finals: int
) -> dict[str, Any]:
    inline, mime = (
        ("inline_data", "mime_type") if quirk == "snake_case" else ("inlineData", "mimeType")
    )
    candidates: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for picture in pictures:
        data = {inline: {mime: "image/png", "data": PLACEHOLDER}}
        if picture.draft:
            parts.append(
                {"thought": True, **data} if quirk == "thought_first" else {**data, "thought": True}
            )
            continue
        parts += [
            {"text": "Here is the image you asked for."},
            {**data, "thoughtSignature": "c2ln"},
        ]
        candidates.append(
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": "STOP",
                "index": len(candidates),
            }
        )
        parts = []
    return {
        "candidates": candidates,
        "modelVersion": base_model(generation.model),
        "responseId": "fake-response",
        **_usage(generation, finals, "gemini"),
    }


def _usage(generation: Generation, finals: int, dialect: DialectName) -> dict[str, Any]:
    images = _TOKENS[generation.tier] * finals
    prompt = max(1, len(generation.prompt) // 4)
    if dialect == "images":
        return {}
    if dialect == "chat":
        return {
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": images + 10,
                "total_tokens": prompt + images + 10,
                "completion_tokens_details": {"image_tokens": images, "text_tokens": 10},
            }
        }
    return {
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": images + 10,
            "totalTokenCount": prompt + images + 10,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": images}],
        }
    }


def refusal(dialect: DialectName, fault: Fault) -> tuple[int, Mapping[str, Any]]:
    """The status and document of a refusal (HTTP 200, no image) or a blocked prompt."""
    reason = fault.reason or "IMAGE_SAFETY"
    if fault.kind == "blocked":
        if dialect == "gemini":
            return 200, {
                "promptFeedback": {"blockReason": reason},
                "usageMetadata": {"promptTokenCount": 9},
            }
        said = f"request blocked by Gemini API: {reason}"
        return 400, {"error": {"message": said, "type": "prompt_blocked", "code": "prompt_blocked"}}
    if dialect == "images":
        return 200, {"created": int(time.time()), "data": []}
    if dialect == "chat":
        message = {"role": "assistant", "content": ""}
        return 200, {
            "choices": [{"index": 0, "finish_reason": "content_filter", "message": message}]
        }
    candidate = {
        "finishReason": reason,
        "index": 0,
        "finishMessage": "Unable to show the generated image.",
    }
    return 200, {"candidates": [candidate], "usageMetadata": {"promptTokenCount": 9}}
