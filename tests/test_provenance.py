"""Provenance: the fields an image carries, as PNG keywords and as sidecar JSON."""

import pickle

import pytest

from gemimg_async import Asked, Provenance, __version__
from gemimg_async._provenance import KEYWORDS


def test_of_stamps_the_time_in_utc_and_the_library_version():
    """`Provenance.of` writes Unix time as ISO 8601 UTC and names this library's version."""
    made = Provenance.of(
        prompt="p", model="m", asked=Asked("4K", "16:9"), job_id="j", created=1_790_000_000.4
    )
    assert made.created == "2026-09-21T14:13:20Z"
    assert made.software == f"gemimg-async {__version__}"
    assert made.asked == "4K 16:9 (5504x3072)"
    assert made.delivered is None


def test_with_size_judges_the_pixels_once():
    """The delivered size is judged against the ask, plain without one, and never overwritten."""
    asked = Asked("4K", "16:9")
    assert Provenance().with_size(1376, 768, asked).delivered == "1376x768 (1K, smaller)"
    assert Provenance().with_size(10, 20).delivered == "10x20"
    assert Provenance(delivered="kept").with_size(1, 1, asked).delivered == "kept"


def test_fields_and_json_round_trip():
    """Every field survives PNG keywords and JSON; empty fields are left out of both."""
    full = Provenance(**{name: f"{name} 值" for name in KEYWORDS})
    assert Provenance.from_fields(full.to_fields()) == full
    assert Provenance.from_json(full.to_json()) == full
    assert list(full.to_fields()) == list(KEYWORDS.values())
    assert Provenance(prompt="p").to_fields() == {"Description": "p"}
    assert Provenance(prompt="p").to_json() == {"prompt": "p"}


def test_other_softwares_fields_are_not_provenance():
    """Text chunks with none of our keywords give no provenance; unknown ones are ignored."""
    assert Provenance.from_fields({"Author": "x"}) is None
    assert Provenance.from_fields({"Author": "x", "Model": "m"}) == Provenance(model="m")
    assert Provenance.from_json({"model": "m", "colour": "red"}) == Provenance(model="m")


def test_fields_are_text():
    """A field that is not a string is a ValueError, as is a document that is no object."""
    with pytest.raises(ValueError):
        Provenance(prompt=3)
    with pytest.raises(ValueError):
        Provenance.from_json(["prompt"])


def test_provenance_is_a_frozen_value_that_pickles():
    """Equal after a pickle round trip; fields cannot be set."""
    value = Provenance(prompt="p", job_id="j")
    assert pickle.loads(pickle.dumps(value)) == value  # noqa: S301 - our own bytes
    with pytest.raises(AttributeError):
        value.prompt = "x"


def test_with_size_keeps_every_other_field():
    """with_size() copies each field but `delivered` as it was (a field added later too)."""
    import attrs  # noqa: PLC0415 - only this test walks the fields

    names = [field.name for field in attrs.fields(Provenance) if field.name != "delivered"]
    given = Provenance(**{name: f"{name} value" for name in names})
    sized = given.with_size(1024, 1024)
    assert sized.delivered == "1024x1024"
    assert all(getattr(sized, name) == getattr(given, name) for name in names)
