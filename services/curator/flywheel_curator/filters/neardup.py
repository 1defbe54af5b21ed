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

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, Verdict

__all__ = ["NEAR_DUPLICATE", "NearDupFilter", "NearDupIndex"]

NEAR_DUPLICATE = "near_duplicate"

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
# Signatures are computed for many pairs at once (numpy call overhead, not arithmetic, was
# most of the cost of one short pair); this many bytes of text at a time bounds the
# temporaries to about 64 MB at the default 64 permutations.
_SIGNATURE_CHUNK_BYTES = 1 << 18
# Band keys: a band's rows folded into 64 bits, then mixed (splitmix64's finaliser) with the
# band's index and the scope. Stable across processes, unlike ``hash()`` of a str.
_BAND_MULT = np.uint64(0x100000001B3)
_BAND_STEP = np.uint64(0xD6E8FEB86659FD93)
_FINAL_MULT_1 = np.uint64(0xBF58476D1CE4E5B9)
_FINAL_MULT_2 = np.uint64(0x94D049BB133111EB)
_LOAD_BATCH = 4096


def _word_hashes(data: bytes) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.intp]]:
    """One 32-bit hash per word, computed over the UTF-8 bytes in numpy (a Python loop with a
    hash call per word cost about 1 us a word), and the byte offset where each word starts."""
    raw = np.frombuffer(data, dtype=np.uint8)
    idx = np.flatnonzero(_WORD_BYTE[raw])
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
    sums = np.add.reduceat(raw[idx].astype(np.uint64) * weights, starts)
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


def _pair_shingles(
    pairs: Sequence[tuple[str, str]], k: int
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.intp]]:
    """Tagged hashes of the word k-grams of every pair's chosen and rejected texts (a text
    shorter than k words is one shingle), concatenated, and the offset of each pair's first
    shingle (plus the total). Each text's shingles are its own: texts are joined with a
    newline, which no word spans."""
    texts = [f"{chosen}\n{rejected}".lower().encode("utf-8") for chosen, rejected in pairs]
    # Where each text starts in the joined bytes, and where its rejected side starts.
    lengths = np.fromiter((len(t) + 1 for t in texts), dtype=np.intp, count=len(texts))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    chosen_bytes = np.fromiter(
        (len(c) if c.isascii() else len(c.lower().encode("utf-8")) for c, _ in pairs),
        dtype=np.intp,
        count=len(pairs),
    )
    bounds = np.empty(2 * len(pairs) + 1, dtype=np.intp)
    bounds[0:-1:2] = offsets[:-1]
    bounds[1::2] = offsets[:-1] + chosen_bytes
    bounds[-1] = offsets[-1]
    hashes, word_starts = _word_hashes(b"\n".join(texts))
    # Sides alternate chosen, rejected: side s holds words [first[s], first[s + 1]).
    first = np.searchsorted(word_starts, bounds)
    words = np.diff(first)
    tags = np.tile(np.array([_TAG_CHOSEN, _TAG_REJECTED], dtype=np.uint32), len(pairs))
    per_side = np.maximum(words - k + 1, 1)
    side_at = np.concatenate([[0], np.cumsum(per_side)])
    shingles = np.empty(side_at[-1], dtype=np.uint32)
    full = np.flatnonzero(words >= k)
    if len(full):
        # The k-grams starting at every word (tagged by the side of their first word), of which
        # each side of k words or more takes those that lie inside it.
        usable = len(hashes) - k + 1
        grams = hashes[:usable] ^ np.repeat(tags, words)[:usable]
        for j in range(1, k):
            grams = grams * _GRAM_MULT + hashes[j : usable + j]
        counts = per_side[full]
        local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        shingles[np.repeat(side_at[full], counts) + local] = grams[
            np.repeat(first[full], counts) + local
        ]
    # A side shorter than k words is one shingle of all its words (rare: a one-word answer).
    for s in np.flatnonzero(words < k):
        shingles[side_at[s]] = _grams(hashes[first[s] : first[s + 1]], tags[s], k)[0]
    return shingles, side_at[::2]


def _chunks(pairs: Sequence[tuple[str, str]]) -> Iterable[tuple[int, int]]:
    """``(start, end)`` runs of pairs holding about ``_SIGNATURE_CHUNK_BYTES`` of text each."""
    start, size = 0, 0
    for end, (chosen, rejected) in enumerate(pairs, 1):
        size += len(chosen) + len(rejected)
        if size >= _SIGNATURE_CHUNK_BYTES:
            yield start, end
            start, size = end, 0
    if start < len(pairs):
        yield start, len(pairs)


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
        # The fewest bands a pair must share to reach the threshold: a band whose key differs
        # matches in at most rows - 1 of its rows (the key is a function of the rows).
        self.min_shared_bands = next(
            b for b in range(bands + 1) if (num_perm - bands + b) / num_perm >= threshold
        )
        rng = np.random.default_rng(_SEED)
        self._a = rng.integers(0, _MAX_U32, size=(num_perm, 1), dtype=np.uint32) | np.uint32(1)
        self._b = rng.integers(0, _MAX_U32, size=(num_perm, 1), dtype=np.uint32)
        self._sigs = np.zeros((max_entries, num_perm), dtype=np.uint32)
        self._scopes: list[str | None] = [None] * max_entries
        self._band_keys: list[tuple[int, ...]] = [()] * max_entries
        self._buckets: dict[int, int] = {}
        self._scope_keys: dict[str, int] = {}
        self._next = 0
        self._tentative: list[_Tentative] = []

    def __len__(self) -> int:
        return sum(1 for s in self._scopes if s is not None)

    def signature(self, chosen: str, rejected: str) -> npt.NDArray[np.uint32]:
        sig: npt.NDArray[np.uint32] = self.signatures([(chosen, rejected)])[0]
        return sig

    def signatures(self, pairs: Sequence[tuple[str, str]]) -> npt.NDArray[np.uint32]:
        """The MinHash signatures of ``(chosen, rejected)`` pairs, one row each."""
        out = np.empty((len(pairs), self.num_perm), dtype=np.uint32)
        for start, end in _chunks(pairs):
            shingles, first = _pair_shingles(pairs[start:end], self.shingle_words)
            # a odd, arithmetic mod 2^32: a*h + b permutes the 32-bit hashes; ~2x faster than
            # the textbook mod-(2^61 - 1) form and as good for minima over well-mixed inputs.
            # One row per permutation: each pair's minima run over contiguous memory (3x faster
            # than a row per shingle, measured).
            hashed = self._a * shingles
            hashed += self._b
            out[start:end] = np.minimum.reduceat(hashed, first[:-1], axis=1).T
        return out

    def band_keys(self, scope: str, sig: npt.NDArray[np.uint32]) -> tuple[int, ...]:
        """The LSH bucket keys of ``sig`` in ``scope``, one per band."""
        return self.band_keys_many([scope], sig[np.newaxis])[0]

    def band_keys_many(
        self, scopes: Sequence[str], sigs: npt.NDArray[np.uint32]
    ) -> list[tuple[int, ...]]:
        """``band_keys`` of every row of ``sigs``, in one pass."""
        scope_keys = np.fromiter(
            (self._scope_key(s) for s in scopes), dtype=np.uint64, count=len(scopes)
        )
        rows = sigs.reshape(len(sigs), self.bands, self.rows).astype(np.uint64)
        z = rows[:, :, 0]
        for j in range(1, self.rows):
            z = z * _BAND_MULT + rows[:, :, j]
        z = (z + np.arange(self.bands, dtype=np.uint64) * _BAND_STEP) ^ scope_keys[:, np.newaxis]
        z = (z ^ (z >> np.uint64(30))) * _FINAL_MULT_1
        z = (z ^ (z >> np.uint64(27))) * _FINAL_MULT_2
        return [tuple(row) for row in (z ^ (z >> np.uint64(31))).tolist()]

    def _scope_key(self, scope: str) -> int:
        key = self._scope_keys.get(scope)
        if key is None:
            digest = hashlib.blake2b(scope.encode("utf-8"), digest_size=8).digest()
            key = self._scope_keys[scope] = int.from_bytes(digest, "big")
        return key

    def query(
        self, scope: str, sig: npt.NDArray[np.uint32], keys: Sequence[int] | None = None
    ) -> float:
        """The highest estimated Jaccard similarity to a remembered pair in ``scope`` (0.0 when
        no band collides). ``keys``: ``band_keys(scope, sig)`` (or some of them) when the
        caller has them."""
        keys = keys if keys is not None else self.band_keys(scope, sig)
        best = 0
        # Bands often share a slot (the newest near-copy took them all): compare it once.
        for slot in {self._buckets.get(key) for key in keys}:
            if slot is not None and self._scopes[slot] == scope:
                best = max(best, int(np.count_nonzero(self._sigs[slot] == sig)))
        return best / self.num_perm

    def query_many(
        self,
        scopes: Sequence[str],
        sigs: npt.NDArray[np.uint32],
        keys: Sequence[tuple[int, ...]],
    ) -> list[float]:
        """``query`` of every row of ``sigs``, with one comparison of all colliding slots."""
        rows: list[int] = []
        slots: list[int] = []
        for i, (scope, row_keys) in enumerate(zip(scopes, keys, strict=True)):
            for slot in {self._buckets.get(key) for key in row_keys}:
                if slot is not None and self._scopes[slot] == scope:
                    rows.append(i)
                    slots.append(slot)
        best = np.zeros(len(scopes), dtype=np.intp)
        if rows:
            np.maximum.at(best, rows, np.count_nonzero(self._sigs[slots] == sigs[rows], axis=1))
        return [int(count) / self.num_perm for count in best.tolist()]

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
        batch: list[tuple[str, str, str]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == _LOAD_BATCH:
                self._add_rows(batch)
                batch = []
        self._add_rows(batch)
        self.commit()

    def _add_rows(self, rows: Sequence[tuple[str, str, str]]) -> None:
        scopes = [scope for scope, _, _ in rows]
        sigs = self.signatures([(chosen, rejected) for _, chosen, rejected in rows])
        for scope, sig, keys in zip(scopes, sigs, self.band_keys_many(scopes, sigs), strict=True):
            self.add(scope, sig, keys)

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


class NearDupFilter:
    """Rejects a candidate that is a near-duplicate of an accepted pair (``near_duplicate``)."""

    name = "near_dup"

    def __init__(self, *, index: NearDupIndex, scope: Literal["feature", "global"]) -> None:
        self.index = index
        self.scope = scope

    def scope_of(self, candidate: Candidate) -> str:
        return candidate.feature if self.scope == "feature" else ""

    def check(self, candidate: Candidate) -> Verdict:
        found = self.batch([candidate]).checks()[0]
        return found if found is not None else Verdict.accept(candidate)

    def record(self, candidate: Candidate) -> None:
        self.batch([candidate]).record(0)

    def batch(self, candidates: Sequence[Candidate]) -> _NearDupBatch:
        return _NearDupBatch(self, candidates)

    def near_duplicate(self, candidate: Candidate, score: float) -> Verdict | None:
        """The rejection of a candidate whose best score reaches the threshold, else None."""
        if score >= self.index.threshold:
            return Verdict.reject(
                candidate,
                NEAR_DUPLICATE,
                f"estimated Jaccard {score:.2f} >= {self.index.threshold}",
            )
        return None


class _NearDupBatch:
    """One ``run_many`` call's near-dup work: every signature and band key computed at once,
    every candidate queried against the index as the call found it. A re-check looks only at
    the band keys this call linked: any other change to the index (a slot evicted from the
    ring) can only lower a score that already passed."""

    def __init__(self, near_dup: NearDupFilter, candidates: Sequence[Candidate]) -> None:
        index = near_dup.index
        self._near_dup = near_dup
        self._index = index
        self._candidates = candidates
        self._scopes = [near_dup.scope_of(c) for c in candidates]
        self._sigs = index.signatures([(c.chosen, c.rejected) for c in candidates])
        self._keys = index.band_keys_many(self._scopes, self._sigs)
        self._scores = index.query_many(self._scopes, self._sigs, self._keys)
        self._linked: set[int] = set()

    def checks(self) -> list[Verdict | None]:
        near_duplicate = self._near_dup.near_duplicate
        scored = zip(self._candidates, self._scores, strict=True)
        return [near_duplicate(c, score) for c, score in scored]

    def recheck(self, i: int) -> Verdict | None:
        # Only the buckets this call linked can raise the score, and only a pair that shares
        # min_shared_bands of them can reach the threshold. The full query is only for the
        # exact score in a rejection's detail.
        keys = self._keys[i]
        linked = [key for key in keys if key in self._linked]
        if len(linked) < self._index.min_shared_bands:
            return None
        scope, sig = self._scopes[i], self._sigs[i]
        if self._index.query(scope, sig, linked) < self._index.threshold:
            return None
        return self._near_dup.near_duplicate(
            self._candidates[i], self._index.query(scope, sig, keys)
        )

    def record(self, i: int) -> None:
        self._linked.update(self._keys[i])
        self._index.add(self._scopes[i], self._sigs[i], self._keys[i])
