"""Pixel sizes: what a tier and an aspect ratio ask for, and what an image delivered.

Google's table for Gemini 3 Pro Image: 1K sizes per ratio below, 2K and 4K exactly twice and four
times them. A tier is judged by pixel count (1K is about 1 megapixel, 2K about 4, 4K about 16),
never by an exact long side: relays that silently answer 1K for a 4K request are the most common
complaint of this model's users.
"""

from __future__ import annotations

import functools
import math
from typing import Literal, TypeAlias

import attrs

__all__ = ["PIXELS_1K", "TIERS", "Asked", "Delivered", "Tier", "base_model", "pixels", "tier_of"]

Tier: TypeAlias = Literal["1K", "2K", "4K"]
TIERS: tuple[Tier, ...] = ("1K", "2K", "4K")
_SCALE = {"1K": 1, "2K": 2, "4K": 4}
_SUFFIXES: dict[str, Tier] = {"-2k": "2K", "-4k": "4K"}

PIXELS_1K: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}
"""Google's 1K pixel sizes per aspect ratio; 2K and 4K are x2 and x4."""
_RATIO_TOLERANCE = 0.05


@functools.lru_cache(maxsize=256)  # a few model names, asked of on every request
def tier_of(model: str) -> Tier | None:
    """The tier a model name asks for: `-2k`/`-4k` names, 1K for the base; None if unknown."""
    lower = model.lower()
    for suffix, tier in _SUFFIXES.items():
        if lower.endswith(suffix):
            return tier
    return "1K" if "gemini-3-pro-image" in lower else None


def base_model(model: str) -> str:
    """The model name without its `-2k`/`-4k` tier suffix (native APIs take the tier apart)."""
    lower = model.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix):
            return model[: -len(suffix)]
    return model


def pixels(ratio: str, tier: Tier) -> tuple[int, int] | None:
    """Google's pixel size for `ratio` at `tier`; None for a ratio outside its table."""
    size = PIXELS_1K.get(ratio)
    if size is None:
        return None
    return size[0] * _SCALE[tier], size[1] * _SCALE[tier]


def _parts(ratio: str) -> tuple[int, int]:
    w, _, h = ratio.partition(":")
    return int(w), int(h)


@attrs.frozen
class Asked:
    """What a request asked for: a tier (None for models of unknown tier) and a ratio (None:
    the relay's default)."""

    tier: Tier | None
    ratio: str | None

    @classmethod
    def of(cls, model: str, size: str | None) -> Asked:
        return _asked(model, size)

    @property
    def pixels(self) -> tuple[int, int] | None:
        """The pixel size Google gives for this ask, when the table knows it."""
        return None if self.tier is None else pixels(self.ratio or "1:1", self.tier)

    def __str__(self) -> str:
        parts = [self.tier or "?", self.ratio or "default ratio"]
        if self.pixels is not None and self.ratio is not None:
            parts.append(f"({self.pixels[0]}x{self.pixels[1]})")
        return " ".join(parts)


@attrs.frozen
class Delivered:
    """What an image turned out to be, judged against what was asked."""

    width: int
    height: int
    tier: Tier
    """The tier its pixel count is closest to."""
    smaller: bool
    """A lower tier than asked."""
    other_shape: bool
    """Another aspect ratio than asked (more than 5% off)."""

    @classmethod
    def judge(cls, asked: Asked, width: int, height: int) -> Delivered:
        return _judged(asked, width, height)

    @classmethod
    def _judge(cls, asked: Asked, width: int, height: int) -> Delivered:
        tier = _tier_by_pixels(width * height)
        smaller = asked.tier is not None and TIERS.index(tier) < TIERS.index(asked.tier)
        other_shape = False
        if asked.ratio is not None:
            wide, high = _parts(asked.ratio)
            other_shape = abs((width / height) / (wide / high) - 1) > _RATIO_TOLERANCE
        return cls(width, height, tier, smaller, other_shape)

    @property
    def as_asked(self) -> bool:
        return not self.smaller and not self.other_shape

    def __str__(self) -> str:
        notes = [
            n for n, on in (("smaller", self.smaller), ("other shape", self.other_shape)) if on
        ]
        return f"{self.width}x{self.height} ({self.tier}{', ' if notes else ''}{', '.join(notes)})"


@functools.lru_cache(maxsize=256)  # a values' cache: a few asks, fewer sizes, every request
def _asked(model: str, size: str | None) -> Asked:
    return Asked(tier_of(model), size)


@functools.lru_cache(maxsize=256)
def _judged(asked: Asked, width: int, height: int) -> Delivered:
    return Delivered._judge(asked, width, height)  # noqa: SLF001 - its own cache


def _tier_by_pixels(count: int) -> Tier:
    """The tier whose pixel count (1, 4 or 16 megapixels) is nearest, on a log scale."""
    megapixels = count / 1_048_576
    return min(
        TIERS, key=lambda tier: abs(math.log2(max(megapixels, 1e-9)) - 2 * TIERS.index(tier))
    )
