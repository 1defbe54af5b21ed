"""Candidates for the filter tests: realistic texts, every field filled."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from flywheel_curator.candidate import Candidate, KafkaOrigin

MakeCandidate = Callable[..., Candidate]

BASE_TIME = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CHOSEN = "To reset your password, open Settings, choose Security, then click Reset password."
REJECTED = "To reset your password, open Settings and click the Reset button at the bottom."


def candidate(**overrides: Any) -> Candidate:
    fields: dict[str, Any] = {
        "source": "edit",
        "prompt": ({"role": "user", "content": "How do I reset my password?"},),
        "chosen": CHOSEN,
        "rejected": REJECTED,
        "run_id": "run-1",
        "event_id": "evt-1",
        "tenant": "acme",
        "feature": "support-chat",
        "event_time": BASE_TIME,
        "origin": KafkaOrigin(topic="flywheel.edits.v1", partition=0, offset=1),
        "user_id": "user-1",
    }
    fields.update(overrides)
    return Candidate(**fields)


@pytest.fixture
def make_candidate() -> MakeCandidate:
    return candidate
