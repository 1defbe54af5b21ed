"""The calls both clients offer, as event builders: check the arguments, build the event.

Kept apart from the clients so that ``Flywheel`` and ``AsyncFlywheel`` differ only in how they
queue an event, never in what the event is.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Literal

from flywheel_client._errors import InvalidEventError
from flywheel_client._events import (
    IMPLICIT_KINDS,
    EditEvent,
    EditOptions,
    FeedbackEvent,
    FeedbackOptions,
    ImplicitKind,
    Prompt,
    RunEvent,
    RunOptions,
    edit_event,
    feedback_event,
    run_event,
)

__all__ = ["Calls", "Thumb"]

Thumb = Literal["up", "down"]
_THUMB_VALUE = {"up": 1.0, "down": -1.0}
NEW_RUN_ID_KEY = "new_run_id"
"""The metadata key of a ``regenerate`` signal that names the run which replaced this one."""


class _RecentRuns:
    """The prompts of the runs this client logged last, so ``edit()`` can fill them in."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._prompts: OrderedDict[str, Prompt] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, run_id: str, prompt: Prompt) -> None:
        if not self._size:
            return
        with self._lock:
            self._prompts[run_id] = prompt
            self._prompts.move_to_end(run_id)
            if len(self._prompts) > self._size:
                self._prompts.popitem(last=False)

    def prompt_of(self, run_id: str) -> Prompt | None:
        with self._lock:
            return self._prompts.get(run_id)


class Calls:
    """Builds the event of each call. Raises ``InvalidEventError`` for arguments that can
    never be valid; everything else is the server's to judge."""

    def __init__(self, *, remember_runs: int) -> None:
        self._recent = _RecentRuns(remember_runs)

    def run(
        self, *, prompt: Prompt, response: str, model: str, options: RunOptions
    ) -> tuple[str, RunEvent]:
        run_id, event = run_event(prompt=prompt, response=response, model=model, options=options)
        self._recent.remember(run_id, event["prompt"])  # the copy: the caller may mutate its own
        return run_id, event

    def thumbs(
        self,
        run_id: str,
        direction: Thumb,
        *,
        comment: str | None,
        correction: str | None,
        options: FeedbackOptions,
    ) -> FeedbackEvent:
        value = _THUMB_VALUE.get(direction)
        if value is None:
            raise InvalidEventError(f"thumbs takes 'up' or 'down', not {direction!r}")
        return feedback_event(
            run_id, "thumbs", value=value, comment=comment, correction=correction, options=options
        )

    def rate(
        self,
        run_id: str,
        rating: float,
        *,
        comment: str | None,
        correction: str | None,
        options: FeedbackOptions,
    ) -> FeedbackEvent:
        if isinstance(rating, bool) or not isinstance(rating, int | float) or not 1 <= rating <= 5:
            raise InvalidEventError(f"a rating is a number from 1 to 5, not {rating!r}")
        return feedback_event(
            run_id, "rating", value=rating, comment=comment, correction=correction, options=options
        )

    def edit(
        self,
        run_id: str,
        *,
        original: str,
        final: str,
        prompt: Prompt | None,
        options: EditOptions,
    ) -> EditEvent:
        if prompt is None:
            prompt = self._recent.prompt_of(run_id)
            if prompt is None:
                raise InvalidEventError(
                    f"edit() needs prompt=: run {run_id!r} is not one of the runs this client "
                    "logged recently"
                )
        return edit_event(run_id, prompt=prompt, original=original, final=final, options=options)

    def regenerated(
        self, run_id: str, new_run_id: str, *, options: FeedbackOptions
    ) -> FeedbackEvent:
        if not isinstance(new_run_id, str) or not new_run_id:
            raise InvalidEventError(f"new_run_id must be a non-empty string, not {new_run_id!r}")
        metadata = {**options.get("metadata", {}), NEW_RUN_ID_KEY: new_run_id}
        return feedback_event(run_id, "regenerate", options={**options, "metadata": metadata})

    def signal(
        self, run_id: str, kind: ImplicitKind, value: float | None, *, options: FeedbackOptions
    ) -> FeedbackEvent:
        if kind not in IMPLICIT_KINDS:
            raise InvalidEventError(
                f"signal() takes an implicit kind ({', '.join(sorted(IMPLICIT_KINDS))}), not "
                f"{kind!r}; explicit feedback has its own call (thumbs, rate)"
            )
        if kind == "dwell":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise InvalidEventError(f"dwell needs value= milliseconds >= 0, not {value!r}")
        elif value is not None:
            raise InvalidEventError(f"a {kind!r} signal takes no value")
        return feedback_event(run_id, kind, value=value, options=options)
