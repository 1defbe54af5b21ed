"""Who owns a partition, and which topic it belongs to, recorded in the lake: the zombie fence
closes at the takeover.

A consumer-group assignment says who owns a partition *now*; a process paused past its session
(SIGSTOP, a long GC, a frozen VM) does not know it lost it and may wake with a batch to commit.
So the new owner, before it reads anything, *claims* the partitions: one empty commit per table
that raises each partition's owner epoch, ``txn(flywheel-owner:<group>:<topic>:<partition>)``.
Every data commit carries its writer's epochs and the sink refuses it unless the table still
holds them (``sink.py``), so nothing the old owner commits after the claim lands anywhere.

A claim also records a fingerprint of each topic's id (``txn(flywheel-topic:<group>:<topic>)``),
so a topic deleted and created again under the lake is recognised (``offsets.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from flywheel_common.errors import SinkCommitError

if TYPE_CHECKING:
    from flywheel_curator.sink import DeltaSink, TopicPartition

__all__ = ["claim", "owner_app_id", "owner_epochs", "topic_app_id"]

_CLAIM_ATTEMPTS = 5


def owner_app_id(group: str, tp: tuple[str, int]) -> str:
    """The app id under which the owner epoch of one topic-partition is recorded."""
    return f"flywheel-owner:{group}:{tp[0]}:{tp[1]}"


def topic_app_id(group: str, topic: str) -> str:
    """The app id under which the fingerprint of a topic's id is recorded."""
    return f"flywheel-topic:{group}:{topic}"


def owner_epochs(sink: DeltaSink, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    """The highest owner epoch any table holds for each partition (0: never claimed)."""
    from flywheel_curator.sink import COMMIT_ORDER

    current: dict[TopicPartition, int] = dict.fromkeys(tps, 0)
    for table in COMMIT_ORDER:
        dt = sink.table(table)
        for tp in tps:
            epoch = dt.transaction_version(owner_app_id(sink.group, tp)) or 0
            current[tp] = max(current[tp], epoch)
    return current


def claim(
    sink: DeltaSink, tps: Sequence[TopicPartition], *, topics: Mapping[str, int]
) -> dict[TopicPartition, int]:
    """Record the caller as the owner of ``tps`` in every table (each owner epoch goes up by
    one) with the fingerprints of their ``topics``' ids, and return the epochs its commits must
    carry. From then on, whoever owned them before cannot commit them."""
    from flywheel_curator.sink import COMMIT_ORDER

    last: Exception | None = None
    for _attempt in range(_CLAIM_ATTEMPTS):
        epochs = {tp: e + 1 for tp, e in owner_epochs(sink, tps).items()}
        txns = {owner_app_id(sink.group, tp): e for tp, e in epochs.items()}
        txns.update({topic_app_id(sink.group, t): v for t, v in topics.items()})
        try:
            for table in COMMIT_ORDER:
                sink.mark(table, txns, operation="claim")
        except SinkCommitError as exc:  # a concurrent claim, or a zombie's commit: read again
            last = exc
            continue
        return epochs
    raise SinkCommitError("claim", f"could not claim {len(tps)} partitions: {last}")
