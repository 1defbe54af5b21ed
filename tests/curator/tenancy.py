"""Two tenants whose clients use the same run ids, and a tenant that names the other's runs:
the events of the tenant-isolation tests (through the webhook and through ``flywheel curate``)
and the checks of what became of them. Every text carries its tenant's marker, so a row that
mixes tenants is found by reading it."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ACME, GLOBEX = "acme", "globex"
TENANTS = (ACME, GLOBEX)
Event = dict[str, Any]  # the JSON the ingest API takes, with its "type"


def marker(tenant: str) -> str:
    return f"({tenant} #"


def _text(tenant: str, i: int, text: str) -> str:
    return f"{marker(tenant)}{i}) {text}"


@dataclass
class Scenario:
    """``rounds`` copies of every case. Phase 1 must be processed before phase 2 is sent:
    a reference is refused when the run it names is already held under another tenant."""

    rounds: int
    phase1: list[tuple[str, Event]] = field(default_factory=list)
    phase2: list[tuple[str, Event]] = field(default_factory=list)
    runs: dict[str, set[str]] = field(default_factory=lambda: {t: set() for t in TENANTS})
    # references that must be dead-lettered, by the join the metric names
    refused: Counter[str] = field(default_factory=Counter)
    # candidates each tenant must get (a pair or a rejection: one row each)
    candidates: Counter[str] = field(default_factory=Counter)
    waiting: int = 0  # feedback left waiting for a run of its own tenant that never comes

    @property
    def events(self) -> int:
        return len(self.phase1) + len(self.phase2)

    def _run(self, phase: list[tuple[str, Event]], tenant: str, run_id: str, **kw: Any) -> None:
        self.runs[tenant].add(run_id)
        i = kw.pop("i")
        phase.append(
            (
                tenant,
                {
                    "type": "run",
                    "run_id": run_id,
                    "prompt": kw.pop("prompt", _text(tenant, i, "Summarise the quarter.")),
                    "response": _text(tenant, i, kw.pop("response")),
                    "model": "m1",
                    "feature": "summary",
                    **kw,
                },
            )
        )


def _feedback(run_id: str, kind: str, value: float | None = None, **kw: Any) -> Event:
    return {"type": "feedback", "run_id": run_id, "kind": kind, "value": value, **kw}


RESPONSE = "The quarter was fine. Revenue went up. Costs went up too, a bit."
CORRECTION = "Revenue increased this quarter and costs increased a bit less."
PARENT = "Costs went up. The quarter was fine overall."
KEPT = "Revenue rose this quarter; costs rose a little less than revenue did."


def build(rounds: int) -> Scenario:
    s = Scenario(rounds)
    for i in range(rounds):
        x, y, z, p, q, c, u, v = (str(uuid.uuid4()) for _ in range(8))
        # acme's run x, named by globex: its feedback, its edit, its regeneration (c).
        s._run(s.phase1, ACME, x, i=i, response=RESPONSE)
        fix = {t: _text(t, i, CORRECTION) for t in TENANTS}
        s.phase2.append((GLOBEX, _feedback(x, "thumbs", -1.0, correction=fix[GLOBEX])))
        s.phase2.append(
            (
                GLOBEX,
                {
                    "type": "edit",
                    "run_id": x,
                    "prompt": _text(GLOBEX, i, "Summarise the quarter."),
                    "original": _text(GLOBEX, i, RESPONSE),
                    "final": fix[GLOBEX],
                    "feature": "summary",
                },
            )
        )
        s._run(s.phase2, GLOBEX, c, i=i, response=KEPT, parent_run_id=x)
        s.phase2.append((GLOBEX, _feedback(c, "copy")))
        s.refused.update(feedback=1, edit=1, kept=1, regenerated=1)
        s.phase2.append((ACME, _feedback(x, "thumbs", -1.0, correction=fix[ACME])))
        s.candidates[ACME] += 1
        # globex's feedback waits for run y, then acme logs a run y: never joined.
        s.phase1.append((GLOBEX, _feedback(y, "thumbs", -1.0, correction=fix[GLOBEX])))
        s._run(s.phase2, ACME, y, i=i, response=RESPONSE)
        s.waiting += 1
        # Both tenants use run id z: each tenant's correction pairs with its own run.
        for tenant in TENANTS:
            s._run(s.phase1, tenant, z, i=i, response=RESPONSE)
            s.phase2.append((tenant, _feedback(z, "thumbs", -1.0, correction=fix[tenant])))
            s.candidates[tenant] += 1
        # globex's own regeneration still pairs.
        s._run(s.phase1, GLOBEX, p, i=i, response=PARENT)
        s._run(s.phase2, GLOBEX, q, i=i, response=KEPT, parent_run_id=p)
        s.phase2.append((GLOBEX, _feedback(q, "copy")))
        s.candidates[GLOBEX] += 1
        # One prompt, rated up by acme and down by globex: prompt keys differ, no pair.
        shared = f"Write a haiku about partition {i}."
        s._run(s.phase1, ACME, u, i=i, prompt=shared, response="Logs flow in order.")
        s._run(s.phase1, GLOBEX, v, i=i, prompt=shared, response="Kafka is a broker.")
        s.phase2.append((ACME, _feedback(u, "thumbs", 1.0)))
        s.phase2.append((GLOBEX, _feedback(v, "thumbs", -1.0)))
    return s


def leaks(rows: Iterable[Mapping[str, Any]], runs: Mapping[str, set[str]]) -> list[str]:
    """Rows that hold another tenant's text or name a run their tenant never logged."""
    found: list[str] = []
    for row in rows:
        tenant = row["tenant"]
        others = [marker(t) for t in TENANTS if t != tenant]
        texts = [row.get("chosen"), row.get("rejected"), row.get("response")]
        texts += [m["content"] for m in row.get("prompt") or []]
        ids = {row.get(k) for k in ("run_id", "chosen_run_id", "rejected_run_id")} - {None}
        if any(o in (t or "") for o in others for t in texts) or not ids <= runs.get(tenant, set()):
            found.append(f"{tenant}: {row.get('source')} run {row.get('run_id')}")
    return found
