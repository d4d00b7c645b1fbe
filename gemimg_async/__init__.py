"""gemimg_async: an async client for Gemini 3 Pro Image through OpenAI-compatible relays.

One pooled client session fans requests out, streams every image to disk in bounded memory, and
retries only what cannot be billed twice. See `Client`.

The batch tools (`run_batch`, job files, the manifest, progress displays, costs quotes, the
gallery, image info) and `RedisLimiter` are imported on first use, as is `__version__`:
`import gemimg_async` loads only what a `Client` needs.
"""

import importlib
import typing

from ._client import ENV_API_KEY, ENV_BASE_URL, Client, GenerateOptions
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
    USE_CLIENT_DEFAULT,
    Backoff,
    RetryPolicy,
    Timeouts,
    UseClientDefault,
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
    EventLoopError,
    GemimgError,
    ImageExpiredError,
    InvalidCountError,
    InvalidDestinationError,
    InvalidImageError,
    InvalidModelError,
    InvalidPromptError,
    InvalidResponseFormatError,
    InvalidSizeError,
    LimiterUnavailableError,
    MalformedResponseError,
    ModelNotServedError,
    OutcomeUnknownError,
    PoolTimeoutError,
    RateLimitError,
    RefusalError,
    ServerError,
    TooManyImagesError,
    TransportError,
    ValidationError,
)
from ._http import DEFAULT_RETRY_AFTER, ErrorResponse, error_response
from ._limiter import LocalLimiter, SharedLimiter
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
from ._prices import DEFAULT_PRICES, Cost, Prices, TokenPrices, estimate
from ._provenance import Provenance
from ._results import GenerationResult, Outcome, SaveError
from ._routing import Endpoint
from ._sizes import PIXELS_1K, TIERS, Asked, Delivered, Tier
from ._stats import ClientStats, EndpointStats
from ._stream import ImageStream

if typing.TYPE_CHECKING:
    from ._budget import Quote, QuoteRow
    from ._bulk import BatchRun, run_batch
    from ._gallery import GALLERY_NAME, build_gallery
    from ._info import ImageInfo, read_info
    from ._jobs import BadLine, JobDefaults, content_id, read_jobs
    from ._manifest import MANIFEST_NAME, STATUSES, ManifestEntry, Status, read_manifest
    from ._progress import PlainProgress, Progress, RichProgress
    from ._summary import BatchStats, BatchSummary
    from .redis import RedisLimiter

    __version__: str

_LAZY = {
    **dict.fromkeys(("BatchRun", "run_batch"), "_bulk"),
    **dict.fromkeys(("BadLine", "JobDefaults", "content_id", "read_jobs"), "_jobs"),
    **dict.fromkeys(
        ("MANIFEST_NAME", "STATUSES", "ManifestEntry", "Status", "read_manifest"), "_manifest"
    ),
    **dict.fromkeys(("PlainProgress", "Progress", "RichProgress"), "_progress"),
    **dict.fromkeys(("BatchStats", "BatchSummary"), "_summary"),
    **dict.fromkeys(("Quote", "QuoteRow"), "_budget"),
    **dict.fromkeys(("GALLERY_NAME", "build_gallery"), "_gallery"),
    **dict.fromkeys(("ImageInfo", "read_info"), "_info"),
    **dict.fromkeys(("RedisLimiter",), "redis"),
}
"""Exported names imported on first use, and the module of each."""

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_PRICES",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_READ_TIMEOUT_4K",
    "DEFAULT_RETRY_AFTER",
    "DIALECTS",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "GALLERY_NAME",
    "MANIFEST_NAME",
    "MAX_INLINE_IMAGE_BYTES",
    "MAX_INPUT_IMAGES",
    "PIXELS_1K",
    "SIZE_STYLES",
    "STATUSES",
    "TIERS",
    "USE_CLIENT_DEFAULT",
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
    "Cost",
    "Delivered",
    "Dialect",
    "DownloadError",
    "Endpoint",
    "EndpointStats",
    "ErrorResponse",
    "Event",
    "EventLoopError",
    "GemimgError",
    "GeminiDialect",
    "GenerateOptions",
    "GeneratedImage",
    "GenerationFinished",
    "GenerationResult",
    "ImageExpiredError",
    "ImageInfo",
    "ImageInput",
    "ImageRequest",
    "ImageSaved",
    "ImageStream",
    "ImagesDialect",
    "InvalidCountError",
    "InvalidDestinationError",
    "InvalidImageError",
    "InvalidModelError",
    "InvalidPromptError",
    "InvalidResponseFormatError",
    "InvalidSizeError",
    "JobDefaults",
    "LimiterUnavailableError",
    "Listener",
    "LocalLimiter",
    "MalformedResponseError",
    "ManifestEntry",
    "Model",
    "ModelNotServedError",
    "Outcome",
    "OutcomeUnknownError",
    "PlainProgress",
    "PoolTimeoutError",
    "Prices",
    "Progress",
    "Provenance",
    "Quote",
    "QuoteRow",
    "RateLimitError",
    "RedisLimiter",
    "RefusalError",
    "RequestSent",
    "ResponseFormat",
    "RetryPolicy",
    "RichProgress",
    "SaveError",
    "ServerError",
    "SharedLimiter",
    "SizeStyle",
    "Status",
    "SystemClock",
    "Tier",
    "Timeouts",
    "Timings",
    "TokenPrices",
    "TooManyImagesError",
    "TransportError",
    "Usage",
    "UseClientDefault",
    "ValidationError",
    "__version__",
    "build_gallery",
    "content_id",
    "error_response",
    "estimate",
    "read_info",
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
