"""The curator's filter chain in process: CPU per candidate, in total and per stage.

    .venv/bin/python bench/curator_filters.py [--candidates N]

Builds N candidates shaped like the traffic of ``bench/curator.py`` (edits, corrections and
paired outcomes over a few prompts, many tenants and users), with client retries, exact
duplicates, near-duplicates, PII of every kind and toxic corrections mixed in. They run
through a chain built from the default ``FilterSettings`` in pipeline-sized buffers, with a
commit after each, against a state preloaded as a long-running curator's would be.

Per stage: a chain with only that filter enabled, minus the chain with none enabled (the stateful
ones then see every candidate, so a stage's figure is an upper bound of its share). Baseline, in
the same run: building the candidates and computing each one's ``pair_id``, i.e. the least any
pipeline pays per candidate.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from flywheel_curator.candidate import Candidate, KafkaOrigin, PairSource
from flywheel_curator.filters import FilterSettings, FilterState, build_filters, pair_id

PROMPTS = [
    "Summarise the quarterly report for the board in three sentences.",
    "Draft a polite reply declining the meeting on Friday.",
    "Explain what a Kafka consumer group rebalance is.",
    "Write a product description for a steel water bottle.",
]
# One sentence per PII kind, appended to an answer.
PII_SENTENCES = [
    "Write to jane.doe@example.com for a refund.",
    "Call me on +44 20 7946 0958 tomorrow.",
    "My card 4111 1111 1111 1111 was charged twice.",
    "The server at 192.168.10.24 is down.",
    "SSN 123-45-6789 is on file.",
    "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
    'config: api_key = "sk_live_51HxYz0123"',
]
# A long answer, so one changed word keeps the shingle overlap above the near-dup threshold.
LONG_ANSWER = (
    "To rotate the signing key, generate a new key pair with the CLI, upload the public key in "
    "the admin console under Security, wait for the cache to refresh, which takes about five "
    "minutes, and only then revoke the old key so that no client is locked out of item {}."
)
TOXIC = "Figure it out yourself, you stupid idiot, item {}."
BUFFER = 2000
PRELOADED_KEYS = 200_000
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
STAGES = ("length", "similarity", "pii", "event_dedup", "dedup", "near_dup", "caps", "toxicity")


def _fresh(i: int, rng: random.Random) -> Candidate:
    """One candidate of the bench's event mix: an edit, a thumbs-down correction or a paired
    outcome of run ``i``, with PII, a near-copy of a long answer or a toxic text now and then."""
    response = (
        f"Answer {i}: the model says something reasonable about item {rng.randint(0, 10**6)}."
    )
    source: PairSource = ("edit", "correction", "paired_outcome")[i % 3]
    if source == "edit":
        chosen = f"Answer {i}: the user says something better about item {i}."
    elif source == "correction":
        chosen = f"A better answer {i}: something more reasonable about item {i}."
    else:
        chosen = f"Answer {i}: the model says something useful about item {rng.randint(0, 10**6)}."
    roll = rng.random()
    if roll < 0.05:
        chosen = f"{chosen} {rng.choice(PII_SENTENCES)}"
    elif roll < 0.08:
        chosen, response = LONG_ANSWER.format(i), LONG_ANSWER.format(i % 7)
    elif roll < 0.09:
        chosen = TOXIC.format(i)
    return Candidate(
        source=source,
        prompt=({"role": "user", "content": PROMPTS[i % len(PROMPTS)]},),
        chosen=chosen,
        rejected=response,
        run_id=f"run-{i}",
        event_id=f"evt-{i}",
        tenant=f"t{i % 1009}",
        feature="f",
        event_time=START + timedelta(milliseconds=50 * i),
        origin=KafkaOrigin(topic="flywheel.edits.v1", partition=i % 8, offset=i),
        user_id=f"u{i % 20011}",
        chosen_run_id=f"run-{i + 1}" if source == "paired_outcome" else None,
        rejected_run_id=f"run-{i}" if source == "paired_outcome" else None,
    )


def build_candidates(n: int, *, seed: int = 1) -> list[Candidate]:
    """``n`` candidates: 4 % client retries (same event), 3 % the same pair from another event,
    the rest fresh (see ``_fresh``)."""
    rng = random.Random(seed)
    out: list[Candidate] = []
    for i in range(n):
        roll = rng.random()
        if out and roll < 0.04:
            out.append(rng.choice(out[-BUFFER:]))
        elif out and roll < 0.07:
            twin = rng.choice(out[-BUFFER:])
            out.append(Candidate(**{**_fields(twin), "event_id": f"evt-{i}", "run_id": f"r{i}"}))
        else:
            out.append(_fresh(i, rng))
    return out


def _fields(candidate: Candidate) -> dict[str, Any]:
    return {name: getattr(candidate, name) for name in Candidate.__slots__}


def _settings(only: str | None) -> FilterSettings:
    """Default settings, or only the stage ``only`` enabled (``"none"``: nothing enabled)."""
    if only is None:
        return FilterSettings()
    return FilterSettings(**{s: {"enabled": s == only} for s in STAGES})


def _state(settings: FilterSettings) -> FilterState:
    state = FilterState.in_memory(settings)
    rng = random.Random(7)
    keys = [rng.getrandbits(64) for _ in range(PRELOADED_KEYS)]
    state.pairs.load(keys)
    state.events.load(keys[::-1])
    return state


def run_chain(candidates: Sequence[Candidate], settings: FilterSettings) -> tuple[float, int]:
    """CPU seconds the chain takes over ``candidates`` in buffers, and how many it accepted."""
    chain = build_filters(settings, _state(settings))
    accepted = 0
    elapsed = 0.0
    for start in range(0, len(candidates), BUFFER):
        buffer = candidates[start : start + BUFFER]
        t0 = time.process_time()
        verdicts = chain.run_many(buffer)
        chain.commit()
        elapsed += time.process_time() - t0
        accepted += sum(v.accepted for v in verdicts)
    return elapsed, accepted


def best_of(repeat: int, candidates: Sequence[Candidate], settings: FilterSettings) -> float:
    """The fastest of ``repeat`` runs, each with a fresh chain: the least noisy figure on a
    shared machine."""
    return min(run_chain(candidates, settings)[0] for _ in range(repeat))


def _timed(work: Callable[[], object]) -> float:
    t0 = time.process_time()
    work()
    return time.process_time() - t0


def _us(seconds: float, n: int) -> str:
    return f"{seconds / n * 1e6:8.1f} us"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best counts")
    parser.add_argument("--profile", action="store_true", help="cProfile the full chain too")
    args = parser.parse_args(argv)
    n = args.candidates
    candidates = build_candidates(n)
    build = min(_timed(lambda: build_candidates(n)) for _ in range(args.repeat))
    ids = min(
        _timed(lambda: [pair_id(c.prompt, c.chosen, c.rejected) for c in candidates])
        for _ in range(args.repeat)
    )
    print(f"{n} candidates, buffers of {BUFFER}, CPU per candidate (best of {args.repeat}):")
    print(f"  baseline: build {_us(build, n)}   pair_id {_us(ids, n)}")
    _, accepted = run_chain(candidates, _settings(None))
    total = best_of(args.repeat, candidates, _settings(None))
    print(f"  chain, default settings {_us(total, n)}   ({accepted / n:.1%} accepted)")
    empty = best_of(args.repeat, candidates, _settings("none"))
    print(f"  chain, no filter        {_us(empty, n)}")
    for stage in STAGES:
        alone = best_of(args.repeat, candidates, _settings(stage))
        print(f"    {stage:<12} {_us(alone - empty, n)}")
    print(f"  chain / (build + pair_id): {total / (build + ids):.1f}x")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run_chain, candidates, _settings(None))
        report = io.StringIO()
        pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(25)
        print(report.getvalue())


if __name__ == "__main__":
    main()
