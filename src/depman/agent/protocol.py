"""Names, states and defaults of dependency protocol v1 that the agent relies on."""

from __future__ import annotations

# (str, Enum) rather than StrEnum: the bundle also runs on instances with Python < 3.11.
from enum import Enum

AGENT_VERSION = "depman-agent/0.1.0"

# Control-plane paths, relative to FCS_API_BASE_URL (which ends with /api).
REGISTER_PATH = "/dependencies/register"
QUEUE_PATH = "/dependencies/queue"
STATUS_PATH = "/dependencies/status"
HEARTBEAT_PATH = "/dependencies/heartbeat"
QUEUE_ITEM_PATH = "/dependencies/queue-item"  # the item check (field agents 0.9.14+)

SECRET_HEADER = "X-DM-Secret"
QUEUE_LIMIT = 25
ERROR_MAX_CHARS = 500
LONG_POLL_MAX_SECONDS = 30


class ItemState(str, Enum):  # noqa: UP042
    """States an agent reports for a queue item."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the item carried an operator's cancelReason


class Op(str, Enum):  # noqa: UP042
    """Queue item operations."""

    DOWNLOAD = "download"
    TOUCH = "touch"
    DELETE = "delete"  # an operator removes the dep's file from this instance


class DepKind(str, Enum):  # noqa: UP042
    """Static deps belong to the server type's profile; dynamic deps are an LRU cache."""

    STATIC = "static"
    DYNAMIC = "dynamic"


class AuthKind(str, Enum):  # noqa: UP042
    """Which token, if any, the catalog URL needs."""

    NONE = "none"
    HF_TOKEN = "hf_token"
    CIVITAI_TOKEN = "civitai_token"


# Defaults of the runbook's env vars (same values, same meaning).
DEFAULT_WORKSPACE = "/workspace"
COMFYUI_SUBDIR = "ComfyUI"
STATE_FILENAME = "dependency_agent_state.json"
DEFAULT_POLL_SECONDS = 5.0
DEFAULT_HEARTBEAT_SECONDS = 30.0
DEFAULT_MAX_PARALLEL_DOWNLOADS = 1
MAX_PARALLEL_DOWNLOADS_LIMIT = 4
# Civitai's /api/download answers a redirect to b2.civitai.com or to a presigned URL of
# its Cloudflare R2 bucket (this exact host, not every R2 bucket); Hugging Face's go to
# cdn-lfs.huggingface.co / *.hf.co. Authorization is never sent past the first host.
CIVITAI_R2_HOST = ("civitai-delivery-worker-prod.5ac0637cfd0766c97916cefa3764fbdf"
                   ".r2.cloudflarestorage.com")
DEFAULT_ALLOWED_DOMAINS = ("huggingface.co", "hf.co", "civitai.com", CIVITAI_R2_HOST)
DEFAULT_PIN_TTL_SECONDS = 1800
DEFAULT_EVICTION_BATCH_MAX = 20
DEFAULT_MIN_FREE_BYTES_WHEN_ENABLED = 5 * 1024**3

# depman's own knobs.
DEFAULT_DOWNLOAD_CONNECTIONS = 8
DEFAULT_MIN_SEGMENT_BYTES = 16 * 1024**2
DEFAULT_PROGRESS_SECONDS = 5.0
DEFAULT_LONG_POLL_SECONDS = 25.0
DEFAULT_ITEM_RETRY_SECONDS = 5.0
# A download slower than this on average over DEFAULT_STALL_SECONDS is stalled: with
# another source for the file, the agent moves on to it.
DEFAULT_STALL_BYTES_PER_SECOND = 64 * 1024
DEFAULT_STALL_SECONDS = 30.0
# A 429's Retry-After up to this long is waited out on the same source; longer, the
# agent moves on to the next source.
DEFAULT_MAX_RETRY_AFTER_SECONDS = 30.0
ITEM_ATTEMPTS = 3
# A file found at a destination with no sha256 in the catalog is adopted on its size only
# once it has not changed for this long (a copy in progress keeps changing).
ADOPT_STABLE_SECONDS = 10.0
EARLY_HEARTBEAT_MIN_SECONDS = 2.0
# A self-updated build that has not registered within this is rolled back.
DEFAULT_UPDATE_PROBATION_SECONDS = 60.0
DEFAULT_UPDATE_RETRY_SECONDS = 60.0
CHUNK_BYTES = 1024 * 1024
HTTP_TIMEOUT_SECONDS = 60.0
