"""What the deploy test sends to the stack: runs and the users' edits of them, varied enough
that every edit passes the curator's filters as its own gold pair.

``send_events`` is the one place events leave the test. It posts through httpx until the
Python SDK (``flywheel_client``) is on main; then its body becomes the SDK's send call.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

# 120 made-up words: two random texts share almost no 3-word shingles (the near-dup filter),
# and none is a name, a number or an insult (the PII and toxicity filters).
_WORDS = tuple(
    f"{head}{tail}"
    for head in ("ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "ze")
    for tail in ("ban", "dor", "fel", "gim", "hul", "jas", "kor", "lum", "mev", "nix", "pod", "rav")
)
_RETRIABLE = frozenset({429, 502, 503, 504})


def edit_events(count: int, *, seed: int, tenant_users: int = 40) -> list[dict[str, Any]]:
    """``count`` runs, each followed by the user's edit of its answer (one gold pair each)."""
    rng = random.Random(seed)  # test data
    events: list[dict[str, Any]] = []
    for i in range(count):
        run_id = str(uuid.uuid4())
        prompt = f"Question {i}: how do I " + " ".join(rng.sample(_WORDS, 8)) + "?"
        original = " ".join(rng.sample(_WORDS, 18))
        words = original.split()
        for position in rng.sample(range(len(words)), 6):
            words[position] = rng.choice(_WORDS)
        final = " ".join(words) + " " + " ".join(rng.sample(_WORDS, 4))
        user = f"user-{i % tenant_users}"
        now = datetime.now(tz=UTC).isoformat()
        common = {"run_id": run_id, "occurred_at": now, "user_id": user, "feature": "support"}
        events.append(
            {
                "type": "run",
                "event_id": str(uuid.uuid4()),
                "prompt": prompt,
                "response": original,
                "model": "tiny-llama",
                **common,
            }
        )
        events.append(
            {
                "type": "edit",
                "event_id": str(uuid.uuid4()),
                "prompt": prompt,
                "original": original,
                "final": final,
                **common,
            }
        )
    return events


def send_events(
    url: str, api_key: str, events: Sequence[dict[str, Any]], *, timeout_s: float = 60.0
) -> list[str]:
    """POST ``events`` as one batch; retried on 429/503 until acknowledged (event ids make a
    retry safe). The acknowledged event ids, in order."""
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    with httpx.Client(base_url=url, timeout=10.0) as client:
        while True:
            try:
                response = client.post(
                    "/v1/events",
                    json={"events": list(events)},
                    headers={"authorization": f"Bearer {api_key}"},
                )
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            else:
                if response.status_code == 202:
                    ids: list[str] = response.json()["event_ids"]
                    return ids
                if response.status_code not in _RETRIABLE or time.monotonic() > deadline:
                    raise AssertionError(f"ingest answered {response.status_code}: {response.text}")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
