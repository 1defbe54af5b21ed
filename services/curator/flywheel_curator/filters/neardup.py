"""Near-duplicate detection: MinHash LSH over word shingles of the chosen and rejected texts,
with a fixed memory budget.

Two pairs are near-duplicates when the estimated Jaccard similarity of their shingle sets
reaches ``threshold``. Chosen and rejected shingles are tagged apart, so "A over B" and "B over
A" do not match, and the prompt is left out: long shared prompts (a system prompt, a RAG
context) would otherwise make unrelated answers look alike. The index is scoped per feature by
default. It remembers the newest ``max_entries`` accepted pairs in a ring; each band bucket
holds only the newest slot that hashed there, so memory is ``max_entries x (bands dict entries
+ num_perm x 4 bytes)`` whatever the traffic.

State contract: like exact dedup, entries are added tentatively by ``FilterChain`` for accepted
candidates; ``commit()`` keeps them, ``rollback()`` takes them out. After a restart, ``load``
rebuilds the index from the newest rows of the table (feature, chosen, rejected); what is not
reloaded is simply not remembered, which costs recall, never correctness.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, Verdict

__all__ = ["NEAR_DUPLICATE", "NearDupFilter", "NearDupIndex"]

NEAR_DUPLICATE = "near_duplicate"

# Signatures cached between check and record: enough for one pipeline buffer.
_SIGNATURE_CACHE = 8192

_MAX_U32 = 1 << 32
# Fixed seed: the same text gets the same signature in every process, so a replay decides
# exactly as the first run did.
_SEED = 0x5EED_F1E1
# Word characters: ASCII letters, digits, underscore, and every byte of a multi-byte UTF-8
# character (so non-Latin scripts form words). Anything else separates words.
_WORD_BYTE = np.zeros(256, dtype=np.bool_)
for _lo, _hi in ((48, 57), (65, 90), (97, 122), (95, 95), (128, 255)):
    _WORD_BYTE[_lo : _hi + 1] = True
_MAX_WORD_BYTES = 256
# Powers of an odd 64-bit multiplier: byte i of a word weighs _POW[i] (polynomial hash).
_POW = np.cumprod(
    np.concatenate([[1], np.full(_MAX_WORD_BYTES - 1, 0x100000001B3)]).astype(np.uint64)
)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MASK32 = np.uint64(_MAX_U32 - 1)
_EMPTY = np.uint32(0x5A5A5A5A)
# Polynomial combination of word hashes into a k-gram hash (an odd 32-bit multiplier).
_GRAM_MULT = np.uint32(0x9E3779B1)
# Chosen and rejected shingles are tagged apart so "A over B" differs from "B over A".
_TAG_CHOSEN = np.uint32(0x0C0C0C0C)
_TAG_REJECTED = np.uint32(0x0E0E0E0E)


def _word_hashes(text: str) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.intp]]:
    """One 32-bit hash per word, computed over the UTF-8 bytes in numpy (a Python loop with a
    hash call per word cost about 1 us a word), and the byte offset where each word starts."""
    data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    idx = np.flatnonzero(_WORD_BYTE[data])
    if len(idx) == 0:
        return np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.intp)
    # A word starts where a word byte follows a non-word byte (or the text start).
    first = np.empty(len(idx), dtype=np.bool_)
    first[0] = True
    np.not_equal(idx[1:], idx[:-1] + 1, out=first[1:])
    starts = np.flatnonzero(first)
    # Offset of each byte within its word: its index minus the index of its word's first byte.
    at = np.arange(len(idx))
    pos = at - np.maximum.accumulate(np.where(first, at, 0))
    # Bytes past _MAX_WORD_BYTES in one "word" (a base64 blob) share the last weight.
    weights = _POW[np.minimum(pos, _MAX_WORD_BYTES - 1)]
    sums = np.add.reduceat(data[idx].astype(np.uint64) * weights, starts)
    mixed = (sums ^ (sums >> np.uint64(31))) * _MIX
    return np.asarray((mixed >> np.uint64(32)) & _MASK32, dtype=np.uint32), idx[starts]


def _grams(wh: npt.NDArray[np.uint32], tag: np.uint32, k: int) -> npt.NDArray[np.uint32]:
    """32-bit hashes of the word k-grams (the whole text when shorter than k), tagged."""
    n = len(wh)
    if n == 0:
        return np.array([_EMPTY ^ tag], dtype=np.uint32)
    k = min(k, n)
    grams = wh[: n - k + 1] ^ tag
    for j in range(1, k):
        grams = grams * _GRAM_MULT + wh[j : n - k + 1 + j]
    return grams


def _pair_shingles(chosen: str, rejected: str, k: int) -> npt.NDArray[np.uint32]:
    """Tagged shingles of both texts from one pass over ``chosen + "\n" + rejected``: half the
    numpy calls of two passes, and numpy call overhead is most of the cost on short texts."""
    hashes, word_starts = _word_hashes(f"{chosen}\n{rejected}".lower())
    split = int(np.searchsorted(word_starts, len(chosen.lower().encode("utf-8"))))
    return np.concatenate(
        [_grams(hashes[:split], _TAG_CHOSEN, k), _grams(hashes[split:], _TAG_REJECTED, k)]
    )


@dataclass(slots=True)
class _Tentative:
    slot: int
    previous: tuple[str, npt.NDArray[np.uint32], tuple[int, ...]] | None


class NearDupIndex:
    """A bounded MinHash LSH index with tentative (per-batch) inserts."""

    def __init__(
        self,
        *,
        threshold: float,
        num_perm: int,
        bands: int,
        shingle_words: int,
        max_entries: int,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"near-dup threshold must be in (0, 1], got {threshold}")
        if num_perm < 2 or bands < 1 or num_perm % bands:
            raise ConfigError(f"bands ({bands}) must divide num_perm ({num_perm}), num_perm >= 2")
        if shingle_words < 1 or max_entries < 1:
            raise ConfigError("shingle_words and max_entries must be >= 1")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands = bands
        self.rows = num_perm // bands
        self.shingle_words = shingle_words
        self.max_entries = max_entries
        rng = np.random.default_rng(_SEED)
        self._a = rng.integers(0, _MAX_U32, size=(num_perm, 1), dtype=np.uint32) | np.uint32(1)
        self._b = rng.integers(0, _MAX_U32, size=(num_perm, 1), dtype=np.uint32)
        self._sigs = np.zeros((max_entries, num_perm), dtype=np.uint32)
        self._scopes: list[str | None] = [None] * max_entries
        self._band_keys: list[tuple[int, ...]] = [()] * max_entries
        self._buckets: dict[int, int] = {}
        self._next = 0
        self._tentative: list[_Tentative] = []

    def __len__(self) -> int:
        return sum(1 for s in self._scopes if s is not None)

    def signature(self, chosen: str, rejected: str) -> npt.NDArray[np.uint32]:
        h = _pair_shingles(chosen, rejected, self.shingle_words)
        # a odd, arithmetic mod 2^32: a*h + b permutes the 32-bit hashes; ~2x faster than the
        # textbook mod-(2^61 - 1) form and as good for minima over well-mixed inputs.
        return np.asarray((self._a * h + self._b).min(axis=1), dtype=np.uint32)

    def band_keys(self, scope: str, sig: npt.NDArray[np.uint32]) -> tuple[int, ...]:
        """The LSH bucket keys of ``sig`` in ``scope``, one per band."""
        # Slicing one bytes object is about twice as fast as a numpy slice + tobytes per band.
        raw = sig.tobytes()
        width = len(raw) // self.bands
        return tuple(hash((scope, i, raw[i * width : (i + 1) * width])) for i in range(self.bands))

    def query(
        self, scope: str, sig: npt.NDArray[np.uint32], keys: tuple[int, ...] | None = None
    ) -> float:
        """The highest estimated Jaccard similarity to a remembered pair in ``scope`` (0.0 when
        no band collides). ``keys``: ``band_keys(scope, sig)`` when the caller has them."""
        best = 0.0
        for key in keys if keys is not None else self.band_keys(scope, sig):
            slot = self._buckets.get(key)
            if slot is None or self._scopes[slot] != scope:
                continue
            best = max(best, float(np.count_nonzero(self._sigs[slot] == sig)) / self.num_perm)
        return best

    def add(
        self, scope: str, sig: npt.NDArray[np.uint32], keys: tuple[int, ...] | None = None
    ) -> None:
        """Remembers a pair tentatively (until ``commit`` or ``rollback``)."""
        slot = self._next % self.max_entries
        self._next += 1
        previous = None
        old_scope = self._scopes[slot]
        if old_scope is not None:
            previous = (old_scope, self._sigs[slot].copy(), self._band_keys[slot])
            self._unlink(slot)
        self._tentative.append(_Tentative(slot, previous))
        self._link(slot, scope, sig, keys)

    def commit(self) -> None:
        self._tentative.clear()

    def rollback(self) -> None:
        # Undo newest first, so a slot reused twice in one batch ends as it began.
        for t in reversed(self._tentative):
            self._unlink(t.slot)
            self._next -= 1
            if t.previous is not None:
                scope, sig, keys = t.previous
                self._link(t.slot, scope, sig, keys)
        self._tentative.clear()

    def load(self, rows: Iterable[tuple[str, str, str]]) -> None:
        """Rebuilds from committed rows ``(scope, chosen, rejected)``, oldest first."""
        for scope, chosen, rejected in rows:
            self.add(scope, self.signature(chosen, rejected))
        self.commit()

    def _link(
        self,
        slot: int,
        scope: str,
        sig: npt.NDArray[np.uint32],
        keys: tuple[int, ...] | None = None,
    ) -> None:
        if keys is None:
            keys = self.band_keys(scope, sig)
        self._sigs[slot] = sig
        self._scopes[slot] = scope
        self._band_keys[slot] = keys
        for key in keys:
            self._buckets[key] = slot

    def _unlink(self, slot: int) -> None:
        for key in self._band_keys[slot]:
            if self._buckets.get(key) == slot:
                del self._buckets[key]
        self._scopes[slot] = None
        self._band_keys[slot] = ()


@dataclass(frozen=True, slots=True)
class _Signed:
    """A candidate's index inputs: its scope, MinHash signature and band keys."""

    scope: str
    sig: npt.NDArray[np.uint32]
    keys: tuple[int, ...]


class NearDupFilter:
    """Rejects a candidate that is a near-duplicate of an accepted pair (``near_duplicate``)."""

    name = "near_dup"

    def __init__(self, *, index: NearDupIndex, scope: Literal["feature", "global"]) -> None:
        self.index = index
        self.scope = scope
        # The chain checks a candidate, re-checks it and records it: cache its signature and
        # band keys (the costly parts) by identity, keeping the candidate so its id cannot be
        # reused meanwhile.
        self._cache: dict[int, tuple[Candidate, _Signed]] = {}

    def _scope(self, candidate: Candidate) -> str:
        return candidate.feature if self.scope == "feature" else ""

    def _signed(self, candidate: Candidate) -> _Signed:
        hit = self._cache.get(id(candidate))
        if hit is not None and hit[0] is candidate:
            return hit[1]
        if len(self._cache) >= _SIGNATURE_CACHE:
            self._cache.clear()
        scope = self._scope(candidate)
        sig = self.index.signature(candidate.chosen, candidate.rejected)
        signed = _Signed(scope, sig, self.index.band_keys(scope, sig))
        self._cache[id(candidate)] = (candidate, signed)
        return signed

    def check(self, candidate: Candidate) -> Verdict:
        signed = self._signed(candidate)
        score = self.index.query(signed.scope, signed.sig, signed.keys)
        if score >= self.index.threshold:
            return Verdict.reject(
                candidate,
                NEAR_DUPLICATE,
                f"estimated Jaccard {score:.2f} >= {self.index.threshold}",
            )
        return Verdict.accept(candidate)

    def record(self, candidate: Candidate) -> None:
        signed = self._signed(candidate)
        self.index.add(signed.scope, signed.sig, signed.keys)
