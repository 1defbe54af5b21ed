"""The HTTP routes of the webhook (Starlette). Each event route runs the same checks, in the
order that costs least for a bad request: key (401), content type (415), size (413), signature
(401), rate (429), fields (400/422); then publishes and answers 202 only after the broker's ack.

``POST`` to an event route is served as plain ASGI, straight from the app's entry point: on a
single-event request Starlette's routing, middleware stack, ``Request`` and ``Response`` cost
more CPU than validating and encoding the event. Everything else (health, metrics, OpenAPI,
404/405, lifespan) goes through Starlette.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from importlib.metadata import version as dist_version
from typing import Any

import orjson
from flywheel_common import AvroCodec, EncodeError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from flywheel_ingest.auth import Authenticator, RateLimiter
from flywheel_ingest.errors import (
    PayloadTooLarge,
    RequestRejected,
    Unavailable,
    UnsupportedMediaType,
)
from flywheel_ingest.metrics import IngestMetrics
from flywheel_ingest.models import (
    RECORD_NAMES,
    RouteName,
    new_event_ids,
    parse_events,
    to_record,
)
from flywheel_ingest.openapi import EVENT_ROUTES, build_openapi
from flywheel_ingest.publisher import EventRecord, Publisher, PublishRejected
from flywheel_ingest.settings import IngestSettings

__all__ = ["IngestApp", "create_app"]

log = logging.getLogger(__name__)

_JSON = "application/json"
EventEndpoint = Callable[[Scope, Receive, Send], Awaitable[None]]
_JSON_HEADERS = [(b"content-type", _JSON.encode())]


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=_JSON)


_INTERNAL_ERROR = {"errors": [{"loc": [], "msg": "internal error", "type": "internal"}]}


def _check_content_type(headers: Mapping[str, str]) -> None:
    raw = headers.get("content-type", "")
    media, _, params = raw.partition(";")
    charset = params.strip().lower()
    if media.strip().lower() != _JSON or charset not in ("", "charset=utf-8"):
        raise UnsupportedMediaType(
            f"Content-Type must be {_JSON} (UTF-8), not {raw or 'missing'!r}",
            loc=("header", "content-type"),
            type="unsupported_media_type",
        )


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers by lower-case name; the first of repeated ones, as Starlette's."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in reversed(scope["headers"])
    }


async def _read_body(headers: Mapping[str, str], receive: Receive, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""

    def too_large() -> PayloadTooLarge:
        return PayloadTooLarge(
            f"body larger than {limit} bytes", loc=("body",), type="body_too_large"
        )

    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_json(
    send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    content = orjson.dumps(body)
    raw_headers = [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())]
    if headers:
        raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})


class IngestApp:
    """The ASGI app: event routes served directly, the rest by the Starlette ``router``."""

    def __init__(
        self, router: Starlette, events: Mapping[str, EventEndpoint], publisher: Publisher
    ) -> None:
        self.router = router
        self.publisher = publisher
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._events.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.router(scope, receive, send)


def create_app(settings: IngestSettings, *, codec: AvroCodec | None = None) -> IngestApp:
    """The ASGI app. Its lifespan starts and stops the Kafka publisher."""
    codec = codec or AvroCodec()
    metrics = IngestMetrics()
    authenticator = Authenticator(
        settings.api_keys,
        rate_per_s=settings.rate_per_s,
        burst=settings.burst,
        tolerance_s=settings.signature_tolerance_s,
    )
    limiter = RateLimiter(retry_after_s=settings.retry_after_s)
    publisher = Publisher(
        settings.kafka,
        codec=codec,
        metrics=metrics,
        ack_timeout_s=settings.ack_timeout_s,
        linger_ms=settings.linger_ms,
        queue_max_messages=settings.queue_max_messages,
        delivery_timeout_ms=settings.delivery_timeout_ms,
        health_probe_interval_s=settings.health_probe_interval_s,
    )
    topics = settings.kafka.topics
    retry_after = {"retry-after": str(settings.retry_after_s)}
    openapi = orjson.dumps(build_openapi(settings, version=dist_version("flywheel-ingest")))
    requests_total = metrics.requests
    events_total = {t: metrics.events.labels(t) for t in RECORD_NAMES}
    # Resolved once: ``labels()`` takes a lock and a dict lookup on every call.
    accepted_total = {
        name: requests_total.labels(name, 202) for name, _, _ in EVENT_ROUTES.values()
    }

    def event_route(route: RouteName) -> EventEndpoint:
        async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            received_at_ms = time.time_ns() // 1_000_000
            try:
                headers = _headers(scope)
                tenant = authenticator.authenticate(headers)
                _check_content_type(headers)
                body = await _read_body(headers, receive, settings.max_body_bytes)
                authenticator.verify_signature(tenant, headers, body)
                events = parse_events(body, route=route, max_events=settings.max_batch_events)
                limiter.acquire(tenant, len(events))
                ids: list[str] = []
                records: list[EventRecord] = []
                missing = sum(1 for event in events if event.event_id is None)
                fresh = iter(new_event_ids(missing) if missing else ())
                for event in events:
                    event_id, record = to_record(
                        event,
                        tenant=tenant.name,
                        received_at_ms=received_at_ms,
                        event_id=None if event.event_id is not None else next(fresh),
                    )
                    ids.append(event_id)
                    records.append(
                        EventRecord(RECORD_NAMES[event.type], topics.for_event(event.type), record)
                    )
                try:
                    await publisher.publish(records)
                except PublishRejected as exc:
                    metrics.unavailable.labels(exc.reason).inc()
                    raise Unavailable(
                        f"events not acknowledged ({exc}); retry with the same event_ids",
                        type=exc.reason,
                        headers=retry_after,
                    ) from exc
            except RequestRejected as exc:
                requests_total.labels(route, exc.status).inc()
                log.info(
                    "request rejected",
                    extra={"route": route, "status": exc.status, "error": exc.errors[0]["type"]},
                )
                await _send_json(send, exc.status, {"errors": exc.errors}, exc.headers)
                return
            except EncodeError:
                # The models are checked against the schemas, so this is a bug; say so loudly.
                log.exception("event does not fit its schema", extra={"route": route})
                requests_total.labels(route, 500).inc()
                await _send_json(send, 500, _INTERNAL_ERROR)
                return
            except Exception:
                # Never let one request take the service down; count it and keep serving.
                log.exception("unexpected error", extra={"route": route})
                requests_total.labels(route, 500).inc()
                await _send_json(send, 500, _INTERNAL_ERROR)
                return
            # One ``inc`` per type, not per event: each takes the metric's lock.
            if len(events) == 1:
                events_total[events[0].type].inc()
            else:
                for event_type, count in Counter(event.type for event in events).items():
                    events_total[event_type].inc(count)
            accepted_total[route].inc()
            await _send_json(send, 202, {"event_ids": ids})

        return endpoint

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        if publisher.reachable:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "broker unreachable"}, retry_after)

    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), 200, media_type=CONTENT_TYPE_LATEST)

    async def openapi_route(request: Request) -> Response:
        return Response(openapi, 200, media_type=_JSON)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await publisher.start()
        log.info(
            "ingest ready",
            extra={"kafka": settings.kafka.bootstrap_servers, "tenants": len(settings.api_keys)},
        )
        try:
            yield
        finally:
            await publisher.close()
            log.info("ingest stopped")

    events = {path: event_route(name) for path, (name, _model, _summary) in EVENT_ROUTES.items()}

    async def no_event_route(request: Request) -> Response:
        # POST to an event route never reaches Starlette (``IngestApp`` serves it); the routes
        # are registered so that other methods get 405, not 404.
        raise AssertionError(f"{request.url.path} is served by IngestApp")

    routes = [Route(path, no_event_route, methods=["POST"]) for path in EVENT_ROUTES]
    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi_route, methods=["GET"]),
    ]
    return IngestApp(Starlette(routes=routes, lifespan=lifespan), events, publisher)
