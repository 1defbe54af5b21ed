"""The gate's arithmetic and its decision (docs/trainer.md, "The gate"). Pure: per-row outcomes
of the candidate and the champion on the same held-out rows go in, a verdict comes out.

- ``interval``: the candidate's held-out preference accuracy minus the champion's, with a
  percentile bootstrap interval that resamples whole prompt groups (pairs of one prompt are
  not independent evidence).
- ``slices``: the same accuracies per feature and per source; a slice with enough pairs may not
  regress beyond a tolerance. The worst feature slice and the worst-best gap are recorded.
- golden set: non-regression against the champion; KTO rows: the separation of desirable from
  undesirable rows (AUC of the implicit reward) may not regress either.

The decision is ``promote`` (every check passes and the interval's lower bound clears the
margin), ``reject`` (a check fails) or ``inconclusive`` (too few held-out pairs or prompt groups
to decide; the champion stays).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from flywheel_trainer.settings import GateSettings

__all__ = [
    "NO_GOLDEN",
    "Decision",
    "Evidence",
    "GateVerdict",
    "Interval",
    "KtoOutcomes",
    "PairOutcomes",
    "SliceResult",
    "bootstrap_gain",
    "decide",
    "kto_metrics",
    "pair_metrics",
    "slice_results",
]

Decision = Literal["promote", "reject", "inconclusive"]
Floats = npt.NDArray[np.float64]
# Said wherever a run or the trainer has no golden set: the log, `flywheel models status`, the
# model card, `flywheel models show`.
NO_GOLDEN = (
    "NO GOLDEN SET CONFIGURED: promotion is judged only on held-out pairs from the same users "
    "as the training pairs, so a model that learned their labels backwards would pass; set "
    "FLYWHEEL_TRAINER_GOLDEN_TABLE (see docs/trainer.md, 'The golden set')"
)
_CHUNK = 256  # bootstrap resamples per vectorised batch: bounds memory on large held-out sets


@dataclass(frozen=True, slots=True)
class PairOutcomes:
    """One model on each held-out pair. ``wins``: 1 when the implicit reward prefers the chosen
    answer, 0 when it prefers the rejected one, 0.5 on a tie (the untrained adapter ties all)."""

    wins: Floats
    margins: Floats  # beta * (reward margin)
    logp_wins: Floats  # the policy alone gives the chosen answer more log-probability
    chosen_rewards: Floats
    rejected_rewards: Floats


@dataclass(frozen=True, slots=True)
class KtoOutcomes:
    """One model on each held-out KTO row: beta * log(pi / pi_ref) of the completion."""

    rewards: Floats
    labels: npt.NDArray[np.bool_]


def pair_metrics(o: PairOutcomes | None) -> dict[str, Any]:
    n = 0 if o is None else len(o.wins)
    if o is None or n == 0:
        return {"pairs": 0, "accuracy": None}
    return {
        "pairs": n,
        "accuracy": float(o.wins.mean()),
        "reward_margin": float(o.margins.mean()),
        "logp_accuracy": float(o.logp_wins.mean()),
        "chosen_reward": float(o.chosen_rewards.mean()),
        "rejected_reward": float(o.rejected_rewards.mean()),
    }


def _auc(rewards: Floats, labels: npt.NDArray[np.bool_]) -> float:
    """P(a desirable row's reward > an undesirable row's), ties counted one half."""
    pos, neg = rewards[labels], rewards[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(order, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average ranks, 1-based
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def kto_metrics(o: KtoOutcomes | None) -> dict[str, Any]:
    if o is None or len(o.rewards) == 0:
        return {"rows": 0, "separation_auc": None}
    pos, neg = o.rewards[o.labels], o.rewards[~o.labels]
    d = float(pos.mean()) if len(pos) else float("nan")
    u = float(neg.mean()) if len(neg) else float("nan")
    return {
        "rows": len(o.rewards),
        "desirable": len(pos),
        "undesirable": len(neg),
        "desirable_reward": d,
        "undesirable_reward": u,
        "separation": d - u,
        "separation_auc": _auc(o.rewards, o.labels),
    }


@dataclass(frozen=True, slots=True)
class Interval:
    """Candidate-minus-champion held-out accuracy and its bootstrap interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int
    groups: int


def bootstrap_gain(
    candidate: Floats,
    champion: Floats,
    groups: Sequence[str],
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> Interval:
    """Percentile bootstrap of mean(candidate - champion), resampling prompt groups."""
    diff = candidate - champion
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(inverse, weights=diff)
    sizes = np.bincount(inverse).astype(np.float64)
    n_groups = len(sums)
    rng = np.random.default_rng(seed)
    estimates = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        stop = min(start + _CHUNK, resamples)
        pick = rng.integers(0, n_groups, size=(stop - start, n_groups))
        estimates[start:stop] = sums[pick].sum(axis=1) / sizes[pick].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(estimates, [tail, 1.0 - tail])
    return Interval(float(diff.mean()), float(low), float(high), confidence, resamples, n_groups)


@dataclass(frozen=True, slots=True)
class SliceResult:
    name: str  # "feature:<name>" or "source:<name>"
    pairs: int
    candidate: float
    champion: float
    judged: bool  # enough pairs to hold against the tolerance
    regressed: bool

    @property
    def delta(self) -> float:
        return self.candidate - self.champion


def slice_results(
    candidate: Floats,
    champion: Floats,
    *,
    features: Sequence[str],
    sources: Sequence[str],
    gate: GateSettings,
) -> list[SliceResult]:
    out = []
    for kind, labels in (("feature", features), ("source", sources)):
        values = np.asarray(labels)
        for name in sorted(set(labels)):
            mask = values == name
            n = int(mask.sum())
            cand, champ = float(candidate[mask].mean()), float(champion[mask].mean())
            judged = n >= gate.slice_min_pairs
            regressed = judged and champ - cand > gate.slice_tolerance
            out.append(SliceResult(f"{kind}:{name}", n, cand, champ, judged, regressed))
    return out


def _gap(slices: Sequence[SliceResult], *, champion: bool = False) -> dict[str, Any]:
    """The worst and best feature slice (of those with enough pairs, if any has)."""
    features = [s for s in slices if s.name.startswith("feature:")]
    pool = [s for s in features if s.judged] or features
    if not pool:
        return {"worst_slice": None, "worst_accuracy": None, "best_slice": None, "gap": None}

    def acc(s: SliceResult) -> float:
        return s.champion if champion else s.candidate

    worst, best = min(pool, key=acc), max(pool, key=acc)
    return {
        "worst_slice": worst.name,
        "worst_accuracy": acc(worst),
        "best_slice": best.name,
        "gap": acc(best) - acc(worst),
        "judged": all(s.judged for s in pool),
    }


@dataclass(frozen=True, slots=True)
class GateVerdict:
    decision: Decision
    reason: str
    interval: Interval | None = None
    slices: tuple[SliceResult, ...] = ()
    golden: dict[str, Any] = field(default_factory=lambda: {"configured": False})
    kto: dict[str, Any] | None = None

    @property
    def promote(self) -> bool:
        return self.decision == "promote"

    @property
    def worst(self) -> dict[str, Any]:
        return _gap(self.slices)

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "promote": self.promote,
            "reason": self.reason,
            "interval": asdict(self.interval) if self.interval else None,
            "slices": [{**asdict(s), "delta": s.delta} for s in self.slices],
            "worst": self.worst,
            "champion_worst": _gap(self.slices, champion=True),
            "golden": self.golden,
            "kto": self.kto,
        }


@dataclass(frozen=True, slots=True)
class Evidence:
    """Both models on the same rows, and what the rows are."""

    candidate: PairOutcomes
    champion: PairOutcomes
    groups: Sequence[str]
    features: Sequence[str]
    sources: Sequence[str]
    golden: tuple[PairOutcomes, PairOutcomes] | None = None
    kto: tuple[KtoOutcomes, KtoOutcomes] | None = None


def _golden_check(ev: Evidence, gate: GateSettings) -> tuple[dict[str, Any], str | None]:
    if ev.golden is None:
        return {"configured": False}, None
    cand, champ = (float(o.wins.mean()) for o in ev.golden)
    drop = champ - cand
    result = {"configured": True, "pairs": len(ev.golden[0].wins), "candidate": cand}
    result |= {"champion": champ, "drop": drop, "tolerance": gate.golden_tolerance}
    if drop > gate.golden_tolerance:
        return result, (
            f"golden-set accuracy regressed {champ:.4f} -> {cand:.4f} "
            f"(tolerance {gate.golden_tolerance:.4f})"
        )
    return result, None


def _kto_check(ev: Evidence, gate: GateSettings) -> tuple[dict[str, Any] | None, str | None]:
    if ev.kto is None:
        return None, None
    cand, champ = (kto_metrics(o) for o in ev.kto)
    result = {"candidate": cand, "champion": champ}
    if cand["rows"] == 0:
        return result, None
    judged = min(cand["desirable"], cand["undesirable"]) >= gate.slice_min_pairs
    drop = champ["separation_auc"] - cand["separation_auc"]
    if judged and drop > gate.slice_tolerance:
        return result, (
            f"held-out KTO separation (AUC) regressed {champ['separation_auc']:.4f} -> "
            f"{cand['separation_auc']:.4f} (tolerance {gate.slice_tolerance:.4f})"
        )
    return result, None


def decide(ev: Evidence, gate: GateSettings) -> GateVerdict:
    """Promote only a candidate whose gain is significant, with no slice, golden-set or KTO
    regression; too little evidence is ``inconclusive``. ``champion`` is the base model when
    there is none yet."""
    cand, champ = ev.candidate.wins, ev.champion.wins
    golden, golden_fail = _golden_check(ev, gate)
    kto, kto_fail = _kto_check(ev, gate)
    n_groups = len(set(ev.groups))
    if len(cand) < gate.min_eval_pairs or n_groups < gate.min_eval_groups:
        reason = (
            f"{len(cand)} held-out pairs in {n_groups} prompt groups: too few to decide "
            f"(need {gate.min_eval_pairs} pairs and {gate.min_eval_groups} groups)"
        )
        failures = [f for f in (golden_fail, kto_fail) if f]
        decision: Decision = "reject" if failures else "inconclusive"
        return GateVerdict(decision, "; ".join([*failures, reason]), None, (), golden, kto)
    interval = bootstrap_gain(
        cand,
        champ,
        ev.groups,
        resamples=gate.bootstrap_resamples,
        confidence=gate.confidence,
        seed=gate.bootstrap_seed,
    )
    slices = slice_results(cand, champ, features=ev.features, sources=ev.sources, gate=gate)
    failures = []
    if interval.low <= 0 or interval.low < gate.min_accuracy_gain:
        failures.append(
            f"held-out accuracy gain {interval.estimate:+.4f}, {gate.confidence:.0%} interval "
            f"[{interval.low:+.4f}, {interval.high:+.4f}]: lower bound below the required "
            f"{gate.min_accuracy_gain:.4f}"
        )
    failures += [
        f"slice {s.name} regressed {s.champion:.4f} -> {s.candidate:.4f} on {s.pairs} pairs "
        f"(tolerance {gate.slice_tolerance:.4f})"
        for s in slices
        if s.regressed
    ]
    failures += [f for f in (golden_fail, kto_fail) if f]
    if failures:
        return GateVerdict("reject", "; ".join(failures), interval, tuple(slices), golden, kto)
    reason = (
        f"held-out accuracy {float(cand.mean()):.4f} vs champion {float(champ.mean()):.4f}: "
        f"gain {interval.estimate:+.4f}, {gate.confidence:.0%} interval "
        f"[{interval.low:+.4f}, {interval.high:+.4f}] over {interval.groups} prompt groups"
    )
    return GateVerdict("promote", reason, interval, tuple(slices), golden, kto)
