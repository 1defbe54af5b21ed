"""The chain's verdicts on a varied traffic sample, pinned: reasons, details, scores, redacted
texts and pair_ids must stay exactly what the one-candidate-at-a-time chain gave.

``chain_verdicts.json`` was written by ``write_golden()`` with the filters of commit 70e2805
(before the per-call batching), then regenerated for each intended change of verdicts (the
commit that regenerates it says how many changed and why):

    .venv/bin/python -c "import tests.curator.filters.test_chain_verdicts as t; t.write_golden()"
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flywheel_curator.candidate import Candidate
from flywheel_curator.filters import FilterSettings, build_filters, pair_id

from tests.curator.filters.conftest import BASE_TIME, candidate

GOLDEN = Path(__file__).with_name("chain_verdicts.json")

PII_SENTENCES = [
    "Write to jane.doe@example.com for a refund.",
    "Call me on +44 20 7946 0958 tomorrow.",
    "Our US line is (415) 555-2671.",
    "My card 4111 1111 1111 1111 was charged twice.",
    "The server at 192.168.10.24 is down.",
    "SSN 123-45-6789 is on file.",
    "NI number AB 12 34 56 C.",
    "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
    'config: api_key = "sk_live_51HxYz0123"',
    "token ghp_" + "a1B2" * 9 + " leaked",
]
LONG_ANSWER = (
    "To rotate the signing key, generate a new key pair with the CLI, upload the public key in "
    "the admin console under Security, wait for the cache to refresh, which takes about five "
    "minutes, and only then revoke the old key so that no client is locked out."
)
PROMPTS = [
    "Summarise the quarterly report for the board in three sentences.",
    "Explain what a Kafka consumer group rebalance is.",
]
SETTINGS = {
    "default": FilterSettings(),
    "tight": FilterSettings(
        caps={"max_per_user": 2, "max_per_tenant": 8},
        near_dup={"max_entries": 16, "threshold": 0.6, "scope": "global"},
        dedup={"max_entries": 30},
        event_dedup={"max_entries": 20},
    ),
    "reject_pii": FilterSettings(pii={"policy": "reject"}, near_dup={"num_perm": 32, "bands": 8}),
}
BUFFERS = (1, 7, 40, 3, 90, 25, 60)


class KeywordScorer:
    """A deterministic toxicity scorer: insults score high, everything else by its length."""

    identity = "keyword/1"

    def score_many(self, texts: Sequence[str]) -> Sequence[float]:
        return [0.97 if "idiot" in t else (len(t) % 41) / 100 for t in texts]


def traffic(seed: int = 7) -> list[Candidate]:
    """Edits, corrections and paired outcomes with retries, repeats, near-copies, PII of every
    kind (in each text), toxic corrections, one busy user, short and unchanged answers."""
    rng = random.Random(seed)
    out: list[Candidate] = []
    for i in range(220):
        roll = rng.random()
        if out and roll < 0.06:
            out.append(rng.choice(out))  # a client retry
            continue
        if out and roll < 0.1:
            twin = rng.choice(out)  # the same pair from another event
            out.append(candidate(**{**_fields(twin), "event_id": f"e{i}", "run_id": f"r{i}"}))
            continue
        chosen = f"Answer {i}: the user says something better about item {rng.randint(0, 999)}."
        rejected = f"Answer {i}: the model says something reasonable about item {i}."
        prompt = ({"role": "user", "content": rng.choice(PROMPTS)},)
        if roll < 0.2:
            chosen = f"{chosen} {rng.choice(PII_SENTENCES)}"
        elif roll < 0.25:
            rejected = f"{rejected} {rng.choice(PII_SENTENCES)}"
        elif roll < 0.28:
            prompt = ({"role": "system", "content": rng.choice(PII_SENTENCES)}, *prompt)
        elif roll < 0.4:
            chosen = LONG_ANSWER.replace("five", rng.choice(["5", "six", "five", "ten"]))
            rejected = "Just revoke the old key."
        elif roll < 0.45:
            chosen = f"Figure it out yourself, you idiot {i}."
        elif roll < 0.48:
            chosen = "x"
        elif roll < 0.52:
            chosen = rejected
        elif roll < 0.55:
            chosen = f"Ответ {i}: ΑΣ straße İstanbul, item {i}."
        out.append(
            candidate(
                source=rng.choice(["edit", "correction", "paired_outcome"]),
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                run_id=f"run-{i}",
                event_id=f"evt-{i}",
                tenant=rng.choice(["acme", "globex", "initech"]),
                feature=rng.choice(["chat", "search"]),
                user_id=rng.choice(["busy", "u1", "u2", "u3", None]),
                event_time=BASE_TIME + timedelta(minutes=rng.choice([0, 5, 70, 130])),
                chosen_run_id=rng.choice([None, f"run-{i + 1}"]),
            )
        )
    return out


def _fields(c: Candidate) -> dict[str, Any]:
    return {name: getattr(c, name) for name in Candidate.__slots__}


def verdict_rows() -> dict[str, list[list[Any]]]:
    """Every setting's verdicts over ``traffic()`` in buffers, the third of them rolled back."""
    rows: dict[str, list[list[Any]]] = {}
    sample = traffic()
    for name, settings in SETTINGS.items():
        chain = build_filters(settings, scorer=KeywordScorer())
        rows[name] = []
        start = 0
        for n, size in enumerate(BUFFERS * 2):
            buffer = sample[start : start + size]
            start += size
            for v in chain.run_many(buffer):
                c = v.candidate
                # The pair_id pins the (redacted) texts; 64 bits of it are plenty here.
                key = pair_id(c.prompt, c.chosen, c.rejected)[:16]
                rows[name].append([v.accepted, list(v.reasons), v.detail, dict(v.scores), key])
            if n % 3 == 2:
                chain.rollback()
            else:
                chain.commit()
    return rows


def write_golden() -> None:
    """One verdict a line, so a change shows as a readable diff."""
    lines = [
        f'"{name}": [\n' + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n]"
        for name, rows in verdict_rows().items()
    ]
    GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_verdicts_are_pinned(setting: str) -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))[setting]
    got = verdict_rows()[setting]
    assert len(got) == len(expected)
    for i, (row, want) in enumerate(zip(got, expected, strict=True)):
        assert row == want, f"{setting} verdict {i}"


def test_sample_exercises_every_reason_and_pii_kind() -> None:
    rows = [row for rows in json.loads(GOLDEN.read_text(encoding="utf-8")).values() for row in rows]
    reasons = {reason for row in rows for reason in row[1]}
    assert reasons >= {
        "duplicate",
        "duplicate_event",
        "near_duplicate",
        "pii",
        "too_dissimilar",
        "too_short",
        "too_similar",
        "toxic_chosen",
        "toxicity_increase",
        "user_cap",
        "tenant_cap",
    }
    redacted = {kind for row in rows for kind in row[2].partition("redacted=")[2].split(",")}
    assert redacted >= {"card", "email", "ip", "national_id", "phone", "secret"}
