"""``Flywheel`` (sync) and ``AsyncFlywheel``: the calls an app makes.

A call builds its event, gives it an ``event_id`` and queues it; delivery happens on the
client's own threads (see ``_engine``), so no call waits on the network. Both clients share
one engine design: an asyncio app gets the same guarantees, and its event loop never spends
time encoding, compressing or signing batches.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self, Unpack

from flywheel_client._calls import Calls, Thumb
from flywheel_client._config import OPTION_NAMES, ClientConfig, ClientOptions
from flywheel_client._engine import Engine
from flywheel_client._events import (
    EditOptions,
    Event,
    FeedbackOptions,
    ImplicitKind,
    Prompt,
    RunOptions,
)
from flywheel_client._stats import ClientStats

__all__ = ["AsyncFlywheel", "Flywheel"]

FLUSH_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0


def _engine(url: str, api_key: str, options: ClientOptions) -> tuple[Engine, Calls]:
    unknown = options.keys() - OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    config = ClientConfig(url=url, api_key=api_key, **options)
    return Engine(config), Calls(remember_runs=config.remember_runs)


class Flywheel:
    """Log runs and feedback to a Flywheel ingest.

    Example::

        with Flywheel("https://flywheel.example.com", api_key) as fw:
            run_id = fw.log_run(prompt="2+2?", response="4", model="llama-3.1-8b")
            fw.thumbs(run_id, "up")

    Settings are keyword arguments (``ClientOptions``; see ``ClientConfig``). Every call
    returns at once; ``flush()`` waits for delivery, ``close()`` (or leaving the ``with``
    block, or the interpreter exiting) delivers what is queued within a bounded time.
    """

    def __init__(self, url: str, api_key: str, **options: Unpack[ClientOptions]) -> None:
        self._engine, self._calls = _engine(url, api_key, options)

    def _put(self, event: Event) -> str:
        self._engine.put(event)
        return event["event_id"]

    def log_run(
        self, *, prompt: Prompt, response: str, model: str, **options: Unpack[RunOptions]
    ) -> str:
        """Record one LLM call; returns its run id (``run_id=`` or a new UUID)."""
        run_id, event = self._calls.run(
            prompt=prompt, response=response, model=model, options=options
        )
        self._engine.put(event)
        return run_id

    def thumbs(
        self,
        run_id: str,
        direction: Thumb,
        *,
        comment: str | None = None,
        correction: str | None = None,
        **options: Unpack[FeedbackOptions],
    ) -> str:
        """Thumbs up or down on a run, with an optional comment or corrected answer;
        returns the event id."""
        return self._put(
            self._calls.thumbs(
                run_id, direction, comment=comment, correction=correction, options=options
            )
        )

    def rate(
        self,
        run_id: str,
        rating: float,
        *,
        comment: str | None = None,
        correction: str | None = None,
        **options: Unpack[FeedbackOptions],
    ) -> str:
        """A 1-5 rating of a run; returns the event id."""
        return self._put(
            self._calls.rate(
                run_id, rating, comment=comment, correction=correction, options=options
            )
        )

    def edit(
        self,
        run_id: str,
        *,
        original: str,
        final: str,
        prompt: Prompt | None = None,
        **options: Unpack[EditOptions],
    ) -> str:
        """The user rewrote the model's answer ``original`` into ``final``. ``prompt`` may be
        left out for a run this client logged recently. Returns the event id."""
        return self._put(
            self._calls.edit(run_id, original=original, final=final, prompt=prompt, options=options)
        )

    def regenerated(self, run_id: str, new_run_id: str, **options: Unpack[FeedbackOptions]) -> str:
        """The user regenerated ``run_id``'s answer and got ``new_run_id`` (log that run with
        ``parent_run_id=run_id``). Returns the event id."""
        return self._put(self._calls.regenerated(run_id, new_run_id, options=options))

    def signal(
        self,
        run_id: str,
        kind: ImplicitKind,
        value: float | None = None,
        **options: Unpack[FeedbackOptions],
    ) -> str:
        """An implicit signal (copy, abandon, dwell with ``value`` ms, ...); returns the id."""
        return self._put(self._calls.signal(run_id, kind, value, options=options))

    def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Send what is queued now; True when all of it was delivered (or refused) in time."""
        return self._engine.flush(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Deliver what is queued within ``timeout``, then stop; True when nothing was left.
        Returns within ``timeout`` even when the server is down."""
        return self._engine.close(timeout)

    def stats(self) -> ClientStats:
        return self._engine.snapshot()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncFlywheel:
    """``Flywheel`` for asyncio apps: the same calls, awaited. A call only waits when the queue
    is full and the overflow policy is ``block``, and then without blocking the event loop."""

    def __init__(self, url: str, api_key: str, **options: Unpack[ClientOptions]) -> None:
        self._engine, self._calls = _engine(url, api_key, options)

    async def _put(self, event: Event) -> str:
        if not self._engine.put(event, block=False):
            await asyncio.to_thread(self._engine.put, event)
        return event["event_id"]

    async def log_run(
        self, *, prompt: Prompt, response: str, model: str, **options: Unpack[RunOptions]
    ) -> str:
        """See ``Flywheel.log_run``."""
        run_id, event = self._calls.run(
            prompt=prompt, response=response, model=model, options=options
        )
        await self._put(event)
        return run_id

    async def thumbs(
        self,
        run_id: str,
        direction: Thumb,
        *,
        comment: str | None = None,
        correction: str | None = None,
        **options: Unpack[FeedbackOptions],
    ) -> str:
        """See ``Flywheel.thumbs``."""
        return await self._put(
            self._calls.thumbs(
                run_id, direction, comment=comment, correction=correction, options=options
            )
        )

    async def rate(
        self,
        run_id: str,
        rating: float,
        *,
        comment: str | None = None,
        correction: str | None = None,
        **options: Unpack[FeedbackOptions],
    ) -> str:
        """See ``Flywheel.rate``."""
        return await self._put(
            self._calls.rate(
                run_id, rating, comment=comment, correction=correction, options=options
            )
        )

    async def edit(
        self,
        run_id: str,
        *,
        original: str,
        final: str,
        prompt: Prompt | None = None,
        **options: Unpack[EditOptions],
    ) -> str:
        """See ``Flywheel.edit``."""
        return await self._put(
            self._calls.edit(run_id, original=original, final=final, prompt=prompt, options=options)
        )

    async def regenerated(
        self, run_id: str, new_run_id: str, **options: Unpack[FeedbackOptions]
    ) -> str:
        """See ``Flywheel.regenerated``."""
        return await self._put(self._calls.regenerated(run_id, new_run_id, options=options))

    async def signal(
        self,
        run_id: str,
        kind: ImplicitKind,
        value: float | None = None,
        **options: Unpack[FeedbackOptions],
    ) -> str:
        """See ``Flywheel.signal``."""
        return await self._put(self._calls.signal(run_id, kind, value, options=options))

    async def flush(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        return await asyncio.to_thread(self._engine.flush, timeout)

    async def aclose(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        return await asyncio.to_thread(self._engine.close, timeout)

    def stats(self) -> ClientStats:
        return self._engine.snapshot()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
