"""The evaluation gate: log-prob margins against the reference (the base model, adapters off),
preference accuracy, mean reward margin, and the decision to promote or reject.

For a pair (x, y_w, y_l) and a policy π with reference π_ref, DPO's implicit reward is
r(x, y) = β·(log π(y|x) - log π_ref(y|x)). The candidate, the champion and the untrained
starting point are all scored against the same reference on the same held-out pairs:

- ``accuracy``: share of pairs with r(x, y_w) > r(x, y_l); an exact tie counts one half, so the
  untrained adapter (π = π_ref, every margin 0) scores exactly chance, 0.5.
- ``reward_margin``: mean of r(x, y_w) - r(x, y_l).
- ``logp_accuracy``: share of pairs where π itself gives y_w more log-probability than y_l,
  without the reference: what a user of the model would observe.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch

from flywheel_trainer.dataset import PreferenceRecord
from flywheel_trainer.settings import GateSettings

__all__ = [
    "EvalReport",
    "GateVerdict",
    "PairScores",
    "PreferenceMetrics",
    "TokenizedPair",
    "decide",
    "preference_metrics",
    "score_pairs",
    "tokenize_pairs",
]

# |margin| below this is a tie: float noise between identical forward passes is far smaller.
_TIE_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class TokenizedPair:
    chosen: list[int]  # prompt + chosen answer
    rejected: list[int]
    prompt_len: int  # tokens before the answers start (shared by both)


def _ids(tokenizer: Any, messages: Sequence[dict[str, str]], *, generation: bool) -> list[int]:
    enc = tokenizer.apply_chat_template(
        list(messages), tokenize=True, add_generation_prompt=generation, return_dict=True
    )
    return list(enc["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_pairs(
    tokenizer: Any, records: Sequence[PreferenceRecord], *, max_length: int
) -> list[TokenizedPair]:
    """Tokenize as TRL's DPOTrainer does (chat template; the answer starts where the prompt
    and prompt+answer diverge; ``keep_start`` truncation), so the gate scores what was trained."""
    out = []
    for rec in records:
        prompt = _ids(tokenizer, rec["prompt"], generation=True)
        chosen = _ids(tokenizer, [*rec["prompt"], *rec["chosen"]], generation=False)
        rejected = _ids(tokenizer, [*rec["prompt"], *rec["rejected"]], generation=False)
        start = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
        if start >= max_length:
            continue  # TRL drops these too: no answer token would be left
        out.append(TokenizedPair(chosen[:max_length], rejected[:max_length], start))
    return out


@dataclass(frozen=True, slots=True)
class PairScores:
    """Summed answer log-probabilities, one entry per pair."""

    chosen: torch.Tensor
    rejected: torch.Tensor


def _batches(items: Sequence[TokenizedPair], size: int) -> Iterator[Sequence[TokenizedPair]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def _answer_logps(
    model: Any, seqs: Sequence[list[int]], starts: Sequence[int], pad_id: int
) -> torch.Tensor:
    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    answer = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        answer[i, start : len(seq)] = True
    ids, attn, answer = ids.to(device), attn.to(device), answer.to(device)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    targets = ids[:, 1:]
    token_logp = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(
        logits, dim=-1
    )
    mask = answer[:, 1:]
    return (token_logp * mask).sum(dim=-1).cpu()


def score_pairs(
    model: Any,
    pairs: Sequence[TokenizedPair],
    *,
    pad_id: int,
    batch_size: int,
    reference: bool = False,
) -> PairScores:
    """Log-probabilities of both answers under ``model``; with ``reference`` under the base
    model (the PEFT adapters disabled)."""
    if not pairs:
        empty = torch.zeros(0)
        return PairScores(empty, empty)
    was_training = model.training
    model.eval()
    ctx = model.disable_adapter() if reference else nullcontext()
    chosen, rejected = [], []
    try:
        with ctx:
            for batch in _batches(pairs, batch_size):
                starts = [p.prompt_len for p in batch]
                chosen.append(_answer_logps(model, [p.chosen for p in batch], starts, pad_id))
                rejected.append(_answer_logps(model, [p.rejected for p in batch], starts, pad_id))
    finally:
        model.train(was_training)
    return PairScores(torch.cat(chosen), torch.cat(rejected))


@dataclass(frozen=True, slots=True)
class PreferenceMetrics:
    pairs: int
    accuracy: float
    reward_margin: float
    logp_accuracy: float
    chosen_reward: float
    rejected_reward: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def preference_metrics(policy: PairScores, ref: PairScores, *, beta: float) -> PreferenceMetrics:
    n = int(policy.chosen.numel())
    if n == 0:
        nan = math.nan
        return PreferenceMetrics(0, nan, nan, nan, nan, nan)
    r_c = beta * (policy.chosen - ref.chosen)
    r_l = beta * (policy.rejected - ref.rejected)
    margin = r_c - r_l
    wins = (margin > _TIE_EPS).float() + 0.5 * (margin.abs() <= _TIE_EPS).float()
    return PreferenceMetrics(
        pairs=n,
        accuracy=float(wins.mean()),
        reward_margin=float(margin.mean()),
        logp_accuracy=float((policy.chosen > policy.rejected).float().mean()),
        chosen_reward=float(r_c.mean()),
        rejected_reward=float(r_l.mean()),
    )


@dataclass(frozen=True, slots=True)
class EvalReport:
    """One model scored on the held-out split and, where configured, the golden set."""

    held_out: PreferenceMetrics
    golden: PreferenceMetrics | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "held_out": self.held_out.as_dict(),
            "golden": self.golden.as_dict() if self.golden else None,
        }


@dataclass(frozen=True, slots=True)
class GateVerdict:
    promote: bool
    reason: str


def decide(candidate: EvalReport, champion: EvalReport, gate: GateSettings) -> GateVerdict:
    """Promote only a candidate that beats the champion on the held-out pairs by at least
    ``min_accuracy_gain`` (and strictly) and loses no more than ``golden_tolerance`` on the
    golden set. ``champion`` is the base model when there is none yet."""
    cand, champ = candidate.held_out, champion.held_out
    if cand.pairs == 0:
        return GateVerdict(False, "no held-out pairs to evaluate on")
    gain = cand.accuracy - champ.accuracy
    if gain <= 0 or gain < gate.min_accuracy_gain:
        return GateVerdict(
            False,
            f"held-out accuracy {cand.accuracy:.4f} vs champion {champ.accuracy:.4f}: "
            f"gain {gain:+.4f} < required {gate.min_accuracy_gain:.4f}",
        )
    if candidate.golden is not None and champion.golden is not None:
        drop = champion.golden.accuracy - candidate.golden.accuracy
        if drop > gate.golden_tolerance:
            return GateVerdict(
                False,
                f"golden-set accuracy regressed {champion.golden.accuracy:.4f} -> "
                f"{candidate.golden.accuracy:.4f} (tolerance {gate.golden_tolerance:.4f})",
            )
    return GateVerdict(
        True,
        f"held-out accuracy {cand.accuracy:.4f} vs champion {champ.accuracy:.4f} "
        f"(gain {gain:+.4f})",
    )


@contextmanager
def active_adapter(model: Any, name: str) -> Iterator[None]:
    """Score with adapter ``name``, then switch back to the one that was active."""
    previous = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(previous)
