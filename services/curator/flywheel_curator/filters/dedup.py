"""Exact dedup: by the pair's content hash (``pair_id``) and by the event that produced it, so a
client retry (same ``event_id``) is counted once.

State contract (the curator core keeps it consistent with the Delta table):

- Keys are recorded only for candidates the whole chain accepted (``FilterChain`` calls
  ``add``), tentatively, in the current batch. ``commit()`` after the Delta commit that wrote
  those rows makes them permanent; ``rollback()`` when the buffer is dropped forgets them, so a
  replay after a failed commit is not taken for a duplicate of itself.
- On start, ``load(...)`` rebuilds the state from the table: ``pair_id`` column for
  ``pair_keys``; ``event_key(event_id, source, run_id, chosen_run_id, rejected_run_id)`` of
  each row for ``event_keys``. The curator replays from the offsets committed with the table,
  so state and table agree after any crash.
- Memory is bounded: a key is the first 8 bytes of its SHA-256 held in numpy ``uint64`` arrays
  (16 bytes a key with the eviction order); past ``max_entries`` the oldest keys are
  forgotten first. A false match needs two pairs sharing 64 bits: with 10^7 keys held, the
  chance that a new pair collides is about 10^7 / 2^64, i.e. 5e-13.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
from flywheel_common.errors import ConfigError
from flywheel_common.lake.tables import content_hash

from flywheel_curator.candidate import Candidate, Verdict

__all__ = [
    "DUPLICATE",
    "DUPLICATE_EVENT",
    "EventDedupFilter",
    "ExactDedupFilter",
    "KeySet",
    "KeyState",
    "event_key",
    "key_int",
    "normalize_text",
    "pair_id",
]

DUPLICATE = "duplicate"
DUPLICATE_EVENT = "duplicate_event"

# Pending keys are merged into the sorted array in chunks: one O(n) merge per chunk keeps each
# commit cheap and lookups a binary search plus a small set probe.
_MERGE_CHUNK = 65_536
_HEX_PREFIX = 16  # 8 bytes of the SHA-256, as hex digits
_PAIR_ID_VERSION = "dpo_pair/v1"
_LOAD_CHUNK = 1 << 20
# Keys cached between check and record: enough for one pipeline buffer.
_KEY_CACHE = 8192


def normalize_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, ends stripped; case is kept (it can matter
    in an answer). Two pairs equal under this normalisation are the same pair."""
    if not text.isascii():  # ASCII is already NFC; skipping the call saves a third of the time
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def pair_id(prompt: Sequence[Mapping[str, str]], chosen: str, rejected: str) -> str:
    """The pair's content hash: the ``pair_id`` column and the exact-dedup key. The core should
    write this value so that ``load(pair_keys=<pair_id column>)`` rebuilds the state."""
    messages = [[m.get("role", ""), normalize_text(m.get("content", ""))] for m in prompt]
    return str(
        content_hash(_PAIR_ID_VERSION, messages, normalize_text(chosen), normalize_text(rejected))
    )


def event_key(
    event_id: str,
    source: str,
    run_id: str,
    chosen_run_id: str | None,
    rejected_run_id: str | None,
) -> str:
    """One candidate per event and pair identity. An event may complete several pairs (one
    rating, two paired outcomes), so the event id alone would be too coarse."""
    return str(content_hash("event/v1", event_id, source, run_id, chosen_run_id, rejected_run_id))


def key_int(key: str | int) -> int:
    """A key as the unsigned 64-bit int the state stores: the first 8 bytes of a hex hash."""
    if isinstance(key, int):
        return key & 0xFFFF_FFFF_FFFF_FFFF
    return int(key[:_HEX_PREFIX], 16)


class KeyState(Protocol):
    """A transactional set of 64-bit keys (see the module docstring for the contract)."""

    def __contains__(self, key: int) -> bool: ...

    def add(self, key: int) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def load(self, keys: Iterable[str | int]) -> None: ...

    def __len__(self) -> int: ...


class KeySet:
    """In-memory ``KeyState``: committed keys in a sorted ``uint64`` array (plus a small set of
    recent commits), tentative keys in a set, oldest keys evicted past ``max_entries``."""

    def __init__(self, *, max_entries: int) -> None:
        if max_entries < 1:
            raise ConfigError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._merge_chunk = max(1, min(_MERGE_CHUNK, max_entries // 8))
        self._sorted: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        # Insertion order of the committed keys, oldest first, for eviction.
        self._order: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        self._recent: dict[int, None] = {}
        self._pending: dict[int, None] = {}

    def __contains__(self, key: int) -> bool:
        if key in self._pending or key in self._recent:
            return True
        i = int(np.searchsorted(self._sorted, np.uint64(key)))
        return i < len(self._sorted) and int(self._sorted[i]) == key

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, key: int) -> None:
        if key not in self:
            self._pending[key] = None

    def commit(self) -> None:
        self._recent.update(self._pending)
        self._pending.clear()
        # Eviction waits for the next merge: memory stays within 1.125 x max_entries.
        if len(self._recent) >= self._merge_chunk:
            self._merge()

    def rollback(self) -> None:
        self._pending.clear()

    def load(self, keys: Iterable[str | int]) -> None:
        """Adds committed keys in bulk (e.g. the table's ``pair_id`` column on start). Goes
        straight to numpy: 10M keys cost 80 MB here, not a 1 GB Python dict on the way."""
        chunks: list[npt.NDArray[np.uint64]] = []
        batch: list[str | int] = []
        for key in keys:
            batch.append(key)
            if len(batch) == _LOAD_CHUNK:
                chunks.append(_parse_keys(batch))
                batch = []
        chunks.append(_parse_keys(batch))
        self._merge(np.concatenate(chunks))

    def _merge(self, loaded: npt.NDArray[np.uint64] | None = None) -> None:
        recent = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
        self._recent.clear()
        fresh = _sorted_unique(recent if loaded is None else np.concatenate([recent, loaded]))
        fresh = fresh[~_member(self._sorted, fresh)]
        # Both sides sorted: inserting at the searchsorted positions is one O(n + k) pass.
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, fresh), fresh)
        self._order = np.concatenate([self._order, fresh])
        excess = len(self._order) - self.max_entries
        if excess > 0:
            evicted = np.sort(self._order[:excess])
            self._order = self._order[excess:].copy()
            self._sorted = np.delete(self._sorted, np.searchsorted(self._sorted, evicted))


def _sorted_unique(keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """``np.unique`` without its cost: numpy 2.4's took 5 s for 2M uint64 keys (measured),
    sort-and-mask takes 0.1 s."""
    ordered = np.sort(keys)
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=np.bool_)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _parse_keys(keys: list[str | int]) -> npt.NDArray[np.uint64]:
    """Keys as uint64; hex strings parsed in one ``bytes.fromhex`` call per chunk (a Python
    ``int(h, 16)`` per key made a 10M-row rebuild take half a minute)."""
    if all(isinstance(k, str) for k in keys):
        prefixes = "".join(str(k)[:_HEX_PREFIX] for k in keys)
        if len(prefixes) == _HEX_PREFIX * len(keys):
            return np.frombuffer(bytes.fromhex(prefixes), dtype=">u8").astype(np.uint64)
    return np.fromiter((key_int(k) for k in keys), dtype=np.uint64, count=len(keys))


def _member(
    sorted_keys: npt.NDArray[np.uint64], keys: npt.NDArray[np.uint64]
) -> npt.NDArray[np.bool_]:
    """Which of ``keys`` are in ``sorted_keys`` (binary search, no re-sort of the big side)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=np.bool_)
    idx = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return np.asarray(sorted_keys[idx] == keys)


class _KeyCache:
    """The chain checks a candidate, re-checks it and records it: remember its key (a SHA-256
    over the normalised texts, the costly part) by identity, holding the candidate so its id is
    not reused while cached."""

    def __init__(self, compute: Callable[[Candidate], int]) -> None:
        self._compute = compute
        self._cache: dict[int, tuple[Candidate, int]] = {}

    def __call__(self, candidate: Candidate) -> int:
        hit = self._cache.get(id(candidate))
        if hit is not None and hit[0] is candidate:
            return hit[1]
        if len(self._cache) >= _KEY_CACHE:
            self._cache.clear()
        key = self._compute(candidate)
        self._cache[id(candidate)] = (candidate, key)
        return key


class ExactDedupFilter:
    """Rejects a candidate whose ``pair_id`` was already accepted (``duplicate``)."""

    name = "dedup"

    def __init__(self, *, state: KeyState) -> None:
        self.state = state
        self.key = _KeyCache(self.pair_key)

    @staticmethod
    def pair_key(candidate: Candidate) -> int:
        return key_int(pair_id(candidate.prompt, candidate.chosen, candidate.rejected))

    def check(self, candidate: Candidate) -> Verdict:
        if self.key(candidate) in self.state:
            return Verdict.reject(candidate, DUPLICATE, "same pair_id already accepted")
        return Verdict.accept(candidate)

    def record(self, candidate: Candidate) -> None:
        self.state.add(self.key(candidate))


class EventDedupFilter:
    """Rejects a second candidate from the same event and pair identity (``duplicate_event``):
    a client retry reaches the dataset, the caps and the audit counts once."""

    name = "event_dedup"

    def __init__(self, *, state: KeyState) -> None:
        self.state = state
        self.key = _KeyCache(self.event_key)

    @staticmethod
    def event_key(candidate: Candidate) -> int:
        return key_int(
            event_key(
                candidate.event_id,
                candidate.source,
                candidate.run_id,
                candidate.chosen_run_id,
                candidate.rejected_run_id,
            )
        )

    def check(self, candidate: Candidate) -> Verdict:
        if self.key(candidate) in self.state:
            return Verdict.reject(
                candidate, DUPLICATE_EVENT, f"event {candidate.event_id} already accepted"
            )
        return Verdict.accept(candidate)

    def record(self, candidate: Candidate) -> None:
        self.state.add(self.key(candidate))
