"""The gate's decision on constructed outcomes, no model: significance by a bootstrap over
prompt groups, inconclusive on too little evidence, slices, the golden set, KTO separation, and
KTO's class weights."""

from __future__ import annotations

import numpy as np
import pytest
from flywheel_trainer.gate import (
    Evidence,
    KtoOutcomes,
    PairOutcomes,
    bootstrap_gain,
    decide,
    kto_metrics,
)
from flywheel_trainer.settings import GateSettings, JobConfig, KtoSettings
from flywheel_trainer.training import kto_weights

GATE = GateSettings(min_accuracy_gain=0.02, slice_min_pairs=20, slice_tolerance=0.05)


def _outcomes(wins: list[float] | np.ndarray) -> PairOutcomes:
    w = np.asarray(wins, dtype=np.float64)
    zeros = np.zeros_like(w)
    return PairOutcomes(w, w - 0.5, w, zeros, zeros)


def _evidence(
    cand: list[float] | np.ndarray,
    champ: list[float] | np.ndarray,
    *,
    per_group: int = 1,
    features: list[str] | None = None,
    **kw: object,
) -> Evidence:
    n = len(cand)
    return Evidence(
        candidate=_outcomes(cand),
        champion=_outcomes(champ),
        groups=[f"g{i // per_group}" for i in range(n)],
        features=features or ["chat"] * n,
        sources=["edit"] * n,
        **kw,  # type: ignore[arg-type]
    )


def _wins(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    return (rng.random(n) < p).astype(np.float64)


def test_a_clear_gain_is_promoted_with_its_interval() -> None:
    rng = np.random.default_rng(0)
    verdict = decide(_evidence(_wins(rng, 200, 0.9), np.full(200, 0.5)), GATE)
    assert verdict.decision == "promote", verdict.reason
    ci = verdict.interval
    assert ci is not None and 0.02 < ci.low < ci.estimate < ci.high
    assert ci.groups == 200 and ci.resamples == GATE.bootstrap_resamples
    assert verdict.as_dict()["interval"]["low"] == ci.low


def test_a_gain_inside_the_noise_is_rejected() -> None:
    # +0.03 on 150 pairs: what the old fixed +0.02 rule promoted.
    rng = np.random.default_rng(1)
    champ = _wins(rng, 150, 0.70)
    cand = champ.copy()
    flip = rng.choice(np.flatnonzero(cand == 0), size=5, replace=False)
    cand[flip] = 1.0
    verdict = decide(_evidence(cand, champ), GATE)
    assert verdict.decision == "reject"
    assert verdict.interval is not None and verdict.interval.estimate > 0.02
    assert "lower bound below the required 0.0200" in verdict.reason


def test_groups_not_pairs_are_the_unit_of_evidence() -> None:
    # The same wins counted as 10 prompts of 20 pairs each are far less certain than as 200
    # independent prompts.
    rng = np.random.default_rng(2)
    cand = np.repeat(_wins(rng, 10, 0.8), 20)
    champ = np.full(200, 0.5)
    wide = bootstrap_gain(cand, champ, [f"g{i // 20}" for i in range(200)], **_boot())
    narrow = bootstrap_gain(cand, champ, [f"g{i}" for i in range(200)], **_boot())
    assert wide.groups == 10 and narrow.groups == 200
    assert (wide.high - wide.low) > 2 * (narrow.high - narrow.low)


def _boot() -> dict[str, float | int]:
    return {"resamples": 2000, "confidence": 0.95, "seed": 0}


def test_too_few_held_out_pairs_is_inconclusive() -> None:
    verdict = decide(_evidence([1.0] * 12, [0.5] * 12), GATE)
    assert verdict.decision == "inconclusive" and not verdict.promote
    assert "12 held-out pairs in 12 prompt groups: too few" in verdict.reason
    # Many pairs but few prompts: also too little to decide.
    few_groups = decide(_evidence([1.0] * 90, [0.5] * 90, per_group=10), GATE)
    assert few_groups.decision == "inconclusive" and "9 prompt groups" in few_groups.reason


def test_a_regressing_slice_blocks_promotion_and_the_worst_slice_is_recorded() -> None:
    # chat improves a lot, the rare feature loses 0.15: the average still gains.
    features = ["chat"] * 160 + ["rare"] * 40
    cand = [1.0] * 160 + [0.6] * 40
    champ = [0.6] * 160 + [0.75] * 40
    verdict = decide(_evidence(cand, champ, features=features), GATE)
    assert verdict.decision == "reject"
    assert "slice feature:rare regressed 0.7500 -> 0.6000 on 40 pairs" in verdict.reason
    worst = verdict.as_dict()["worst"]
    assert worst["worst_slice"] == "feature:rare" and worst["gap"] == pytest.approx(0.4)
    assert verdict.as_dict()["champion_worst"]["gap"] == pytest.approx(0.15)
    # The same drop on a slice too small to judge is reported, not held against the run.
    small = decide(
        _evidence(
            [1.0] * 180 + [0.0] * 10,
            [0.6] * 180 + [1.0] * 10,
            features=["chat"] * 180 + ["rare"] * 10,
        ),
        GATE,
    )
    rare = next(s for s in small.slices if s.name == "feature:rare")
    assert (rare.pairs, rare.judged, rare.regressed) == (10, False, False)
    assert small.decision == "promote", small.reason
    # The worst slice and the gap are taken over slices big enough to judge.
    assert small.as_dict()["worst"]["worst_slice"] == "feature:chat"


def test_golden_regression_rejects_even_with_a_large_held_out_gain() -> None:
    golden = (_outcomes([0.0] * 30), _outcomes([0.5] * 30))
    verdict = decide(_evidence([1.0] * 100, [0.5] * 100, golden=golden), GATE)
    assert verdict.decision == "reject"
    assert "golden-set accuracy regressed 0.5000 -> 0.0000" in verdict.reason
    assert verdict.golden["configured"] and verdict.golden["drop"] == 0.5
    # With too few held-out pairs a golden regression is still a refusal, not "inconclusive".
    few = decide(_evidence([1.0] * 5, [0.5] * 5, golden=golden), GATE)
    assert few.decision == "reject" and "golden" in few.reason
    unset = decide(_evidence([1.0] * 100, [0.5] * 100), GATE)
    assert unset.golden == {"configured": False} and unset.promote


def test_kto_separation() -> None:
    labels = np.array([True] * 30 + [False] * 30)
    untrained = KtoOutcomes(np.zeros(60), labels)
    assert kto_metrics(untrained)["separation_auc"] == 0.5  # every reward ties
    learned = KtoOutcomes(np.where(labels, 0.4, -0.3), labels)
    m = kto_metrics(learned)
    assert m["separation_auc"] == 1.0 and m["separation"] == pytest.approx(0.7)
    backwards = KtoOutcomes(np.where(labels, -0.4, 0.3), labels)
    verdict = decide(_evidence([1.0] * 100, [0.5] * 100, kto=(backwards, learned)), GATE)
    assert verdict.decision == "reject" and "KTO separation (AUC) regressed" in verdict.reason


def test_kto_weights_follow_the_class_balance() -> None:
    cfg = JobConfig()
    rows = [{"label": True}] * 300 + [{"label": False}] * 100
    w = kto_weights(rows, cfg)
    # 3:1 desirable: the rarer undesirable class is up-weighted into TRL's [1, 4/3] band.
    assert (w.desirable_weight, w.desirable, w.undesirable) == (1.0, 300, 100)
    assert 1.0 <= w.ratio <= 4 / 3 and w.undesirable_weight > 2
    few_good = kto_weights([{"label": True}] * 50 + [{"label": False}] * 200, cfg)
    assert few_good.undesirable_weight == 1.0 and 1.0 <= few_good.ratio <= 4 / 3
    balanced = kto_weights([{"label": True}] * 110 + [{"label": False}] * 100, cfg)
    assert (balanced.desirable_weight, balanced.undesirable_weight) == (1.0, 1.0)
    fixed = JobConfig(kto=KtoSettings(desirable_weight=2.0))
    assert kto_weights(rows, fixed).desirable_weight == 2.0
