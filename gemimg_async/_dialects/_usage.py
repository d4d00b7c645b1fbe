"""Token counts as relays report them: OpenAI's `usage` and Google's `usageMetadata`."""

from __future__ import annotations

from typing import Any

from .._models import Usage

__all__ = ["usage_of", "usage_of_google"]


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def usage_of(doc: Any) -> Usage | None:
    """Chat's `usage` (prompt/completion tokens, image tokens in the details) or the images
    API's (input/output tokens)."""
    if not isinstance(doc, dict):
        return None
    details = doc.get("completion_tokens_details")
    output_details = doc.get("output_tokens_details")
    image = next(
        (
            _count(d.get("image_tokens"))
            for d in (details, output_details)
            if isinstance(d, dict) and _count(d.get("image_tokens")) is not None
        ),
        None,
    )
    usage = Usage(
        input_tokens=_count(doc.get("prompt_tokens", doc.get("input_tokens"))),
        output_tokens=_count(doc.get("completion_tokens", doc.get("output_tokens"))),
        image_tokens=image,
        total_tokens=_count(doc.get("total_tokens")),
    )
    return None if usage == Usage() else usage


def usage_of_google(doc: Any) -> Usage | None:
    """Google's `usageMetadata`: image tokens from `candidatesTokensDetails[modality=IMAGE]`."""
    if not isinstance(doc, dict):
        return None
    details = doc.get("candidatesTokensDetails")
    image = None
    if isinstance(details, list):
        counts = [
            _count(d.get("tokenCount"))
            for d in details
            if isinstance(d, dict) and d.get("modality") == "IMAGE"
        ]
        image = sum(c for c in counts if c is not None) if counts else None
    usage = Usage(
        input_tokens=_count(doc.get("promptTokenCount")),
        output_tokens=_count(doc.get("candidatesTokenCount")),
        image_tokens=image,
        total_tokens=_count(doc.get("totalTokenCount")),
    )
    return None if usage == Usage() else usage
