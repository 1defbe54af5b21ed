"""Topic names of DESIGN.md, as one value that services and tests pass around."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["EventType", "Topics"]

EventType = Literal["run", "feedback", "edit"]


class Topics(BaseModel):
    """The five topics of DESIGN.md plus the curator's internal ``pairing`` topic. Every topic
    is created with the same partition count and keyed by run_id (gold by table name, pairing
    by the key two runs are paired on), so a run and its feedback and edits share a partition."""

    model_config = ConfigDict(frozen=True)

    runs: str = "flywheel.runs.v1"
    feedback: str = "flywheel.feedback.v1"
    edits: str = "flywheel.edits.v1"
    gold: str = "flywheel.gold.v1"
    dlq: str = "flywheel.dlq.v1"
    # Curator-internal: facts about a run routed to where the run it pairs with is joined
    # (a regeneration's parent, a rating's prompt); see flywheel_curator.facts.
    pairing: str = "flywheel.curator.pairing.v1"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        """Topics under a prefix, e.g. a uuid4 per test so tests never share a topic."""
        d = cls()
        return cls(
            runs=f"{prefix}.{d.runs}",
            feedback=f"{prefix}.{d.feedback}",
            edits=f"{prefix}.{d.edits}",
            gold=f"{prefix}.{d.gold}",
            dlq=f"{prefix}.{d.dlq}",
            pairing=f"{prefix}.{d.pairing}",
        )

    def all(self) -> tuple[str, ...]:
        return (self.runs, self.feedback, self.edits, self.gold, self.dlq, self.pairing)

    def for_event(self, event_type: EventType) -> str:
        return {"run": self.runs, "feedback": self.feedback, "edit": self.edits}[event_type]

    def event_type_of(self, topic: str) -> EventType | None:
        return {self.runs: "run", self.feedback: "feedback", self.edits: "edit"}.get(topic)  # type: ignore[return-value]
