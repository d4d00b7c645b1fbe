"""What images cost: a price table per tier, an estimate before sending, what a relay reports.

Google's list prices for Gemini 3 Pro Image are the default: $0.134 per 1K or 2K image and $0.24
per 4K image (1,120 and 2,000 output tokens at $120 per million), and about $0.0011 per input
image (560 input tokens at $2 per million). Relays price differently: `Prices.from_file` reads a
TOML or JSON table, in which every key left out keeps Google's figure::

    currency = "USD"
    "1K" = 0.134           # per image made, by tier (a model of unknown tier is priced as 1K)
    "2K" = 0.134
    "4K" = 0.24
    input_image = 0.0011   # per input image, for each image made
    [tokens]               # optional, per million tokens: prices the relay's `usage` counts
    input = 2.0
    output = 12.0
    image = 120.0          # output image tokens; the output price when left out

A `Cost` holds an estimate and, where the relay said what a call cost (LiteLLM's
`x-litellm-response-cost` header, or `usage` token counts priced by the file), the reported
figure; totals prefer the reported one. Amounts are `Decimal`s, so that a sum of many small prices
compares exactly with a cap.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import attrs

from ._exceptions import ConfigurationError
from ._models import ImageRequest, Usage
from ._sizes import TIERS, Tier, tier_of

__all__ = [
    "COST_HEADER",
    "DEFAULT_PRICES",
    "Cost",
    "Prices",
    "TokenPrices",
    "estimate",
    "header_cost",
    "money",
    "reported_cost",
    "usage_cost",
]

COST_HEADER = "x-litellm-response-cost"
"""The header in which LiteLLM proxies say what a call cost, in dollars."""
_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)


def _amount(value: Any, what: str) -> Decimal:
    """`value` as a non-negative finite Decimal; ConfigurationError naming `what` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ConfigurationError(f"{what} must be a number, not {value!r:.40}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ConfigurationError(f"{what} must be a number, not {value!r:.40}") from None
    if not amount.is_finite() or amount < 0:
        raise ConfigurationError(f"{what} must be a finite number of at least 0, not {value!r:.40}")
    return amount


def _optional_amount(value: Any, what: str) -> Decimal | None:
    return None if value is None else _amount(value, what)


def _input_tokens(value: Any) -> Decimal:
    return _amount(value, "tokens.input")


def _output_tokens(value: Any) -> Decimal:
    return _amount(value, "tokens.output")


def _image_tokens(value: Any) -> Decimal | None:
    return _optional_amount(value, "tokens.image")


def _input_image(value: Any) -> Decimal:
    return _amount(value, "input_image")


@attrs.frozen
class TokenPrices:
    """Prices per million tokens, to turn a relay's `usage` counts into a cost."""

    input: Decimal = attrs.field(converter=_input_tokens)
    output: Decimal = attrs.field(converter=_output_tokens)
    image: Decimal | None = attrs.field(default=None, converter=_image_tokens)
    """Output image tokens; None: priced as other output tokens."""

    def cost(self, usage: Usage) -> Decimal | None:
        """What `usage` costs; None when it says nothing of input or output tokens."""
        if usage.input_tokens is None and usage.output_tokens is None:
            return None
        output = usage.output_tokens or 0
        image = min(usage.image_tokens or 0, output) if self.image is not None else 0
        total = (usage.input_tokens or 0) * self.input + (output - image) * self.output
        total += image * (self.image or _ZERO)
        return total / _MILLION


def _tier_prices(value: Mapping[Tier, Any]) -> dict[Tier, Decimal]:
    prices = {tier: _amount(value[tier], tier) for tier in TIERS if tier in value}
    if set(prices) != set(TIERS):
        raise ConfigurationError(f"per_image needs a price for each of {', '.join(TIERS)}")
    return prices


@attrs.frozen
class Prices:
    """A price table: per image made by tier, per input image, and optionally per token."""

    per_image: Mapping[Tier, Decimal] = attrs.field(converter=_tier_prices)
    input_image: Decimal = attrs.field(converter=_input_image)
    tokens: TokenPrices | None = None
    currency: str = "USD"

    @classmethod
    def google(cls) -> Prices:
        """Google's public list prices for Gemini 3 Pro Image, in US dollars."""
        return cls(
            {"1K": Decimal("0.134"), "2K": Decimal("0.134"), "4K": Decimal("0.24")},
            Decimal("0.0011"),
        )

    @classmethod
    def from_json(cls, doc: Any, *, source: str = "prices") -> Prices:
        """A table from a parsed TOML or JSON object (see the module docstring); keys left out
        keep Google's prices. ConfigurationError naming `source` for anything else."""
        if not isinstance(doc, Mapping):
            raise ConfigurationError(f"{source}: expected a table of prices")
        tiers: dict[Tier, str] = {
            tier: key
            for key in doc
            for tier in TIERS
            if isinstance(key, str) and key.upper() == tier
        }
        unknown = set(doc) - set(tiers.values()) - {"currency", "input_image", "tokens"}
        if unknown:
            raise ConfigurationError(
                f"{source}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected "
                f"currency, {', '.join(TIERS)}, input_image and a [tokens] table"
            )
        default = cls.google()
        try:
            currency = doc.get("currency", default.currency)
            if not isinstance(currency, str) or not currency.strip():
                raise ConfigurationError("currency must be a name such as 'USD'")  # noqa: TRY301
            return cls(
                {**default.per_image, **{tier: doc[key] for tier, key in tiers.items()}},
                doc.get("input_image", default.input_image),
                _token_prices(doc.get("tokens")),
                currency.strip(),
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Prices:
        """A table from a `.toml` or `.json` file (`--prices`); ConfigurationError if it is
        unreadable or holds anything but prices."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".json":
                doc = json.loads(text, parse_float=Decimal)
            else:
                doc = tomllib.loads(text, parse_float=Decimal)
        except (OSError, ValueError) as exc:  # TOMLDecodeError, JSONDecodeError: ValueErrors
            raise ConfigurationError(f"cannot read prices from {path}: {exc}") from exc
        return cls.from_json(doc, source=str(path))

    def per_image_of(self, model: str) -> Decimal:
        """The price of one image of `model`: its tier's (1K's for a model of unknown tier)."""
        return self.per_image[tier_of(model) or "1K"]

    def to_json(self) -> dict[str, Any]:
        """The table as the JSON a prices file holds (amounts as numbers)."""
        doc: dict[str, Any] = {"currency": self.currency}
        doc |= {tier: float(price) for tier, price in self.per_image.items()}
        doc["input_image"] = float(self.input_image)
        if self.tokens is not None:
            doc["tokens"] = {
                name: float(value)
                for name in ("input", "output", "image")
                if (value := getattr(self.tokens, name)) is not None
            }
        return doc


def _token_prices(value: Any) -> TokenPrices | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not {"input", "output"} <= set(value):
        raise ConfigurationError("[tokens] needs an input and an output price per million")
    unknown = set(value) - {"input", "output", "image"}
    if unknown:
        raise ConfigurationError(f"unknown key(s) in [tokens]: {', '.join(sorted(unknown))}")
    return TokenPrices(value["input"], value["output"], value.get("image"))


DEFAULT_PRICES = Prices.google()
"""Google's list prices: what an estimate uses unless told otherwise."""


def _sum(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    return b if a is None else a if b is None else a + b


@attrs.frozen
class Cost:
    """What one call or many cost: `estimated` from the price table, `reported` where the relay
    said, and `total`, which takes each call's reported figure where there is one.

    Costs add up (`sum(costs, Cost())` or `a + b`); adding two currencies is a ValueError.
    """

    estimated: Decimal = _ZERO
    reported: Decimal | None = None
    """The sum of the figures relays reported; None when none did."""
    total: Decimal = attrs.field(
        default=attrs.Factory(
            lambda self: self.estimated if self.reported is None else self.reported,
            takes_self=True,
        )
    )
    """Each call's reported figure where there is one, its estimate elsewhere, added up."""
    currency: str = "USD"

    @classmethod
    def of(cls, estimated: Decimal, reported: Decimal | None = None, currency: str = "USD") -> Cost:
        """One call's cost."""
        return cls(estimated, reported, currency=currency)

    def with_reported(self, reported: Decimal | None) -> Cost:
        """This one call's estimate beside the figure the relay reported (None: unknown)."""
        if reported is None and self.reported is None:
            return self
        return Cost.of(self.estimated, reported, self.currency)

    def __add__(self, other: object) -> Cost:
        if not isinstance(other, Cost):
            return NotImplemented
        if self.currency != other.currency and self != Cost() and other != Cost():
            raise ValueError(f"cannot add costs in {self.currency} and {other.currency}")
        currency = self.currency if self != Cost() else other.currency
        return Cost(
            self.estimated + other.estimated,
            _sum(self.reported, other.reported),
            self.total + other.total,
            currency,
        )

    def __radd__(self, other: object) -> Cost:
        """`sum(costs)` starts from 0."""
        if other == 0:
            return self
        return NotImplemented

    def __str__(self) -> str:
        """`$0.2680 (estimated)`, or `$0.2000 (estimated $0.2680, reported $0.2000)`."""
        total, currency = money(self.total, self.currency), self.currency
        if self.reported is None:
            return f"{total} (estimated)"
        said = money(self.reported, currency)
        return f"{total} (estimated {money(self.estimated, currency)}, reported {said})"

    def to_json(self) -> dict[str, Any]:
        """As a manifest line holds it: amounts as JSON numbers, rounded to a millionth."""
        return {
            "estimated": _number(self.estimated),
            "reported": None if self.reported is None else _number(self.reported),
            "total": _number(self.total),
            "currency": self.currency,
        }

    @classmethod
    def from_json(cls, doc: Any) -> Cost:
        """A cost from `to_json`'s object; ValueError when it is none."""
        if not isinstance(doc, Mapping):
            raise ValueError("a cost is a JSON object")  # noqa: TRY004 - one error for bad lines
        try:
            estimated = _amount(doc.get("estimated", 0), "estimated")
            reported = _optional_amount(doc.get("reported"), "reported")
            total = _optional_amount(doc.get("total"), "total")
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        currency = doc.get("currency", "USD")
        if not isinstance(currency, str):
            raise ValueError("a cost's currency is a string")  # noqa: TRY004 - as above
        if total is None:
            return cls.of(estimated, reported, currency)
        return cls(estimated, reported, total, currency)


def money(amount: Decimal, currency: str = "USD") -> str:
    """`$1,234.5678`, or `1,234.5678 EUR`."""
    return f"${amount:,.4f}" if currency == "USD" else f"{amount:,.4f} {currency}"


def _number(amount: Decimal) -> float | int:
    rounded = round(amount, 6)
    return int(rounded) if rounded == rounded.to_integral_value() else float(rounded)


def estimate(request: ImageRequest, prices: Prices = DEFAULT_PRICES) -> Cost:
    """What `request` should cost by the table: each image made at its tier's price, plus its
    input images, which every image made reads again. An upper bound when the relay charges as
    listed: a budget counts on it before sending."""
    per_image = prices.per_image_of(request.model) + len(request.images) * prices.input_image
    return Cost.of(request.n * per_image, currency=prices.currency)


def header_cost(headers: Mapping[str, str]) -> Decimal | None:
    """The cost a relay reported in its answer's headers (LiteLLM's `x-litellm-response-cost`);
    None when absent or not a finite non-negative number."""
    value = headers.get(COST_HEADER)
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return Decimal(value.strip())


def usage_cost(usage: Usage | None, prices: Prices) -> Decimal | None:
    """What `usage` costs at the table's per-token prices; None without either."""
    if usage is None or prices.tokens is None:
        return None
    return prices.tokens.cost(usage)


def reported_cost(
    headers: Mapping[str, str], usage: Usage | None, prices: Prices
) -> Decimal | None:
    """The figure to record beside an estimate: the relay's own (a header) first, else its
    token counts priced by the table; None when the answer says neither."""
    found = header_cost(headers)
    return found if found is not None else usage_cost(usage, prices)
