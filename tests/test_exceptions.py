"""The error tree (`_exceptions`): one root, and validation errors that are ValueErrors too."""

import pytest

from gemimg_async import (
    InvalidCountError,
    InvalidImageError,
    InvalidModelError,
    InvalidPromptError,
    InvalidResponseFormatError,
    InvalidSizeError,
    ValidationError,
)


@pytest.mark.parametrize(
    "error",
    [
        InvalidPromptError,
        InvalidCountError,
        InvalidSizeError,
        InvalidResponseFormatError,
        InvalidImageError,
        InvalidModelError,
    ],
)
def test_validation_errors_are_value_errors(error):
    """Each validation error is a ValidationError and a ValueError."""
    assert issubclass(error, ValidationError)
    assert issubclass(error, ValueError)
