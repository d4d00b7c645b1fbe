"""gemimg_async: an async client for Gemini 3 Pro Image through OpenAI-compatible relays.

One pooled client session fans requests out, streams every image to disk in bounded memory, and
retries only what cannot be billed twice. See `Client`.
"""

import importlib.metadata

from ._bulk import BatchRun, run_batch
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
from ._jobs import BadLine, JobDefaults, content_id, read_jobs
from ._manifest import MANIFEST_NAME, STATUSES, ManifestEntry, Status, read_manifest
from ._models import (
    ASPECT_RATIOS,
    GeneratedImage,
    ImageInput,
    ImageRequest,
    Model,
    ResponseFormat,
    Timings,
    resolve_model,
)
from ._progress import PlainProgress, Progress, RichProgress
from ._results import GenerationResult, Outcome
from ._summary import BatchStats, BatchSummary

__version__ = importlib.metadata.version("gemimg-async")

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DOWNLOAD_TIMEOUT",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_IMAGE_BYTES",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_READ_TIMEOUT_4K",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "MANIFEST_NAME",
    "MAX_INLINE_IMAGE_BYTES",
    "MAX_INPUT_IMAGES",
    "STATUSES",
    "APIError",
    "AuthenticationError",
    "Backoff",
    "BadLine",
    "BadRequestError",
    "BatchRun",
    "BatchStats",
    "BatchSummary",
    "Client",
    "ClientClosedError",
    "ClientStats",
    "Clock",
    "ConfigurationError",
    "ConnectError",
    "ContentPolicyError",
    "DownloadError",
    "GemimgError",
    "GenerateOptions",
    "GeneratedImage",
    "GenerationResult",
    "ImageExpiredError",
    "ImageInput",
    "ImageRequest",
    "InvalidCountError",
    "InvalidImageError",
    "InvalidModelError",
    "InvalidPromptError",
    "InvalidResponseFormatError",
    "InvalidSizeError",
    "JobDefaults",
    "MalformedResponseError",
    "ManifestEntry",
    "Model",
    "Outcome",
    "OutcomeUnknownError",
    "PlainProgress",
    "Progress",
    "RateLimitError",
    "RefusalError",
    "ResponseFormat",
    "RetryPolicy",
    "RichProgress",
    "ServerError",
    "Status",
    "SystemClock",
    "Timeouts",
    "Timings",
    "TooManyImagesError",
    "TransportError",
    "ValidationError",
    "__version__",
    "content_id",
    "read_jobs",
    "read_manifest",
    "resolve_model",
    "run_batch",
]
