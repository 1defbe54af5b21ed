"""Exact dedup: by the pair's content hash (``pair_id``) and by the event that produced it, so a
client retry (same ``event_id``) is counted once.

State contract (the curator core keeps it consistent with the Delta table):

- Keys are recorded only for candidates the whole chain accepted (``FilterChain`` calls
  ``add``), tentatively, in the current batch. ``commit()`` after the Delta commit that wrote
  those rows makes them permanent; ``rollback()`` when the buffer is dropped forgets them, so a
  replay after a failed commit is not taken for a duplicate of itself.
- Within one ``run_many`` call the state changes only by the chain's ``add``: the chain looks
  each key up once (in one batch where the state has ``contains_many``, see
  ``BatchKeyState``) and answers re-checks from the keys it recorded itself.
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

import hashlib
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, Verdict

__all__ = [
    "DUPLICATE",
    "DUPLICATE_EVENT",
    "BatchKeyState",
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
_KEY_BYTES = 8


def normalize_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, ends stripped; case is kept (it can matter
    in an answer). Two pairs equal under this normalisation are the same pair."""
    if not text.isascii():  # ASCII is already NFC; skipping the call saves a third of the time
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def _json(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


# The hashed blobs are the JSON ``flywheel_common.lake.tables.content_hash`` makes of the same
# parts, written out directly: ``json.dumps`` builds an encoder per call, which cost three
# times the hash itself. The tests hold the two equal.
def _pair_blob(prompt: Sequence[Mapping[str, str]], chosen: str, rejected: str) -> bytes:
    messages = ",".join(
        f"[{_json(m.get('role', ''))},{_json(normalize_text(m.get('content', '')))}]"
        for m in prompt
    )
    chosen_json, rejected_json = _json(normalize_text(chosen)), _json(normalize_text(rejected))
    return f'["{_PAIR_ID_VERSION}",[{messages}],{chosen_json},{rejected_json}]'.encode()


def _event_blob(
    event_id: str,
    source: str,
    run_id: str,
    chosen_run_id: str | None,
    rejected_run_id: str | None,
) -> bytes:
    parts = (event_id, source, run_id, chosen_run_id, rejected_run_id)
    return ('["event/v1",' + ",".join(map(_json, parts)) + "]").encode()


def pair_id(prompt: Sequence[Mapping[str, str]], chosen: str, rejected: str) -> str:
    """The pair's content hash: the ``pair_id`` column and the exact-dedup key. The core should
    write this value so that ``load(pair_keys=<pair_id column>)`` rebuilds the state."""
    return hashlib.sha256(_pair_blob(prompt, chosen, rejected)).hexdigest()


def event_key(
    event_id: str,
    source: str,
    run_id: str,
    chosen_run_id: str | None,
    rejected_run_id: str | None,
) -> str:
    """One candidate per event and pair identity. An event may complete several pairs (one
    rating, two paired outcomes), so the event id alone would be too coarse."""
    blob = _event_blob(event_id, source, run_id, chosen_run_id, rejected_run_id)
    return hashlib.sha256(blob).hexdigest()


def _digest_key(blob: bytes) -> int:
    """``key_int`` of the blob's SHA-256 hex digest, without the hex round trip."""
    return int.from_bytes(hashlib.sha256(blob).digest()[:_KEY_BYTES], "big")


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


@runtime_checkable
class BatchKeyState(Protocol):
    """A ``KeyState`` that answers many lookups at once (one query instead of one per key);
    the chain uses it where a state has it."""

    def contains_many(self, keys: Sequence[int]) -> list[bool]: ...


def contains_many(state: KeyState, keys: Sequence[int]) -> list[bool]:
    """``[k in state for k in keys]``, in one batch where the state supports it; each distinct
    key is looked up once."""
    distinct = list(dict.fromkeys(keys))
    if isinstance(state, BatchKeyState):
        found = state.contains_many(distinct)
    else:
        found = [key in state for key in distinct]
    known = dict(zip(distinct, found, strict=True))
    return [known[key] for key in keys]


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
        i = int(self._sorted.searchsorted(np.uint64(key)))  # the method: half the np. call
        return i < len(self._sorted) and int(self._sorted[i]) == key

    def contains_many(self, keys: Sequence[int]) -> list[bool]:
        """``[k in self for k in keys]`` with one binary search over all of them (a numpy call
        per key cost 4 us)."""
        committed = _member(self._sorted, np.fromiter(keys, dtype=np.uint64, count=len(keys)))
        return [
            found or key in self._pending or key in self._recent
            for key, found in zip(keys, committed.tolist(), strict=True)
        ]

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def add(self, key: int) -> None:
        # Whether it is in the sorted array already is settled at commit, for the whole batch
        # in one search (a search per key was most of the cost of recording).
        if key not in self._recent:
            self._pending[key] = None

    def commit(self) -> None:
        keys = np.fromiter(self._pending, dtype=np.uint64, count=len(self._pending))
        self._recent.update(dict.fromkeys(keys[~_member(self._sorted, keys)].tolist()))
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


class _KeyFilter(ABC):
    """Exact and event dedup: a candidate's 64-bit key looked up in a ``KeyState``."""

    name: str

    def __init__(self, *, state: KeyState) -> None:
        self.state = state

    @abstractmethod
    def key(self, candidate: Candidate) -> int: ...

    @abstractmethod
    def duplicate(self, candidate: Candidate) -> Verdict:
        """The rejection of a candidate whose key is known."""

    def check(self, candidate: Candidate) -> Verdict:
        if self.key(candidate) in self.state:
            return self.duplicate(candidate)
        return Verdict.accept(candidate)

    def record(self, candidate: Candidate) -> None:
        self.state.add(self.key(candidate))

    def batch(self, candidates: Sequence[Candidate]) -> _KeyBatch:
        return _KeyBatch(self, candidates)


class _KeyBatch:
    """One ``run_many`` call's dedup work: each key computed once and looked up in one batch.
    Until commit or rollback the state changes only by this call's records, so a re-check
    asks the keys recorded here rather than the state (a SQLite query per key in production)."""

    def __init__(self, dedup: _KeyFilter, candidates: Sequence[Candidate]) -> None:
        self._dedup = dedup
        self._candidates = candidates
        self._keys = [dedup.key(c) for c in candidates]
        self._known = contains_many(dedup.state, self._keys)
        self._recorded: set[int] = set()

    def checks(self) -> list[Verdict | None]:
        duplicate = self._dedup.duplicate
        return [
            duplicate(c) if known else None
            for c, known in zip(self._candidates, self._known, strict=True)
        ]

    def recheck(self, i: int) -> Verdict | None:
        # Only called for candidates ``checks`` passed: their key was not in the state before.
        if self._keys[i] in self._recorded:
            return self._dedup.duplicate(self._candidates[i])
        return None

    def record(self, i: int) -> None:
        self._recorded.add(self._keys[i])
        self._dedup.state.add(self._keys[i])


class ExactDedupFilter(_KeyFilter):
    """Rejects a candidate whose ``pair_id`` was already accepted (``duplicate``)."""

    name = "dedup"

    def key(self, candidate: Candidate) -> int:
        return _digest_key(_pair_blob(candidate.prompt, candidate.chosen, candidate.rejected))

    def duplicate(self, candidate: Candidate) -> Verdict:
        return Verdict.reject(candidate, DUPLICATE, "same pair_id already accepted")


class EventDedupFilter(_KeyFilter):
    """Rejects a second candidate from the same event and pair identity (``duplicate_event``):
    a client retry reaches the dataset, the caps and the audit counts once."""

    name = "event_dedup"

    def key(self, candidate: Candidate) -> int:
        c = candidate
        return _digest_key(
            _event_blob(c.event_id, c.source, c.run_id, c.chosen_run_id, c.rejected_run_id)
        )

    def duplicate(self, candidate: Candidate) -> Verdict:
        return Verdict.reject(
            candidate, DUPLICATE_EVENT, f"event {candidate.event_id} already accepted"
        )
