"""Arrow schemas of the gold tables (DESIGN.md, "Tables"), the content hashes that name a pair
and an unpaired example, and the application-transaction id that carries Kafka offsets inside a
Delta commit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pyarrow as pa

__all__ = [
    "DPO_PAIRS",
    "KTO_EXAMPLES",
    "KTO_SIGNALS",
    "REJECTED_CANDIDATES",
    "SFT_EXAMPLES",
    "TABLE_SCHEMAS",
    "TableName",
    "chat_prompt",
    "content_hash",
    "kto_example_id",
    "txn_app_id",
]

TableName = Literal["dpo_pairs", "kto_examples", "sft_examples", "rejected_candidates"]

_TS = pa.timestamp("ms", tz="UTC")
CHAT = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

# Where a row came from in Kafka: the exactly-once audit trail.
_KAFKA = [
    pa.field("kafka_topic", pa.string(), nullable=False),
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
]
_LINEAGE = [
    pa.field("event_time", _TS, nullable=False),
    pa.field("curated_at", _TS, nullable=False),
    pa.field("curator_version", pa.string(), nullable=False),
    pa.field("filter_config_hash", pa.string(), nullable=False),
]

DPO_PAIRS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),  # content hash of prompt+chosen+rejected
        pa.field("prompt", CHAT, nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field(
            "source", pa.string(), nullable=False
        ),  # edit|correction|regenerate|paired_outcome
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("chosen_run_id", pa.string()),
        pa.field("rejected_run_id", pa.string()),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("user_hash", pa.string()),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
        # Chosen vs rejected, by filters.similarity.metric: "levenshtein" (default) is
        # 1 - Levenshtein.distance / max(len), "indel" is Levenshtein.ratio; the row's
        # filter_config_hash names which (docs/curator.md, "Similarity band").
        pa.field("similarity", pa.float64()),
        # The worst toxicity score of the chosen text's pieces (whole, each sentence, the
        # spans an edit inserted), and of the rejected text's (docs/curator.md, "Toxicity").
        pa.field("toxicity", pa.float64()),
        pa.field("toxicity_rejected", pa.float64()),
        pa.field("weight", pa.float64(), nullable=False),
        *_LINEAGE,
        *_KAFKA,
    ]
)

# The explicit signals an unpaired example comes from (DESIGN.md, "Pair sources").
KTO_SIGNALS = ("thumbs", "rating", "helpful")

# One rated answer without a correction: KTO's unpaired format (prompt, completion, label) with
# the lineage columns of dpo_pairs. ``label`` is True when the answer is desirable.
KTO_EXAMPLES = pa.schema(
    [
        pa.field(
            "example_id", pa.string(), nullable=False
        ),  # kto_example_id(prompt, completion, label)
        pa.field("prompt", CHAT, nullable=False),
        pa.field("completion", pa.string(), nullable=False),
        pa.field("label", pa.bool_(), nullable=False),  # desirable
        pa.field("weight", pa.float64(), nullable=False),
        pa.field("signal", pa.string(), nullable=False),  # one of KTO_SIGNALS
        pa.field("signal_value", pa.float64()),  # thumbs ±1, rating 1-5, helpful 1/0
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("user_hash", pa.string()),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("toxicity", pa.float64()),  # of the completion
        *_LINEAGE,
        *_KAFKA,
    ]
)

SFT_EXAMPLES = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("prompt", CHAT, nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("user_hash", pa.string()),
        pa.field("feature", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
        *_LINEAGE,
        *_KAFKA,
    ]
)

REJECTED_CANDIDATES = pa.schema(
    [
        pa.field("candidate_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("reasons", pa.list_(pa.string()), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("prompt", CHAT),
        pa.field("chosen", pa.string()),
        pa.field("rejected", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("event_id", pa.string()),
        pa.field("tenant", pa.string()),
        pa.field("user_hash", pa.string()),
        pa.field("feature", pa.string()),
        pa.field("similarity", pa.float64()),  # as in dpo_pairs
        pa.field("toxicity", pa.float64()),  # as in dpo_pairs
        *_LINEAGE,
        *_KAFKA,
    ]
)

TABLE_SCHEMAS: Mapping[str, pa.Schema] = {
    "dpo_pairs": DPO_PAIRS,
    "kto_examples": KTO_EXAMPLES,
    "sft_examples": SFT_EXAMPLES,
    "rejected_candidates": REJECTED_CANDIDATES,
}


def chat_prompt(prompt: str | Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """A prompt as chat messages: plain text becomes one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def content_hash(*parts: object) -> str:
    """Stable SHA-256 of JSON-serialisable parts; the pair_id and the exact-dedup key."""
    blob = json.dumps(parts, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def kto_example_id(prompt: Sequence[Mapping[str, Any]], completion: str, *, label: bool) -> str:
    """The ``example_id`` of a ``kto_examples`` row: the same answer to the same prompt rated
    the same way is one example (exact dedup); rated both ways it is two."""
    return content_hash("kto_example/v1", chat_prompt(prompt), completion, label)


def txn_app_id(group: str, topic: str, partition: int) -> str:
    """Delta application-transaction id under which a consumer group records the next offset
    to read from one topic-partition."""
    return f"flywheel:{group}:{topic}:{partition}"
