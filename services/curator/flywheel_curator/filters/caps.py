"""Contribution caps: at most ``max_per_user`` accepted pairs per user and ``max_per_tenant`` per
tenant in each event-time window, so no single account can steer the dataset.

Windows are tumbling, aligned to the Unix epoch, and keyed by ``candidate.event_time``. The
core should fill ``event_time`` from the server clock (``received_at``): with the client clock
an account could spread its events over invented windows. Only the newest ``retain_windows``
windows are kept in memory; an event older than those is counted against the oldest kept
window, so back-dating cannot escape the cap.

State contract (as for dedup): the chain counts a candidate only once the whole chain accepted
it, tentatively; ``commit()`` after the Delta commit, ``rollback()`` when the buffer is
dropped, ``load(rows)`` on start with ``(tenant, user_key, event_time)`` of the table's rows in
the retained windows. The user key is ``user_key(candidate)``: by default the tenant-scoped
``user_id``; pass the function that produces the table's ``user_hash`` column so the state can
be rebuilt from it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, Verdict

__all__ = ["TENANT_CAP", "USER_CAP", "CapFilter", "CapState", "default_user_key"]

USER_CAP = "user_cap"
TENANT_CAP = "tenant_cap"

UserKey = Callable[[Candidate], str | None]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def default_user_key(candidate: Candidate) -> str | None:
    return candidate.user_id


class CapState:
    """Accepted-pair counts per (window, tenant) and (window, tenant, user), with tentative
    counts for the current batch."""

    def __init__(self, *, window: timedelta, retain_windows: int) -> None:
        if window <= timedelta(0) or retain_windows < 1:
            raise ConfigError(
                f"caps need a positive window and retain_windows >= 1, got {window}, "
                f"{retain_windows}"
            )
        self.window = window
        self.retain_windows = retain_windows
        self._committed: Counter[tuple[int, str, str | None]] = Counter()
        self._pending: Counter[tuple[int, str, str | None]] = Counter()
        self._newest = -(2**63)

    def window_of(self, event_time: datetime) -> int:
        """The window index, clamped to the oldest retained window."""
        if event_time.tzinfo is None:
            raise ConfigError("caps need timezone-aware event times")
        index = (event_time - _EPOCH) // self.window
        return max(index, self._newest - self.retain_windows + 1)

    def count(self, window: int, tenant: str, user: str | None) -> int:
        key = (window, tenant, user)
        # get, not []: a Counter's [] of a missing key goes through a Python __missing__.
        return self._committed.get(key, 0) + self._pending.get(key, 0)

    def add(self, event_time: datetime, tenant: str, user: str | None) -> None:
        self.add_in(self.window_of(event_time), tenant, user)

    def add_in(self, window: int, tenant: str, user: str | None) -> None:
        """``add`` for a candidate whose ``window_of`` the caller has."""
        pending = self._pending
        pending[(window, tenant, None)] = pending.get((window, tenant, None), 0) + 1
        if user is not None:
            pending[(window, tenant, user)] = pending.get((window, tenant, user), 0) + 1

    def commit(self) -> None:
        newest = max((w for w, _, _ in self._pending), default=self._newest)
        self._committed.update(self._pending)
        self._pending.clear()
        if newest > self._newest:
            self._newest = newest
            oldest = newest - self.retain_windows + 1
            # Windows fall out of memory once they are older than the retention (one scan per
            # new window, not per commit).
            for key in [k for k in self._committed if k[0] < oldest]:
                del self._committed[key]

    def rollback(self) -> None:
        self._pending.clear()

    def load(self, rows: Iterable[tuple[str, str | None, datetime]]) -> None:
        """Counts committed rows ``(tenant, user_key, event_time)`` (the table's, on start)."""
        for tenant, user, event_time in rows:
            self.add(event_time, tenant, user)
        self.commit()

    def __len__(self) -> int:
        return len(self._committed)


class CapFilter:
    """Rejects a candidate once its user (``user_cap``) or tenant (``tenant_cap``) has reached
    the cap in the candidate's window. Candidates with no user only count for the tenant."""

    name = "caps"

    def __init__(
        self,
        *,
        state: CapState,
        max_per_user: int | None,
        max_per_tenant: int | None,
        user_key: UserKey = default_user_key,
    ) -> None:
        for label, value in (("max_per_user", max_per_user), ("max_per_tenant", max_per_tenant)):
            if value is not None and value < 1:
                raise ConfigError(f"{label} must be >= 1 or None, got {value}")
        self.state = state
        self.max_per_user = max_per_user
        self.max_per_tenant = max_per_tenant
        self.user_key = user_key

    def check(self, candidate: Candidate) -> Verdict:
        window = self.state.window_of(candidate.event_time)
        found = self.over_cap(candidate, window, self.user_key(candidate))
        return found if found is not None else Verdict.accept(candidate)

    def record(self, candidate: Candidate) -> None:
        self.state.add(candidate.event_time, candidate.tenant, self.user_key(candidate))

    def batch(self, candidates: Sequence[Candidate]) -> _CapBatch:
        return _CapBatch(self, candidates)

    def over_cap(self, candidate: Candidate, window: int, user: str | None) -> Verdict | None:
        """The rejection of a candidate whose user or tenant has reached the cap, else None."""
        if self.max_per_user is not None and user is not None:
            used = self.state.count(window, candidate.tenant, user)
            if used >= self.max_per_user:
                return Verdict.reject(
                    candidate, USER_CAP, f"user has {used} pairs in window, cap {self.max_per_user}"
                )
        if self.max_per_tenant is not None:
            used = self.state.count(window, candidate.tenant, None)
            if used >= self.max_per_tenant:
                return Verdict.reject(
                    candidate,
                    TENANT_CAP,
                    f"tenant has {used} pairs in window, cap {self.max_per_tenant}",
                )
        return None


class _CapBatch:
    """One ``run_many`` call's cap work: each candidate's window and user key computed once.
    Counts only grow within a call, and only a record in the same window and tenant moves a
    candidate's counts: the others' re-checks are skipped."""

    def __init__(self, caps: CapFilter, candidates: Sequence[Candidate]) -> None:
        self._caps = caps
        self._candidates = candidates
        self._windows = [caps.state.window_of(c.event_time) for c in candidates]
        self._users = [caps.user_key(c) for c in candidates]
        self._recorded: set[tuple[int, str]] = set()

    def checks(self) -> list[Verdict | None]:
        over_cap = self._caps.over_cap
        return [
            over_cap(c, window, user)
            for c, window, user in zip(self._candidates, self._windows, self._users, strict=True)
        ]

    def recheck(self, i: int) -> Verdict | None:
        candidate = self._candidates[i]
        if (self._windows[i], candidate.tenant) not in self._recorded:
            return None
        return self._caps.over_cap(candidate, self._windows[i], self._users[i])

    def record(self, i: int) -> None:
        candidate = self._candidates[i]
        self._recorded.add((self._windows[i], candidate.tenant))
        self._caps.state.add_in(self._windows[i], candidate.tenant, self._users[i])
