"""Synthetic preference data, a tokenizer trained on the spot and random-init causal LMs.

Nothing here downloads anything: tests, ``bench/trainer.py`` and the demo use it to run the real
training path where no model hub is reachable. The preference is learnable but not trivial: the
prompt names a key, and which of two closing words is preferred depends on that key, so a model
that always favours one word is right only half the time.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from flywheel_common.lake import (
    DPO_PAIRS,
    KTO_EXAMPLES,
    chat_prompt,
    content_hash,
    kto_example_id,
)

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "SyntheticExample",
    "SyntheticPair",
    "build_tokenizer",
    "generate_examples",
    "generate_pairs",
    "kto_table",
    "pairs_table",
    "random_init_model",
    "save_base_model",
]

# A minimal chat template: the rendered prompt with the generation prompt is always a prefix of
# the rendered prompt + answer (no space after a role marker that BPE could merge into the
# answer's first token), which is what TRL needs to find where a completion starts.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ("<|pad|>", "<|unk|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>")

_KEYS = ("alpha", "beta")
# For key alpha the chosen answer closes with "sun" and the rejected one with "moon"; beta swaps.
_ENDINGS = {"alpha": ("sun", "moon"), "beta": ("moon", "sun")}
_FILLER = tuple(f"w{i}" for i in range(40))
_SOURCES = ("edit", "correction", "regenerate", "paired_outcome")


@dataclass(frozen=True, slots=True)
class SyntheticPair:
    prompt: str
    chosen: str
    rejected: str
    source: str
    feature: str | None = None  # None: the table writer's default
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class SyntheticExample:
    """An unpaired rated answer (a kto_examples row)."""

    prompt: str
    completion: str
    label: bool  # desirable
    signal: str
    feature: str | None = None
    tenant: str | None = None


def _variant(prompt: str, k: int) -> str:
    """The k-th way a user typed the same prompt: case, spacing and end punctuation differ."""
    return [prompt, prompt.capitalize() + "?", "  " + prompt.replace(" ", "  ") + " ."][k % 3]


def generate_pairs(
    n: int,
    *,
    seed: int = 0,
    filler_words: int = 3,
    per_prompt: int = 1,
    features: tuple[str, ...] | None = None,
) -> list[SyntheticPair]:
    """``n`` pairs whose preference depends on the key named in the prompt. With
    ``per_prompt`` > 1, each prompt gets that many pairs (different answers, the prompt typed
    differently); with ``features``, prompts are spread over them round-robin."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    out = []
    for i in range(n):
        p = i // per_prompt
        key = _KEYS[p % 2]
        good, bad = _ENDINGS[key]
        prng = random.Random(f"{seed}:{p}")  # noqa: S311 - the prompt's words, per prompt
        topic = " ".join(prng.choice(_FILLER) for _ in range(filler_words))
        body = " ".join(rng.choice(_FILLER) for _ in range(filler_words))
        # The index makes every prompt unique, so content-hash pair ids never collide.
        prompt = _variant(f"n{p % 1000} key {key} about {topic}", i % per_prompt)
        out.append(
            SyntheticPair(
                prompt=prompt,
                chosen=f"{body} {good}",
                rejected=f"{body} {bad}",
                source=_SOURCES[i % len(_SOURCES)],
                feature=features[p % len(features)] if features else None,
            )
        )
    return out


def generate_examples(
    n: int, *, seed: int = 0, desirable_share: float = 0.5, filler_words: int = 3
) -> list[SyntheticExample]:
    """``n`` unpaired rated answers to distinct prompts: the answer ending the key prefers is
    rated up, the other down; ``desirable_share`` of them are the preferred one."""
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    out = []
    for i in range(n):
        key = _KEYS[i % 2]
        good, bad = _ENDINGS[key]
        desirable = rng.random() < desirable_share
        topic = " ".join(rng.choice(_FILLER) for _ in range(filler_words))
        body = " ".join(rng.choice(_FILLER) for _ in range(filler_words))
        out.append(
            SyntheticExample(
                prompt=f"n{i % 1000} key {key} about {topic}",
                completion=f"{body} {good if desirable else bad}",
                label=desirable,
                signal=("thumbs", "rating", "helpful")[i % 3],
            )
        )
    return out


def _vocabulary() -> list[str]:
    words = [*_KEYS, "key", "about", "sun", "moon", *_FILLER, *(f"n{i}" for i in range(1000))]
    return [*SPECIAL_TOKENS, *words]


def build_tokenizer(*, vocab_size: int = 3_000, seed: int = 0) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on the synthetic corpus, with a chat
    template. Byte-level BPE because transformers rebuilds some architectures' tokenizers
    (Qwen2) from vocab + merges with a byte-level pipeline; a word-level one would lose every
    word there."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(_vocabulary()[len(SPECIAL_TOKENS) :])] + [
        f"{p.prompt} {p.chosen} {p.rejected}" for p in generate_pairs(2_000, seed=seed)
    ]
    core.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        pad_token="<|pad|>",  # noqa: S106 - a token, not a password
        unk_token="<|unk|>",  # noqa: S106
        eos_token="<|eos|>",  # noqa: S106
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
    )
    tok.chat_template = CHAT_TEMPLATE
    # TRL pads on the left for generation; our own scoring pads explicitly either way.
    tok.padding_side = "left"
    return tok


Architecture = Literal["llama", "qwen2"]


def random_init_model(
    *,
    vocab_size: int,
    architecture: Architecture = "llama",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int = 256,
    pad_token_id: int = 0,
    eos_token_id: int = 2,
    seed: int = 0,
) -> Any:
    """A randomly initialised causal LM of a real architecture (no weights are downloaded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or hidden_size * 4,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        "max_position_embeddings": max_positions,
        "pad_token_id": pad_token_id,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "tie_word_embeddings": False,
    }
    if architecture == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common))
    return LlamaForCausalLM(LlamaConfig(**common))


def save_base_model(
    directory: Path,
    *,
    architecture: Architecture = "llama",
    seed: int = 0,
    vocab_size: int | None = None,
    **sizes: Any,
) -> Path:
    """Write a random-init model and the synthetic tokenizer as a local base-model folder.
    ``vocab_size`` may exceed the tokenizer's, to give the model a real model's embedding size."""
    tok = build_tokenizer()
    model = random_init_model(
        vocab_size=max(vocab_size or 0, len(tok)),
        architecture=architecture,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        seed=seed,
        **sizes,
    )
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def pairs_table(
    pairs: Sequence[SyntheticPair],
    *,
    topic: str = "synthetic",
    partition: int = 0,
    first_offset: int = 0,
    tenant: str = "acme",
    feature: str = "chat",
    curator_version: str = "synthetic",
) -> pa.Table:
    """``pairs`` as ``dpo_pairs`` rows, as the curator would write them, with consecutive Kafka
    offsets from ``first_offset`` (tests and benchmarks feed the trainer through this)."""
    now = datetime.now(UTC)
    rows = []
    for i, p in enumerate(pairs):
        prompt = chat_prompt(p.prompt)
        rows.append(
            {
                "pair_id": content_hash(prompt, p.chosen, p.rejected),
                "prompt": prompt,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "source": p.source,
                "run_id": str(uuid.uuid4()),
                "event_id": str(uuid.uuid4()),
                "tenant": p.tenant or tenant,
                "feature": p.feature or feature,
                "weight": 1.0,
                "event_time": now,
                "curated_at": now,
                "curator_version": curator_version,
                "filter_config_hash": curator_version,
                "kafka_topic": topic,
                "kafka_partition": partition,
                "kafka_offset": first_offset + i,
            }
        )
    return pa.Table.from_pylist(rows, schema=DPO_PAIRS)


def kto_table(
    examples: Sequence[SyntheticExample],
    *,
    topic: str = "synthetic",
    partition: int = 0,
    first_offset: int = 0,
    tenant: str = "acme",
    feature: str = "chat",
    curator_version: str = "synthetic",
) -> pa.Table:
    """``examples`` as ``kto_examples`` rows (KTO_EXAMPLES schema), as the curator will write
    them, with consecutive Kafka offsets from ``first_offset``."""
    now = datetime.now(UTC)
    values = {"thumbs": (1.0, -1.0), "rating": (5.0, 1.0), "helpful": (1.0, 0.0)}
    rows = []
    for i, e in enumerate(examples):
        prompt = chat_prompt(e.prompt)
        rows.append(
            {
                "example_id": kto_example_id(prompt, e.completion, label=e.label),
                "prompt": prompt,
                "completion": e.completion,
                "label": e.label,
                "weight": 1.0,
                "signal": e.signal,
                "signal_value": values[e.signal][0 if e.label else 1],
                "run_id": str(uuid.uuid4()),
                "event_id": str(uuid.uuid4()),
                "tenant": e.tenant or tenant,
                "feature": e.feature or feature,
                "event_time": now,
                "curated_at": now,
                "curator_version": curator_version,
                "filter_config_hash": curator_version,
                "kafka_topic": topic,
                "kafka_partition": partition,
                "kafka_offset": first_offset + i,
            }
        )
    return pa.Table.from_pylist(rows, schema=KTO_EXAMPLES)
