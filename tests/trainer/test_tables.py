"""The kto_examples contract (flywheel_common.lake.KTO_EXAMPLES): TRL's unpaired columns plus
the lineage columns of dpo_pairs, typed the same, and a content-hash example_id."""

from __future__ import annotations

from pathlib import Path

from deltalake import DeltaTable
from flywheel_common.lake import DPO_PAIRS, KTO_EXAMPLES, KTO_SIGNALS, TABLE_SCHEMAS, kto_example_id
from flywheel_trainer.synthetic import generate_examples

from .conftest import append_kto

# What only a pair has; everything else of dpo_pairs is lineage a KTO row carries too.
PAIR_ONLY = {
    "pair_id",
    "chosen",
    "rejected",
    "source",
    "chosen_run_id",
    "rejected_run_id",
    "similarity",
    "toxicity_rejected",
}


def test_kto_examples_carry_the_lineage_of_dpo_pairs() -> None:
    assert TABLE_SCHEMAS["kto_examples"] is KTO_EXAMPLES
    for f in DPO_PAIRS:
        if f.name not in PAIR_ONLY:
            assert KTO_EXAMPLES.field(f.name) == f, f.name
    for name in ("example_id", "prompt", "completion", "label", "weight", "signal"):
        assert not KTO_EXAMPLES.field(name).nullable, name
    assert KTO_EXAMPLES.field("prompt").type == DPO_PAIRS.field("prompt").type
    assert set(KTO_SIGNALS) == {"thumbs", "rating", "helpful"}


def test_example_id_is_a_content_hash() -> None:
    prompt = [{"role": "user", "content": "hi"}]
    up = kto_example_id(prompt, "hello", label=True)
    assert up == kto_example_id("hi", "hello", label=True)  # plain text is one user message
    assert up != kto_example_id(prompt, "hello", label=False)
    assert up != kto_example_id(prompt, "hello!", label=True)


def test_the_writer_helper_writes_the_contract(lake: Path) -> None:
    uri = str(lake / "kto_examples")
    append_kto(uri, generate_examples(12, seed=1))
    table = DeltaTable(uri).to_pyarrow_table()
    # Delta names list items "element" where Arrow says "item": otherwise the same schema.
    assert table.schema.names == KTO_EXAMPLES.names
    assert [f.nullable for f in table.schema] == [f.nullable for f in KTO_EXAMPLES]
    assert table.cast(KTO_EXAMPLES).schema.equals(KTO_EXAMPLES)
    assert table.num_rows == len(set(table.column("example_id").to_pylist())) == 12
