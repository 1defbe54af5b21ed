"""The SDK's pure parts: argument checks, answer classification, backoff, signing, batching,
and the SQLite spool (real files)."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import math
import random
from datetime import datetime
from pathlib import Path

import pytest
from flywheel_client import ClientConfigError, Flywheel, InvalidEventError
from flywheel_client._backoff import Backoff, parse_retry_after
from flywheel_client._calls import Calls
from flywheel_client._events import new_event_id
from flywheel_client._outcome import classify
from flywheel_client._spool import Spool
from flywheel_client._store import MemoryStore, fill_batch
from flywheel_client._wire import BATCH_OVERHEAD, batch_body, request_headers, sign
from flywheel_ingest.auth import hash_api_key


def test_calls_refuse_what_can_never_be_valid() -> None:
    calls = Calls(remember_runs=4)
    bad = [
        lambda: calls.thumbs("r", "sideways", comment=None, correction=None, options={}),  # type: ignore[arg-type]
        lambda: calls.rate("r", 7, comment=None, correction=None, options={}),
        lambda: calls.rate("r", True, comment=None, correction=None, options={}),
        lambda: calls.rate("r", 0.5, comment=None, correction=None, options={}),
        lambda: calls.signal("r", "thumbs", None, options={}),  # type: ignore[arg-type]
        lambda: calls.signal("r", "dwell", None, options={}),
        lambda: calls.signal("r", "dwell", math.nan, options={}),
        lambda: calls.signal("r", "copy", 3.0, options={}),
        lambda: calls.signal("", "copy", None, options={}),
        lambda: calls.regenerated("r", "", options={}),
        lambda: calls.edit("unknown-run", original="a", final="b", prompt=None, options={}),
        lambda: calls.run(
            prompt="p", response="r", model="m", options={"occurred_at": datetime(2026, 1, 1)}
        ),
        lambda: calls.run(prompt="p", response="r", model="m", options={"cost_usd": math.inf}),
        lambda: calls.run(prompt="p", response="r", model="", options={}),
    ]
    for call in bad:
        with pytest.raises(InvalidEventError):
            call()
    with pytest.raises(TypeError, match="colour"):
        calls.run(prompt="p", response="r", model="m", options={"colour": "red"})  # type: ignore[typeddict-unknown-key]


def test_edit_fills_in_the_prompt_of_a_remembered_run() -> None:
    calls = Calls(remember_runs=2)
    prompt = [{"role": "user", "content": "hi"}]
    run_id, _ = calls.run(prompt=prompt, response="r", model="m", options={})  # type: ignore[arg-type]
    prompt[0]["content"] = "changed after the call"  # the event keeps what was passed
    edit = calls.edit(run_id, original="r", final="R", prompt=None, options={})
    assert edit["prompt"] == [{"role": "user", "content": "hi"}]
    for _ in range(2):  # pushed out of the bounded memory
        calls.run(prompt="p", response="r", model="m", options={})
    with pytest.raises(InvalidEventError, match="prompt="):
        calls.edit(run_id, original="r", final="R", prompt=None, options={})


def test_regenerated_names_the_new_run_and_keeps_metadata() -> None:
    event = Calls(remember_runs=0).regenerated("r1", "r2", options={"metadata": {"a": "b"}})
    assert event["kind"] == "regenerate"
    assert event.get("metadata") == {"a": "b", "new_run_id": "r2"}


def test_event_ids_are_unique_uuid4() -> None:
    ids = {new_event_id() for _ in range(5000)}
    assert len(ids) == 5000
    for event_id in list(ids)[:50]:
        assert event_id[14] == "4" and event_id[19] in "89ab" and len(event_id) == 36


def test_422_rejects_the_events_at_fault_and_resends_the_rest() -> None:
    body = json.dumps(
        {
            "errors": [
                {
                    "loc": ["body", "events", 1, "run_id"],
                    "msg": "too long",
                    "type": "string_too_long",
                },
                {"loc": ["body", "events", 3, "kind"], "msg": "bad", "type": "literal_error"},
            ]
        }
    ).encode()
    verdict = classify(422, body, ["a", "b", "c", "d"], stored={})
    assert [i for i, _ in verdict.rejected] == [1, 3]
    assert verdict.rejected[0][1][0].loc == ("body", "events", 1, "run_id")
    assert verdict.resend == (0, 2) and not verdict.retry


def test_request_wide_refusals_and_retryable_answers() -> None:
    ids = ["a", "b", "c"]
    unauthorized = b'{"errors":[{"loc":["header","authorization"],"msg":"unknown","type":"x"}]}'
    assert [i for i, _ in classify(401, unauthorized, ids, stored={}).rejected] == [0, 1, 2]
    too_big = classify(413, b'{"errors":[{"loc":["body"],"msg":"big","type":"t"}]}', ids, stored={})
    assert too_big.too_large and too_big.resend == (0, 1, 2)
    assert classify(413, b"{}", ["a"], stored={}).rejected  # alone and still too large
    stored = classify(503, b'{"stored_event_ids":["b"]}', ids, stored={"a": 0, "b": 1, "c": 2})
    assert stored.delivered == (1,) and stored.retry == (0, 2)
    proxy = classify(502, b"<html>bad gateway</html>", ids, stored={})
    assert proxy.retry == (0, 1, 2)
    assert classify(None, b"", ids, stored={}).retry == (0, 1, 2)
    assert classify(429, b"", ids, stored={}).retry == (0, 1, 2)
    page = classify(400, b"<html>nope</html>", ids, stored={})
    assert "nope" in page.rejected[0][1][0].msg


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    backoff = Backoff(base_s=0.1, max_s=2.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(8)]
    for attempt, delay in enumerate(delays):
        ceiling = min(2.0, 0.1 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.next_delay(retry_after_s=5.0) >= 5.0
    backoff.reset()
    assert backoff.next_delay() <= 0.1
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("99999") == 600.0


def test_signature_v2_covers_timestamp_method_path_and_wire_bytes() -> None:
    body = batch_body([b'{"a":1}'] * 2000)
    wire, headers = request_headers(
        body,
        api_key="k",
        path="/prefix/v1/events",
        signing_secret=b"s3cret",
        gzip_min_bytes=1024,
        clock=lambda: 1767225600.25,
    )
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(wire) == body and len(wire) < len(body) / 5
    assert headers["x-flywheel-timestamp"] == "1767225600.250"
    message = b"1767225600.250\nPOST\n/prefix/v1/events\n" + wire
    expected = "sha256=" + hmac.new(b"s3cret", message, hashlib.sha256).hexdigest()
    assert headers["x-flywheel-signature"] == expected
    assert sign(b"s3cret", "1767225600.250", "post", "/prefix/v1/events", wire) == expected
    small, plain = request_headers(
        b"{}", api_key="k", path="/v1/events", signing_secret=None, gzip_min_bytes=1024
    )
    assert (
        small == b"{}" and "content-encoding" not in plain and "x-flywheel-signature" not in plain
    )


def test_batches_respect_count_and_bytes() -> None:
    store = MemoryStore()
    store.add([(str(i), b"x" * 100) for i in range(10)])
    first = store.take(4, 10_000)
    assert [p.event_id for p in first] == ["0", "1", "2", "3"]
    second = store.take(100, BATCH_OVERHEAD + 3 * 101)
    assert len(second) == 3
    store.release(first)
    assert [p.event_id for p in store.take(2, 10_000)] == ["0", "1"]
    assert len(fill_batch(store.take(1, 10), 5, 10)) == 1  # one oversized event still goes alone
    assert store.held == 10


def test_spool_keeps_events_across_reopen_and_evicts_oldest(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=1000)
    assert spool.add([(f"e{i}", b"x" * 100) for i in range(8)]) == []
    batch = spool.take(3, 10_000)
    spool.finish(batch[:2])
    spool.release(batch[2:])
    spool.close()
    spool = Spool(path, max_bytes=1000)
    assert spool.held == 6
    evicted = spool.add([(f"n{i}", b"y" * 100) for i in range(6)])
    assert evicted == ["e2", "e3", "e4", "e5", "e6", "e7"][: len(evicted)] and len(evicted) == 2
    assert spool.size_bytes <= 1000
    assert [p.event_id for p in spool.take(3, 10_000)] == ["e4", "e5", "e6"]
    assert spool.add([("n0", b"y" * 100)]) == []  # a replayed id is not stored twice
    assert spool.held == 10
    spool.close()


def test_a_second_owner_takes_the_next_slot_and_adopts_dead_slots(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    first = Spool(path, max_bytes=1 << 20)
    second = Spool(path, max_bytes=1 << 20)
    assert first.path == path and second.path == tmp_path / "spool.db.1"
    second.add([("orphan-1", b"{}"), ("orphan-2", b"{}")])
    second.close()  # its owner is gone: the slot is free
    first.close()
    third = Spool(path, max_bytes=1 << 20)
    assert third.path == path and third.adopted == 2
    assert {p.event_id for p in third.take(10, 10_000)} == {"orphan-1", "orphan-2"}
    assert not (tmp_path / "spool.db.1").exists()
    third.close()


def test_config_errors_are_named(tmp_path: Path) -> None:
    for url in ("ftp://x", "http://", "http://h/?q=1"):
        with pytest.raises(ClientConfigError, match="url"):
            Flywheel(url, "k")
    with pytest.raises(ClientConfigError, match="max_batch_events"):
        Flywheel("http://h", "k", max_batch_events=0)
    with pytest.raises(ClientConfigError, match="overflow"):
        Flywheel("http://h", "k", overflow="explode")  # type: ignore[typeddict-item]
    with pytest.raises(TypeError, match="linger"):
        Flywheel("http://h", "k", linger=1)  # type: ignore[call-arg]
    (tmp_path / "file").write_text("")
    with pytest.raises(ClientConfigError, match="spool"):
        Flywheel("http://h", "k", spool_path=tmp_path / "file" / "spool.db")
    assert hash_api_key("k") not in repr(Flywheel("http://h", "k")._engine.config)
