"""PII and secrets: emails, phone numbers, payment cards (Luhn-checked), IPv4 addresses, national
ids (US SSN, UK National Insurance number), and secrets (AWS keys, GitHub tokens, PEM private
keys, Slack tokens, ``api_key=...``-style assignments) in the prompt, chosen and rejected texts.

A careful regex detector was the fastest and most precise option measured (docs/findings.md, "PII
and secrets"). Each pattern is guarded by a cheap substring or character test so that clean
text, the common case, costs a few scans. What it does not find: names, postal addresses,
phone numbers written without a ``+`` country code or a North-American shape, IPv6, and other
countries' ids; add patterns here rather than reaching for the NER libraries, which were
slower and less precise on these kinds.

Policy ``redact`` replaces each finding with ``[KIND]`` and passes the rewritten candidate on;
``reject`` drops the candidate with reason ``pii`` and the kinds in the detail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from flywheel_common.errors import ConfigError

from flywheel_curator.candidate import Candidate, Verdict
from flywheel_curator.filters.settings import ALL_PII_KINDS, PiiKind

__all__ = ["PII", "PiiDetector", "PiiFilter", "PiiFinding", "luhn_valid"]

PII = "pii"

_CARD_MIN_DIGITS = 13
_CARD_MAX_DIGITS = 19
_PHONE_MIN_DIGITS = 8
_PHONE_MAX_DIGITS = 15


@dataclass(frozen=True, slots=True)
class PiiFinding:
    kind: PiiKind
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (and 90 % of random numbers fail)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
# 13-19 digits, optionally grouped by single spaces or dashes; the Luhn check and a card-network
# first digit (2-6) decide. Order ids and timestamps rarely pass both.
_CARD = re.compile(r"(?<![\w-])[2-6]\d{3}(?:[ -]?\d){9,15}(?![\w-])")
# US SSN: not area 000/666/9xx, not group 00, not serial 0000; dashed or spaced only, so plain
# nine-digit numbers (order ids) are not taken for one.
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\w-])")
# UK National Insurance number, with the official prefix exclusions.
_NINO = re.compile(
    r"(?<!\w)(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
    r" ?\d{2} ?\d{2} ?\d{2} ?[A-D](?!\w)"
)
# North-American shape (with or without +1), or any number with a + country code.
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"|\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{1,4}){1,5}"
    r")(?![\w-])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Four sane octets, not part of a longer dotted run (a version string such as 1.2.3.4.5).
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\.?\d)(?!\w)")
# Addresses that identify nobody: unspecified, loopback, broadcast.
_IP_NOT_PII = re.compile(r"^(?:0\.0\.0\.0|127\.\d+\.\d+\.\d+|255\.255\.255\.255)$")
_SECRETS = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?"
    r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|$)"
    r"|(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{36,255}(?![A-Za-z0-9_])"
    r"|(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,255}"
    r"|(?<![A-Za-z0-9-])xox[abposr]-[A-Za-z0-9-]{10,250}"
    r"|(?<![A-Za-z0-9_-])sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,250}"
)
# ``api_key = "..."``, ``password: hunter22``, ``aws_secret_access_key=...``: the value is
# redacted, the name is kept so the text still reads. Values need 8+ non-space characters, so
# "the password is wrong" is not a secret. Anchored on the keyword itself: a leading
# ``\b[a-z0-9_]*?`` made the engine try every word start (10x slower on prose).
_ASSIGNED_SECRET = re.compile(
    r"(?i)(?:api[_-]?key|secret[_-]?(?:access[_-]?)?key|client[_-]?secret|access[_-]?token"
    r"|auth[_-]?token|private[_-]?key|passw(?:or)?d|secret)"
    r"[\"']?\s*[:=]\s*[\"']?(?P<value>[^\s\"',;]{8,})"
)
# Substring tests decide whether the secret patterns run at all: ``in`` on a str is a fast C
# scan, a case-insensitive regex alternation over the whole text is not.
_TOKEN_HINTS = (
    "-----BEGIN", "AKIA", "ASIA", "ABIA", "ACCA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
    "github_pat_", "xox", "sk-",
)  # fmt: skip
_ASSIGNMENT_HINTS = ("key", "secret", "token", "passw", "pwd")
# Most hints hold a "-" or "_": a text without either (most prose) is searched for the others
# only, and a one-character search costs a tenth of a multi-character one.
_PLAIN_TOKEN_HINTS = tuple(h for h in _TOKEN_HINTS if "-" not in h and "_" not in h)
# Every digit-bearing kind (card, national id, IP, phone) lies on a run of digits and
# separators. The detectors run only on those runs plus a little context on each side (enough
# for "AB " before a NINO, "+" or "(" before a phone, and the look-arounds): a regex scan of the
# whole text costs 15-25 us per pattern because leading look-behinds defeat re's fast prefix
# search, while this run finder starts with \d and keeps it.
_DIGIT_RUN = re.compile(r"\d[\d \-.()/]*")
_RUN_SEPARATORS = " -.()/"
_WINDOW_CONTEXT = 8
# The fewest digits a match of each digit-bearing kind contains: a card 13, a phone 8 (checked
# after the match), a US SSN 9 and a UK NINO 6 (national_id: the smaller), an IPv4 address 4.
_CARD_MATCH_DIGITS = _CARD_MIN_DIGITS
_NATIONAL_ID_MATCH_DIGITS = 6
_IP_MATCH_DIGITS = 4
_PHONE_MATCH_DIGITS = _PHONE_MIN_DIGITS


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _emails(text: str) -> Iterable[tuple[int, int]]:
    if "@" not in text:
        return ()
    return (m.span() for m in _EMAIL.finditer(text))


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        digits = _digits(m.group())
        if _CARD_MIN_DIGITS <= len(digits) <= _CARD_MAX_DIGITS and luhn_valid(digits):
            yield m.span()


def _national_ids(text: str) -> Iterable[tuple[int, int]]:
    yield from (m.span() for m in _SSN.finditer(text))
    yield from (m.span() for m in _NINO.finditer(text))


def _phones(text: str) -> Iterable[tuple[int, int]]:
    for m in _PHONE.finditer(text):
        if _PHONE_MIN_DIGITS <= len(_digits(m.group())) <= _PHONE_MAX_DIGITS:
            yield m.span()


def _ips(text: str) -> Iterable[tuple[int, int]]:
    if text.count(".") < 3:
        return
    for m in _IPV4.finditer(text):
        if not _IP_NOT_PII.match(m.group()):
            yield m.span()


def _secrets(text: str) -> Iterable[tuple[int, int]]:
    hints = _TOKEN_HINTS if "-" in text or "_" in text else _PLAIN_TOKEN_HINTS
    if any(map(text.__contains__, hints)):
        yield from (m.span() for m in _SECRETS.finditer(text))
    if ("=" in text or ":" in text) and any(map(text.lower().__contains__, _ASSIGNMENT_HINTS)):
        yield from (m.span("value") for m in _ASSIGNED_SECRET.finditer(text))


_Detect = Callable[[str], Iterable[tuple[int, int]]]
_Redact = Callable[[str], tuple[str, list[PiiFinding]]]
# (start, end, digits in it) of a window around digit runs.
_Window = tuple[int, int, int]


def _digit_windows(text: str) -> list[_Window]:
    """Merged spans around the digit runs of ``text`` with their digit counts (empty when it
    has no digit)."""
    windows: list[_Window] = []
    size = len(text)
    for m in _DIGIT_RUN.finditer(text):
        run_start, run_end = m.span()
        start = max(0, run_start - _WINDOW_CONTEXT)
        end = min(size, run_end + _WINDOW_CONTEXT)
        run = m.group()
        # isdecimal: a run of digits only (most are), whose length is its digit count.
        digits = len(run) if run.isdecimal() else len(run) - sum(map(run.count, _RUN_SEPARATORS))
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], end, windows[-1][2] + digits)
        else:
            windows.append((start, end, digits))
    return windows


# Order matters where patterns overlap: secrets and cards are claimed before the looser phone
# pattern can take a digit run, so each span is reported under its most specific kind.
# The last field: the fewest digits a match holds, for detectors that run on digit windows only
# (0: the detector scans the whole text; those come first, and run first).
_DETECTORS: tuple[tuple[PiiKind, _Detect, int], ...] = (
    ("secret", _secrets, 0),
    ("email", _emails, 0),
    ("card", _cards, _CARD_MATCH_DIGITS),
    ("national_id", _national_ids, _NATIONAL_ID_MATCH_DIGITS),
    ("ip", _ips, _IP_MATCH_DIGITS),
    ("phone", _phones, _PHONE_MATCH_DIGITS),
)


def _claim(findings: list[PiiFinding], kind: PiiKind, start: int, end: int) -> None:
    """Adds the span unless an earlier (more specific) finding holds part of it."""
    if not any(start < f.end and f.start < end for f in findings):
        findings.append(PiiFinding(kind, start, end))


class PiiDetector:
    """Finds non-overlapping PII spans of the enabled kinds."""

    def __init__(self, *, kinds: Iterable[PiiKind] = ALL_PII_KINDS) -> None:
        enabled = frozenset(kinds)
        unknown = enabled - frozenset(ALL_PII_KINDS)
        if unknown:
            raise ConfigError(f"unknown PII kinds {sorted(unknown)}; known: {ALL_PII_KINDS}")
        self.kinds = enabled
        detectors = [d for d in _DETECTORS if d[0] in enabled]
        self._text_detectors = [d for d in detectors if not d[2]]
        self._window_detectors = [d for d in detectors if d[2]]

    def find(self, text: str) -> list[PiiFinding]:
        findings: list[PiiFinding] = []
        for kind, detect, _ in self._text_detectors:
            for start, end in detect(text):
                _claim(findings, kind, start, end)
        for w_start, w_end, digits in _digit_windows(text) if self._window_detectors else ():
            window = text[w_start:w_end]
            for kind, detect, min_digits in self._window_detectors:
                # A window with fewer digits than any match of this kind holds (an item number,
                # a year) is skipped without running the detector's regexes: the common case.
                if digits < min_digits:
                    continue
                # Matches start at most 3 characters before a run ("AB " of a NINO) and end on
                # it, so the look-arounds always see the real neighbouring characters. Windows
                # are disjoint: a window's matches can only overlap the same window's.
                for start, end in detect(window):
                    _claim(findings, kind, w_start + start, w_start + end)
        findings.sort(key=lambda f: f.start)
        return findings

    def redact(self, text: str) -> tuple[str, list[PiiFinding]]:
        """The text with every finding replaced by ``[KIND]``, and the findings."""
        findings = self.find(text)
        if not findings:
            return text, findings
        parts: list[str] = []
        pos = 0
        for f in findings:
            parts.append(text[pos : f.start])
            parts.append(f"[{f.kind.upper()}]")
            pos = f.end
        parts.append(text[pos:])
        return "".join(parts), findings


class PiiFilter:
    """Redacts or rejects PII in the prompt, chosen and rejected texts."""

    name = "pii"

    def __init__(
        self,
        *,
        policy: Literal["redact", "reject"],
        kinds: Iterable[PiiKind] = ALL_PII_KINDS,
    ) -> None:
        if policy not in ("redact", "reject"):
            raise ConfigError(f"PII policy must be 'redact' or 'reject', got {policy!r}")
        self.policy = policy
        self.detector = PiiDetector(kinds=kinds)

    def check(self, candidate: Candidate) -> Verdict:
        return self._check(candidate, self.detector.redact)

    def check_many(self, candidates: Sequence[Candidate]) -> list[Verdict]:
        """``check`` of each candidate; a text the call has already seen (a shared prompt, a
        run's answer rejected by several pairs) is not scanned again."""
        seen: dict[str, tuple[str, list[PiiFinding]]] = {}

        def redact(text: str) -> tuple[str, list[PiiFinding]]:
            hit = seen.get(text)
            if hit is None:
                hit = seen[text] = self.detector.redact(text)
            return hit

        return [self._check(c, redact) for c in candidates]

    def _check(self, candidate: Candidate, redact: _Redact) -> Verdict:
        chosen, in_chosen = redact(candidate.chosen)
        rejected, in_rejected = redact(candidate.rejected)
        contents = [redact(m.get("content", "")) for m in candidate.prompt]
        if not (in_chosen or in_rejected or any(found for _, found in contents)):
            return Verdict.accept(candidate)  # the common case
        found_lists = [in_chosen, in_rejected, *(found for _, found in contents)]
        kinds = ",".join(sorted({f.kind for found in found_lists for f in found}))
        if self.policy == "reject":
            return Verdict.reject(candidate, PII, f"kinds={kinds}")
        redacted = candidate.with_texts(chosen=chosen, rejected=rejected)
        if any(found for _, found in contents):
            prompt = tuple(
                {**message, "content": content} if found else message
                for message, (content, found) in zip(candidate.prompt, contents, strict=True)
            )
            redacted = replace(redacted, prompt=prompt)
        return replace(Verdict.accept(redacted), detail=f"redacted={kinds}")
