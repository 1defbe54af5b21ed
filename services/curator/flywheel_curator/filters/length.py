"""Length bounds: chosen and rejected within ``[min_chars, max_chars]`` characters of stripped
text, and the prompt (all messages together) at most ``max_prompt_chars``."""

from __future__ import annotations

from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, Verdict

__all__ = ["TOO_LONG", "TOO_SHORT", "LengthFilter"]

TOO_SHORT = "too_short"
TOO_LONG = "too_long"


class LengthFilter:
    """Rejects a candidate whose chosen or rejected text is too short or too long, or whose
    prompt is too long. The detail names the side (``chosen: 1 < 2``)."""

    name = "length"

    def __init__(self, *, min_chars: int, max_chars: int, max_prompt_chars: int) -> None:
        if min_chars < 0 or max_chars < 1 or max_prompt_chars < 1 or min_chars > max_chars:
            raise ConfigError(
                "length bounds need 0 <= min_chars <= max_chars and max_prompt_chars >= 1, got "
                f"min_chars={min_chars}, max_chars={max_chars}, "
                f"max_prompt_chars={max_prompt_chars}"
            )
        self.min_chars = min_chars
        self.max_chars = max_chars
        self.max_prompt_chars = max_prompt_chars

    def check(self, candidate: Candidate) -> Verdict:
        for side, text in (("chosen", candidate.chosen), ("rejected", candidate.rejected)):
            # Stripped: whitespace padding must not lift an empty answer over the bound.
            n = len(text.strip())
            if n < self.min_chars:
                return Verdict.reject(candidate, TOO_SHORT, f"{side}: {n} < {self.min_chars}")
            if n > self.max_chars:
                return Verdict.reject(candidate, TOO_LONG, f"{side}: {n} > {self.max_chars}")
        prompt_chars = sum(len(m.get("content", "")) for m in candidate.prompt)
        if prompt_chars > self.max_prompt_chars:
            return Verdict.reject(
                candidate, TOO_LONG, f"prompt: {prompt_chars} > {self.max_prompt_chars}"
            )
        return Verdict.accept(candidate)
