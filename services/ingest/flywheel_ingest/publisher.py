"""Events to Kafka, with an awaitable acknowledgement per request.

One idempotent ``acks=all`` producer per process. ``publish()`` encodes a request's events
(Avro single-object encoding), hands them to librdkafka keyed by ``run_id`` and awaits one
future that resolves when the broker has acknowledged the last of them. The event loop itself
polls the producer (every millisecond while events are in flight, every 100 ms otherwise), so
delivery callbacks run on the loop thread and resolve futures directly. A separate poll thread
would have to take the GIL back from the loop for every single delivery callback, and each
handoff can wait a full switch interval (5 ms) while the loop is busy: that convoy, not CPU,
was what bounded throughput and made the latency tail.

Failure is answered quickly with ``PublishRejected`` (the app turns it into 503 +
``Retry-After``):

- ``broker_down``: librdkafka reported ``_ALL_BROKERS_DOWN``, or the periodic metadata probe
  failed; nothing is produced until a probe succeeds again.
- ``queue_full``: the producer queue has no room for the whole request; nothing is produced.
- ``ack_timeout``: no ack within ``ack_timeout_s``. The events stay in librdkafka's queue and
  may still land later (``delivery_timeout_ms`` is longer on purpose, so a short outage loses
  nothing); the client retries with the same ``event_id``s and consumers deduplicate by
  ``event_id``. So a 503 means "not known to be stored", never "not stored", and a 202 always
  means "acknowledged by the broker".
- ``delivery_failed``: librdkafka gave up on an event (e.g. the topic does not exist).

When a request fails after some of its events were acknowledged, ``PublishRejected.stored``
names them (by index), so the answer can list exactly which event ids are stored.

Size: ``encode`` refuses (``EventTooLarge``, before anything is produced) an event larger
than a message may be (see ``messages``); the producer's own limit is lowered to what the
topics take at start, so a batch of small events is never larger than a topic takes either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Literal

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from flywheel_common import AvroCodec, BrokerUnavailableError, KafkaSettings
from flywheel_common.kafka import producer_config

from flywheel_ingest.messages import (
    RECORD_OVERHEAD,
    Encoded,
    EventRecord,
    encode_events,
    producer_message_limit,
    topic_message_limit,
)
from flywheel_ingest.metrics import IngestMetrics

__all__ = ["PublishRejected", "Publisher", "UnavailableReason"]

log = logging.getLogger(__name__)

UnavailableReason = Literal["broker_down", "queue_full", "ack_timeout", "delivery_failed", "closed"]

_POLL_INTERVAL_S = 0.001
"""Poll period while events are in flight: at most this much is added to an ack's latency
(linger.ms plus a broker round trip), for a poll(0) that costs a few microseconds."""
_IDLE_POLL_INTERVAL_S = 0.1
"""Poll period with nothing in flight: serves librdkafka's error callbacks and logs."""
_PROBE_TIMEOUT_S = 1.0
"""A metadata probe slower than this counts as a failure."""
_CLOSE_FLUSH_TIMEOUT_S = 10.0
"""On shutdown, how long to wait for events already in the queue to be acknowledged."""


class PublishRejected(BrokerUnavailableError):
    """The events of a request are not known to be stored; the client should retry.

    ``stored`` holds the indices (in the request) of the events the broker did acknowledge.
    """

    def __init__(
        self, reason: UnavailableReason, detail: str, *, stored: Sequence[int] = ()
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stored = stored


class _Pending:
    """The events of one request in flight; completed by the last delivery callback."""

    __slots__ = ("acked", "error", "future", "publisher", "remaining")

    def __init__(self, publisher: Publisher, future: asyncio.Future[None], count: int) -> None:
        self.publisher = publisher
        self.future = future
        self.remaining = count
        self.error: KafkaError | None = None
        self.acked: list[Message] = []  # read only when the request fails

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # Served by poll(), which only the event loop thread calls: no lock, and the future
        # may be resolved right here.
        if err is None:
            self.acked.append(msg)
        elif self.error is None:
            self.error = err
        self.remaining -= 1
        if self.remaining == 0:
            self._complete()

    def never_produced(self, count: int) -> None:
        """``count`` events will get no delivery report: do not wait for them."""
        self.remaining -= count
        if self.remaining == 0:
            self._complete()

    def _complete(self) -> None:
        if self.error is None:
            self.publisher._acked = True
        if self.future.done():  # timed out, or cancelled (the client went away)
            return
        if self.error is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(PublishRejected("delivery_failed", self.error.str()))


def _expire(future: asyncio.Future[None], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(PublishRejected("ack_timeout", f"no broker ack within {timeout_s:g}s"))


class Publisher:
    """The process's Kafka producer, with per-request acknowledgement futures."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        codec: AvroCodec,
        metrics: IngestMetrics,
        max_message_bytes: int,
        ack_timeout_s: float,
        linger_ms: float,
        queue_max_messages: int,
        delivery_timeout_ms: int,
        health_probe_interval_s: float,
    ) -> None:
        self._kafka = kafka
        self._max_message_bytes = max_message_bytes
        self.max_event_bytes = max_message_bytes - RECORD_OVERHEAD
        """Largest key + value accepted; lowered at start to what the topics take."""
        self._codec = codec
        self._metrics = metrics
        self._ack_timeout_s = ack_timeout_s
        self._queue_max = queue_max_messages
        self._probe_interval_s = health_probe_interval_s
        self._config = producer_config(
            kafka,
            linger_ms=linger_ms,
            delivery_timeout_ms=delivery_timeout_ms,
            queue_max_messages=queue_max_messages,
            overrides={
                "error_cb": self._on_error,
                "logger": log,
                "message.max.bytes": max_message_bytes,
            },
        )
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll_timer: asyncio.TimerHandle | None = None
        self._polling_fast = False
        self._acked = False  # a request was acknowledged since the last poll
        self._reachable = False
        self._closed = False
        self._stop = threading.Event()
        self._probe_now = threading.Event()
        self._probe_thread: threading.Thread | None = None

    @property
    def reachable(self) -> bool:
        """Whether the broker answered recently and has not been reported down since."""
        return self._reachable and not self._closed

    async def start(self) -> None:
        """Create the producer, probe the broker once, start polling and the probe thread."""
        self._loop = asyncio.get_running_loop()
        topic_limit = await asyncio.to_thread(topic_message_limit, self._kafka)
        limit = producer_message_limit(self._max_message_bytes, topic_limit)
        if limit < self._max_message_bytes:
            self._config["message.max.bytes"] = self._config["batch.size"] = limit
        self.max_event_bytes = limit - RECORD_OVERHEAD
        self._producer = Producer(self._config)
        await asyncio.to_thread(self._probe)
        self._probe_thread = threading.Thread(
            target=self._probe_forever, name="ingest-kafka-probe", daemon=True
        )
        self._probe_thread.start()
        self._poll_timer = self._loop.call_later(_IDLE_POLL_INTERVAL_S, self._poll)

    async def close(self) -> None:
        """Refuse new events, wait (bounded) for queued ones to be acked, stop the threads."""
        self._closed = True
        self._stop.set()
        self._probe_now.set()
        if self._probe_thread is not None:
            await asyncio.to_thread(self._probe_thread.join)
        producer = self._producer
        if producer is not None:
            # Polled here rather than flush()ed in a thread, so that delivery callbacks stay
            # on the loop thread; the poll timer keeps running meanwhile.
            deadline = time.monotonic() + _CLOSE_FLUSH_TIMEOUT_S
            while len(producer) and time.monotonic() < deadline:
                producer.poll(0)
                await asyncio.sleep(_POLL_INTERVAL_S)
            if len(producer):
                log.warning("events unacknowledged at shutdown", extra={"events": len(producer)})
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None

    def encode(self, events: Sequence[EventRecord]) -> list[Encoded]:
        """The messages of ``events``, sized against the limit; nothing is produced (see
        ``messages.encode_events``)."""
        return encode_events(self._codec, events, max_bytes=self.max_event_bytes)

    async def publish(self, messages: Sequence[Encoded]) -> None:
        """Produce ``messages`` and return once the broker acknowledged all of them.

        Raises:
            PublishRejected: the events are not known to be stored (see the module docstring);
                ``stored`` names those that are.
        """
        producer, loop = self._producer, self._loop
        if producer is None or loop is None or self._closed:
            raise PublishRejected("closed", "the service is shutting down")
        if not self._reachable:
            raise PublishRejected("broker_down", "the Kafka broker is unreachable")
        count = len(messages)
        if len(producer) + count > self._queue_max:
            raise PublishRejected("queue_full", "the producer queue is full")
        future: asyncio.Future[None] = loop.create_future()
        produce = producer.produce
        pending = _Pending(self, future, count)
        callback = pending.on_delivery
        produced = 0
        try:
            for topic, value, key in messages:
                produce(topic, value, key, on_delivery=callback)
                produced += 1
        except (BufferError, KafkaException) as exc:
            # Those produced so far may land: wait for them (bounded) to say which did.
            pending.never_produced(count - produced)
            with contextlib.suppress(PublishRejected):
                await self._acknowledged(loop, future)
            reason: UnavailableReason = (
                "queue_full" if isinstance(exc, BufferError) else "delivery_failed"
            )
            raise PublishRejected(reason, str(exc), stored=_indices(pending, messages)) from exc
        try:
            await self._acknowledged(loop, future)
        except PublishRejected as exc:
            exc.stored = _indices(pending, messages)
            raise

    async def _acknowledged(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
    ) -> None:
        if not self._polling_fast:
            self._schedule_poll(loop, fast=True)
        started = time.perf_counter()
        timer = loop.call_later(self._ack_timeout_s, _expire, future, self._ack_timeout_s)
        try:
            await future
        finally:
            timer.cancel()
            self._metrics.ack_seconds.observe(time.perf_counter() - started)

    # -- polling (event loop thread) ------------------------------------------------------

    def _schedule_poll(self, loop: asyncio.AbstractEventLoop, *, fast: bool) -> None:
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        self._polling_fast = fast
        delay = _POLL_INTERVAL_S if fast else _IDLE_POLL_INTERVAL_S
        self._poll_timer = loop.call_later(delay, self._poll)

    def _poll(self) -> None:
        producer, loop = self._producer, self._loop
        assert producer is not None and loop is not None  # noqa: S101 - set in start
        # Serves delivery callbacks (which resolve futures), error callbacks and logs.
        producer.poll(0)
        if self._acked:
            self._acked = False
            if not self._reachable:
                self._set_reachable(True, "an event was acknowledged")
        self._schedule_poll(loop, fast=len(producer) > 0)

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (event loop thread, from ``poll``)."""
        code = err.code()
        if err.fatal():
            # An idempotent producer's fatal error (e.g. fenced): it cannot send again.
            log.critical("fatal producer error", extra={"error": err.str()})
            self._set_reachable(False, err.str())
            self._closed = True
        elif code == KafkaError._ALL_BROKERS_DOWN:
            self._set_reachable(False, err.str())
        elif code == KafkaError._TRANSPORT:
            # One connection dropped (also happens on idle reconnects): ask, do not assume.
            self._probe_now.set()
        else:
            log.warning("producer error", extra={"error": err.str(), "code": code})

    # -- probe thread -------------------------------------------------------------------

    def _probe_forever(self) -> None:
        while not self._stop.is_set():
            self._probe_now.wait(self._probe_interval_s)
            self._probe_now.clear()
            if not self._stop.is_set():
                self._probe()

    def _probe(self) -> None:
        assert self._producer is not None  # noqa: S101 - set in start
        try:
            md = self._producer.list_topics(topic=self._kafka.topics.runs, timeout=_PROBE_TIMEOUT_S)
        except KafkaException as exc:
            self._set_reachable(False, str(exc))
            return
        self._set_reachable(bool(md.brokers), "metadata probe")

    def _set_reachable(self, up: bool, why: str) -> None:
        if up != self._reachable:
            log.log(
                logging.INFO if up else logging.WARNING,
                "kafka reachable" if up else "kafka unreachable",
                extra={"why": why, "bootstrap": self._kafka.bootstrap_servers},
            )
        self._reachable = up
        self._metrics.broker_up.set(1 if up else 0)


def _indices(pending: _Pending, messages: Sequence[Encoded]) -> list[int]:
    """The request indices of the acknowledged messages (values are unique: each holds its
    event_id; a repeated event is one event)."""
    position = {message.value: i for i, message in enumerate(messages)}
    values = (msg.value() for msg in pending.acked)
    return sorted({position[value] for value in values if value is not None})
