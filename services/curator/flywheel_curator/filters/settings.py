"""Filter settings: one frozen sub-model per filter, each with ``enabled`` and its thresholds.

``FilterSettings`` is a plain pydantic ``BaseModel`` (not ``BaseSettings``): the curator's one
settings object nests it, so ``FLYWHEEL_CURATOR_FILTERS__SIMILARITY__MAX_RATIO=0.9`` reaches
it through the service's ``env_nested_delimiter``. Shape errors surface as pydantic's
``ValidationError`` naming the field; ``build_filters`` raises ``ConfigError`` for settings
that are well-formed but unusable (a checkpoint that does not exist).
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from flywheel_curator.candidate import PairSource

__all__ = [
    "ALL_PII_KINDS",
    "ALL_SOURCES",
    "CapSettings",
    "DedupSettings",
    "DetoxifySettings",
    "EventDedupSettings",
    "FilterSettings",
    "JudgeSettings",
    "LengthSettings",
    "NearDupSettings",
    "PiiKind",
    "PiiSettings",
    "SimilarityMetric",
    "SimilaritySettings",
    "ToxicityBackend",
    "ToxicitySettings",
]

PiiKind = Literal["email", "phone", "card", "ip", "national_id", "secret"]
ToxicityBackend = Literal["profanity_check", "detoxify", "judge"]
SimilarityMetric = Literal["levenshtein", "indel"]

ALL_SOURCES: tuple[PairSource, ...] = get_args(PairSource)
ALL_PII_KINDS: tuple[PiiKind, ...] = get_args(PiiKind)

# Length: a one-character answer teaches nothing; 16k characters is far past any useful
# preference pair and keeps one oversized event from dominating a training batch.
DEFAULT_MIN_CHARS = 2
DEFAULT_MAX_CHARS = 16_000
DEFAULT_MAX_PROMPT_CHARS = 64_000
# Similarity band (DESIGN.md, "Pair sources"): an edit below 0.10 is a rewrite, not a
# correction of the output; one above 0.95 is a typo fix that carries no preference.
DEFAULT_MIN_RATIO = 0.10
DEFAULT_MAX_RATIO = 0.95
# Toxicity: probability at which the chosen text is toxic outright, and how much more toxic the
# chosen side may score than the rejected side before the pair counts as poisoning. The margin
# absorbs scorer noise: on 3,654 benign support-chat edits profanity_check rejected 56 % at
# margin 0, 0.6 % at 0.02 and 0.08 % at 0.05.
DEFAULT_MAX_TOXICITY = 0.5
DEFAULT_RELATIVE_MARGIN = 0.05
# Below this the chosen text is clean by the scorer's own measure, and a higher score than the
# rejected side is noise (profanity_check: prose 0.01-0.11, insults 0.98-1.0).
DEFAULT_RELATIVE_FLOOR = 0.25
DEFAULT_SCORER_BATCH = 64
# Sentence windows (and as many edit spans) scored per side of a candidate: a 16k-character
# answer costs at most 1 + 16 + 16 pieces, an ordinary one its few sentences.
DEFAULT_MAX_PIECES = 16
DEFAULT_JUDGE_TEXTS_PER_REQUEST = 16
# profanity_check pays ~10 ms of sklearn input validation per call whatever its size (151 us a
# text in calls of 64, 11 us in calls of 4096): it scores a whole pipeline buffer in one call.
PROFANITY_CHECK_BATCH = 8192
DEFAULT_JUDGE_TIMEOUT_S = 10.0
# Exact dedup keeps 8 bytes per pair (16 with the eviction order): 10M pairs is about 160 MB.
DEFAULT_MAX_PAIR_KEYS = 10_000_000
DEFAULT_MAX_EVENT_KEYS = 10_000_000
# Near-dup: Jaccard over word 3-shingles, 64 permutations in 16 bands of 4 rows; the index
# remembers the newest 100k pairs (about 40 MB).
DEFAULT_NEAR_DUP_THRESHOLD = 0.8
DEFAULT_NUM_PERM = 64
DEFAULT_BANDS = 16
DEFAULT_SHINGLE_WORDS = 3
DEFAULT_NEAR_DUP_ENTRIES = 100_000
# Caps: one account may add at most 100 pairs an hour, one tenant 10k; a day of windows is kept.
DEFAULT_CAP_WINDOW = timedelta(hours=1)
DEFAULT_MAX_PER_USER = 100
DEFAULT_MAX_PER_TENANT = 10_000
DEFAULT_RETAIN_WINDOWS = 24


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LengthSettings(_Frozen):
    """Bounds, in characters of stripped text, on chosen and rejected; and a prompt ceiling."""

    enabled: bool = True
    min_chars: int = Field(default=DEFAULT_MIN_CHARS, ge=0)
    max_chars: int = Field(default=DEFAULT_MAX_CHARS, ge=1)
    max_prompt_chars: int = Field(default=DEFAULT_MAX_PROMPT_CHARS, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LengthSettings:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) exceeds max_chars ({self.max_chars})")
        return self


class SimilaritySettings(_Frozen):
    """Accept when ``min_ratio < ratio(chosen, rejected) < max_ratio`` (strict). ``metric``
    names the ratio: ``levenshtein`` (default, the owner's rule: ``1 - Levenshtein.distance /
    max(len)``) or ``indel`` (``Levenshtein.ratio``); see ``similarity.py``."""

    enabled: bool = True
    metric: SimilarityMetric = "levenshtein"
    min_ratio: float = Field(default=DEFAULT_MIN_RATIO, ge=0.0, le=1.0)
    max_ratio: float = Field(default=DEFAULT_MAX_RATIO, ge=0.0, le=1.0)
    sources: tuple[PairSource, ...] = ALL_SOURCES

    @model_validator(mode="after")
    def _band(self) -> SimilaritySettings:
        if self.min_ratio >= self.max_ratio:
            raise ValueError(
                f"min_ratio ({self.min_ratio}) must be below max_ratio ({self.max_ratio})"
            )
        return self


class DetoxifySettings(_Frozen):
    """A Detoxify checkpoint on local disk (the wheel ships no weights).

    ``hf_config_dir`` is a folder with the transformer's ``config.json`` and tokenizer files;
    it is required when the checkpoint's ``config.arch.args.model_type`` names a hub model
    (``bert-base-uncased``), because loading would otherwise reach for the hub.
    ``checkpoint_loading="full_pickle"`` runs code from the file: only for files you trust.
    """

    checkpoint: Path
    hf_config_dir: Path | None = None
    device: str = "cpu"
    # The class scored: "toxicity" for Detoxify's models, or "max" for the highest class.
    label: str = "toxicity"
    batch_size: int = Field(default=DEFAULT_SCORER_BATCH, ge=1)
    checkpoint_loading: Literal["weights_only", "full_pickle"] = "weights_only"


class JudgeSettings(_Frozen):
    """An LLM judge behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    base_url: str = Field(pattern=r"^https?://")
    model: str = Field(min_length=1)
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=DEFAULT_JUDGE_TIMEOUT_S, gt=0)
    # Texts rated in one request (a JSON array; the answer holds one score per text).
    texts_per_request: int = Field(default=DEFAULT_JUDGE_TEXTS_PER_REQUEST, ge=1)


class ToxicitySettings(_Frozen):
    """Toxicity of what the user wrote, judged on the worst of the whole text, each sentence and
    (for edits) each edited span, at most ``max_pieces`` sentence windows and spans per side:
    absolutely (``max_score``) and relative to what it replaced (``added > removed +
    relative_margin`` is the poisoning case, once what was added scores at least
    ``relative_floor``; 0 makes the relative check apply to any score)."""

    enabled: bool = True
    backend: ToxicityBackend = "profanity_check"
    max_score: float = Field(default=DEFAULT_MAX_TOXICITY, gt=0.0, le=1.0)
    relative_margin: float = Field(default=DEFAULT_RELATIVE_MARGIN, ge=0.0, lt=1.0)
    relative_floor: float = Field(default=DEFAULT_RELATIVE_FLOOR, ge=0.0, le=1.0)
    # Texts per scorer call; None: the backend's own (see ``scorer_batch``).
    batch_size: int | None = Field(default=None, ge=1)
    max_pieces: int = Field(default=DEFAULT_MAX_PIECES, ge=1)
    detoxify: DetoxifySettings | None = None
    judge: JudgeSettings | None = None

    @model_validator(mode="after")
    def _backend_configured(self) -> ToxicitySettings:
        if self.enabled and self.backend == "detoxify" and self.detoxify is None:
            raise ValueError("backend 'detoxify' needs toxicity.detoxify.checkpoint")
        if self.enabled and self.backend == "judge" and self.judge is None:
            raise ValueError("backend 'judge' needs toxicity.judge (base_url, model)")
        return self

    @property
    def scorer_batch(self) -> int:
        """Texts per scorer call: ``batch_size`` when set, else the backend's own size."""
        if self.batch_size is not None:
            return self.batch_size
        if self.backend == "profanity_check":
            return PROFANITY_CHECK_BATCH
        if self.backend == "detoxify" and self.detoxify is not None:
            return self.detoxify.batch_size
        return DEFAULT_SCORER_BATCH


class PiiSettings(_Frozen):
    """Which kinds of PII and secrets to look for in prompt, chosen and rejected, and what to do:
    ``redact`` replaces each finding with ``[KIND]``; ``reject`` drops the candidate."""

    enabled: bool = True
    policy: Literal["redact", "reject"] = "redact"
    kinds: tuple[PiiKind, ...] = ALL_PII_KINDS


class DedupSettings(_Frozen):
    """Exact dedup by the pair's content hash (``pair_id``)."""

    enabled: bool = True
    max_entries: int = Field(default=DEFAULT_MAX_PAIR_KEYS, ge=1)


class EventDedupSettings(_Frozen):
    """One candidate per (event_id, source, runs): a client retry is counted once."""

    enabled: bool = True
    max_entries: int = Field(default=DEFAULT_MAX_EVENT_KEYS, ge=1)


class NearDupSettings(_Frozen):
    """MinHash LSH over word shingles of prompt + chosen, within a feature or globally."""

    enabled: bool = True
    threshold: float = Field(default=DEFAULT_NEAR_DUP_THRESHOLD, gt=0.0, le=1.0)
    num_perm: int = Field(default=DEFAULT_NUM_PERM, ge=2, le=1024)
    bands: int = Field(default=DEFAULT_BANDS, ge=1)
    shingle_words: int = Field(default=DEFAULT_SHINGLE_WORDS, ge=1, le=16)
    max_entries: int = Field(default=DEFAULT_NEAR_DUP_ENTRIES, ge=1)
    scope: Literal["feature", "global"] = "feature"

    @model_validator(mode="after")
    def _bands_divide(self) -> NearDupSettings:
        if self.num_perm % self.bands:
            raise ValueError(f"bands ({self.bands}) must divide num_perm ({self.num_perm})")
        return self


class CapSettings(_Frozen):
    """At most ``max_per_user`` / ``max_per_tenant`` accepted pairs per event-time window
    (``None``: no cap). Windows are tumbling, aligned to the Unix epoch."""

    enabled: bool = True
    window: timedelta = DEFAULT_CAP_WINDOW
    max_per_user: int | None = Field(default=DEFAULT_MAX_PER_USER, ge=1)
    max_per_tenant: int | None = Field(default=DEFAULT_MAX_PER_TENANT, ge=1)
    retain_windows: int = Field(default=DEFAULT_RETAIN_WINDOWS, ge=1)

    @model_validator(mode="after")
    def _positive_window(self) -> CapSettings:
        if self.window <= timedelta(0):
            raise ValueError(f"window must be positive, got {self.window}")
        return self


class FilterSettings(_Frozen):
    """Every filter's settings. ``config_hash()`` names the effective configuration."""

    length: LengthSettings = LengthSettings()
    similarity: SimilaritySettings = SimilaritySettings()
    toxicity: ToxicitySettings = ToxicitySettings()
    pii: PiiSettings = PiiSettings()
    dedup: DedupSettings = DedupSettings()
    event_dedup: EventDedupSettings = EventDedupSettings()
    near_dup: NearDupSettings = NearDupSettings()
    caps: CapSettings = CapSettings()

    def config_hash(self) -> str:
        """Stable 16-hex-digit hash of the settings that decide verdicts.

        Secrets never enter it (a rotated API key is not a new filter configuration), and
        neither do sizes that only bound memory (``max_entries``) or speed (``batch_size``).
        """
        data = self.model_dump(
            mode="json",
            exclude={
                "toxicity": {
                    "batch_size": True,
                    "judge": {"api_key", "timeout_s"},
                    "detoxify": {"device", "batch_size"},
                },
                "dedup": {"max_entries"},
                "event_dedup": {"max_entries"},
            },
        )
        # A disabled filter's thresholds decide nothing: leave them out of the hash.
        effective = {
            name: part if part.get("enabled", True) else {"enabled": False}
            for name, part in data.items()
        }
        blob = json.dumps(effective, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
