"""Scoring for the gate: log-probabilities of held-out answers under a policy and under the
reference (the base model, adapters off), turned into per-row outcomes (gate.py decides).

For a prompt x, an answer y and a policy pi with reference pi_ref, the implicit reward is
r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)), as in DPO and KTO. The candidate, the
champion and the untrained starting point are all scored against the same reference:

- a pair (x, y_w, y_l) is won when r(x, y_w) > r(x, y_l); an exact tie counts one half, so
  the untrained adapter (pi = pi_ref, every margin 0) scores exactly chance, 0.5;
- a KTO row contributes its reward r(x, y) and its label (desirable or not).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flywheel_trainer.gate import KtoOutcomes, PairOutcomes, kto_metrics, pair_metrics

__all__ = [
    "EvalReport",
    "Scorer",
    "TokenizedPair",
    "active_adapter",
    "pair_outcomes",
    "score_sequences",
    "tokenize_completions",
    "tokenize_pairs",
]

# |margin| below this is a tie: float noise between identical forward passes is far smaller.
_TIE_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class TokenizedPair:
    chosen: list[int]  # prompt + chosen answer
    rejected: list[int]
    prompt_len: int  # tokens before the answers start (shared by both)
    index: int  # position in the records it came from


@dataclass(frozen=True, slots=True)
class TokenizedCompletion:
    ids: list[int]  # prompt + completion
    prompt_len: int
    index: int


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
    tokenizer: Any, records: Sequence[dict[str, Any]], *, max_length: int
) -> list[TokenizedPair]:
    """Tokenize as TRL's DPOTrainer does (chat template; the answer starts where the prompt
    and prompt+answer diverge; ``keep_start`` truncation), so the gate scores what was trained."""
    out = []
    for i, rec in enumerate(records):
        prompt = _ids(tokenizer, rec["prompt"], generation=True)
        chosen = _ids(tokenizer, [*rec["prompt"], *rec["chosen"]], generation=False)
        rejected = _ids(tokenizer, [*rec["prompt"], *rec["rejected"]], generation=False)
        start = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
        if start >= max_length:
            continue  # TRL drops these too: no answer token would be left
        out.append(TokenizedPair(chosen[:max_length], rejected[:max_length], start, i))
    return out


def tokenize_completions(
    tokenizer: Any, records: Sequence[dict[str, Any]], *, max_length: int
) -> list[TokenizedCompletion]:
    """KTO rows, tokenized as TRL's KTOTrainer does."""
    out = []
    for i, rec in enumerate(records):
        prompt = _ids(tokenizer, rec["prompt"], generation=True)
        full = _ids(tokenizer, [*rec["prompt"], *rec["completion"]], generation=False)
        start = _common_prefix(prompt, full)
        if start >= max_length:
            continue
        out.append(TokenizedCompletion(full[:max_length], start, i))
    return out


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


def score_sequences(
    model: Any,
    seqs: Sequence[tuple[list[int], int]],
    *,
    pad_id: int,
    batch_size: int,
    reference: bool = False,
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Summed answer log-probabilities of (ids, answer start) under ``model``; with
    ``reference`` under the base model (the PEFT adapters disabled)."""
    if not seqs:
        return np.zeros(0)
    was_training = model.training
    model.eval()
    ctx = model.disable_adapter() if reference else nullcontext()
    parts = []
    try:
        with ctx:
            for i in range(0, len(seqs), batch_size):
                batch = seqs[i : i + batch_size]
                parts.append(
                    _answer_logps(model, [s for s, _ in batch], [p for _, p in batch], pad_id)
                )
    finally:
        model.train(was_training)
    return torch.cat(parts).double().numpy()


def _flat(pairs: Sequence[TokenizedPair]) -> list[tuple[list[int], int]]:
    """Chosen then rejected sequences, one list, so they batch together."""
    return [(p.chosen, p.prompt_len) for p in pairs] + [(p.rejected, p.prompt_len) for p in pairs]


def pair_outcomes(
    policy: np.ndarray[Any, Any], ref: np.ndarray[Any, Any], *, beta: float
) -> PairOutcomes:
    """Outcomes from flat (chosen..., rejected...) log-probabilities."""
    n = len(policy) // 2
    r_c = beta * (policy[:n] - ref[:n])
    r_l = beta * (policy[n:] - ref[n:])
    margin = r_c - r_l
    wins = (margin > _TIE_EPS) + 0.5 * (np.abs(margin) <= _TIE_EPS)
    logp_wins = (policy[:n] > policy[n:]).astype(np.float64)
    return PairOutcomes(wins.astype(np.float64), margin, logp_wins, r_c, r_l)


@dataclass(frozen=True, slots=True)
class EvalReport:
    """One model on the held-out pairs and, where present, the golden set and held-out KTO
    rows."""

    held_out: PairOutcomes
    golden: PairOutcomes | None = None
    kto: KtoOutcomes | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "held_out": pair_metrics(self.held_out),
            "golden": pair_metrics(self.golden) if self.golden is not None else None,
            "kto": kto_metrics(self.kto) if self.kto is not None else None,
        }


class Scorer:
    """Scores models on fixed held-out sets against one fixed reference."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        held_out: Sequence[dict[str, Any]],
        golden: Sequence[dict[str, Any]] | None,
        kto: Sequence[dict[str, Any]] | None,
        kto_labels: Sequence[bool] = (),
        max_length: int,
        batch_size: int,
        beta: float,
    ) -> None:
        self.model = model
        self.pad_id = int(tokenizer.pad_token_id)
        self.batch_size = batch_size
        self.beta = beta
        pairs = tokenize_pairs(tokenizer, held_out, max_length=max_length)
        self.kept = [p.index for p in pairs]  # held-out pairs that fit max_length
        self.sets: dict[str, list[tuple[list[int], int]]] = {"held_out": _flat(pairs)}
        if golden is not None:
            self.sets["golden"] = _flat(tokenize_pairs(tokenizer, golden, max_length=max_length))
        self.kto_labels = np.zeros(0, dtype=bool)
        if kto:
            rows = tokenize_completions(tokenizer, kto, max_length=max_length)
            self.sets["kto"] = [(r.ids, r.prompt_len) for r in rows]
            self.kto_labels = np.asarray([kto_labels[r.index] for r in rows], dtype=bool)
        # The reference (base model, adapters off) never changes: score it once.
        self.reference = {
            name: self._score(seqs, reference=True) for name, seqs in self.sets.items()
        }

    def _score(self, seqs: Sequence[tuple[list[int], int]], *, reference: bool = False) -> Any:
        return score_sequences(
            self.model, seqs, pad_id=self.pad_id, batch_size=self.batch_size, reference=reference
        )

    def report(self) -> EvalReport:
        out: dict[str, Any] = {}
        for name, seqs in self.sets.items():
            policy, ref = self._score(seqs), self.reference[name]
            if name == "kto":
                out[name] = KtoOutcomes(self.beta * (policy - ref), self.kto_labels)
            else:
                out[name] = pair_outcomes(policy, ref, beta=self.beta)
        return EvalReport(out["held_out"], out.get("golden"), out.get("kto"))

    def report_adapter(self, path: str, name: str) -> EvalReport:
        """Score a saved adapter (the champion) on the same rows, then unload it."""
        self.model.load_adapter(path, adapter_name=name)
        try:
            with active_adapter(self.model, name):
                return self.report()
        finally:
            self.model.delete_adapter(name)


@contextmanager
def active_adapter(model: Any, name: str) -> Iterator[None]:
    """Score with adapter ``name``, then switch back to the one that was active."""
    previous = model.active_adapter
    model.set_adapter(name)
    try:
        yield
    finally:
        model.set_adapter(previous)
