"""Flywheel's Python SDK: log runs, feedback and edits from an LLM app to a Flywheel ingest.

Calls never wait on the network: events are queued, batched, retried with backoff, signed,
optionally spooled to disk across outages and restarts, and flushed at exit. Every event has
its ``event_id`` from the moment it is made, so a retry never duplicates it downstream.
See docs/sdk.md for the exact delivery guarantees.
"""

from flywheel_client._calls import Thumb
from flywheel_client._client import AsyncFlywheel, Flywheel
from flywheel_client._config import ClientConfig, ClientOptions, OverflowPolicy
from flywheel_client._errors import (
    ClientConfigError,
    DropReason,
    ErrorDetail,
    EventsDropped,
    FlywheelClientError,
    InvalidEventError,
)
from flywheel_client._events import (
    ChatMessage,
    EditOptions,
    FeedbackKind,
    FeedbackOptions,
    ImplicitKind,
    Prompt,
    RunOptions,
    TokenUsage,
)
from flywheel_client._stats import ClientStats

__all__ = [
    "AsyncFlywheel",
    "ChatMessage",
    "ClientConfig",
    "ClientConfigError",
    "ClientOptions",
    "ClientStats",
    "DropReason",
    "EditOptions",
    "ErrorDetail",
    "EventsDropped",
    "FeedbackKind",
    "FeedbackOptions",
    "Flywheel",
    "FlywheelClientError",
    "ImplicitKind",
    "InvalidEventError",
    "OverflowPolicy",
    "Prompt",
    "RunOptions",
    "Thumb",
    "TokenUsage",
]
