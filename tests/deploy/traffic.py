"""What the deploy test sends to the stack: runs and the users' edits of them, varied enough
that every edit passes the curator's filters as its own gold pair.

``send_edits`` is the one place events leave the test, through the Python SDK as an app would
send them.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from flywheel_client import Flywheel

# 120 made-up words: two random texts share almost no 3-word shingles (the near-dup filter),
# and none is a name, a number or an insult (the PII and toxicity filters).
_WORDS = tuple(
    f"{head}{tail}"
    for head in ("ka", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "ze")
    for tail in ("ban", "dor", "fel", "gim", "hul", "jas", "kor", "lum", "mev", "nix", "pod", "rav")
)


@dataclass(frozen=True)
class EditCase:
    """One run and the user's edit of its answer."""

    run_id: str
    prompt: str
    original: str
    final: str
    user: str


def edit_events(count: int, *, seed: int, tenant_users: int = 40) -> list[EditCase]:
    """``count`` runs, each followed by the user's edit of its answer (one gold pair each)."""
    rng = random.Random(seed)  # test data
    cases: list[EditCase] = []
    for i in range(count):
        prompt = f"Question {i}: how do I " + " ".join(rng.sample(_WORDS, 8)) + "?"
        original = " ".join(rng.sample(_WORDS, 18))
        words = original.split()
        for position in rng.sample(range(len(words)), 6):
            words[position] = rng.choice(_WORDS)
        final = " ".join(words) + " " + " ".join(rng.sample(_WORDS, 4))
        user = f"user-{i % tenant_users}"
        cases.append(EditCase(str(uuid.uuid4()), prompt, original, final, user))
    return cases


def send_edits(
    url: str, api_key: str, cases: Sequence[EditCase], *, timeout_s: float = 60.0
) -> list[str]:
    """Log each case's run and edit through the SDK and wait until every event is delivered
    (the SDK retries 429/503 with backoff; event ids make a retry safe). The edits' event ids."""
    with Flywheel(url, api_key, linger_s=0.05) as client:
        edit_ids = []
        for case in cases:
            client.log_run(
                prompt=case.prompt,
                response=case.original,
                model="tiny-llama",
                run_id=case.run_id,
                user_id=case.user,
                feature="support",
            )
            edit_id = client.edit(
                case.run_id,
                original=case.original,
                final=case.final,
                user_id=case.user,
                feature="support",
            )
            edit_ids.append(edit_id)
        delivered = client.flush(timeout_s)
        stats = client.stats()
    assert delivered and stats.delivered == 2 * len(cases), stats
    return edit_ids
