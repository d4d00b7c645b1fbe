"""The `gemimg_async.testing` package's public names."""

from gemimg_async import testing


def test_fake_clock_is_reexported():
    """The client's FakeClock is importable from gemimg_async.testing."""
    assert "FakeClock" in testing.__all__
    assert testing.FakeClock().monotonic() == testing.FakeClock().monotonic()


def test_all_is_sorted():
    """__all__ is sorted and names only what exists."""
    assert testing.__all__ == sorted(testing.__all__, key=lambda n: (not n.isupper(), n))
    assert all(hasattr(testing, name) for name in testing.__all__)
