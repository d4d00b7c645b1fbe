"""The fake relay's three dialects: how each reads a request.

Each reads the request a real relay of its kind takes (checking it as that relay would, with a
400 for what it refuses) into a `Generation`; `_answers` writes what comes back.
"""

from __future__ import annotations

import binascii
import re
import urllib.parse
from typing import Any, Literal, TypeAlias

import attrs

from .._sizes import TIERS, Tier, base_model, pixels, tier_of
from ._images import MODELS, RATIOS, parse_size
from ._wire import Invalid

__all__ = ["SIZE_HANDLING", "DialectName", "Generation", "SizeHandling", "fields", "read"]

DialectName: TypeAlias = Literal["images", "chat", "gemini"]
SizeHandling: TypeAlias = Literal["ratio", "pixels"]
SIZE_HANDLING: tuple[SizeHandling, ...] = ("ratio", "pixels")
_MAX_N = 4
_MAX_INPUT_IMAGES = 14
_MAX_INLINE_IMAGE_BYTES = 7 * 1024 * 1024
_DATA_URI = re.compile(r"data:image/(?:png|jpeg|webp|gif);base64,(.*)", re.DOTALL)


@attrs.frozen
class Generation:
    """A request the relay accepted: what to make, and how to send it back."""

    dialect: DialectName
    model: str
    prompt: str
    width: int
    height: int
    tier: Tier
    n: int
    inline: bool
    """Send the images' bytes (base64) rather than URLs to download."""


def fields(dialect: DialectName, body: Any, model: str | None) -> dict[str, Any]:
    """What a request asked, as the relay's records show it (whatever it turns out to be)."""
    if not isinstance(body, dict):
        return {}
    if dialect == "images":
        images = body.get("image")
        images = [images] if isinstance(images, str) else images
        return {
            "model": body.get("model"),
            "prompt": body.get("prompt"),
            "size": body.get("size"),
            "n": body.get("n"),
            "response_format": body.get("response_format"),
            "images": images if isinstance(images, list) else [],
        }
    if dialect == "chat":
        texts, images = _chat_content(body)
        return {
            "model": body.get("model"),
            "prompt": "\n".join(texts) or None,
            "size": _config_ratio(body) or body.get("size"),
            "n": body.get("n"),
            "images": images,
        }
    texts, images = _gemini_parts(body)
    config = body.get("generationConfig")
    image_config = config.get("imageConfig") if isinstance(config, dict) else None
    ratio = image_config.get("aspectRatio") if isinstance(image_config, dict) else None
    count = config.get("candidateCount") if isinstance(config, dict) else None
    return {
        "model": model,
        "prompt": "\n".join(texts) or None,
        "size": ratio,
        "n": count,
        "images": images,
    }


def read(
    dialect: DialectName,
    body: Any,
    model: str | None,
    *,
    models: frozenset[str],
    sizes: SizeHandling,
    urls: bool,
) -> Generation:
    """The generation `body` asks for; Invalid (a 400) when this relay would refuse it."""
    if not isinstance(body, dict):
        raise Invalid("invalid_json", "The request body must be a JSON object.")
    seen = fields(dialect, body, model)
    model = seen["model"]
    if model is None:
        raise Invalid("missing_model", "You must provide a model parameter.")
    known = models | {base_model(m) for m in models}
    if not isinstance(model, str) or model not in known:
        raise Invalid("invalid_model", f"The model {model!r} does not exist.")
    prompt = seen["prompt"]
    if prompt is None:
        raise Invalid("missing_prompt", "You must provide a prompt parameter.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Invalid("invalid_prompt", "prompt must be a non-empty string.")
    n = 1 if seen["n"] is None else seen["n"]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= _MAX_N:
        raise Invalid("invalid_n", f"n must be an integer from 1 to {_MAX_N}.")
    if dialect == "images" and body.get("image") is not None and not seen["images"]:
        raise Invalid("invalid_image", "image must be a string or an array of strings.")
    _check_images(seen["images"])
    width, height, tier = _size(dialect, body, model, sizes)
    inline = (
        body.get("response_format") == "b64_json"
        if dialect == "images"
        else dialect == "gemini" or not urls
    )
    if dialect == "images" and body.get("response_format") not in (None, "url", "b64_json"):
        raise Invalid("invalid_response_format", "response_format must be 'url' or 'b64_json'.")
    return Generation(dialect, model, prompt, width, height, tier, n, inline)


def _size(
    dialect: DialectName, body: dict[str, Any], model: str, sizes: SizeHandling
) -> tuple[int, int, Tier]:
    """The pixel size and tier of the answer. A relay that takes `ratio`s reads a ratio, a
    pixel size, or an image config, and the tier from the config or the model's name; one that
    takes only `pixels` reads a pixel size and answers 1:1 at 1K for anything else."""
    size = body.get("size") if dialect != "gemini" else None
    try:
        ratio, tier = parse_size(size) if size is not None else ("1:1", None)
    except (ValueError, AttributeError):
        raise Invalid("invalid_size", f"size must be one of {', '.join(RATIOS)}.") from None
    if sizes == "pixels":
        if tier is None:  # a ratio, or no size: dropped without a word, as LiteLLM does
            ratio, tier = "1:1", "1K"
    else:
        config_ratio, config_tier = _config_ratio(body), _config_tier(body)
        if config_ratio is not None:
            if config_ratio not in RATIOS:
                raise Invalid("invalid_size", f"aspect ratio must be one of {', '.join(RATIOS)}.")
            ratio = config_ratio
        tier = config_tier or tier or tier_of(model) or MODELS.get(model) or "1K"
    found = pixels(ratio, tier)
    assert found is not None
    return found[0], found[1], tier


def _config(body: dict[str, Any]) -> dict[str, Any]:
    """The image config a body carries: OpenRouter's, new-api's (under extra_body.google) or
    Google's, in snake_case or camelCase."""
    config = body.get("generationConfig")
    for found in (
        body.get("image_config"),
        _dig(body, "extra_body", "google", "image_config"),
        config.get("imageConfig") if isinstance(config, dict) else None,
    ):
        if isinstance(found, dict):
            return found
    return {}


def _config_ratio(body: dict[str, Any]) -> str | None:
    config = _config(body)
    value = config.get("aspect_ratio", config.get("aspectRatio"))
    return value if isinstance(value, str) else None


def _config_tier(body: dict[str, Any]) -> Tier | None:
    config = _config(body)
    value = config.get("image_size", config.get("imageSize"))
    if value is None:
        return None
    if value not in TIERS:
        raise Invalid("invalid_image_size", "image size must be 1K, 2K or 4K (uppercase K).")
    return value  # type: ignore[no-any-return]  # one of TIERS


def _dig(doc: Any, *keys: str) -> Any:
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _chat_content(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    images: list[str] = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            url = _dig(part, "image_url", "url") or part.get("image_url")
            if part.get("type") == "image_url" and isinstance(url, str):
                images.append(url)
    return texts, images


def _gemini_parts(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    images: list[str] = []
    contents = body.get("contents")
    for content in contents if isinstance(contents, list) else []:
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            inline = part.get("inlineData", part.get("inline_data"))
            if isinstance(inline, dict):
                mime = inline.get("mimeType", inline.get("mime_type"))
                images.append(f"data:{mime};base64,{inline.get('data')}")
            file = part.get("fileData", part.get("file_data"))
            if isinstance(file, dict):
                images.append(str(file.get("fileUri", file.get("file_uri"))))
    return texts, images


def _check_images(images: list[Any]) -> None:
    if len(images) > _MAX_INPUT_IMAGES:
        raise Invalid("too_many_images", f"At most {_MAX_INPUT_IMAGES} input images.")
    for image in images:
        _check_image(image)


def _check_image(image: Any) -> None:
    if not isinstance(image, str):
        raise Invalid("invalid_image", "Each image must be a string.")
    if image.startswith("data:"):
        match = _DATA_URI.fullmatch(image)
        if match is None:
            raise Invalid(
                "invalid_image", "A data URI must be data:image/<png|jpeg|webp|gif>;base64,..."
            )
        try:
            decoded = binascii.a2b_base64(match.group(1), strict_mode=True)
        except binascii.Error:
            raise Invalid("invalid_image", "The data URI holds invalid base64.") from None
        if not decoded:
            raise Invalid("invalid_image", "The data URI holds no data.")
        if len(decoded) > _MAX_INLINE_IMAGE_BYTES:
            raise Invalid("image_too_large", "An inline image may be at most 7 MB.")
        return
    parts = urllib.parse.urlsplit(image)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Invalid("invalid_image", "Each image must be an http(s) URL or a data URI.")
