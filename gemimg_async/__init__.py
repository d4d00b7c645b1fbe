"""gemimg_async: an async client for Gemini 3 Pro Image through OpenAI-compatible relays.

One pooled client session fans requests out, streams every image to disk in bounded memory, and
retries only what cannot be billed twice. See `Client`.

The batch tools (`run_batch`, job files, the manifest, progress displays) are imported on first
use, as is `__version__`: `import gemimg_async` loads only what a `Client` needs.
"""

import importlib
import typing

from ._client import ENV_API_KEY, ENV_BASE_URL, Client, ClientStats, GenerateOptions
from ._clock import Clock, SystemClock
from ._config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DOWNLOAD_TIMEOUT,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_READ_TIMEOUT_4K,
    MAX_INLINE_IMAGE_BYTES,
    MAX_INPUT_IMAGES,
    Backoff,
    RetryPolicy,
    Timeouts,
)
from ._dialects import (
    DIALECTS,
    SIZE_STYLES,
    ChatDialect,
    Dialect,
    GeminiDialect,
    ImagesDialect,
    SizeStyle,
)
from ._events import (
    AnswerReceived,
    AttemptFailed,
    Event,
    GenerationFinished,
    ImageSaved,
    Listener,
    RequestSent,
)
from ._exceptions import (
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
    MalformedResponseError,
    OutcomeUnknownError,
    RateLimitError,
    RefusalError,
    ServerError,
    TooManyImagesError,
    TransportError,
    ValidationError,
)
from ._models import (
    ASPECT_RATIOS,
    GeneratedImage,
    ImageInput,
    ImageRequest,
    Model,
    ResponseFormat,
    Timings,
    Usage,
    resolve_model,
)
from ._results import GenerationResult, Outcome
from ._sizes import PIXELS_1K, TIERS, Asked, Delivered, Tier

if typing.TYPE_CHECKING:
    from ._bulk import BatchRun, run_batch
    from ._jobs import BadLine, JobDefaults, content_id, read_jobs
    from ._manifest import MANIFEST_NAME, STATUSES, ManifestEntry, Status, read_manifest
    from ._progress import PlainProgress, Progress, RichProgress
    from ._summary import BatchStats, BatchSummary

    __version__: str

_LAZY = {
    **dict.fromkeys(("BatchRun", "run_batch"), "_bulk"),
    **dict.fromkeys(("BadLine", "JobDefaults", "content_id", "read_jobs"), "_jobs"),
    **dict.fromkeys(
        ("MANIFEST_NAME", "STATUSES", "ManifestEntry", "Status", "read_manifest"), "_manifest"
    ),
    **dict.fromkeys(("PlainProgress", "Progress", "RichProgress"), "_progress"),
    **dict.fromkeys(("BatchStats", "BatchSummary"), "_summary"),
}
"""Exported names imported on first use, and the module of each."""

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_READ_TIMEOUT_4K",
    "DIALECTS",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "MANIFEST_NAME",
    "MAX_INLINE_IMAGE_BYTES",
    "MAX_INPUT_IMAGES",
    "PIXELS_1K",
    "SIZE_STYLES",
    "STATUSES",
    "TIERS",
    "APIError",
    "AnswerReceived",
    "Asked",
    "AttemptFailed",
    "AuthenticationError",
    "Backoff",
    "BadLine",
    "BadRequestError",
    "BatchRun",
    "BatchStats",
    "BatchSummary",
    "ChatDialect",
    "Client",
    "ClientClosedError",
    "ClientStats",
    "Clock",
    "ConfigurationError",
    "ConnectError",
    "ContentPolicyError",
    "Delivered",
    "Dialect",
    "DownloadError",
    "Event",
    "GemimgError",
    "GeminiDialect",
    "GenerateOptions",
    "GeneratedImage",
    "GenerationFinished",
    "GenerationResult",
    "ImageExpiredError",
    "ImageInput",
    "ImageRequest",
    "ImageSaved",
    "ImagesDialect",
    "InvalidCountError",
    "InvalidImageError",
    "InvalidModelError",
    "InvalidPromptError",
    "InvalidResponseFormatError",
    "InvalidSizeError",
    "JobDefaults",
    "Listener",
    "MalformedResponseError",
    "ManifestEntry",
    "Model",
    "Outcome",
    "OutcomeUnknownError",
    "PlainProgress",
    "Progress",
    "RateLimitError",
    "RefusalError",
    "RequestSent",
    "ResponseFormat",
    "RetryPolicy",
    "RichProgress",
    "ServerError",
    "SizeStyle",
    "Status",
    "SystemClock",
    "Tier",
    "Timeouts",
    "Timings",
    "TooManyImagesError",
    "TransportError",
    "Usage",
    "ValidationError",
    "__version__",
    "content_id",
    "read_jobs",
    "read_manifest",
    "resolve_model",
    "run_batch",
]


if not typing.TYPE_CHECKING:  # type checkers see the imports above; a misspelt name stays an error

    def __getattr__(name: str) -> object:
        """The exported names of the batch modules, and `__version__`, on first use."""
        if name == "__version__":
            value = importlib.import_module("importlib.metadata").version("gemimg-async")
        elif name in _LAZY:
            value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
