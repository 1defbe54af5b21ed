"""The HTTP routes of the webhook (Starlette), and the wiring of one service.

``POST`` to an event route is served as plain ASGI by ``handler.EventHandler``, straight from
the app's entry point: on a single-event request Starlette's routing, middleware stack,
``Request`` and ``Response`` cost more CPU than validating and encoding the event. So are CORS
preflights (``OPTIONS``) on those routes. Everything else (health, metrics, OpenAPI, 404/405,
lifespan) goes through Starlette.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from importlib.metadata import version as dist_version
from typing import Any

import orjson
from flywheel_common import AvroCodec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from flywheel_ingest.auth import Authenticator
from flywheel_ingest.cors import preflight
from flywheel_ingest.handler import EventHandler, send_json
from flywheel_ingest.limits import RateLimiter
from flywheel_ingest.metrics import IngestMetrics
from flywheel_ingest.models import RouteName
from flywheel_ingest.openapi import EVENT_ROUTES, build_openapi
from flywheel_ingest.publisher import Publisher
from flywheel_ingest.rejections import RejectionLog
from flywheel_ingest.settings import IngestSettings

__all__ = ["IngestApp", "create_app"]

log = logging.getLogger(__name__)

_JSON = "application/json"


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type=_JSON)


class IngestApp:
    """The ASGI app: event routes served by ``handler``, the rest by the Starlette ``router``."""

    def __init__(
        self,
        router: Starlette,
        handler: EventHandler,
        *,
        publisher: Publisher,
        authenticator: Authenticator,
        metrics: IngestMetrics,
        rejections: RejectionLog,
    ) -> None:
        self.router = router
        self.publisher = publisher
        self.metrics = metrics
        self.rejections = rejections
        self._handler = handler
        self._auth = authenticator
        self._routes: Mapping[str, RouteName] = {p: r for p, (r, _, _) in EVENT_ROUTES.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self._routes.get(scope["path"])
            if route is not None:
                if scope["method"] == "POST":
                    await self._handler(route, scope, receive, send)
                    return
                if scope["method"] == "OPTIONS":
                    await self._preflight(route, scope, send)
                    return
        await self.router(scope, receive, send)

    async def _preflight(self, route: RouteName, scope: Scope, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status, answer, error = preflight(headers, self._auth.browser_origins)
        self.metrics.requests.labels(route, status).inc()
        if error is None:
            await send({"type": "http.response.start", "status": status, "headers": _raw(answer)})
            await send({"type": "http.response.body", "body": b""})
            return
        first = error["errors"][0]  # type: ignore[index]
        self.rejections.record(route, status, first["type"], first["loc"])
        await send_json(send, status, error, answer)

    def record_refused_connection(self, reason: str) -> None:
        """A connection closed by the server's guards (slow headers or body, oversized headers)."""
        self.metrics.refused_connections.labels(reason).inc()
        status = 431 if reason == "headers_too_large" else 408
        self.rejections.record("connection", status, reason)


def _raw(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


def create_app(settings: IngestSettings, *, codec: AvroCodec | None = None) -> IngestApp:
    """The ASGI app. Its lifespan starts and stops the Kafka publisher."""
    metrics = IngestMetrics()
    authenticator = Authenticator(
        settings.api_keys,
        rate_per_s=settings.rate_per_s,
        burst=settings.burst,
        tolerance_s=settings.signature_tolerance_s,
    )
    publisher = Publisher(
        settings.kafka,
        codec=codec or AvroCodec(),
        metrics=metrics,
        max_message_bytes=settings.max_message_bytes,
        ack_timeout_s=settings.ack_timeout_s,
        linger_ms=settings.linger_ms,
        queue_max_messages=settings.queue_max_messages,
        delivery_timeout_ms=settings.delivery_timeout_ms,
        health_probe_interval_s=settings.health_probe_interval_s,
    )
    rejections = RejectionLog(log, interval_s=settings.rejection_log_interval_s)
    handler = EventHandler(
        settings,
        authenticator=authenticator,
        limiter=RateLimiter(
            address_rate_per_s=settings.address_rate_per_s, address_burst=settings.address_burst
        ),
        publisher=publisher,
        metrics=metrics,
        rejections=rejections,
    )
    router = _router(settings, publisher, metrics, rejections)
    return IngestApp(
        router,
        handler,
        publisher=publisher,
        authenticator=authenticator,
        metrics=metrics,
        rejections=rejections,
    )


def _router(
    settings: IngestSettings,
    publisher: Publisher,
    metrics: IngestMetrics,
    rejections: RejectionLog,
) -> Starlette:
    retry_after = {"retry-after": str(settings.retry_after_s)}
    openapi = orjson.dumps(build_openapi(settings, version=dist_version("flywheel-ingest")))

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
        flusher = asyncio.create_task(rejections.run(), name="ingest-rejection-log")
        log.info(
            "ingest ready",
            extra={"kafka": settings.kafka.bootstrap_servers, "keys": len(settings.api_keys)},
        )
        try:
            yield
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await publisher.close()
            log.info("ingest stopped")

    async def no_event_route(request: Request) -> Response:
        # POST and OPTIONS to an event route never reach Starlette (``IngestApp`` serves them);
        # the routes are registered so that other methods get 405, not 404.
        raise AssertionError(f"{request.url.path} is served by IngestApp")

    routes = [Route(path, no_event_route, methods=["POST"]) for path in EVENT_ROUTES]
    routes += [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi_route, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
