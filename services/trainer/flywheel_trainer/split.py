"""The held-out split: by prompt group, stratified by feature, stable across versions.

A prompt group is (tenant, feature, normalised prompt): every pair and every KTO row of one
prompt lands on the same side, so no held-out prompt (nor the model answer it was paired with)
is ever trained on. Each group has a position in [0, 1) from a seeded hash; a group is held out
when its position is below the threshold, or when an earlier run pinned it.

- Stable: the threshold is the largest ``eval_fraction`` any run on the table used, and pins
  are never dropped, so a group once held out stays held out; the share may only grow.
- Stratified: a feature with at least ``eval_min_feature_groups`` groups holds out at least
  ``max(1, floor(eval_fraction x groups))`` of them; where the hash falls short, the groups with
  the lowest positions are pinned and recorded, so a rare feature is measured too.

The plan is recorded in the registry with each run (``SplitPlan.record``) before training;
the next run reads every earlier record of its table (``merge_records``). Pinning moves groups
from training into the held-out set, so a champion may have trained on a few groups it is now
compared on; that favours the champion, i.e. errs on the side of keeping it.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel_common.errors import ConfigError
from flywheel_common.lake import content_hash

__all__ = [
    "SPLIT_VERSION",
    "PriorSplit",
    "SplitPlan",
    "group_position",
    "merge_records",
    "normalise_text",
    "plan_split",
    "prompt_group",
]

SPLIT_VERSION = "prompt-group/v1"
_PIN_CHARS = 16  # 64 bits of the group key name a pinned group
_STRIP = " \t\n.,;:!?¿¡\"'`"


def normalise_text(text: str) -> str:
    """NFKC, case-folded, whitespace runs collapsed, punctuation trimmed at both ends: two
    phrasings that differ only so are one prompt."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).strip(_STRIP)


def prompt_group(tenant: str, feature: str, prompt: Sequence[Mapping[str, Any]]) -> str:
    """The group key of a prompt. System messages are left out: a new system prompt version
    must not split one user question into two groups (one trained on, one held out)."""
    turns = [m for m in prompt if m.get("role") != "system"] or list(prompt)
    messages = [[str(m.get("role")), normalise_text(str(m.get("content", "")))] for m in turns]
    return content_hash(SPLIT_VERSION, tenant, feature, messages)


def group_position(group: str, seed: int) -> float:
    """Uniform in [0, 1), fixed for a (group, seed)."""
    digest = hashlib.sha256(f"{SPLIT_VERSION}:{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64)


@dataclass(frozen=True, slots=True)
class PriorSplit:
    """What earlier runs on the table held out: the union of their records."""

    seed: int | None = None
    threshold: float = 0.0
    pins: frozenset[str] = frozenset()


def merge_records(records: Iterable[Mapping[str, Any]], *, seed: int, table_uri: str) -> PriorSplit:
    """Fold earlier runs' split records; a different seed would reshuffle every group, moving
    held-out prompts into training, so it is refused."""
    prior = PriorSplit()
    for rec in records:
        if rec.get("version") != SPLIT_VERSION:
            continue
        if int(rec["seed"]) != seed:
            raise ConfigError(
                f"split_seed {seed} differs from {rec['seed']} used by earlier runs on "
                f"{table_uri}: held-out prompt groups would be trained on"
            )
        pins = {p for pinned in rec.get("pins", {}).values() for p in pinned}
        prior = PriorSplit(
            seed=seed,
            threshold=max(prior.threshold, float(rec["threshold"])),
            pins=prior.pins | pins,
        )
    return prior


@dataclass(frozen=True, slots=True)
class SplitPlan:
    seed: int
    threshold: float
    pins: Mapping[str, frozenset[str]]  # feature -> pinned group-key prefixes
    groups: Mapping[str, int] = field(default_factory=dict)  # feature -> groups
    held_out_groups: Mapping[str, int] = field(default_factory=dict)
    pinned_now: int = 0  # groups moved into the held-out set by this run

    def mask(self, groups: Sequence[str], positions: Sequence[float]) -> list[bool]:
        """Held out or not, per row."""
        pins = frozenset[str]().union(*self.pins.values())
        return [
            p < self.threshold or g[:_PIN_CHARS] in pins
            for g, p in zip(groups, positions, strict=True)
        ]

    def record(self) -> dict[str, Any]:
        """The JSON the registry keeps with the run (and the next run reads back)."""
        return {
            "version": SPLIT_VERSION,
            "seed": self.seed,
            "threshold": self.threshold,
            "pins": {f: sorted(p) for f, p in sorted(self.pins.items()) if p},
            "groups": dict(sorted(self.groups.items())),
            "held_out_groups": dict(sorted(self.held_out_groups.items())),
            "pinned_now": self.pinned_now,
        }


def plan_split(
    groups: Mapping[str, Mapping[str, float]],
    *,
    fraction: float,
    seed: int,
    min_feature_groups: int,
    prior: PriorSplit,
) -> SplitPlan:
    """``groups``: feature -> {group key: position}, every group of the data being split."""
    threshold = max(fraction, prior.threshold)
    pins: dict[str, frozenset[str]] = {}
    counts: dict[str, int] = {}
    held: dict[str, int] = {}
    pinned_now = 0
    for feature, members in groups.items():
        out = {g for g, p in members.items() if p < threshold or g[:_PIN_CHARS] in prior.pins}
        target = max(1, math.floor(fraction * len(members)))
        if len(members) >= min_feature_groups and len(out) < target:
            rest = sorted((p, g) for g, p in members.items() if g not in out)
            added = {g for _, g in rest[: target - len(out)]}
            pinned_now += len(added)
            out |= added
        pins[feature] = frozenset(g[:_PIN_CHARS] for g in out if members[g] >= threshold)
        counts[feature] = len(members)
        held[feature] = len(out)
    return SplitPlan(
        seed=seed,
        threshold=threshold,
        pins=pins,
        groups=counts,
        held_out_groups=held,
        pinned_now=pinned_now,
    )
