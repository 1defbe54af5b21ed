"""Joins never cross tenants: what a feedback, an edit or a pairing fact refers to, looked up
under its own tenant, or the refusal when it names a run held only under another tenant.

Run ids are the client's, so two tenants may use the same one: a reference finds its own
tenant's run when there is one, whatever another tenant holds under that id. It is refused
(dead-lettered, ``cross_tenant_reference``) only when the id is held under another tenant and
not under its own. A reference that finds nothing waits as before (feedback for its run, a
kept fact for its parent), keyed by its tenant: another tenant's run of that id never pops it,
and it expires with the window if its own tenant's run never comes. It is not dead-lettered
then: it may still be joined by its own run, and its message is not at hand any more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flywheel_common.topics import EventType

from flywheel_curator.facts import Fact
from flywheel_curator.joins import JoinStore, StoredRun
from flywheel_curator.refusals import Refusal, cross_tenant

__all__ = ["Reference", "resolve_event", "resolve_fact"]


@dataclass(frozen=True, slots=True)
class Reference:
    """What an accepted event or fact refers to: its tenant's run, if the join needs it and
    the store holds it, and whether the store holds one at all."""

    run: StoredRun | None = None
    held: bool = False


def resolve_event(
    store: JoinStore, event_type: EventType, record: Mapping[str, Any], *, inline: bool
) -> Reference | Refusal:
    """A run refers to nothing; feedback carrying its run inline needs no join."""
    tenant, run_id = record["tenant"], record["run_id"]
    if event_type == "run" or inline:
        return Reference()
    if event_type == "feedback":
        lookup = store.find_run(tenant, run_id)
        if lookup.cross_tenant:
            return cross_tenant("feedback", tenant, f"run_id {run_id!r}")
        return Reference(lookup.run, lookup.run is not None)
    # An edit carries its texts; it only marks its run as edited (no SFT sample of it).
    holders = store.tenants_holding(run_id)
    if holders and tenant not in holders:
        return cross_tenant("edit", tenant, f"run_id {run_id!r}")
    return Reference(held=tenant in holders)


def resolve_fact(store: JoinStore, fact: Fact) -> Reference | Refusal:
    """A fact's run must be its own tenant's; a ``kept`` or ``regenerated`` fact names a
    parent, which must not be held only under another tenant."""
    if fact.run is not None and fact.run.tenant != fact.tenant:
        return cross_tenant(fact.kind, fact.tenant, f"the run {fact.run.run_id!r} it carries")
    if fact.kind == "kept":
        lookup = store.find_run(fact.tenant, fact.key)
        if lookup.cross_tenant:
            return cross_tenant("kept", fact.tenant, f"parent {fact.key!r}")
        return Reference(lookup.run, lookup.run is not None)
    if fact.kind == "regenerated":
        holders = store.tenants_holding(fact.key)
        if holders and fact.tenant not in holders:
            return cross_tenant("regenerated", fact.tenant, f"parent {fact.key!r}")
    return Reference()
