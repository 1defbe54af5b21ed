"""``build_filters``: the chain the settings describe, cheap filters first."""

from __future__ import annotations

from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Filter
from flywheel_curator.filters.caps import CapFilter, UserKey, default_user_key
from flywheel_curator.filters.chain import FilterChain, FilterState, StatefulFilter
from flywheel_curator.filters.dedup import EventDedupFilter, ExactDedupFilter
from flywheel_curator.filters.detoxify_scorer import DetoxifyScorer
from flywheel_curator.filters.judge_scorer import JudgeScorer
from flywheel_curator.filters.length import LengthFilter
from flywheel_curator.filters.neardup import NearDupFilter
from flywheel_curator.filters.pii import PiiFilter
from flywheel_curator.filters.scorers import ProfanityCheckScorer, ToxicityScorer
from flywheel_curator.filters.settings import FilterSettings, ToxicitySettings
from flywheel_curator.filters.similarity import SimilarityFilter
from flywheel_curator.filters.toxicity import ToxicityFilter

__all__ = ["build_filters", "make_scorer"]


def make_scorer(settings: ToxicitySettings) -> ToxicityScorer:
    """The scorer the settings name. Loading errors (no checkpoint, no extra) are ConfigError."""
    if settings.backend == "detoxify":
        if settings.detoxify is None:
            raise ConfigError("toxicity backend 'detoxify' needs toxicity.detoxify settings")
        d = settings.detoxify
        return DetoxifyScorer(
            checkpoint=d.checkpoint,
            hf_config_dir=d.hf_config_dir,
            device=d.device,
            label=d.label,
            checkpoint_loading=d.checkpoint_loading,
        )
    if settings.backend == "judge":
        if settings.judge is None:
            raise ConfigError("toxicity backend 'judge' needs toxicity.judge settings")
        return JudgeScorer.from_settings(settings.judge)
    return ProfanityCheckScorer()


def build_filters(
    settings: FilterSettings,
    state: FilterState | None = None,
    *,
    scorer: ToxicityScorer | None = None,
    user_key: UserKey = default_user_key,
) -> FilterChain:
    """The chain the settings describe.

    Args:
        settings: the filters' settings (nested in the curator's settings).
        state: what dedup, near-dup and caps remember; ``FilterState.in_memory(settings)``
            when omitted. The caller owns its commit/rollback and its rebuild on start.
        scorer: a toxicity scorer to use instead of the one ``settings.toxicity`` names.
        user_key: the per-user cap key of a candidate; pass the function that makes the
            table's ``user_hash`` so ``state.caps.load`` can be fed from the table.
    """
    state = state if state is not None else FilterState.in_memory(settings)
    stateless: list[Filter] = []
    if settings.length.enabled:
        s = settings.length
        stateless.append(
            LengthFilter(
                min_chars=s.min_chars, max_chars=s.max_chars, max_prompt_chars=s.max_prompt_chars
            )
        )
    if settings.similarity.enabled:
        sim = settings.similarity
        stateless.append(
            SimilarityFilter(
                min_ratio=sim.min_ratio,
                max_ratio=sim.max_ratio,
                sources=sim.sources,
                metric=sim.metric,
            )
        )
    if settings.pii.enabled:
        stateless.append(PiiFilter(policy=settings.pii.policy, kinds=settings.pii.kinds))
    stateful: list[StatefulFilter] = []
    if settings.event_dedup.enabled:
        stateful.append(EventDedupFilter(state=state.events))
    if settings.dedup.enabled:
        stateful.append(ExactDedupFilter(state=state.pairs))
    if settings.near_dup.enabled:
        stateful.append(NearDupFilter(index=state.near_dup, scope=settings.near_dup.scope))
    if settings.caps.enabled:
        stateful.append(
            CapFilter(
                state=state.caps,
                max_per_user=settings.caps.max_per_user,
                max_per_tenant=settings.caps.max_per_tenant,
                user_key=user_key,
            )
        )
    toxicity = None
    if settings.toxicity.enabled:
        t = settings.toxicity
        toxicity = ToxicityFilter(
            scorer=scorer if scorer is not None else make_scorer(t),
            max_score=t.max_score,
            relative_margin=t.relative_margin,
            relative_floor=t.relative_floor,
            batch_size=t.scorer_batch,
            max_pieces=t.max_pieces,
        )
    return FilterChain(
        stateless=stateless,
        stateful=stateful,
        toxicity=toxicity,
        state=state,
        settings_hash=settings.config_hash(),
    )
