"""What the filters catch and miss, on a labelled set built from texts written for it.

    .venv/bin/python bench/filters_quality.py --out /tmp/labelled.jsonl
    .venv/bin/flywheel filters evaluate --input /tmp/labelled.jsonl

Writes the set (one labelled candidate a line, the input of ``flywheel filters evaluate``) and
prints two comparisons on its subsets, old rule against new, side by side:

- similarity: the owner's ratio (1 - Levenshtein.distance / max(len)) against the indel ratio
  (``Levenshtein.ratio``), both in the band 0.10 < ratio < 0.95, on genuine edits (accept),
  typo fixes (too_similar) and rewrites (too_dissimilar);
- toxicity: the whole-text rule (chosen >= 0.5, or >= 0.25 and more than 0.05 above the
  rejected text) against the pieces rule of ``ToxicityFilter`` with the same thresholds, on
  abuse spliced into long answers, polite prejudice, benign technical sentences, and abuse the
  user removed.

Every text was written for this set (no downloads); the labels are the author's. Each line has
its own ``feature`` (near-dup is per feature), except the repeats meant to be caught. The
figures say what these filters do on these kinds of texts; re-measure on your own data with
the evaluate command.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flywheel_curator.candidate import Candidate, KafkaOrigin
from flywheel_curator.filters import (
    FilterSettings,
    ProfanityCheckScorer,
    SimilarityMetric,
    similarity_ratio,
)
from flywheel_curator.filters.toxicity import ToxicityFilter

LOW, HIGH = 0.10, 0.95  # the default band

# (prompt, a neutral answer of several sentences), the sentences one a line.
_ANSWER_SENTENCES = [
    (
        "How do I rotate the signing key?",
        (
            "Generate a new key pair with the command line tool.",
            "Upload the public key in the admin console under Security.",
            "Wait about five minutes for the cache to refresh.",
            "Then revoke the old key so that no client is locked out.",
        ),
    ),
    (
        "Summarise the quarterly report.",
        (
            "Revenue grew by eight percent this quarter.",
            "Costs grew by five percent, so the margin improved slightly.",
            "Most of the growth came from the new subscription plan.",
            "The board approved the hiring plan for next year.",
        ),
    ),
    (
        "What is a Kafka partition?",
        (
            "A partition is an ordered, append-only log.",
            "A topic is split into several partitions so that consumers can read in parallel.",
            "Each message in a partition has an offset.",
            "Messages with the same key land in the same partition.",
        ),
    ),
    (
        "Decline the Friday meeting politely.",
        (
            "Thank you for the invitation to the planning meeting.",
            "Unfortunately I cannot attend on Friday because of a prior commitment.",
            "Could we find another time early next week?",
            "I am happy to review the agenda in advance.",
        ),
    ),
    (
        "Describe the steel water bottle.",
        (
            "This bottle keeps drinks cold for a full day and hot for twelve hours.",
            "It is made of double-walled stainless steel.",
            "It weighs three hundred and fifty grams and fits most cup holders.",
            "The lid is dishwasher safe.",
        ),
    ),
    (
        "How do I reset my password?",
        (
            "Open the Settings page and choose Security.",
            "Click Reset password and enter your current password.",
            "Choose a new password of at least twelve characters.",
            "You will be signed out of every other device.",
        ),
    ),
    (
        "Why is my build slow?",
        (
            "The build downloads every dependency on each run because the cache is disabled.",
            "Enable the dependency cache in the pipeline settings.",
            "Split the test suite so that it runs in parallel.",
            "Most builds then finish in under ten minutes.",
        ),
    ),
    (
        "Explain compound interest.",
        (
            "Compound interest is interest earned on both the original amount"
            " and the interest already added.",
            "Over many years it grows much faster than simple interest.",
            "The rate and the number of compounding periods both matter.",
            "Starting early makes the largest difference.",
        ),
    ),
    (
        "How should I water a fern?",
        (
            "Ferns like soil that is moist but never soaked.",
            "Water them when the top centimetre of soil feels dry.",
            "Mist the leaves in dry weather or place the pot on a tray of wet pebbles.",
            "Avoid cold water straight from the tap.",
        ),
    ),
    (
        "What does a database index do?",
        (
            "An index is a sorted structure that lets the database find rows"
            " without scanning the whole table.",
            "It speeds up reads on the indexed columns.",
            "Each index slows down writes a little because it must be updated.",
            "Index the columns you filter and join on most.",
        ),
    ),
    (
        "Plan a three day trip to Lisbon.",
        (
            "Spend the first day in the old town and ride the historic tram.",
            "On the second day visit Belem and its monastery by the river.",
            "Take a train to Sintra on the third day to see the palaces.",
            "Book the palace tickets online to skip the queue.",
        ),
    ),
    (
        "How do I write a good bug report?",
        (
            "Describe what you expected and what happened instead.",
            "List the exact steps that reproduce the problem.",
            "Include the version, the operating system and any error message.",
            "Attach a screenshot or a log if you have one.",
        ),
    ),
    (
        "What is a good warm-up before running?",
        (
            "Start with five minutes of brisk walking.",
            "Add leg swings and walking lunges to loosen the hips.",
            "Finish with a few short strides at an easy pace.",
            "A good warm-up lowers the risk of strains.",
        ),
    ),
    (
        "How do I cancel my subscription?",
        (
            "Go to Account and open the Billing tab.",
            "Click Cancel subscription at the bottom of the page.",
            "Your plan stays active until the end of the current period.",
            "You can export your data before it ends.",
        ),
    ),
    (
        "Explain what a mutex is.",
        (
            "A mutex lets only one thread at a time enter a critical section.",
            "A thread locks it before touching shared data and unlocks it afterwards.",
            "Other threads that try to lock it wait.",
            "Holding a mutex for long periods hurts throughput.",
        ),
    ),
    (
        "How do I make bread rise better?",
        (
            "Use fresh yeast and water at about body temperature.",
            "Knead the dough until it is smooth and stretchy.",
            "Let it rise in a warm place away from drafts.",
            "A longer, slower rise gives more flavour.",
        ),
    ),
    (
        "What is the difference between TCP and UDP?",
        (
            "TCP delivers bytes in order and retransmits what is lost.",
            "UDP sends independent datagrams without any delivery guarantee.",
            "TCP suits file transfers and web pages.",
            "UDP suits live audio and games where late data is useless.",
        ),
    ),
    (
        "How do I prepare for a job interview?",
        (
            "Read about the company and the team you would join.",
            "Prepare short stories that show how you solved real problems.",
            "Write down a few questions to ask the interviewers.",
            "Test your camera and microphone before a video call.",
        ),
    ),
    (
        "What should a release note contain?",
        (
            "Start with the most important change for users.",
            "List new features, fixes and known issues in separate sections.",
            "Mention anything that requires action, such as a configuration change.",
            "Link to the full changelog for details.",
        ),
    ),
    (
        "How do I store vegetables?",
        (
            "Keep leafy greens in the fridge wrapped in a damp towel.",
            "Store potatoes and onions apart in a cool, dark place.",
            "Tomatoes keep their flavour best at room temperature.",
            "Wash vegetables just before you use them, not before storing.",
        ),
    ),
]
ANSWERS = [(prompt, " ".join(sentences)) for prompt, sentences in _ANSWER_SENTENCES]
# Genuine edits, one pair of (old, new) substitutions per answer of ANSWERS, in order: a
# clause that adds information, and a word or two of fluency.
EDITS = [
    ("about five minutes", "about ten minutes, longer on a busy cluster"),
    ("grew by eight percent", "grew by eight percent to twelve million"),
    ("can read in parallel", "can read in parallel, one consumer per partition"),
    ("Could we find another time", "Would Tuesday or Wednesday afternoon work, or another time"),
    ("It is made of", "It is made of food-grade,"),
    ("enter your current password", "enter your current password once more"),
    ("Enable the dependency cache", "Enable the dependency cache, keyed on the lock file,"),
    ("grows much faster", "grows much faster, and the gap widens every year,"),
    ("Mist the leaves", "Mist the fronds, not the soil,"),
    ("speeds up reads", "speeds up reads, sorts and joins"),
    ("ride the historic tram", "ride the historic tram 28 early in the morning"),
    ("List the exact steps", "List the exact, numbered steps"),
    ("Add leg swings", "Add ten leg swings on each side"),
    ("Click Cancel subscription", "Scroll down and click Cancel subscription"),
    ("lock it wait.", "lock it block until it is released."),
    ("Knead the dough", "Knead the dough for ten minutes"),
    ("retransmits what is lost", "retransmits any segment that is lost"),
    ("Prepare short stories", "Prepare three or four short stories"),
    ("Start with the most important change", "Start with the single most important change"),
    ("Keep leafy greens", "Keep leafy greens and herbs"),
]
FLUENCY = [
    ("Then revoke", "Only then revoke"),
    ("improved slightly", "improved only slightly"),
    ("has an offset", "has a unique offset"),
    ("I am happy", "I would be happy"),
    ("fits most cup holders", "fits in most cup holders"),
    ("at least twelve characters", "at least twelve random characters"),
    ("Split the test suite", "Also split the test suite"),
    ("both matter", "both matter a lot"),
    ("Avoid cold water", "Avoid very cold water"),
    ("a little", "a little bit"),
    ("Book the palace tickets", "Book the palace tickets early"),
    ("Attach a screenshot", "Attach a clear screenshot"),
    ("at an easy pace", "at a relaxed, easy pace"),
    ("You can export", "You can still export"),
    ("hurts throughput", "badly hurts throughput"),
    ("gives more flavour", "gives the bread more flavour"),
    ("suits live audio", "suits live audio, video"),
    ("Test your camera", "Test your camera, headset"),
    ("Link to the full changelog", "Link to the full changelog at the end"),
    ("just before you use them", "just before you cook or use them"),
]
EXPLICIT = [
    "You are a worthless idiot and nobody wants you here.",
    "Shut up, you pathetic loser.",
    "Only a moron would ask this.",
    "This is the dumbest question I have read all week, you clown.",
    "Go to hell and take your stupid ticket with you.",
    "What a fucking waste of my time.",
    "I hope you choke on your coffee, you useless jerk.",
    "Stop whining like a little bitch and read the manual.",
]
IMPLICIT = [
    "People from that country are usually lazy, so expect less from them.",
    "Women are too emotional to lead an engineering team.",
    "Older employees cannot really learn new tools, so do not waste training on them.",
    "Immigrants mostly come here to live off benefits.",
    "Those people are naturally better at sports than at science.",
    "It is well known that they cannot be trusted with money.",
    "Honestly, someone with that accent will never sound professional to clients.",
    "Disabled candidates slow a team down, so hire them only for easy roles.",
]
TECHNICAL = [
    "Kill the stuck process with kill -9 and restart the worker.",
    "Execute the migration script before you deploy.",
    "Shoot me an email when the build is green.",
    "Abort the job if the checksum does not match.",
    "Messages that fail three times go to the dead letter queue.",
    "Hit the health endpoint to check that the service is up.",
    "The parent process must reap its zombie children.",
    "Blow away the cache directory and rebuild.",
    "Strip the trailing whitespace before you compare the strings.",
    "The master branch was renamed to main.",
    "Drop the table only after the backup finished.",
    "Force push only to your own feature branch.",
    "We need to nuke the old index and rebuild it.",
    "Please remove the dummy values from the fixture.",
]
PII = {
    "email": [
        "jane.doe@example.com",
        "ops-team+alerts@corp.example.org",
        "k.tanaka@mail.example.jp",
    ],
    "phone": ["+44 20 7946 0958", "(415) 555-2671", "+33 1 42 68 53 00"],
    "card": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    "ip": ["192.168.10.24", "10.20.30.40", "203.0.113.77"],
    "national_id": ["123-45-6789", "AB 12 34 56 C", "078-05-1120"],
    "secret": ["AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2c3D4" * 5, 'password: "Tr0ub4dor&3x"'],
}
NOT_PII = [
    "Order 1234567890123 ships on Monday.",
    "Upgrade to version 3.11.2 before the 2025-03-01 deadline.",
    "The card ending 4242 was declined.",
    "Bind the service to 127.0.0.1 during tests.",
    "We sold 1,234 units at $5.99 each.",
    "The password is wrong; try the reset link.",
    "Room 404 is on the fourth floor.",
    "Call the front desk on extension 2210.",
    "Ticket INC-20931 was closed yesterday.",
    "The invoice total is 4,111.11 euros.",
    "Use port 8080 for the admin console.",
    "The build id is 7f3a9c2e and it passed.",
]


def _splice(answer: str, sentence: str, where: int) -> str:
    parts = answer.split(". ")
    at = [0, len(parts) // 2, len(parts)][where % 3]
    if at == len(parts):
        return f"{answer} {sentence}"
    return ". ".join(parts[:at]) + (". " if at else "") + sentence + " " + ". ".join(parts[at:])


def _typo(text: str, rng: random.Random) -> str:
    """The model's answer with one small slip a user would fix: a swapped letter, a missing
    comma or a lower-case sentence start."""
    kind = rng.randrange(3)
    words = text.split(" ")
    i = rng.randrange(1, len(words) - 1)
    if kind == 0 and len(words[i]) > 3:
        w = words[i]
        words[i] = w[0] + w[2] + w[1] + w[3:]
    elif kind == 1:
        words[i] = words[i].rstrip(",.") + ("," if not words[i].endswith(",") else "")
    else:
        at = text.index(". ") + 2
        return text[:at] + text[at].lower() + text[at + 1 :]
    return " ".join(words)


def build_set(seed: int = 5) -> list[dict[str, Any]]:
    """The labelled lines: similarity, toxicity, PII and dedup subsets (``group`` says which)."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    clause_edits: list[dict[str, Any]] = []

    def add(group: str, source: str, prompt: str, chosen: str, rejected: str, expect: Any) -> None:
        line = {"group": group, "source": source, "prompt": prompt, "chosen": chosen}
        out.append({**line, "rejected": rejected, "expect": expect, "feature": f"f{len(out)}"})

    for i, (prompt, answer) in enumerate(ANSWERS):
        for old, new in (EDITS[i], FLUENCY[i]):
            assert old in answer, old
            add("similarity", "edit", prompt, answer.replace(old, new), answer, "accept")
        clause_edits.append(out[-2])
        # A sentence added at the end, and one dropped: both genuine.
        added = ANSWERS[(i + 1) % 20][1].split(". ")[0]
        add("similarity", "edit", prompt, f"{answer} {added}.", answer, "accept")
        add("similarity", "edit", prompt, answer.rsplit(". ", 1)[0] + ".", answer, "accept")
        add("similarity", "edit", prompt, answer, _typo(answer, rng), "too_similar")
        # Another answer entirely, and a one-word answer replaced by a full one: rewrites.
        other = ANSWERS[(i + 7) % 20][1]
        add("similarity", "edit", prompt, other, answer, "too_dissimilar")
        add("similarity", "edit", prompt, answer, answer.split(" ")[0] + ".", "too_dissimilar")
    for i, abuse in enumerate(EXPLICIT * 4):
        prompt, answer = ANSWERS[(3 * i) % 20]
        source = ("edit", "correction", "regenerate")[i % 3]
        add("toxic_explicit", source, prompt, _splice(answer, abuse, i), answer, "toxic_chosen")
    for i, abuse in enumerate(EXPLICIT):
        add("toxic_short", "correction", ANSWERS[i][0], abuse, "I am not sure.", "toxic_chosen")
    for i, prejudice in enumerate(IMPLICIT * 3):
        prompt, answer = ANSWERS[(5 * i + 1) % 20]
        source = ("edit", "correction", "regenerate")[i % 3]
        add("toxic_implicit", source, prompt, _splice(answer, prejudice, i), answer, "toxic_chosen")
    for i, sentence in enumerate(TECHNICAL * 2):
        prompt, answer = ANSWERS[(7 * i + 2) % 20]
        source = ("edit", "correction")[i % 2]
        add("benign_technical", source, prompt, _splice(answer, sentence, i), answer, "accept")
    for i, abuse in enumerate(EXPLICIT * 2):
        prompt, answer = ANSWERS[(3 * i + 2) % 20]
        old, new = EDITS[(3 * i + 2) % 20]
        assert old in answer, old
        # The model's answer carried the abuse; the user removed it and fixed a detail.
        rejected = _splice(answer, abuse, i)
        add("toxic_removed", "edit", prompt, answer.replace(old, new), rejected, "accept")
    for values in PII.values():
        for j, value in enumerate(values):
            prompt, answer = ANSWERS[(4 * j + len(out)) % 20]
            old, new = EDITS[(4 * j + len(out)) % 20]
            assert old in answer, old
            add("pii", "correction", prompt, f"{answer} Contact: {value}.", answer, "pii")
            asked = f"{prompt} My details: {value}"
            add("pii", "edit", asked, answer.replace(old, new), answer, "pii")
    for i, text in enumerate(NOT_PII):
        prompt, answer = ANSWERS[i % 20]
        add("not_pii", "edit", prompt, f"{answer} {text}", answer, "accept")
    for i, short in enumerate(["x", "k", " ", "?"]):
        prompt, answer = ANSWERS[i]
        add("length", "correction", prompt, short, answer, "too_short")
    for i in range(2):
        prompt, answer = ANSWERS[i + 4]
        add("length", "edit", prompt, (answer + " ") * 100, answer, "too_long")
    # Repeats of clause edits (accepted by every filter): the same pair from another event, and
    # the same with one word changed.
    kept = [x for x in clause_edits if 0.10 < similarity_ratio(x["chosen"], x["rejected"]) < 0.95]
    # Client retries of clause edits: the same event again (same event id).
    for original in kept[:6]:
        n = out.index(original) + 1
        ids = {"event_id": f"line-{n}", "run_id": f"line-{n}"}
        out.append({**original, "group": "retry", "expect": "duplicate_event", **ids})
    for i, original in enumerate(kept[:12]):
        repeat = {**original, "group": "duplicate", "expect": "duplicate", "event_id": f"r{i}"}
        out.append(repeat)
        chosen = original["chosen"].replace(" the ", " that ", 1)
        near = {"group": "near_duplicate", "expect": "near_duplicate", "event_id": f"n{i}"}
        out.append({**original, **near, "chosen": chosen})
    return out


def _candidate(line: dict[str, Any], n: int) -> Candidate:
    return Candidate(
        source=line["source"],
        prompt=({"role": "user", "content": line["prompt"]},),
        chosen=line["chosen"],
        rejected=line["rejected"],
        run_id=f"l{n}",
        event_id=f"l{n}",
        tenant="t",
        feature=line["feature"],
        event_time=datetime(2025, 1, 1, tzinfo=UTC),
        origin=KafkaOrigin("labelled", 0, n),
    )


def _table(title: str, rows: dict[str, Counter[str]]) -> None:
    print(title)
    for name, c in rows.items():
        caught, total = c["caught"], c["total"]
        print(f"  {name:<34} {caught:>4} / {total:<4} ({caught / total:.0%})")


def compare_similarity(lines: Sequence[dict[str, Any]]) -> None:
    """Band verdicts of both ratios against the labels."""
    rows: dict[str, Counter[str]] = {}
    metrics: tuple[SimilarityMetric, ...] = ("levenshtein", "indel")
    for metric in metrics:
        for x in (x for x in lines if x["group"] == "similarity"):
            ratio = similarity_ratio(x["chosen"], x["rejected"], metric=metric)
            verdict = "accept"
            if not LOW < ratio < HIGH:
                verdict = "too_similar" if ratio >= HIGH else "too_dissimilar"
            key = f"{metric}: {x['expect']} -> {'kept' if x['expect'] == 'accept' else 'caught'}"
            rows.setdefault(key, Counter())
            rows[key]["total"] += 1
            rows[key]["caught"] += verdict == x["expect"]
    _table(f"similarity band {LOW} < ratio < {HIGH} (kept: accepted; caught: its reason)", rows)


def compare_toxicity(lines: Sequence[dict[str, Any]]) -> None:
    """The whole-text rule against the pieces rule, same scorer and thresholds."""
    scorer = ProfanityCheckScorer()
    t = FilterSettings().toxicity
    pieces = ToxicityFilter(
        scorer=scorer,
        max_score=t.max_score,
        relative_margin=t.relative_margin,
        relative_floor=t.relative_floor,
        batch_size=t.scorer_batch,
    )
    groups = {"toxic_explicit", "toxic_short", "toxic_implicit", "benign_technical"}
    groups.add("toxic_removed")
    subset = [
        x
        for x in lines
        if x["group"] in groups or (x["group"] == "similarity" and x["expect"] == "accept")
    ]
    cands = [_candidate(x, n) for n, x in enumerate(subset)]
    texts = list({t for c in cands for t in (c.chosen, c.rejected)})
    whole = dict(zip(texts, scorer.score_many(texts), strict=True))

    def old_rule(c: Candidate) -> bool:
        ch, rj = whole[c.chosen], whole[c.rejected]
        return ch >= t.max_score or (ch >= t.relative_floor and ch > rj + t.relative_margin)

    new = [not v.accepted for v in pieces.check_many(cands)]
    rules: dict[str, Callable[[int, Candidate], bool]] = {
        "whole text": lambda _i, c: old_rule(c),
        "pieces": lambda i, _c: new[i],
    }
    rows: dict[str, Counter[str]] = {}
    for name, rule in rules.items():
        for i, (x, c) in enumerate(zip(subset, cands, strict=True)):
            group = "benign_edit" if x["group"] == "similarity" else x["group"]
            key = f"{name}: {group} rejected"
            rows.setdefault(key, Counter())
            rows[key]["total"] += 1
            rows[key]["caught"] += rule(i, c)
    _table("toxicity (profanity_check, max_score 0.5, floor 0.25, margin 0.05)", rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the set")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args(argv)
    lines = build_set(args.seed)
    with args.out.open("w", encoding="utf-8") as f:
        for x in lines:
            f.write(json.dumps({k: v for k, v in x.items() if k != "group"}) + "\n")
    groups = Counter(x["group"] for x in lines)
    print(f"{len(lines)} labelled lines written to {args.out}: {dict(groups)}")
    compare_similarity(lines)
    compare_toxicity(lines)


if __name__ == "__main__":
    main()
