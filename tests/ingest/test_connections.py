"""The webhook cannot be held open or bloated: real sockets against the deployed server
configuration (``server.server_config``), each client as hostile as its name says."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator

import httpx
import orjson
import pytest

from tests.ingest.conftest import ACME_KEY, IngestServer, topic_sizes, wait_for

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 0.5
GRACE_S = 3.0  # how much later than a deadline the close may be seen on a busy machine
RUN = {
    "occurred_at": 1_736_000_000_000,
    "run_id": "r1",
    "prompt": "p",
    "response": "r",
    "model": "m",
}


@pytest.fixture
def guarded(make_ingest: Callable[..., IngestServer]) -> IngestServer:
    return make_ingest(
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        keep_alive_timeout_s=KEEP_ALIVE_S,
        max_header_bytes=4096,
        max_headers=20,
        rejection_log_interval_s=0.2,
    )


def _connect(server: IngestServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_until_closed(sock: socket.socket, *, deadline_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and when it closed (seconds from now).
    Fails if it is still open after ``deadline_s``."""
    started = time.monotonic()
    data = b""
    sock.settimeout(0.1)
    while time.monotonic() - started < deadline_s:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, time.monotonic() - started
        if not chunk:
            return data, time.monotonic() - started
        data += chunk
    raise AssertionError(f"connection still open after {deadline_s}s; got {data[:200]!r}")


def _trickle(sock: socket.socket, pieces: Iterator[bytes], every_s: float) -> float:
    """Send ``pieces`` one by one until the server closes; returns when it did (seconds)."""
    started = time.monotonic()
    for piece in pieces:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        # Anything readable means the end: EOF, or the 408 that comes before it.
        sock.settimeout(every_s)
        try:
            sock.recv(65536, socket.MSG_PEEK)
            return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
    raise AssertionError("the server never closed a connection trickling its headers")


def _headers_forever() -> Iterator[bytes]:
    """A request line, then a header one byte at a time, never ending."""
    yield b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nX-Slow: "
    for _ in range(10_000):
        yield b"a"


def test_slow_loris_trickling_headers_is_disconnected_within_the_deadline(
    guarded: IngestServer,
) -> None:
    with _connect(guarded) as sock:
        closed_after = _trickle(sock, _headers_forever(), every_s=0.1)
    assert closed_after < HEADER_TIMEOUT_S + GRACE_S
    with httpx.Client(base_url=guarded.url) as client:
        metrics = client.get("/metrics").text
    assert 'flywheel_ingest_refused_connections_total{reason="header_timeout"} 1.0' in metrics


def test_idle_connection_is_closed(guarded: IngestServer) -> None:
    with _connect(guarded) as sock:
        answer, closed_after = _read_until_closed(sock, deadline_s=HEADER_TIMEOUT_S + GRACE_S)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert closed_after >= HEADER_TIMEOUT_S * 0.9


def test_keep_alive_connection_is_closed_after_its_idle_timeout(guarded: IngestServer) -> None:
    with _connect(guarded) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer, closed_after = _read_until_closed(sock, deadline_s=KEEP_ALIVE_S + GRACE_S)
    assert answer.startswith(b"HTTP/1.1 200")
    assert closed_after < KEEP_ALIVE_S + GRACE_S


def test_slow_body_is_answered_408_and_closed(guarded: IngestServer) -> None:
    body = orjson.dumps(RUN)
    with _connect(guarded) as sock:
        sock.sendall(
            b"POST /v1/runs HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {ACME_KEY}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        answer, _ = _read_until_closed(sock, deadline_s=BODY_TIMEOUT_S + GRACE_S)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"body_timeout"' in answer
    assert set(topic_sizes(guarded.settings.kafka).values()) == {0}
    with httpx.Client(base_url=guarded.url) as client:
        metrics = client.get("/metrics").text
    assert 'flywheel_ingest_refused_connections_total{reason="body_timeout"} 1.0' in metrics
    assert 'status="500"' not in metrics


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([f"x-h{i}: v" for i in range(21)], id="too many headers"),
        pytest.param([f"x-big: {'v' * 5000}"], id="one header too large"),
        pytest.param([f"x-big: {'v' * 1000}"] * 19, id="headers too large together"),
    ],
)
def test_header_bounds_answer_431_and_close(guarded: IngestServer, headers: list[str]) -> None:
    request = "POST /v1/runs HTTP/1.1\r\nHost: x\r\n" + "".join(h + "\r\n" for h in headers)
    with _connect(guarded) as sock:
        sock.sendall(request.encode() + b"content-length: 2\r\n\r\n{}")
        answer, _ = _read_until_closed(sock, deadline_s=GRACE_S)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert b'"headers_too_large"' in answer


def test_endless_header_is_cut_off_at_the_bound(guarded: IngestServer) -> None:
    """A header that never ends is refused once it passes the bound, not buffered forever:
    the server closes while the client is still sending (what the client got out before
    that is mostly the kernel's socket buffers, a few MB on loopback)."""
    with _connect(guarded) as sock:
        sock.sendall(b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nx-endless: ")
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100_000_000 // 4096):
                sock.sendall(b"v" * 4096)


def test_a_body_left_unread_after_an_early_answer_is_not_taken_for_headers(
    guarded: IngestServer,
) -> None:
    """A 401 answered before the body arrived: the rest of the body (far over the header
    bound) comes after the answer, is discarded, and the connection serves the next request."""
    size = 100_000
    with _connect(guarded) as sock:
        sock.sendall(
            b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nauthorization: Bearer wrong\r\n"
            + f"content-type: application/json\r\ncontent-length: {size}\r\n\r\n".encode()
            + b" " * 10
        )
        sock.settimeout(10)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 401"), first
        sock.sendall(b" " * (size - 10))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        second = sock.recv(65536)
    assert second.startswith(b"HTTP/1.1 200"), second


def test_client_disconnect_is_not_a_server_error(
    guarded: IngestServer, caplog: pytest.LogCaptureFixture
) -> None:
    body = orjson.dumps(RUN)
    caplog.set_level(logging.INFO)
    with _connect(guarded) as sock:
        sock.sendall(
            b"POST /v1/runs HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {ACME_KEY}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
    with httpx.Client(base_url=guarded.url) as client:

        def counted() -> bool:
            return 'flywheel_ingest_client_disconnects_total{route="run"} 1.0' in (
                client.get("/metrics").text
            )

        wait_for(counted, timeout_s=10)
        metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert set(topic_sizes(guarded.settings.kafka).values()) == {0}


def test_connections_beyond_the_limit_get_503(make_ingest: Callable[..., IngestServer]) -> None:
    server = make_ingest(max_concurrency=2, header_timeout_s=30)
    with _connect(server) as a, _connect(server) as b:
        wait_for(lambda: len(server.server.server_state.connections) >= 2, timeout_s=5)
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/healthz").status_code == 503
        a.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")
        assert _read_until_closed(a, deadline_s=GRACE_S)[0].startswith(b"HTTP/1.1 503")
        del b
