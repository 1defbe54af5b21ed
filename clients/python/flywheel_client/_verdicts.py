"""Applying the server's answer to a batch: forget, report, or put back each of its events."""

from __future__ import annotations

from dataclasses import dataclass

from flywheel_client._backoff import parse_retry_after
from flywheel_client._outcome import classify
from flywheel_client._reports import Reporter
from flywheel_client._stats import Counters
from flywheel_client._store import Store
from flywheel_client._transport import Answer
from flywheel_client._wire import BATCH_OVERHEAD

__all__ = ["Applied", "apply_answer"]


@dataclass(frozen=True, slots=True)
class Applied:
    """What the dispatcher does next."""

    retry: bool  # some events wait for a backoff
    retry_after_s: float | None
    progress: bool  # the server took or refused something: it is up
    resend: bool  # some events go again at once
    shrink_to: tuple[int, int] | None  # (events, bytes) per batch from now on


def apply_answer(store: Store, answer: Answer, reporter: Reporter, stats: Counters) -> Applied:
    batch = answer.job.batch
    ids = [item.event_id for item in batch]
    verdict = classify(
        answer.status, answer.content, ids, stored={event_id: i for i, event_id in enumerate(ids)}
    )
    if verdict.delivered:
        store.finish([batch[i] for i in verdict.delivered])
        stats.add(delivered=len(verdict.delivered))
    if verdict.rejected:
        store.finish([batch[i] for i, _ in verdict.rejected])
        # One copy of each: a request-wide error (401, 415) is repeated for every event.
        errors = list(dict.fromkeys(error for _, errs in verdict.rejected for error in errs))
        reporter.dropped(
            "rejected",
            [ids[i] for i, _ in verdict.rejected],
            "refused by the server, not retried",
            status=verdict.status,
            errors=errors,
        )
    back = sorted(verdict.resend + verdict.retry)
    if back:
        store.release([batch[i] for i in back])
    shrink = None
    if verdict.too_large:
        raw_bytes = BATCH_OVERHEAD + sum(len(item.body) + 1 for item in batch)
        shrink = (max(1, len(batch) // 2), max(BATCH_OVERHEAD + 1, raw_bytes // 2))
    if verdict.retry:
        stats.add(retries=1)
    return Applied(
        retry=bool(verdict.retry),
        retry_after_s=parse_retry_after(answer.retry_after) if verdict.retry else None,
        progress=bool(verdict.delivered or verdict.rejected or verdict.resend),
        resend=bool(verdict.resend),
        shrink_to=shrink,
    )
