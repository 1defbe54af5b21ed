"""Sources → filter chain → rows: the curation logic shared by the stream (``consumer.py``) and
``flywheel curate`` (``cli.py``).

``Pipeline.process`` takes one decoded, validated event with its Kafka coordinates, updates
the join state and collects candidates; ``Pipeline.drain`` runs the filter chain over the
collected candidates in order and returns the rows for the three tables. Every row carries
its *ingredients*: the coordinates of every event that went into it, so the stream can tell a
row it already committed before a crash (all ingredients below the table's offsets) from a
new one.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from flywheel_common.lake import TableName, content_hash
from flywheel_common.topics import EventType

from flywheel_curator import metrics
from flywheel_curator.candidate import Candidate, KafkaOrigin, Verdict
from flywheel_curator.facts import (
    Fact,
    FactSink,
    kept_fact,
    rated_fact,
    regenerated_fact,
    signal_of,
)
from flywheel_curator.filters import (
    FilterChain,
    FilterSettings,
    FilterState,
    build_filters,
    pair_id,
    redact_row,
)
from flywheel_curator.joins import JoinStore, StoredRun, StoreKeys
from flywheel_curator.refusals import Refusal, future
from flywheel_curator.sources import (
    POSITIVE,
    RunView,
    correction_candidate,
    edit_candidate,
    event_ts_ms,
    inline_run,
    is_kept_signal,
    is_spurned_signal,
    paired_candidate,
    polarity,
    prompt_key,
    regenerate_candidate,
    sft_sampled,
    user_hash,
)
from flywheel_curator.stream_time import StreamClock
from flywheel_curator.tenancy import resolve_event, resolve_fact

if TYPE_CHECKING:
    from flywheel_curator.settings import CuratorSettings

__all__ = [
    "FILTER_STATE_COLUMNS",
    "NO_REGENERATE",
    "Chain",
    "CuratedRow",
    "Pipeline",
    "Summary",
    "build_chain",
    "build_pipeline",
    "candidate_key",
    "load_filter_state",
]

log = logging.getLogger(__name__)

# Expire joins each time stream time moved by 1/_EXPIRE_EVERY of the window (at most a minute).
_EXPIRE_EVERY = 10

# The signal kind of a regeneration kept by default: nothing followed it in the quiet period.
NO_REGENERATE = "no_regenerate"

# The weight a pair carries into training, by how strong its signal is: an edit or a
# correction is the user's own text; a regenerate or a paired outcome is a choice between two
# model answers.
_WEIGHTS: Mapping[str, float] = {
    "edit": 1.0,
    "correction": 1.0,
    "regenerate": 0.7,
    "paired_outcome": 0.5,
}


class Chain(Protocol):
    """What the pipeline needs of the filter chain (``flywheel_curator.filters.FilterChain``)."""

    def run_many(self, candidates: Sequence[Candidate]) -> list[Verdict]: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CuratedRow:
    """A row for one table and the events it was made from."""

    table: TableName
    row: dict[str, Any]
    ingredients: tuple[KafkaOrigin, ...]
    # Names the candidate whatever its verdict (``candidate_id`` of a rejected row), so a
    # replay can tell whether a decision was already written.
    candidate_key: str | None = None


@dataclass
class Summary:
    """What a run of the pipeline did; printed by ``flywheel curate``."""

    events: Counter[str] = field(default_factory=Counter)
    candidates: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    sft: int = 0
    dlq: Counter[str] = field(default_factory=Counter)
    duplicate_events: int = 0
    pending_expired: int = 0
    facts: Counter[str] = field(default_factory=Counter)
    duplicate_facts: int = 0
    stream_time_held_back: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": dict(self.events),
            "candidates": dict(self.candidates),
            "accepted": dict(self.accepted),
            "accepted_total": sum(self.accepted.values()),
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "sft_examples": self.sft,
            "dlq": dict(self.dlq),
            "duplicate_events": self.duplicate_events,
            "pending_expired": self.pending_expired,
            "pairing_facts": dict(self.facts),
            "duplicate_facts": self.duplicate_facts,
            "stream_time_held_back": self.stream_time_held_back,
        }


@dataclass(frozen=True, slots=True)
class _Proposal:
    candidate: Candidate
    ingredients: tuple[KafkaOrigin, ...]


class Pipeline:
    """The curation logic over one ``JoinStore``; not thread-safe."""

    def __init__(
        self,
        *,
        store: JoinStore,
        chain: Chain,
        filter_config_hash: str,
        curator_version: str,
        sft_sample_rate: float,
        join_window_ms: int,
        facts: FactSink,
        regenerate_quiet_ms: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(tz=UTC),
        stream: StreamClock | None = None,
    ) -> None:
        self.store = store
        self.chain = chain
        self.filter_config_hash = filter_config_hash
        self.curator_version = curator_version
        self.sft_sample_rate = sft_sample_rate
        self.join_window_ms = join_window_ms
        self.facts = facts
        self.regenerate_quiet_ms = regenerate_quiet_ms
        self.clock = clock
        self.summary = Summary()
        self._proposals: list[_Proposal] = []
        self._sft: list[CuratedRow] = []
        # Unbounded unless told (``build_pipeline`` passes the settings' bounds); resumes from
        # the stream time committed with the state.
        self.stream = stream if stream is not None else StreamClock()
        self.stream.now = max(self.stream.now, store.stream_time())
        self._expired_at = 0  # stream time of the last expiry

    # -- events -------------------------------------------------------------------------------

    def process(
        self, event_type: EventType, record: Mapping[str, Any], origin: KafkaOrigin
    ) -> Refusal | None:
        """Apply one validated event to the state and collect the candidates it completes.
        A refused event (stamped in the future, or naming another tenant's run) is counted
        and returned for the caller to dead-letter; it leaves the state as it was."""
        ts = event_ts_ms(record)
        tenant = record["tenant"]
        if (refusal := self._future(ts, tenant)) is not None:
            return self._refuse(refusal)
        inline = inline_run(record) if event_type == "feedback" else None
        ref = resolve_event(self.store, event_type, record, inline=inline is not None)
        if isinstance(ref, Refusal):
            return self._refuse(ref)
        self._advance(origin, ts)
        # A client retry re-sends the same event_id: count it once (a retried thumbs-down must
        # not become two corrections, nor count twice against a cap).
        event_key = f"{event_type}\x00{tenant}\x00{record['event_id']}"
        if not self.store.add_seen("event", event_key, ts=ts):
            self.summary.duplicate_events += 1
            metrics.DUPLICATE_EVENTS.inc()
            return None
        self.summary.events[event_type] += 1
        if event_type == "run":
            self._on_run(record, origin, ts)
        elif event_type == "feedback":
            self._on_feedback(record, origin, ts, inline, ref.run)
        else:
            if ref.held:
                self.store.mark_run(tenant, record["run_id"], flag="edited")
            self._propose(edit_candidate(record, origin), (origin,))
        return None

    def _future(self, ts: int, tenant: str | None) -> Refusal | None:
        ahead = self.stream.too_far_ahead(ts)
        if ahead is None:
            return None
        wall, limit = ahead
        return future(tenant, received_ms=ts, wall_ms=wall, limit_ms=limit)

    def _refuse(self, refusal: Refusal) -> Refusal:
        self.summary.dlq[refusal.reason] += 1
        if refusal.join is not None:
            metrics.labeled(metrics.CROSS_TENANT, refusal.join).inc()
        else:
            metrics.FUTURE_EVENTS.inc()
        return refusal

    def _advance(self, origin: KafkaOrigin, ts: int) -> None:
        if not self.stream.advance((origin.topic, origin.partition), ts):
            self.summary.stream_time_held_back += 1
            metrics.STREAM_TIME_HELD_BACK.inc()

    def _on_run(self, record: Mapping[str, Any], origin: KafkaOrigin, ts: int) -> None:
        view = RunView.of_run(record)
        self.store.put_run(
            view.to_json(),
            ts=ts,
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
        )
        if view.parent_run_id:
            # The parent was regenerated away from; this run is kept by default unless
            # something else happens to it within the quiet period.
            self.facts.emit(regenerated_fact(view, origin, ts=ts))
            if self.regenerate_quiet_ms > 0:
                self.store.add_timer(view.tenant, view.run_id, due=ts + self.regenerate_quiet_ms)
        # Only what waited for this tenant's run: another tenant's feedback naming the same id
        # keeps waiting for its own tenant's run (run ids are the client's), or expires.
        for fb, topic, partition, offset in self.store.pop_pending(view.tenant, view.run_id):
            self._with_run(fb, view, KafkaOrigin(topic, partition, offset), origin)
        for body, topic, partition, offset in self.store.pop_pending_facts(
            view.tenant, view.run_id
        ):
            fact = _fact_of(body)
            self._pair_regenerate(fact, view, origin, KafkaOrigin(topic, partition, offset))

    def _on_feedback(
        self,
        record: Mapping[str, Any],
        origin: KafkaOrigin,
        ts: int,
        run: RunView | None,
        stored: StoredRun | None,
    ) -> None:
        """``run`` is carried inline, or ``stored`` is the tenant's run the store holds."""
        run_origin: KafkaOrigin | None = None
        if run is None:
            if stored is None:
                # Feedback before its run: wait for it, until the window ends.
                self.store.add_pending(
                    _jsonable(record),
                    ts=ts,
                    topic=origin.topic,
                    partition=origin.partition,
                    offset=origin.offset,
                )
                metrics.JOIN_PENDING.inc()
                return
            run = RunView.from_json(stored.record)
            run_origin = KafkaOrigin(stored.topic, stored.partition, stored.offset)
        self._with_run(record, run, origin, run_origin)

    def _with_run(
        self,
        feedback: Mapping[str, Any],
        run: RunView,
        origin: KafkaOrigin,
        run_origin: KafkaOrigin | None,
    ) -> None:
        ingredients = (origin,) if run_origin is None else (origin, run_origin)
        ts = event_ts_ms(feedback)
        correction = correction_candidate(feedback, run, origin)
        if correction is not None:
            self._propose(correction, ingredients)
        pol = polarity(feedback)
        # Only a run's first rating takes part in a paired outcome.
        if pol != 0:
            key = prompt_key(run)
            if self.store.add_seen("rated", f"{key}\x00{run.run_id}", ts=ts):
                self.facts.emit(rated_fact(run, pol, signal_of(feedback), origin, ts=ts, key=key))
        if is_spurned_signal(feedback):
            self.store.add_run_mark("spurned", run.tenant, run.run_id, ts=ts)
        elif (
            run.parent_run_id
            and is_kept_signal(feedback)
            # One fact per kept regeneration, whatever the number of kept signals.
            and self.store.mark_run(run.tenant, run.run_id, flag="kept")
        ):
            self.facts.emit(kept_fact(run, signal_of(feedback), origin, ts=ts))
        if pol == POSITIVE and correction is None:
            self._maybe_sft(feedback, run, origin, ingredients, in_store=run_origin is not None)

    # -- pairing facts --------------------------------------------------------------------------

    def process_fact(self, fact: Fact, origin: KafkaOrigin) -> Refusal | None:
        """Apply one pairing fact read at ``origin`` (see ``facts.py``); a refused fact is
        counted and returned, as for ``process``."""
        if (refusal := self._future(fact.ts, fact.tenant)) is not None:
            return self._refuse(refusal)
        ref = resolve_fact(self.store, fact)
        if isinstance(ref, Refusal):
            return self._refuse(ref)
        self._advance(origin, fact.ts)
        if not self.store.add_seen("fact", fact.fact_id, ts=fact.ts):
            self.summary.duplicate_facts += 1
            return None
        self.summary.facts[fact.kind] += 1
        if fact.kind == "regenerated":
            self.store.add_run_mark("regenerated", fact.tenant, fact.key, ts=fact.ts)
        elif fact.kind == "kept":
            parent = ref.run
            if parent is None:
                # The parent's run is late (or never comes): wait for it, until the window ends.
                self.store.add_pending_fact(
                    fact.tenant,
                    fact.key,
                    fact.to_record(),
                    ts=fact.ts,
                    topic=origin.topic,
                    partition=origin.partition,
                    offset=origin.offset,
                )
                metrics.JOIN_PENDING.inc()
                return None
            parent_origin = KafkaOrigin(parent.topic, parent.partition, parent.offset)
            self._pair_regenerate(fact, RunView.from_json(parent.record), parent_origin, origin)
        else:
            self._pair_rated(fact, origin)
        return None

    def _pair_regenerate(
        self, fact: Fact, parent: RunView, parent_origin: KafkaOrigin, fact_origin: KafkaOrigin
    ) -> None:
        assert fact.run is not None and fact.signal is not None  # noqa: S101 - a kept fact
        candidate = regenerate_candidate(fact.run, parent, fact.signal, fact.origin)
        if candidate is not None:
            # Ingredients are what this process read (the fact, the parent's run): the
            # exactly-once check compares them with this process's offsets.
            self._propose(candidate, (fact_origin, parent_origin))

    def _pair_rated(self, fact: Fact, fact_origin: KafkaOrigin) -> None:
        assert fact.run is not None and fact.signal is not None  # noqa: S101 - a rated fact
        run, pol = fact.run, fact.polarity
        opposite = self.store.take_opposite(
            fact.key, tenant=fact.tenant, polarity=pol, run_id=run.run_id
        )
        self.store.add_rated(
            fact.key,
            tenant=fact.tenant,
            polarity=pol,
            run_id=run.run_id,
            ts=fact.ts,
            body={"fact": fact.to_record(), "read_at": _origin_json(fact_origin)},
            matched=opposite is not None,
        )
        if opposite is None:
            return
        other = _fact_of(opposite.body["fact"])
        assert other.run is not None  # noqa: S101 - a rated fact
        up, down = (run, other.run) if pol == POSITIVE else (other.run, run)
        candidate = paired_candidate(up, down, fact.signal, fact.origin)
        if candidate is not None:
            self._propose(candidate, (fact_origin, _origin_of(opposite.body["read_at"])))

    def fire_timers(self) -> int:
        """Regenerations whose quiet period passed in stream time with no further regenerate
        and no sign of being turned away count as kept; returns how many."""
        now = self.stream.now
        if self.regenerate_quiet_ms <= 0 or now == 0:
            return 0
        fired = 0
        for tenant, run_id in self.store.pop_due(now=now):
            marks = ("regenerated", "spurned")
            if any(self.store.has_run_mark(ns, tenant, run_id) for ns in marks):
                continue
            stored = self.store.get_run(tenant, run_id)
            if stored is None or not self.store.mark_run(tenant, run_id, flag="kept"):
                continue  # expired, or already kept by an explicit signal
            run = RunView.from_json(stored.record)
            quiet_until = run.event_time_ms + self.regenerate_quiet_ms
            signal = {
                "event_id": run.event_id or run.run_id,
                "kind": NO_REGENERATE,
                "occurred_at": quiet_until,
                "user_id": run.user_id,
            }
            origin = KafkaOrigin(stored.topic, stored.partition, stored.offset)
            self.facts.emit(kept_fact(run, signal, origin, ts=max(quiet_until, now)))
            fired += 1
        return fired

    def _maybe_sft(
        self,
        feedback: Mapping[str, Any],
        run: RunView,
        origin: KafkaOrigin,
        ingredients: tuple[KafkaOrigin, ...],
        *,
        in_store: bool,
    ) -> None:
        if not sft_sampled(run.run_id, self.sft_sample_rate):
            return
        if in_store:
            stored = self.store.get_run(run.tenant, run.run_id)
            if (
                stored is None
                or stored.edited
                or not self.store.mark_run(run.tenant, run.run_id, flag="sampled")
            ):
                return
        elif not self.store.add_run_mark("sft", run.tenant, run.run_id, ts=event_ts_ms(feedback)):
            return
        now = self.clock()
        self.summary.sft += 1
        metrics.SFT.inc()
        self._sft.append(
            CuratedRow(
                table="sft_examples",
                row={
                    "example_id": content_hash("sft", run.tenant, run.run_id),
                    "prompt": [dict(m) for m in run.prompt],
                    "response": run.response,
                    "run_id": run.run_id,
                    "tenant": run.tenant,
                    "user_hash": user_hash(run.tenant, run.user_id),
                    "feature": run.feature,
                    "model": run.model,
                    "model_version": run.model_version,
                    **self._lineage(datetime.fromtimestamp(run.event_time_ms / 1000, tz=UTC), now),
                    **_kafka(origin),
                },
                ingredients=ingredients,
            )
        )

    def _propose(self, candidate: Candidate, ingredients: tuple[KafkaOrigin, ...]) -> None:
        self.summary.candidates[candidate.source] += 1
        metrics.labeled(metrics.CANDIDATES, candidate.source).inc()
        self._proposals.append(_Proposal(candidate, ingredients))

    # -- retention ----------------------------------------------------------------------------

    def expire(self, *, force: bool = False) -> int:
        """Drop joins that fell out of the window (by stream time); returns expired feedback.

        At most once per ``_EXPIRE_EVERY`` of the window in stream time (or a minute), unless
        forced: an expiry scans the dedup memory, which grows with every event."""
        every = min(self.join_window_ms // _EXPIRE_EVERY, 60_000)
        now = self.stream.now
        if now == 0 or (not force and now - self._expired_at < every):
            return 0
        self._expired_at = now
        expired = self.store.expire(before_ts=now - self.join_window_ms)
        if expired:
            self.summary.pending_expired += expired
            metrics.JOIN_EXPIRED.inc(expired)
        return expired

    # -- filters and rows ---------------------------------------------------------------------

    def drain(self) -> list[CuratedRow]:
        """Filter the collected candidates and return every row they and the sampler made."""
        proposals, self._proposals = self._proposals, []
        sft, self._sft = self._sft, []
        self.store.set_stream_time(self.stream.now)  # committed with the batch's state
        rows: list[CuratedRow] = list(sft)
        for sampled in sft:  # no raw PII in any table, whatever the policy (filters/redaction.py)
            redact_row(sampled.row)
        if not proposals:
            return rows
        verdicts = self.chain.run_many([p.candidate for p in proposals])
        now = self.clock()
        for proposal, verdict in zip(proposals, verdicts, strict=True):
            source = proposal.candidate.source
            if verdict.accepted:
                self.summary.accepted[source] += 1
                metrics.labeled(metrics.ACCEPTED, source).inc()
                rows.append(
                    CuratedRow(
                        "dpo_pairs",
                        redact_row(self._pair_row(verdict, now)),
                        proposal.ingredients,
                        candidate_key(proposal.candidate),
                    )
                )
            else:
                for reason in verdict.reasons or ("rejected",):
                    self.summary.rejected[reason] += 1
                    metrics.labeled(metrics.REJECTED, reason).inc()
                rows.append(
                    CuratedRow(
                        "rejected_candidates",
                        redact_row(self._rejected_row(proposal.candidate, verdict, now)),
                        proposal.ingredients,
                        candidate_key(proposal.candidate),
                    )
                )
        return rows

    def reset_pending(self) -> None:
        """Forget collected candidates and the filters' tentative state (a batch is being
        dropped; the join store is rolled back by its owner)."""
        self._proposals.clear()
        self._sft.clear()
        self.chain.rollback()

    def committed(self) -> None:
        """The batch is in the lake: make the filters' tentative state permanent."""
        self.chain.commit()

    def _lineage(self, event_time: datetime, now: datetime) -> dict[str, Any]:
        return {
            "event_time": event_time,
            "curated_at": now,
            "curator_version": self.curator_version,
            "filter_config_hash": self.filter_config_hash,
        }

    def _pair_row(self, verdict: Verdict, now: datetime) -> dict[str, Any]:
        c = verdict.candidate
        prompt = [dict(m) for m in c.prompt]
        return {
            # The filters' pair_id (normalised texts): the exact-dedup key is the column.
            "pair_id": pair_id(c.prompt, c.chosen, c.rejected),
            "prompt": prompt,
            "chosen": c.chosen,
            "rejected": c.rejected,
            "source": c.source,
            "run_id": c.run_id,
            "chosen_run_id": c.chosen_run_id,
            "rejected_run_id": c.rejected_run_id,
            "event_id": c.event_id,
            "tenant": c.tenant,
            "user_hash": user_hash(c.tenant, c.user_id),
            "feature": c.feature,
            "model": c.model,
            "model_version": c.model_version,
            "similarity": verdict.scores.get("similarity"),
            "toxicity": verdict.scores.get("toxicity"),
            "toxicity_rejected": verdict.scores.get("toxicity_rejected"),
            "weight": _WEIGHTS.get(c.source, 1.0),
            **self._lineage(c.event_time, now),
            **_kafka(c.origin),
        }

    def _rejected_row(self, original: Candidate, verdict: Verdict, now: datetime) -> dict[str, Any]:
        # The original texts are kept for audit unless a filter rewrote them (PII redaction):
        # the audit table must not become the place where the redacted PII survives.
        c = verdict.candidate
        prompt = [dict(m) for m in c.prompt]
        return {
            "candidate_id": candidate_key(original),
            "source": c.source,
            "reasons": list(verdict.reasons or ("rejected",)),
            "detail": verdict.detail or None,
            "prompt": prompt,
            "chosen": c.chosen,
            "rejected": c.rejected,
            "run_id": c.run_id,
            "event_id": c.event_id,
            "tenant": c.tenant,
            "user_hash": user_hash(c.tenant, c.user_id),
            "feature": c.feature,
            "similarity": verdict.scores.get("similarity"),
            "toxicity": verdict.scores.get("toxicity"),
            **self._lineage(c.event_time, now),
            **_kafka(c.origin),
        }


def candidate_key(c: Candidate) -> str:
    """A candidate's identity, independent of any filter's verdict or rewrite."""
    o = c.origin
    return content_hash(
        c.source,
        c.event_id,
        c.run_id,
        c.chosen_run_id,
        c.rejected_run_id,
        o.topic,
        o.partition,
        o.offset,
    )


def _kafka(origin: KafkaOrigin) -> dict[str, Any]:
    return {
        "kafka_topic": origin.topic,
        "kafka_partition": origin.partition,
        "kafka_offset": origin.offset,
    }


def _origin_json(origin: KafkaOrigin) -> list[Any]:
    return [origin.topic, origin.partition, origin.offset]


def _origin_of(value: Iterable[Any]) -> KafkaOrigin:
    topic, partition, offset = value
    return KafkaOrigin(str(topic), int(partition), int(offset))


def _fact_of(body: Mapping[str, Any]) -> Fact:
    fact = Fact.from_record(body)
    assert fact is not None  # noqa: S101 - only known kinds are stored
    return fact


def _jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded record with its timestamps as epoch milliseconds (JSON-safe, exact)."""
    out = dict(record)
    for key in ("occurred_at", "received_at"):
        value = out.get(key)
        if isinstance(value, datetime):
            out[key] = int(value.timestamp() * 1000)
    return out


def build_chain(settings: FilterSettings, store: JoinStore) -> FilterChain:
    """The filters' chain, with exact and event dedup kept in the join store (durable,
    committed with it). Near-dup and caps live in memory; ``load_filter_state`` rebuilds them
    from the table on start."""
    state = FilterState.in_memory(settings)
    state.pairs = StoreKeys(store, ns="pair_dedup")
    state.events = StoreKeys(store, ns="event_dedup")
    return build_filters(settings, state, user_key=_user_key)


def _user_key(candidate: Candidate) -> str | None:
    # The table's user_hash, so caps can be rebuilt from the table's rows.
    return user_hash(candidate.tenant, candidate.user_id)


FILTER_STATE_COLUMNS = (
    "feature",
    "chosen",
    "rejected",
    "tenant",
    "user_hash",
    "event_time",
    "curated_at",
)


def load_filter_state(chain: FilterChain, dpo_pairs: pa.Table, settings: FilterSettings) -> None:
    """Feed the in-memory filter state (near-dup index, caps) with the table's rows."""
    if dpo_pairs.num_rows == 0:
        return
    ordered = dpo_pairs.sort_by("curated_at")
    if settings.near_dup.enabled:
        tail = ordered.slice(max(0, ordered.num_rows - settings.near_dup.max_entries))
        scope = settings.near_dup.scope
        chain.state.near_dup.load(
            (f if scope == "feature" else "", c, r)
            for f, c, r in zip(
                tail.column("feature").to_pylist(),
                tail.column("chosen").to_pylist(),
                tail.column("rejected").to_pylist(),
                strict=True,
            )
        )
    if settings.caps.enabled:
        horizon = datetime.now(tz=UTC) - settings.caps.window * settings.caps.retain_windows
        recent = ordered.filter(pc.greater_equal(ordered.column("event_time"), horizon))
        chain.state.caps.load(
            zip(
                recent.column("tenant").to_pylist(),
                recent.column("user_hash").to_pylist(),
                recent.column("event_time").to_pylist(),
                strict=True,
            )
        )


def build_pipeline(
    settings: CuratorSettings, store: JoinStore, *, facts: FactSink, chain: Chain | None = None
) -> Pipeline:
    return Pipeline(
        store=store,
        chain=chain if chain is not None else build_chain(settings.filters, store),
        filter_config_hash=settings.filters.config_hash(),
        curator_version=_version(),
        sft_sample_rate=settings.sft_sample_rate,
        join_window_ms=int(settings.join_window_s * 1000),
        facts=facts,
        regenerate_quiet_ms=int(settings.regenerate_quiet_s * 1000),
        stream=StreamClock(
            max_ahead_of_wall_ms=int(settings.stream_time.max_ahead_of_wall_s * 1000),
            max_step_ms=int(settings.stream_time.max_step_s * 1000),
        ),
    )


def _version() -> str:
    try:
        return version("flywheel-curator")
    except PackageNotFoundError:
        return "unknown"
