"""One event request, from headers to the broker's ack, as plain ASGI (see ``app``).

The checks run in the order that costs least for a bad request: key (401, or 429 for an address
without a valid key), origin (403), rate (429), scope of a single-event route (403), content
type and encoding (415), body within its limits (413; its deadline, 408, is the server
protocol's), signature (401), gzip (400/413), fields (400/422), scopes of a batch (403), burst
and rate (413/429), message size (413). Only then is anything produced, and 202 answered after
the broker's ack. A refused request costs its key (or its address) a token and is counted, and
logged in aggregate.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
from flywheel_common import EncodeError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from flywheel_ingest.auth import Authenticator, Caller
from flywheel_ingest.body import check_content_type, check_encoding, gunzip, read_body
from flywheel_ingest.cors import allow_origin
from flywheel_ingest.errors import Forbidden, PayloadTooLarge, RequestRejected, Unavailable
from flywheel_ingest.limits import RateLimiter
from flywheel_ingest.messages import Encoded, EventRecord, EventTooLarge
from flywheel_ingest.metrics import IngestMetrics
from flywheel_ingest.models import (
    RECORD_NAMES,
    Edit,
    Feedback,
    RouteName,
    Run,
    largest_field,
    new_event_ids,
    parse_events,
    to_record,
)
from flywheel_ingest.publisher import Publisher, PublishRejected
from flywheel_ingest.rejections import RejectionLog
from flywheel_ingest.settings import IngestSettings

__all__ = ["EventHandler", "send_json"]

log = logging.getLogger(__name__)

Event = Run | Feedback | Edit
SCOPE_OF: dict[str, str] = {"run": "runs", "feedback": "feedback", "edit": "edits"}
"""Event type -> the key scope that may send it."""
_JSON_HEADERS = [(b"content-type", b"application/json")]
_INTERNAL_ERROR = {"errors": [{"loc": [], "msg": "internal error", "type": "internal"}]}


async def send_json(
    send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    content = orjson.dumps(body)
    raw_headers = [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())]
    if headers:
        raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers by lower-case name; the first of repeated ones, as Starlette's."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in reversed(scope["headers"])
    }


class EventHandler:
    """Serves ``POST`` to the event routes."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        authenticator: Authenticator,
        limiter: RateLimiter,
        publisher: Publisher,
        metrics: IngestMetrics,
        rejections: RejectionLog,
    ) -> None:
        self._settings = settings
        self._auth = authenticator
        self._limiter = limiter
        self._publisher = publisher
        self._metrics = metrics
        self._rejections = rejections
        self._topics = settings.kafka.topics
        self._retry_after = {"retry-after": str(settings.retry_after_s)}
        # Resolved once: ``labels()`` takes a lock and a dict lookup on every call.
        self._events_total = {t: metrics.events.labels(t) for t in RECORD_NAMES}
        self._accepted = {r: metrics.requests.labels(r, 202) for r in SCOPE_OF | {"batch": ""}}

    async def __call__(self, route: RouteName, scope: Scope, receive: Receive, send: Send) -> None:
        received_at_ms = time.time_ns() // 1_000_000
        headers = _headers(scope)
        origin = headers.get("origin")
        caller: Caller | None = None
        try:
            caller = self._caller(headers, scope)
            ids, events = await self._accept(route, caller, headers, scope, receive, received_at_ms)
        except ClientDisconnect:
            # Nobody to answer, and not the server's fault: counted, no traceback.
            self._metrics.disconnects.labels(route).inc()
            return
        except RequestRejected as exc:
            if caller is not None and exc.status not in (429, 503):
                self._limiter.charge(caller)
            await self._refuse(route, exc, send, self._cors(origin, caller))
            return
        except Exception:
            # Never let one request take the service down; count it and keep serving.
            log.exception("unexpected error", extra={"route": route})
            self._metrics.requests.labels(route, 500).inc()
            await send_json(send, 500, _INTERNAL_ERROR)
            return
        self._count(events)
        self._accepted[route].inc()
        await send_json(send, 202, {"event_ids": ids}, self._cors(origin, caller))

    def _caller(self, headers: Mapping[str, str], scope: Scope) -> Caller:
        try:
            return self._auth.authenticate(headers, scope["query_string"])
        except RequestRejected:
            client = scope.get("client")
            self._limiter.charge_address(client[0] if client else "unknown")  # 429 when over
            raise

    async def _accept(
        self,
        route: RouteName,
        caller: Caller,
        headers: Mapping[str, str],
        scope: Scope,
        receive: Receive,
        received_at_ms: int,
    ) -> tuple[list[str], list[Event]]:
        settings = self._settings
        self._auth.check_origin(caller, headers)
        self._limiter.admit(caller)
        if route != "batch":
            _check_scope(caller, route, index=None)
        check_content_type(headers, browser=caller.kind == "browser")
        gzipped = check_encoding(headers)
        limit = settings.max_body_bytes
        body = await read_body(headers, receive, limit=limit)
        self._auth.verify_signature(caller, headers, body, method="POST", path=scope["path"])
        if gzipped:
            body = gunzip(body, limit=limit)
        events = parse_events(body, route=route, max_events=settings.max_batch_events)
        if route == "batch":
            for index, event in enumerate(events):
                _check_scope(caller, event.type, index=index)
        self._limiter.acquire(caller, len(events))
        ids, records = self._records(events, caller.tenant, received_at_ms)
        messages = self._encode(route, events, records)
        await self._publish(messages, ids)
        return ids, events

    def _records(
        self, events: list[Event], tenant: str, received_at_ms: int
    ) -> tuple[list[str], list[EventRecord]]:
        ids: list[str] = []
        records: list[EventRecord] = []
        missing = sum(1 for event in events if event.event_id is None)
        fresh = iter(new_event_ids(missing) if missing else ())
        for event in events:
            event_id, record = to_record(
                event,
                tenant=tenant,
                received_at_ms=received_at_ms,
                event_id=None if event.event_id is not None else next(fresh),
            )
            ids.append(event_id)
            topic = self._topics.for_event(event.type)
            records.append(EventRecord(RECORD_NAMES[event.type], topic, record))
        return ids, records

    def _encode(
        self, route: RouteName, events: list[Event], records: list[EventRecord]
    ) -> list[Encoded]:
        try:
            return self._publisher.encode(records)
        except EventTooLarge as exc:
            field = largest_field(events[exc.index])
            where: list[str | int] = ["body", "events", exc.index] if route == "batch" else ["body"]
            raise PayloadTooLarge(
                f"event {exc.index} is {exc.size} bytes as a Kafka message, over the "
                f"{exc.limit}-byte message limit (its largest field is {field!r}); "
                "nothing of this request was stored",
                loc=(*where, field),
                type="event_too_large",
            ) from exc
        except EncodeError as exc:
            # The models are checked against the schemas, so this is a bug; say so loudly.
            raise RuntimeError("an event does not fit its schema") from exc

    async def _publish(self, messages: list[Encoded], ids: list[str]) -> None:
        try:
            await self._publisher.publish(messages)
        except PublishRejected as exc:
            self._metrics.unavailable.labels(exc.reason).inc()
            raise Unavailable(
                f"events not acknowledged ({exc}); retry with the same event_ids "
                "(those in stored_event_ids are stored already)",
                type=exc.reason,
                headers=self._retry_after,
                extra={"event_ids": ids, "stored_event_ids": [ids[i] for i in exc.stored]},
            ) from exc

    async def _refuse(
        self, route: RouteName, exc: RequestRejected, send: Send, cors: Mapping[str, str]
    ) -> None:
        first = exc.errors[0]
        self._metrics.requests.labels(route, exc.status).inc()
        self._rejections.record(route, exc.status, first["type"], first["loc"])
        headers = {**exc.headers, **cors} if cors else exc.headers
        await send_json(send, exc.status, exc.body(), headers)

    def _cors(self, origin: str | None, caller: Caller | None) -> Mapping[str, str]:
        """CORS headers for a browser key's request from one of its origins (or, before the
        key is known, from any browser key's origin: the page may then read its 401)."""
        if origin is None:
            return {}
        allowed = self._auth.browser_origins if caller is None else caller.allowed_origins
        return allow_origin(origin) if origin in allowed else {}

    def _count(self, events: list[Event]) -> None:
        # One ``inc`` per type, not per event: each takes the metric's lock.
        if len(events) == 1:
            self._events_total[events[0].type].inc()
        else:
            for event_type, count in Counter(event.type for event in events).items():
                self._events_total[event_type].inc(count)


def _check_scope(caller: Caller, event_type: str, *, index: int | None) -> None:
    if SCOPE_OF[event_type] in caller.scopes:
        return
    where = "this request" if index is None else f"event {index}"
    loc: tuple[str | int, ...] = ("body",) if index is None else ("body", "events", index, "type")
    raise Forbidden(
        f"{where} is a {event_type!r} event, outside this API key's scopes "
        f"({', '.join(sorted(caller.scopes))}); nothing of this request was stored",
        loc=loc,
        type="scope_denied",
    )
