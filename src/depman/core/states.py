"""States and operations of queue items and jobs."""

from __future__ import annotations

from enum import Enum


class ItemState(str, Enum):  # noqa: UP042 - mirrors the agent's enums
    """State of a queue item within its generation."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Final: an operator cancelled it (the agent confirms with a `cancelled` report).
    CANCELLED = "cancelled"


# States an agent may report beyond the item states: `retrying` (a retryable failure,
# the agent backs off locally) moves the item back to queued with a next attempt time.
REPORT_RETRYING = "retrying"
FINAL_ITEM_STATES = (ItemState.SUCCEEDED.value, ItemState.FAILED.value, ItemState.CANCELLED.value)


class Op(str, Enum):  # noqa: UP042
    """What a queue item asks the agent to do."""

    DOWNLOAD = "download"
    TOUCH = "touch"
    # Remove the dep's file from the instance (an operator action).
    DELETE = "delete"


class JobState(str, Enum):  # noqa: UP042
    """Life of a dependency-managed job."""

    PENDING = "pending"
    WAITING_DEPS = "waiting_deps"
    READY = "ready"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


# A job in one of these holds its instance's slot and pins its deps there.
ACTIVE_JOB_STATES = (JobState.WAITING_DEPS.value, JobState.READY.value, JobState.RUNNING.value)
TERMINAL_JOB_STATES = (JobState.COMPLETED.value, JobState.FAILED.value)
OPEN_ITEM_STATES = (ItemState.QUEUED.value, ItemState.RUNNING.value)

# Queue priority: a job waits for it, or it is a boot prefetch.
PRIORITY_JOB = 0
PRIORITY_PREFETCH = 1
