"""How the size (aspect ratio and tier) of a request travels, per `SizeStyle`."""

from __future__ import annotations

from typing import Any

from .._exceptions import ConfigurationError
from .._models import ImageRequest
from .._sizes import base_model, pixels, tier_of
from ._base import SIZE_STYLES, SizeStyle

__all__ = ["check_style", "model_and_size"]


def check_style(style: str, allowed: tuple[str, ...], dialect: str) -> SizeStyle:
    if style not in SIZE_STYLES or style not in allowed:
        raise ConfigurationError(
            f"size_style for the {dialect} dialect is one of {', '.join(allowed)}, not {style!r}"
        )
    return style


def model_and_size(request: ImageRequest, style: SizeStyle) -> tuple[str, dict[str, Any]]:
    """The model name to send and the body fields that carry the size, in `style`.

    Styles that carry the tier themselves (`image_config`, `google`) send the base model name;
    the others keep the name, whose `-2k`/`-4k` suffix is the tier.
    """
    tier = tier_of(request.model)
    if style == "ratio":
        return request.model, {} if request.size is None else {"size": request.size}
    if style == "pixels":
        if request.size is None and tier is None:
            return request.model, {}
        size = pixels(request.size or "1:1", tier or "1K")
        return request.model, {} if size is None else {"size": f"{size[0]}x{size[1]}"}
    config: dict[str, Any] = {}
    if request.size is not None:
        config["aspect_ratio"] = request.size
    if tier is not None:
        config["image_size"] = tier
    model = base_model(request.model) if tier is not None else request.model
    if style == "image_config":
        return model, {"image_config": config} if config else {}
    return model, {"extra_body": {"google": {"image_config": config}}} if config else {}
