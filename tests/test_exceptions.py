"""The error tree (`_exceptions`): one root, and validation errors that are ValueErrors too."""

import pytest

import gemimg_async as gi
from gemimg_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    ContentPolicyError,
    DownloadError,
    GemimgError,
    ImageExpiredError,
    InvalidCountError,
    InvalidImageError,
    InvalidModelError,
    InvalidPromptError,
    InvalidResponseFormatError,
    InvalidSizeError,
    LimiterUnavailableError,
    MalformedResponseError,
    OutcomeUnknownError,
    RateLimitError,
    RefusalError,
    ServerError,
    TooManyImagesError,
    TransportError,
    ValidationError,
)


def test_the_error_tree_is_rooted_at_gemimg_error():
    """Every error class the package exports derives from GemimgError, as documented."""
    tree = {
        ClientClosedError: GemimgError,
        ConfigurationError: GemimgError,
        LimiterUnavailableError: GemimgError,
        gi.PoolTimeoutError: GemimgError,
        ValidationError: GemimgError,
        InvalidModelError: ValidationError,
        InvalidPromptError: ValidationError,
        InvalidCountError: ValidationError,
        InvalidSizeError: ValidationError,
        InvalidResponseFormatError: ValidationError,
        InvalidImageError: ValidationError,
        TooManyImagesError: InvalidImageError,
        gi.InvalidDestinationError: ValidationError,
        gi.EventLoopError: ConfigurationError,
        gi.SaveError: GemimgError,
        APIError: GemimgError,
        AuthenticationError: APIError,
        BadRequestError: APIError,
        ContentPolicyError: BadRequestError,
        gi.ModelNotServedError: BadRequestError,
        RateLimitError: APIError,
        ServerError: APIError,
        RefusalError: APIError,
        MalformedResponseError: APIError,
        TransportError: GemimgError,
        ConnectError: TransportError,
        OutcomeUnknownError: TransportError,
        DownloadError: GemimgError,
        ImageExpiredError: DownloadError,
    }
    for cls, parent in tree.items():
        assert cls.__bases__[0] is parent, cls
    exported = {
        obj
        for name in gi.__all__
        if isinstance(obj := getattr(gi, name), type) and issubclass(obj, BaseException)
    }
    assert exported == {*tree, GemimgError}


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
