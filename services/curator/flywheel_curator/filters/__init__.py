"""The curator's filters: one module per filter behind the ``Filter`` seam of
``flywheel_curator.candidate``, assembled by ``build_filters`` into a ``FilterChain``.

    chain = build_filters(settings.filters)          # FilterState.in_memory(...) by default
    chain.state.pairs.load(pair_ids_from_table)     # rebuild on start (see FilterState)
    verdicts = chain.run_many(buffer)               # may raise ToxicityScorerError: fail closed
    ... write accepted rows with chain.config_hash(), rejected ones with their reasons ...
    chain.commit()                                  # after the Delta commit; rollback() if dropped

Reason codes: ``too_short``, ``too_long``, ``too_similar``, ``too_dissimilar``,
``toxic_chosen``, ``toxicity_increase``, ``pii``, ``duplicate``, ``duplicate_event``,
``near_duplicate``, ``user_cap``, ``tenant_cap``.
"""

from __future__ import annotations

from flywheel_curator.filters.build import build_filters, make_scorer
from flywheel_curator.filters.caps import (
    TENANT_CAP,
    USER_CAP,
    CapFilter,
    CapState,
    UserKey,
    default_user_key,
)
from flywheel_curator.filters.chain import (
    BatchFilter,
    FilterChain,
    FilterState,
    StatefulBatch,
    StatefulFilter,
)
from flywheel_curator.filters.dedup import (
    DUPLICATE,
    DUPLICATE_EVENT,
    BatchKeyState,
    EventDedupFilter,
    ExactDedupFilter,
    KeySet,
    KeyState,
    event_key,
    pair_id,
)
from flywheel_curator.filters.detoxify_scorer import DetoxifyScorer
from flywheel_curator.filters.errors import FilterError, ToxicityScorerError
from flywheel_curator.filters.judge_scorer import JudgeScorer
from flywheel_curator.filters.length import TOO_LONG, TOO_SHORT, LengthFilter
from flywheel_curator.filters.neardup import NEAR_DUPLICATE, NearDupFilter, NearDupIndex
from flywheel_curator.filters.pii import PII, PiiDetector, PiiFilter, PiiFinding
from flywheel_curator.filters.redaction import (
    PiiLogFilter,
    install_log_redaction,
    redact_row,
    redact_text,
)
from flywheel_curator.filters.scorers import ProfanityCheckScorer, ToxicityScorer
from flywheel_curator.filters.settings import (
    CapSettings,
    DedupSettings,
    DetoxifySettings,
    EventDedupSettings,
    FilterSettings,
    JudgeSettings,
    LengthSettings,
    NearDupSettings,
    PiiSettings,
    SimilarityMetric,
    SimilaritySettings,
    ToxicitySettings,
)
from flywheel_curator.filters.similarity import (
    TOO_DISSIMILAR,
    TOO_SIMILAR,
    SimilarityFilter,
    similarity_ratio,
)
from flywheel_curator.filters.spans import CandidatePieces, SidePieces, pieces_of
from flywheel_curator.filters.toxicity import (
    TOXIC_CHOSEN,
    TOXICITY_INCREASE,
    ToxicityFilter,
    ToxicityMeasure,
)

__all__ = [
    "DUPLICATE",
    "DUPLICATE_EVENT",
    "NEAR_DUPLICATE",
    "PII",
    "TENANT_CAP",
    "TOO_DISSIMILAR",
    "TOO_LONG",
    "TOO_SHORT",
    "TOO_SIMILAR",
    "TOXICITY_INCREASE",
    "TOXIC_CHOSEN",
    "USER_CAP",
    "BatchFilter",
    "BatchKeyState",
    "CandidatePieces",
    "CapFilter",
    "CapSettings",
    "CapState",
    "DedupSettings",
    "DetoxifyScorer",
    "DetoxifySettings",
    "EventDedupFilter",
    "EventDedupSettings",
    "ExactDedupFilter",
    "FilterChain",
    "FilterError",
    "FilterSettings",
    "FilterState",
    "JudgeScorer",
    "JudgeSettings",
    "KeySet",
    "KeyState",
    "LengthFilter",
    "LengthSettings",
    "NearDupFilter",
    "NearDupIndex",
    "NearDupSettings",
    "PiiDetector",
    "PiiFilter",
    "PiiFinding",
    "PiiLogFilter",
    "PiiSettings",
    "ProfanityCheckScorer",
    "SidePieces",
    "SimilarityFilter",
    "SimilarityMetric",
    "SimilaritySettings",
    "StatefulBatch",
    "StatefulFilter",
    "ToxicityFilter",
    "ToxicityMeasure",
    "ToxicityScorer",
    "ToxicityScorerError",
    "ToxicitySettings",
    "UserKey",
    "build_filters",
    "default_user_key",
    "event_key",
    "install_log_redaction",
    "make_scorer",
    "pair_id",
    "pieces_of",
    "redact_row",
    "redact_text",
    "similarity_ratio",
]
