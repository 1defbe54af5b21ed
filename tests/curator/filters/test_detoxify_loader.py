"""The Detoxify backend's loader, against a tiny random BERT checkpoint built here in Detoxify's
format. Needs torch, transformers and detoxify: it runs in the trainer environment and is
skipped in the curator's light one."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from flywheel_common.errors import ConfigError
from flywheel_curator.filters import (
    DetoxifyScorer,
    FilterSettings,
    ToxicitySettings,
    build_filters,
)

from tests.curator.filters.conftest import MakeCandidate

pytest.importorskip("detoxify")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

JIGSAW_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
WORDS = ["you", "are", "an", "idiot", "thanks", "the", "fix", "works", "open", "settings"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, hf_config_dir): a 2-layer, 32-wide BERT with a 6-class head, its config and
    a word-level tokenizer saved locally, and the checkpoint naming ``bert-base-uncased`` as
    Detoxify's released checkpoints do."""
    root = tmp_path_factory.mktemp("detoxify")
    config_dir = root / "hf"
    config_dir.mkdir()
    vocab = config_dir / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizer(vocab_file=str(vocab))
    tokenizer.save_pretrained(config_dir)
    config = transformers.BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(JIGSAW_CLASSES),
    )
    config.save_pretrained(config_dir)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    checkpoint = root / "toxic_tiny.ckpt"
    torch.save(
        {
            "config": {
                "arch": {
                    "args": {
                        "model_type": "bert-base-uncased",
                        "model_name": "BertForSequenceClassification",
                        "tokenizer_name": "BertTokenizer",
                        "num_classes": len(JIGSAW_CLASSES),
                    }
                },
                "dataset": {"args": {"classes": JIGSAW_CLASSES}},
            },
            "state_dict": model.state_dict(),
        },
        checkpoint,
    )
    return checkpoint, config_dir


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach the hub fails loudly instead of hanging or downloading."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_loads_offline_with_a_local_config_folder(
    tiny_checkpoint: tuple[Path, Path], no_network: None
) -> None:
    checkpoint, config_dir = tiny_checkpoint
    scorer = DetoxifyScorer(checkpoint=checkpoint, hf_config_dir=config_dir)
    assert scorer.class_names[0] == "toxicity"  # Detoxify's renaming of "toxic"
    scores = scorer.score_many(["you are an idiot", "thanks the fix works", "open settings"])
    assert len(scores) == 3
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scorer.score_many(["you are an idiot"])[0] == pytest.approx(scores[0], abs=1e-5)
    assert scorer.identity == "detoxify/bert-base-uncased/toxic_tiny.ckpt/toxicity"


def test_long_texts_are_truncated_not_fatal(
    tiny_checkpoint: tuple[Path, Path], no_network: None
) -> None:
    # The tiny model embeds 64 positions and its tokenizer declares no maximum: without an
    # explicit max_length one long text would crash every batch (and, fail closed, the curator).
    checkpoint, config_dir = tiny_checkpoint
    scorer = DetoxifyScorer(checkpoint=checkpoint, hf_config_dir=config_dir)
    assert len(scorer.score_many(["you are an idiot " * 200, "thanks"])) == 2


def test_label_max_and_unknown_label(tiny_checkpoint: tuple[Path, Path], no_network: None) -> None:
    checkpoint, config_dir = tiny_checkpoint
    single = DetoxifyScorer(checkpoint=checkpoint, hf_config_dir=config_dir)
    top = DetoxifyScorer(checkpoint=checkpoint, hf_config_dir=config_dir, label="max")
    assert top.score_many(["open settings"])[0] >= single.score_many(["open settings"])[0]
    with pytest.raises(ConfigError, match="not among the checkpoint's classes"):
        DetoxifyScorer(checkpoint=checkpoint, hf_config_dir=config_dir, label="spam")


def test_hub_model_type_without_config_folder_is_a_config_error(
    tiny_checkpoint: tuple[Path, Path], no_network: None
) -> None:
    checkpoint, _ = tiny_checkpoint
    with pytest.raises(ConfigError, match="hf_config_dir"):
        DetoxifyScorer(checkpoint=checkpoint)


def test_model_type_naming_a_local_folder_needs_nothing_else(
    tiny_checkpoint: tuple[Path, Path], tmp_path: Path, no_network: None
) -> None:
    checkpoint, config_dir = tiny_checkpoint
    loaded = torch.load(checkpoint, weights_only=True)
    loaded["config"]["arch"]["args"]["model_type"] = str(config_dir)
    local = tmp_path / "local.ckpt"
    torch.save(loaded, local)
    assert len(DetoxifyScorer(checkpoint=local).score_many(["thanks"])) == 1


def test_bad_checkpoints(tmp_path: Path, tiny_checkpoint: tuple[Path, Path]) -> None:
    _, config_dir = tiny_checkpoint
    with pytest.raises(ConfigError, match="does not exist"):
        DetoxifyScorer(checkpoint=tmp_path / "missing.ckpt", hf_config_dir=config_dir)
    not_detoxify = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, not_detoxify)
    with pytest.raises(ConfigError, match="not a Detoxify checkpoint"):
        DetoxifyScorer(checkpoint=not_detoxify, hf_config_dir=config_dir)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="cannot read"):
        DetoxifyScorer(checkpoint=garbage, hf_config_dir=config_dir)


def test_detoxify_backend_through_the_settings(
    tiny_checkpoint: tuple[Path, Path], make_candidate: MakeCandidate, no_network: None
) -> None:
    checkpoint, config_dir = tiny_checkpoint
    settings = FilterSettings(
        toxicity=ToxicitySettings(
            backend="detoxify",
            # A random model scores around 0.5: a threshold of 1.0 keeps the pair on the
            # relative check alone, which two similar texts pass.
            max_score=1.0,
            relative_margin=0.5,
            relative_floor=0.0,
            detoxify={"checkpoint": checkpoint, "hf_config_dir": config_dir},
        )
    )
    chain = build_filters(settings)
    verdict = chain.run(make_candidate(chosen="thanks the fix works", rejected="the fix works"))
    assert verdict.accepted, verdict
    assert 0.0 <= verdict.scores["toxicity"] <= 1.0


def test_detoxify_own_loader_still_reaches_for_the_hub(
    tiny_checkpoint: tuple[Path, Path], no_network: None
) -> None:
    """Why DetoxifyScorer rewrites ``model_type``: with only ``huggingface_config_path``,
    Detoxify 0.5.4 still builds the config from the hub name. When this starts passing the
    workaround can go."""
    from detoxify.detoxify import load_checkpoint

    checkpoint, config_dir = tiny_checkpoint
    with pytest.raises(OSError, match="bert-base-uncased"):
        load_checkpoint(checkpoint=str(checkpoint), huggingface_config_path=str(config_dir))
