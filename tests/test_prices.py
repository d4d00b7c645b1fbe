"""Prices and costs: Google's list prices by default, relay tables from TOML or JSON files,
estimates per request, and the figures relays report (LiteLLM's header, priced usage)."""

import json
import pickle
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gemimg_async import DEFAULT_PRICES, ConfigurationError, Cost, ImageRequest, Prices, Usage
from gemimg_async import estimate as estimate_cost
from gemimg_async._prices import header_cost, reported_cost, usage_cost
from gemimg_async.testing import png
from helpers import STANDARD, TIER_2K, TIER_4K

D = Decimal
TOKENS = {"input": 2, "output": 12, "image": 120}


def write(folder, name, text):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_defaults_are_googles_list_prices():
    """$0.134 per 1K or 2K image, $0.24 per 4K, $0.0011 per input image, in US dollars."""
    assert Prices.google() == DEFAULT_PRICES
    assert dict(DEFAULT_PRICES.per_image) == {"1K": D("0.134"), "2K": D("0.134"), "4K": D("0.24")}
    assert DEFAULT_PRICES.input_image == D("0.0011")
    assert (DEFAULT_PRICES.currency, DEFAULT_PRICES.tokens) == ("USD", None)


@pytest.mark.parametrize(
    ("model", "price"),
    [(STANDARD, "0.134"), (TIER_2K, "0.134"), (TIER_4K, "0.24"), ("some-other-model", "0.134")],
)
def test_an_estimate_prices_each_image_at_its_tier(model, price):
    """One image at its tier's price; a model of unknown tier at the 1K price."""
    cost = estimate_cost(ImageRequest("p", model=model))
    assert cost == Cost.of(D(price))
    assert (cost.reported, cost.total) == (None, D(price))


def test_an_estimate_counts_images_made_and_inputs_read():
    """n images, each reading every input image again."""
    request = ImageRequest("p", model=TIER_4K, n=3, images=[png(), png()])
    assert estimate_cost(request).estimated == 3 * (D("0.24") + 2 * D("0.0011"))


def test_costs_add_up_exactly_and_prefer_reported_figures():
    """A thousand 1K images cost exactly $134; a total takes each call's reported figure where
    there is one and its estimate elsewhere."""
    assert sum(Cost.of(D("0.134")) for _ in range(1000)).total == D("134.000")
    mixed = Cost.of(D("0.134"), D("0.10")) + Cost.of(D("0.24"))
    assert (mixed.estimated, mixed.reported, mixed.total) == (D("0.374"), D("0.10"), D("0.34"))
    assert sum([], Cost()) == Cost()


@given(st.lists(st.tuples(st.integers(0, 10**6), st.none() | st.integers(0, 10**6))))
def test_a_sum_is_the_sum_of_each_calls_best_figure(calls):
    """However costs are grouped, the total is the sum of reported-else-estimated per call."""
    costs = [Cost.of(D(e) / 1000, None if r is None else D(r) / 1000) for e, r in calls]
    total = sum(costs, Cost())
    assert total.total == sum(
        (c.reported if c.reported is not None else c.estimated for c in costs), D(0)
    )
    assert total.estimated == sum((c.estimated for c in costs), D(0))
    half = len(costs) // 2
    assert sum(costs[:half], Cost()) + sum(costs[half:], Cost()) == total


def test_costs_in_two_currencies_do_not_add():
    """Adding a euro cost to a dollar cost is a ValueError, not a wrong number."""
    with pytest.raises(ValueError, match="EUR"):
        Cost.of(D(1)) + Cost.of(D(1), currency="EUR")
    assert (Cost() + Cost.of(D(1), currency="EUR")).currency == "EUR"


def test_a_cost_round_trips_through_json():
    """As a manifest line holds it: numbers rounded to a millionth, back to the same value."""
    cost = Cost.of(D("0.134"), D("0.0392"))
    doc = json.loads(json.dumps(cost.to_json()))
    assert doc == {"estimated": 0.134, "reported": 0.0392, "total": 0.0392, "currency": "USD"}
    assert Cost.from_json(doc) == cost
    assert Cost.from_json({"estimated": 0.24}) == Cost.of(D("0.24"))
    for bad in ([], {"estimated": "x"}, {"estimated": -1}, {"currency": 3}):
        with pytest.raises(ValueError):
            Cost.from_json(bad)


def test_a_prices_file_in_toml_overrides_what_it_names(tmp_path):
    """Keys left out keep Google's prices; tier keys in any case; a [tokens] table."""
    path = write(
        tmp_path,
        "relay.toml",
        'currency = "USD"\n"4k" = 0.19\ninput_image = 0\n[tokens]\ninput = 2.5\noutput = 10\n',
    )
    prices = Prices.from_file(path)
    assert dict(prices.per_image) == {"1K": D("0.134"), "2K": D("0.134"), "4K": D("0.19")}
    assert prices.input_image == D(0)
    assert prices.tokens is not None
    assert (prices.tokens.input, prices.tokens.output, prices.tokens.image) == (
        D("2.5"),
        D(10),
        None,
    )


def test_a_prices_file_in_json_reads_the_same(tmp_path):
    """A JSON file of the same keys gives the same table; to_json writes one."""
    prices = Prices.from_json({"1K": 0.05, "2K": 0.08, "4K": 0.16, "tokens": TOKENS})
    path = write(tmp_path, "relay.json", json.dumps(prices.to_json()))
    assert Prices.from_file(path) == prices
    assert prices.per_image_of(TIER_2K) == D("0.08")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('"8K" = 1\n', "unknown key.*8K"),
        ('"4K" = -1\n', "4K must be a finite number of at least 0"),
        ('"4K" = "cheap"\n', "4K must be a number"),
        ('"4K" = nan\n', "finite"),
        ("input_image = true\n", "input_image must be a number"),
        ("currency = 3\n", "currency"),
        ("[tokens]\ninput = 1\n", r"\[tokens\] needs an input and an output"),
        ("[tokens]\ninput = 1\noutput = 1\ncached = 1\n", "unknown key.*cached"),
        ("this is not toml", "cannot read prices"),
    ],
)
def test_a_bad_prices_file_is_a_clear_error_naming_it(tmp_path, text, message):
    """Every mistake in a prices file is a ConfigurationError that names the file."""
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ConfigurationError, match=message) as caught:
        Prices.from_file(path)
    assert "bad.toml" in str(caught.value)


def test_a_missing_prices_file_is_a_configuration_error(tmp_path):
    """No such file: ConfigurationError, chained to the OSError."""
    with pytest.raises(ConfigurationError, match="cannot read prices"):
        Prices.from_file(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0392", D("0.0392")),
        (" 1.5e-2 ", D("0.015")),
        ("0", D(0)),
        ("nan", None),
        ("-0.1", None),
        ("inf", None),
        ("free", None),
        ("", None),
    ],
)
def test_litellms_cost_header_is_read_when_it_is_a_price(value, expected):
    """x-litellm-response-cost (any case) as a Decimal; anything but a finite amount: None."""
    headers = CIMultiDict({"X-LiteLLM-Response-Cost": value})
    assert header_cost(headers) == expected
    assert header_cost(CIMultiDict()) is None


def test_usage_is_priced_only_where_the_table_has_token_prices():
    """Input tokens at the input price, image tokens at the image price, other output tokens
    at the output price; no token prices or no usage: None."""
    prices = Prices.from_json({"tokens": TOKENS})
    usage = Usage(input_tokens=560, output_tokens=1220, image_tokens=1120)
    expected = (560 * 2 + 100 * 12 + 1120 * 120) / D(1_000_000)
    assert usage_cost(usage, prices) == expected
    assert usage_cost(usage, DEFAULT_PRICES) is None
    assert usage_cost(None, prices) is None
    assert usage_cost(Usage(total_tokens=5), prices) is None
    no_image_price = Prices.from_json({"tokens": {"input": 2, "output": 12}})
    assert usage_cost(usage, no_image_price) == (560 * 2 + 1220 * 12) / D(1_000_000)


def test_the_relays_own_figure_comes_before_priced_usage():
    """The header wins; priced usage stands in where there is no header."""
    prices = Prices.from_json({"tokens": TOKENS})
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    assert reported_cost(CIMultiDict({"x-litellm-response-cost": "0.03"}), usage, prices) == D(
        "0.03"
    )
    assert reported_cost(CIMultiDict(), usage, prices) == D(2)
    assert reported_cost(CIMultiDict(), None, prices) is None


def test_prices_and_costs_are_values_that_pickle():
    """Both pickle to equal values (they travel with results and to worker processes)."""
    prices = Prices.from_json({"tokens": TOKENS, "currency": "EUR"})
    cost = Cost.of(D("0.1"), D("0.2"), "EUR")
    assert pickle.loads(pickle.dumps(prices)) == prices  # noqa: S301 - our own bytes
    assert pickle.loads(pickle.dumps(cost)) == cost  # noqa: S301 - our own bytes
