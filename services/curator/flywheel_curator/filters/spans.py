"""What the user wrote: the pieces of a candidate's texts that the toxicity scorer judges.

A score of a whole text averages: one abusive sentence spliced into a long neutral answer
scores like the answer. So each side is cut into pieces, and the filter takes the worst:

- the whole text;
- each sentence (consecutive sentences grouped into at most ``max_pieces`` windows, so a
  long text costs a bounded number of pieces that still cover all of it);
- for an edit, the spans the user inserted or replaced in the chosen text, and the spans they
  deleted or replaced in the rejected text, from the word-level Levenshtein opcodes of the
  two (changes a word or two apart are one span; each span takes ``CONTEXT_WORDS`` words of
  context on both sides, because a lone word is the noisiest input a lexical scorer has).

``judged`` marks the pieces the relative check compares. For an edit: the spans and the
sentences the edit touched, on each side, so a toxic sentence the model wrote and the user
kept counts on both sides alike, and one the user deleted only counts for the pair. For the
other sources every piece of each side.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import Levenshtein

from flywheel_curator.candidate import Candidate

__all__ = ["CONTEXT_WORDS", "MERGE_GAP_WORDS", "CandidatePieces", "SidePieces", "pieces_of"]

# Words of unchanged text on each side of an edited span, scored with it.
CONTEXT_WORDS = 2
# Changes at most this many unchanged words apart form one span.
MERGE_GAP_WORDS = 2

# A sentence ends at . ! ? or … (and any closing quotes or brackets) before white space, or at
# a line break: "3.5 GB" and "v1.2" stay whole, "e.g. this" splits, which costs one piece.
# Starting with a character class (no look-behind) keeps re's fast scan for the first char.
_BREAK = re.compile(r"(?P<end>[.!?\u2026]+[\"'\u201d\u2019)\]]*)\s+|\n\s*")
_WORD = re.compile(r"\S+")

_Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class SidePieces:
    """One side's pieces: ``texts[0]`` is the whole text, then ``windows`` sentence windows,
    then the edit spans. ``judged`` indexes the pieces the relative check compares."""

    texts: tuple[str, ...]
    windows: int
    judged: tuple[int, ...]
    sentences: int = 0

    def label(self, index: int) -> str:
        """Where a piece lies, for a rejection's detail (never the text: it may hold PII)."""
        if index == 0:
            return "whole text"
        if index <= self.windows:
            unit = "sentence" if self.sentences == self.windows else "group of sentences"
            return f"{unit} {index} of {self.windows}"
        return f"edit span {index - self.windows} of {len(self.texts) - 1 - self.windows}"


@dataclass(frozen=True, slots=True)
class CandidatePieces:
    chosen: SidePieces
    rejected: SidePieces


def sentence_spans(text: str) -> list[_Span]:
    """(start, end) of each sentence, without the white space around it."""
    spans: list[_Span] = []
    start = 0
    for m in _BREAK.finditer(text):
        end = m.end("end") if m.group("end") else m.start()
        if text[start:end].strip():
            spans.append(_strip(text, start, end))
        start = m.end()
    if text[start:].strip():
        spans.append(_strip(text, start, len(text)))
    return spans


def _strip(text: str, start: int, end: int) -> _Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _windows(sentences: list[_Span], max_windows: int) -> list[_Span]:
    """Consecutive sentences grouped into at most ``max_windows`` spans covering them all."""
    if len(sentences) <= max_windows:
        return sentences
    size = -(-len(sentences) // max_windows)
    return [
        (sentences[i][0], sentences[min(i + size, len(sentences)) - 1][1])
        for i in range(0, len(sentences), size)
    ]


def _regions(
    rejected: Sequence[str], chosen: Sequence[str], max_regions: int
) -> list[tuple[int, int, int, int]]:
    """Word ranges ``(i1, i2, j1, j2)`` that differ (rejected[i1:i2] became chosen[j1:j2]),
    nearby changes merged, at most ``max_regions`` (neighbours grouped when there are more)."""
    regions: list[tuple[int, int, int, int]] = []
    for tag, i1, i2, j1, j2 in Levenshtein.opcodes(rejected, chosen):
        if tag == "equal":
            continue
        # The unchanged run between two changes has the same length on both sides.
        if regions and i1 - regions[-1][1] <= MERGE_GAP_WORDS:
            regions[-1] = (regions[-1][0], i2, regions[-1][2], j2)
        else:
            regions.append((i1, i2, j1, j2))
    if len(regions) <= max_regions:
        return regions
    size = -(-len(regions) // max_regions)
    groups = [regions[i : i + size] for i in range(0, len(regions), size)]
    return [(g[0][0], g[-1][1], g[0][2], g[-1][3]) for g in groups]


class _Side:
    """One text's words and sentence windows, to map word ranges onto pieces."""

    def __init__(self, text: str, max_windows: int, *, words: bool) -> None:
        self.text = text
        # Word offsets: only an edit's spans need them.
        self.words = [m.span() for m in _WORD.finditer(text)] if words else []
        sentences = sentence_spans(text)
        self.sentences = len(sentences)
        self.windows = _windows(sentences, max_windows)
        self._starts = [start for start, _ in self.windows]

    def tokens(self) -> list[str]:
        return [self.text[s:e] for s, e in self.words]

    def span(self, first: int, last: int) -> str:
        """Words ``first..last-1`` with their context; "" for an empty range."""
        if first >= last:
            return ""
        a, b = max(0, first - CONTEXT_WORDS), min(len(self.words), last + CONTEXT_WORDS)
        return self.text[self.words[a][0] : self.words[b - 1][1]]

    def touched(self, first: int, last: int) -> set[int]:
        """Indexes of the windows that words ``first..last-1`` fall in; for an empty range,
        the window at that point (where the words were inserted or deleted)."""
        if not self.windows:
            return set()
        if first < last:
            lo, hi = self.words[first][0], self.words[last - 1][1] - 1
        else:
            at = self.words[first][0] if first < len(self.words) else len(self.text)
            lo = hi = max(0, at - 1)
        a = max(0, bisect_right(self._starts, lo) - 1)
        b = max(0, bisect_right(self._starts, hi) - 1)
        return set(range(a, b + 1))

    def pieces(self, spans: list[str], touched: set[int] | None) -> SidePieces:
        """The side's pieces; ``touched`` None: every piece is judged (not an edit)."""
        windows = [self.text[s:e] for s, e in self.windows] if len(self.windows) > 1 else []
        texts = (self.text, *windows, *spans)
        if touched is None:
            judged: tuple[int, ...] = tuple(range(len(texts)))
        else:
            # A text of one sentence is its own window: piece 0.
            window_ix = {w + 1 if windows else 0 for w in touched}
            span_ix = range(1 + len(windows), len(texts))
            judged = (*sorted(window_ix), *span_ix)
        return SidePieces(
            texts=texts, windows=len(windows), judged=judged, sentences=self.sentences
        )


def _plain(text: str, max_windows: int) -> SidePieces:
    """A side every piece of which is judged; a text without a sentence break (most short
    answers) is its only piece, found with one regex scan."""
    if _BREAK.search(text) is None:
        return SidePieces(texts=(text,), windows=0, judged=(0,), sentences=1)
    return _Side(text, max_windows, words=False).pieces([], None)


def pieces_of(candidate: Candidate, *, max_pieces: int) -> CandidatePieces:
    """The pieces of both sides; at most ``max_pieces`` sentence windows and as many edit
    spans per side, whatever the texts' lengths."""
    if candidate.source != "edit":
        return CandidatePieces(
            _plain(candidate.chosen, max_pieces), _plain(candidate.rejected, max_pieces)
        )
    chosen = _Side(candidate.chosen, max_pieces, words=True)
    rejected = _Side(candidate.rejected, max_pieces, words=True)
    added: list[str] = []
    removed: list[str] = []
    touched_chosen: set[int] = set()
    touched_rejected: set[int] = set()
    for i1, i2, j1, j2 in _regions(rejected.tokens(), chosen.tokens(), max_pieces):
        if j2 > j1:
            added.append(chosen.span(j1, j2))
        if i2 > i1:
            removed.append(rejected.span(i1, i2))
        touched_chosen |= chosen.touched(j1, j2)
        touched_rejected |= rejected.touched(i1, i2)
    return CandidatePieces(
        chosen.pieces(added, touched_chosen), rejected.pieces(removed, touched_rejected)
    )
