"""The OpenAPI 3.1 document of the webhook, built from the pydantic models' JSON schemas so it
always says what the validators do."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from flywheel_ingest.auth import API_KEY_QUERY, SIGNATURE_HEADER, TIMESTAMP_HEADER
from flywheel_ingest.models import (
    Accepted,
    Edit,
    ErrorBody,
    EventBatch,
    Feedback,
    RouteName,
    Run,
    Unacknowledged,
)
from flywheel_ingest.settings import IngestSettings

__all__ = ["EVENT_ROUTES", "build_openapi"]

EVENT_ROUTES: dict[str, tuple[RouteName, type[BaseModel], str]] = {
    "/v1/runs": ("run", Run, "Record one LLM call."),
    "/v1/feedback": ("feedback", Feedback, "Record one piece of user feedback on a run."),
    "/v1/edits": ("edit", Edit, "Record one user edit of a model's output."),
    "/v1/events": ("batch", EventBatch, "Record a batch of mixed events, each with a `type`."),
}
"""path -> (route name, request model, summary)."""


def _error(description: str, schema: str = "ErrorBody") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": {"type": "string", **schema},
        "description": description,
    }


_PARAMETERS = [
    _header(
        TIMESTAMP_HEADER,
        "Unix seconds; required when the key signs requests.",
        pattern=r"^[0-9]{1,12}(\.[0-9]{1,6})?$",
    ),
    _header(
        SIGNATURE_HEADER,
        "sha256=<hex HMAC-SHA256(secret, timestamp + '\\n' + method + '\\n' + path + '\\n' "
        "+ body as sent)>",
    ),
    _header("content-encoding", "gzip, or absent.", enum=["gzip", "identity"]),
    {
        "name": API_KEY_QUERY,
        "in": "query",
        "required": False,
        "schema": {"type": "string"},
        "description": "Browser keys only (navigator.sendBeacon cannot set headers).",
    },
]


def _responses(settings: IngestSettings) -> dict[str, Any]:
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return {
        "202": {
            "description": "Every event was acknowledged by Kafka (acks=all).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        },
        "400": _error("The body is not JSON, or not valid gzip."),
        "401": _error("Missing, unknown or misplaced API key, or a bad or stale signature."),
        "403": _error("An event type outside the key's scopes, or an origin it does not allow."),
        "408": _error("The body did not arrive in time."),
        "413": _error(
            f"Body over {settings.max_body_bytes} bytes (on the wire or decompressed), batch "
            f"over {settings.max_batch_events} events or over the key's burst, or an event over "
            f"the Kafka message limit ({settings.max_message_bytes} bytes at most)."
        ),
        "415": _error("Content-Type is not application/json, or the encoding is not gzip."),
        "422": _error("Wrong fields; each error gives the field's path."),
        "429": {**_error("The key (or address) is over its rate."), "headers": retry_after},
        "503": {
            **_error(
                "Kafka is unreachable, or busy: retry with the same event_ids.", "Unacknowledged"
            ),
            "headers": retry_after,
        },
    }


def build_openapi(settings: IngestSettings, *, version: str) -> dict[str, Any]:
    """The document served at ``/openapi.json``."""
    models: list[type[BaseModel]] = [
        Run,
        Feedback,
        Edit,
        EventBatch,
        Accepted,
        ErrorBody,
        Unacknowledged,
    ]
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    schemas = top.get("$defs", {})
    paths: dict[str, Any] = {}
    for path, (_name, model, summary) in EVENT_ROUTES.items():
        paths[path] = {
            "post": {
                "summary": summary,
                "security": [{"bearer": []}, {"apiKey": []}],
                "parameters": _PARAMETERS,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                },
                "responses": _responses(settings),
            },
            "options": {
                "summary": "CORS preflight: granted to the origins of the browser keys.",
                "responses": {
                    "204": {"description": "Allowed (Access-Control-Allow-Origin is set)."},
                    "403": _error("No browser key allows this origin, or the method is not POST."),
                },
            },
        }
    for path, summary in (
        ("/healthz", "The process is alive."),
        ("/readyz", "The broker is reachable (200) or not (503)."),
        ("/metrics", "Prometheus metrics."),
    ):
        paths[path] = {"get": {"summary": summary, "responses": {"200": {"description": "OK"}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Flywheel ingest",
            "version": version,
            "description": "Telemetry webhooks of LLM applications: runs, feedback and edits. "
            "A 202 means the events are durably in Kafka.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
