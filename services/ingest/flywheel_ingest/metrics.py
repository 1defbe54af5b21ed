"""Prometheus metrics of one ingest app, in a registry of its own (tests run several apps in one
process, and the default global registry would refuse the second)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IngestMetrics"]

# Acks take a linger (ms) plus a broker round trip; the tail up to the ack timeout matters.
_ACK_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngestMetrics:
    """The service's counters, with the registry ``/metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "flywheel_ingest_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.events = Counter(
            "flywheel_ingest_events_produced",
            "Events the broker acknowledged, by event type.",
            ["type"],
            registry=self.registry,
        )
        self.ack_seconds = Histogram(
            "flywheel_ingest_ack_seconds",
            "Time from handing a request's events to the producer to the last ack.",
            buckets=_ACK_BUCKETS_S,
            registry=self.registry,
        )
        self.unavailable = Counter(
            "flywheel_ingest_unavailable",
            "503 answers, by reason (broker_down, queue_full, ack_timeout, delivery_failed).",
            ["reason"],
            registry=self.registry,
        )
        self.disconnects = Counter(
            "flywheel_ingest_client_disconnects",
            "Requests whose client went away before the answer (not server errors).",
            ["route"],
            registry=self.registry,
        )
        self.refused_connections = Counter(
            "flywheel_ingest_refused_connections",
            "Connections the server closed: header_timeout, body_timeout, headers_too_large.",
            ["reason"],
            registry=self.registry,
        )
        self.broker_up = Gauge(
            "flywheel_ingest_broker_up",
            "1 while the broker is believed reachable, else 0.",
            registry=self.registry,
        )
