"""The held-out split on real Delta tables: by prompt group (tenant + feature + normalised
prompt), stratified by feature, stable across versions, shared by pairs and KTO rows."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from flywheel_common.errors import ConfigError
from flywheel_trainer.dataset import TrainingData, load_training_data, read_rows
from flywheel_trainer.split import (
    PriorSplit,
    merge_records,
    normalise_text,
    prompt_group,
)
from flywheel_trainer.synthetic import SyntheticExample, SyntheticPair, generate_pairs

from .conftest import append_kto, append_pairs

FEATURES = ("chat", "search", "summarise", "rare")


def _pairs(n: int, seed: int) -> list[SyntheticPair]:
    """Several pairs per prompt (typed differently), over four features, one of them rare."""
    pairs = generate_pairs(n, seed=seed, per_prompt=4, features=FEATURES[:3])
    rare = generate_pairs(24, seed=seed + 100, per_prompt=4, features=("rare",))
    return pairs + rare


def _split(
    lake: Path, version: int, *, prior: PriorSplit, fraction: float = 0.1, kto: bool = False
) -> TrainingData:
    pairs = read_rows(str(lake / "dpo_pairs"), version, kind="pairs", seed=7)
    rows = read_rows(str(lake / "kto_examples"), 0, kind="kto", seed=7) if kto else None
    return load_training_data(
        pairs=pairs, kto=rows, fraction=fraction, seed=7, min_feature_groups=5, prior=prior
    )


def _user_prompts(table: pa.Table) -> set[tuple[str, str, str]]:
    """(tenant, feature, normalised user text): an independent view of "the same prompt"."""
    return {
        (t, f, normalise_text(p[0]["content"]))
        for t, f, p in zip(
            table.column("tenant").to_pylist(),
            table.column("feature").to_pylist(),
            table.column("prompt").to_pylist(),
            strict=True,
        )
    }


def test_no_held_out_prompt_is_trained_on(lake: Path) -> None:
    uri = str(lake / "dpo_pairs")
    v0 = append_pairs(uri, _pairs(1200, seed=3))
    data = _split(lake, v0, prior=PriorSplit())
    train, held = data.pairs_train, data.pairs_eval
    assert held.num_rows > 80 and train.num_rows > 900
    # Every prompt has four pairs, typed four ways: none of them crosses the split.
    assert not _user_prompts(train) & _user_prompts(held)
    assert not set(train.column("group").to_pylist()) & set(held.column("group").to_pylist())
    per_prompt = defaultdict(int)
    for key in held.column("group").to_pylist():
        per_prompt[key] += 1
    assert set(per_prompt.values()) == {4}  # whole groups, never a part of one
    # What the old split by pair-id hash did on the same data: most held-out pairs shared
    # their prompt with a training pair.
    table = pa.concat_tables([train, held])
    by_id = pa.array([_old_is_eval(p) for p in table.column("pair_id").to_pylist()])
    old_train, old_held = table.filter(pc.invert(by_id)), table.filter(by_id)
    leaked = _user_prompts(old_held) & _user_prompts(old_train)
    assert len(leaked) > 0.5 * len(_user_prompts(old_held))


def _old_is_eval(pair_id: str, fraction: float = 0.1) -> bool:
    digest = hashlib.sha256(b"flywheel-eval-split-v1:" + pair_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64) < fraction


def test_split_is_stratified_by_feature(lake: Path) -> None:
    uri = str(lake / "dpo_pairs")
    v0 = append_pairs(uri, _pairs(1200, seed=3))
    plan = _split(lake, v0, prior=PriorSplit()).plan
    assert plan.groups == {"chat": 100, "search": 100, "summarise": 100, "rare": 6}
    for feature, groups in plan.groups.items():
        # At least floor(10 %) of each feature's groups, and the rare feature is measured too.
        assert plan.held_out_groups[feature] >= max(1, groups // 10), feature
    assert plan.held_out_groups["rare"] >= 1


def test_split_is_stable_across_versions_and_only_grows(lake: Path) -> None:
    uri = str(lake / "dpo_pairs")
    v0 = append_pairs(uri, _pairs(400, seed=3))
    first = _split(lake, v0, prior=PriorSplit())
    held0 = set(first.pairs_eval.column("group").to_pylist())
    records = [first.plan.record()]

    # More data arrives, and the operator even lowers eval_fraction: nothing comes back.
    v1 = append_pairs(uri, _pairs(800, seed=4), first_offset=10_000)
    prior = merge_records(records, seed=7, table_uri=uri)
    second = _split(lake, v1, prior=prior, fraction=0.05)
    held1 = set(second.pairs_eval.column("group").to_pylist())
    assert held0 <= held1
    assert not held0 & set(second.pairs_train.column("group").to_pylist())
    records.append(second.plan.record())

    # Raising the fraction only moves groups from training into the held-out set.
    prior = merge_records(records, seed=7, table_uri=uri)
    third = _split(lake, v1, prior=prior, fraction=0.3)
    held2 = set(third.pairs_eval.column("group").to_pylist())
    assert held1 < held2
    assert third.plan.threshold == 0.3

    # Another seed would reshuffle every group: refused by name.
    with pytest.raises(ConfigError, match="split_seed 8 differs from 7"):
        merge_records(records, seed=8, table_uri=uri)


def test_kto_rows_of_a_held_out_prompt_are_held_out(lake: Path) -> None:
    uri = str(lake / "dpo_pairs")
    pairs = _pairs(400, seed=3)
    v0 = append_pairs(uri, pairs)
    # A rating on every pair's prompt (typed yet another way), plus prompts only rated.
    rated = [
        SyntheticExample(p.prompt.upper(), p.chosen, True, "thumbs", feature=p.feature)
        for p in pairs[::4]
    ]
    only = [SyntheticExample(f"only rated {i}", "w1 sun", i % 2 == 0, "rating") for i in range(60)]
    append_kto(str(lake / "kto_examples"), rated + only)
    data = _split(lake, v0, prior=PriorSplit(), kto=True)
    assert data.kto_train is not None and data.kto_eval is not None
    assert data.kto_rows == len(rated) + len(only)
    held_groups = set(data.pairs_eval.column("group").to_pylist())
    kto_held = set(data.kto_eval.column("group").to_pylist())
    kto_train = set(data.kto_train.column("group").to_pylist())
    assert held_groups & kto_held  # the same prompt groups, across both tables
    assert not (held_groups | kto_held) & (
        kto_train | set(data.pairs_train.column("group").to_pylist())
    )


def test_prompt_group_normalises_and_keeps_tenants_apart() -> None:
    ask = [{"role": "user", "content": "How do I reset  my password?"}]
    same = [
        {"role": "system", "content": "You are helpful (v2)."},
        {"role": "user", "content": "how do i reset my password"},
    ]
    assert prompt_group("acme", "chat", ask) == prompt_group("acme", "chat", same)
    assert prompt_group("acme", "chat", ask) != prompt_group("other", "chat", ask)
    assert prompt_group("acme", "chat", ask) != prompt_group("acme", "search", ask)
    fullwidth_hello = "\uff28\uff45\uff4c\uff4c\uff4f"  # NFKC folds it to "Hello"
    assert normalise_text(f"  {fullwidth_hello}\tWORLD!! ") == "hello world"
