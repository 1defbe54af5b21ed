"""Events and pairing facts the pipeline reads but refuses to use, and why: the caller
dead-letters each one (the stream) or names it (``flywheel curate``). A refused message leaves
no trace in the join state, its event id included, so a corrected copy is not a duplicate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

__all__ = [
    "CROSS_TENANT",
    "FUTURE_EVENT",
    "JoinName",
    "Refusal",
    "RefusalReason",
    "cross_tenant",
    "future",
]

RefusalReason = Literal["cross_tenant_reference", "future_event"]
CROSS_TENANT: Final = "cross_tenant_reference"
FUTURE_EVENT: Final = "future_event"
# Which join a cross-tenant reference tried: the label of the metric.
JoinName = Literal["feedback", "edit", "kept", "regenerated", "rated"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A dead-letter reason code, what is wrong, and the tenant the message came from."""

    reason: RefusalReason
    detail: str
    tenant: str | None
    join: JoinName | None = None


def cross_tenant(join: JoinName, tenant: str, what: str) -> Refusal:
    """``what`` names the reference; the other tenant is never named (a dead letter is read by
    operators, and it must not tell one tenant what another holds)."""
    return Refusal(
        CROSS_TENANT,
        f"{join} of tenant {tenant!r}: {what} belongs to another tenant",
        tenant,
        join,
    )


def future(tenant: str | None, *, received_ms: int, wall_ms: int, limit_ms: int) -> Refusal:
    ahead_s = (received_ms - wall_ms) / 1000
    return Refusal(
        FUTURE_EVENT,
        f"received_at {_iso(received_ms)} is {ahead_s:.0f} s ahead of this curator's clock "
        f"(at most {limit_ms / 1000:.0f} s allowed): it would move stream time and expire "
        "waiting joins",
        tenant,
    )


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"
