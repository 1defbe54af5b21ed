"""``flywheel curate`` (the pipeline over a file of events), ``flywheel replay`` (the stream from
an offset or a timestamp into a table), ``flywheel data compact`` (small files, checkpoint,
vacuum) and ``flywheel data reset-offsets`` (continue a lake on recreated topics). Argument
parsing around library calls; settings come from ``FLYWHEEL_CURATOR_*``."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from flywheel_common.cli import Handler
from flywheel_common.codec import AvroCodec
from flywheel_common.errors import ConfigError, DecodeError, EncodeError, LakeError
from flywheel_common.kafka import make_consumer
from flywheel_common.lake import TableName
from flywheel_common.logs import configure_logging
from flywheel_common.settings import LakeSettings
from flywheel_common.topics import EventType

from flywheel_curator.candidate import KafkaOrigin
from flywheel_curator.facts import LoopbackFacts
from flywheel_curator.filters import install_log_redaction
from flywheel_curator.joins import JoinStore
from flywheel_curator.offsets import (
    fingerprints,
    gaps,
    partitions_of,
    replaced,
    reset_offsets,
    watermarks,
)
from flywheel_curator.pipeline import Pipeline, build_pipeline
from flywheel_curator.retention import PINNED_TABLE, REGISTRY_TABLE, keep_pinned_files
from flywheel_curator.settings import CuratorSettings, StartSettings
from flywheel_curator.sink import COMMIT_ORDER, DeltaSink
from flywheel_curator.sources import validate

__all__ = ["compact_command", "curate_command", "replay_command", "reset_offsets_command"]

_NAMES: dict[str, str] = {"run": "Run", "feedback": "Feedback", "edit": "Edit"}
_FILE_BATCH = 5_000
_DEFAULT_TENANT = "default"
_NAMESPACE = uuid.UUID("0b9f6a1e-3c2d-4e5f-8a7b-9c0d1e2f3a4b")


def curate_command(parser: argparse.ArgumentParser) -> Handler:
    """Run the curation pipeline over a JSONL file of events and print a summary.

    Each line is one event in the JSON the ingest API accepts, with its type:
    {"type": "run"|"feedback"|"edit", ...fields}. Timestamps are epoch milliseconds or ISO
    8601. With --lake the rows are appended to the tables there; without it nothing is written.
    """
    parser.add_argument("--input", required=True, type=Path, help="events.jsonl")
    parser.add_argument("--lake", help="lake URI to append the rows to (default: dry run)")
    parser.add_argument("--state", type=Path, help="state file (default: in memory)")
    parser.add_argument("--tenant", default=_DEFAULT_TENANT, help="tenant of lines without one")
    parser.add_argument("--sft-rate", type=float, help="SFT sampling rate (default: settings)")
    return _curate


def _curate(args: argparse.Namespace) -> int:
    base = CuratorSettings()
    update: dict[str, Any] = {}
    if args.lake:
        update["lake"] = LakeSettings(uri=args.lake)
    if args.sft_rate is not None:
        update["sft_sample_rate"] = args.sft_rate
    settings = base.model_copy(update=update)
    configure_logging("WARNING", settings.logging.format)
    install_log_redaction()  # no PII in any log line (filters/redaction.py)
    store = JoinStore(args.state, identity=f"file|{settings.filters.config_hash()}")
    facts = LoopbackFacts()
    pipeline = build_pipeline(settings, store, facts=facts)
    fed = _FactFeeder(pipeline, facts, source=f"pairing:{args.input.name}")
    sink = DeltaSink(settings.lake, group="curate") if args.lake else None
    if sink is not None:
        sink.ensure_tables()
    codec = AvroCodec()
    written: dict[str, int] = dict.fromkeys(COMMIT_ORDER, 0)
    pending = 0
    source = f"file:{args.input.name}"
    for line_no, event_type, record, error in _events(args.input, codec, args.tenant):
        if error is not None or event_type is None:
            reason, _, detail = (error or "invalid_event: ").partition(": ")
            pipeline.summary.dlq[reason] += 1
            # Line numbers are 1-based for people; KafkaOrigin keeps the 0-based position.
            print(f"{args.input}:{line_no + 1}: {reason}: {detail}", file=sys.stderr)
            continue
        refusal = pipeline.process(event_type, record, KafkaOrigin(source, 0, line_no))
        if refusal is not None:  # counted by the pipeline
            reason, detail = refusal.reason, refusal.detail
            print(f"{args.input}:{line_no + 1}: {reason}: {detail}", file=sys.stderr)
        fed.feed()
        pending += 1
        if pending >= _FILE_BATCH:
            fed.fire_timers()
            _write(pipeline, sink, store, written)
            pending = 0
    fed.fire_timers()
    pipeline.expire(force=True)
    _write(pipeline, sink, store, written)
    store.close()
    summary = pipeline.summary.as_dict()
    summary["written"] = written if sink is not None else None
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


class _FactFeeder:
    """Feeds pairing facts straight back into the pipeline: a file has one reader, which is
    also where every fact would be routed."""

    def __init__(self, pipeline: Pipeline, facts: LoopbackFacts, *, source: str) -> None:
        self._pipeline = pipeline
        self._facts = facts
        self._source = source
        self._next = 0

    def feed(self) -> None:
        for fact in self._facts.take():
            refusal = self._pipeline.process_fact(fact, KafkaOrigin(self._source, 0, self._next))
            if refusal is not None:  # counted by the pipeline
                print(f"{self._source}: {refusal.reason}: {refusal.detail}", file=sys.stderr)
            self._next += 1

    def fire_timers(self) -> None:
        self._pipeline.fire_timers()
        self.feed()


def _write(
    pipeline: Any, sink: DeltaSink | None, store: JoinStore, written: dict[str, int]
) -> None:
    rows: dict[TableName, list[dict[str, Any]]] = {t: [] for t in COMMIT_ORDER}
    for row in pipeline.drain():
        rows[row.table].append(row.row)
    if sink is not None:
        for table, committed in sink.append(rows).items():
            written[table] += committed
    store.commit({})
    pipeline.committed()


def _events(
    path: Path, codec: AvroCodec, tenant: str
) -> Iterator[tuple[int, EventType | None, dict[str, Any], str | None]]:
    """(0-based line number, type, record decoded as the stream would see it, error).

    An error is ``"<reason>: <what is wrong>"``, reason being a DLQ reason code."""
    try:
        lines = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    with lines:
        for line_no, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, None, {}, f"undecodable: not JSON ({exc})"
                continue
            if not isinstance(raw, dict) or raw.get("type") not in _NAMES:
                found = raw.get("type") if isinstance(raw, dict) else type(raw).__name__
                yield (
                    line_no,
                    None,
                    {},
                    (f"undecodable: 'type' must be one of {sorted(_NAMES)}, not {found!r}"),
                )
                continue
            event_type = raw.pop("type")
            raw.setdefault("tenant", tenant)
            raw.setdefault("event_id", str(uuid.uuid5(_NAMESPACE, f"{path.name}:{line_no}")))
            try:
                raw["occurred_at"] = _ts(raw.get("occurred_at"))
                raw["received_at"] = _ts(raw.get("received_at", raw["occurred_at"]))
                # Through the codec, so the record is exactly what a consumer would decode.
                decoded = codec.decode(codec.encode(_NAMES[event_type], raw))
            except (EncodeError, DecodeError, ValueError, TypeError, OverflowError) as exc:
                yield line_no, None, {}, f"invalid_event: {exc}"
                continue
            problem = validate(event_type, decoded.name, decoded.record)
            if problem is not None:
                yield line_no, None, {}, f"invalid_event: {problem}"
                continue
            yield line_no, event_type, decoded.record, None


def _ts(value: Any) -> datetime:
    if value is None:
        return datetime.now(tz=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def replay_command(parser: argparse.ArgumentParser) -> Handler:
    """Replay the event topics from an offset or a timestamp into a lake, then stop.

    Runs the stream curator under its own consumer group. Into a fresh lake (or a fresh
    group) it starts at --from-offset / --from-timestamp; partitions the lake has already
    recorded for that group resume from the lake, exactly once as always.
    """
    parser.add_argument("--lake", required=True, help="lake URI (a fresh one for a rebuild)")
    parser.add_argument("--group", help="consumer group (default: replay-<uuid>)")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-offset", type=int, help="offset in every partition")
    start.add_argument("--from-timestamp", help="ISO 8601 time or epoch milliseconds")
    start.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--state-dir", type=Path, help="state directory (default: <lake>/.state)")
    parser.add_argument("--follow", action="store_true", help="keep consuming after catching up")
    return _replay


def _replay(args: argparse.Namespace) -> int:
    from flywheel_curator.consumer import Curator, stop_on_signals

    base = CuratorSettings()
    if args.from_offset is not None:
        start = StartSettings(mode="offset", offset=args.from_offset, stop_at_end=not args.follow)
    elif args.from_timestamp is not None:
        stamp = args.from_timestamp
        ms = int(stamp) if stamp.isdigit() else int(_ts(stamp).timestamp() * 1000)
        start = StartSettings(mode="timestamp", timestamp_ms=ms, stop_at_end=not args.follow)
    else:
        start = StartSettings(mode="earliest", stop_at_end=not args.follow)
    settings = base.model_copy(
        update={
            "lake": LakeSettings(uri=args.lake),
            "group_id": args.group or f"replay-{uuid.uuid4().hex[:8]}",
            "state_dir": args.state_dir or Path(args.lake) / ".curator-state",
            "start": start,
        }
    )
    configure_logging(settings.logging.level, settings.logging.format)
    install_log_redaction()  # no PII in any log line (filters/redaction.py)
    stop = threading.Event()
    restore = stop_on_signals(stop)
    try:
        curator = Curator(settings)
        curator.run(stop)
    finally:
        restore()
    print(json.dumps(curator.pipeline.summary.as_dict(), indent=2, sort_keys=True))
    return 0


def compact_command(parser: argparse.ArgumentParser) -> Handler:
    """Compact small files of the curator's tables, checkpoint them, optionally vacuum.

    Compaction keeps the tables' application-transaction ids (the curator's offsets). A vacuum
    that would delete files of the version pinned with ``flywheel data pin`` is refused.
    """
    parser.add_argument("--lake", help="lake URI (default: FLYWHEEL_CURATOR_LAKE__URI)")
    parser.add_argument("--table", action="append", choices=COMMIT_ORDER, help="repeatable")
    parser.add_argument("--target-size-mb", type=int, default=128)
    parser.add_argument("--vacuum", action="store_true", help="delete unreferenced files")
    parser.add_argument("--retention-hours", type=int, default=168)
    parser.add_argument(
        "--registry", help=f"the trainer's registry, for the pin (default: <lake>/{REGISTRY_TABLE})"
    )
    return _compact


def _compact(args: argparse.Namespace) -> int:
    settings = CuratorSettings()
    lake = LakeSettings(uri=args.lake) if args.lake else settings.lake
    storage = lake.storage_options_plain() or None
    for table in args.table or COMMIT_ORDER:
        uri = lake.table_uri(table)
        try:
            if not DeltaTable.is_deltatable(uri, storage_options=storage):
                print(f"{table}: no table at {uri}")
                continue
            dt = DeltaTable(uri, storage_options=storage)
            metrics = dt.optimize.compact(target_size=args.target_size_mb * 1024 * 1024)
            dt.update_incremental()
            dt.create_checkpoint()
            removed: list[str] = []
            if args.vacuum:
                enforce = args.retention_hours >= 168
                if table == PINNED_TABLE:  # never delete what the pinned version reads
                    keep_pinned_files(
                        dt,
                        registry_uri=args.registry or lake.table_uri(REGISTRY_TABLE),
                        retention_hours=args.retention_hours,
                        enforce_retention_duration=enforce,
                        storage=storage,
                    )
                removed = dt.vacuum(
                    retention_hours=args.retention_hours,
                    dry_run=False,
                    enforce_retention_duration=enforce,
                )
        except DeltaError as exc:
            raise LakeError(f"cannot compact {table}: {exc}") from exc
        print(
            f"{table}: version {dt.version()}, files added {metrics.get('numFilesAdded')}, "
            f"removed {metrics.get('numFilesRemoved')}, vacuumed {len(removed)}"
        )
    return 0


def reset_offsets_command(parser: argparse.ArgumentParser) -> Handler:
    """Continue a lake on recreated topics: move the curator's offsets to the topics' start.

    By default every partition of each topic the curator refuses to start on (its id changed,
    or a partition ends before the lake's offset) goes to its log start (--to earliest) or
    end (--to latest). The reset is one commit per table, with who, why and the old and new
    offsets in its metadata (see each table's history), and it fences any curator still
    running: stop them first. To rebuild the tables from the topics instead, replay into a
    fresh lake.
    """
    parser.add_argument("--lake", help="lake URI (default: FLYWHEEL_CURATOR_LAKE__URI)")
    parser.add_argument("--group", help="consumer group (default: FLYWHEEL_CURATOR_GROUP_ID)")
    parser.add_argument("--to", choices=["earliest", "latest"], default="earliest")
    parser.add_argument(
        "--partition",
        action="append",
        metavar="TOPIC:N",
        help="reset this partition even if the lake is not ahead of it (repeatable)",
    )
    parser.add_argument("--actor", default=f"cli:{getpass.getuser()}", help="who does this")
    parser.add_argument("--reason", required=True, help="why (kept in the tables' history)")
    return _reset_offsets


def _reset_offsets(args: argparse.Namespace) -> int:
    base = CuratorSettings()
    settings = base.model_copy(
        update={
            "lake": LakeSettings(uri=args.lake) if args.lake else base.lake,
            "group_id": args.group or base.group_id,
        }
    )
    sink = DeltaSink(settings.lake, group=settings.group_id, instance=settings.instance_id)
    sink.ensure_tables()
    consumer = make_consumer(settings.kafka, group_id=f"{settings.group_id}-reset-offsets")
    t = settings.kafka.topics
    try:
        every = partitions_of(consumer, [t.runs, t.feedback, t.edits, t.pairing])
        if args.partition:
            tps = [_partition(p) for p in args.partition]
        else:
            # A topic is recreated as a whole: every partition of one that changed goes.
            ids = fingerprints(settings.kafka, sorted({topic for topic, _ in every}))
            changed = {r.topic for r in replaced(sink, ids)}
            changed |= {g.topic for g in gaps(sink.offsets(every), watermarks(consumer, every))}
            tps = [tp for tp in every if tp[0] in changed]
        if not tps:
            print("nothing to reset: the lake matches the topics")
            return 0
        marks = watermarks(consumer, tps)
    finally:
        consumer.close()
    topics = fingerprints(settings.kafka, sorted({topic for topic, _ in tps}))
    changes = reset_offsets(
        sink, marks, topics=topics, to=args.to, actor=args.actor, reason=args.reason
    )
    for c in changes:
        print(f"{c['topic']}[{c['partition']}]: offset {c['from']} -> {c['to']}")
    print(f"recorded in the history of {', '.join(COMMIT_ORDER)} (operation reset-offsets)")
    return 0


def _partition(text: str) -> tuple[str, int]:
    topic, _, number = text.rpartition(":")
    if not topic or not number.isdigit():
        raise ConfigError(f"--partition {text!r}: expected TOPIC:N")
    return topic, int(number)
