from __future__ import annotations

import pytest
from flywheel_common.errors import ConfigError
from flywheel_curator.filters import PII, PiiDetector, PiiFilter
from flywheel_curator.filters.pii import luhn_valid

from tests.curator.filters.conftest import MakeCandidate

# One realistic sentence per kind, with the span the detector must replace.
CASES = [
    (
        "email",
        "Write to jane.doe+billing@example.co.uk for a refund.",
        "jane.doe+billing@example.co.uk",
    ),
    ("phone", "Call me on +44 20 7946 0958 tomorrow.", "+44 20 7946 0958"),
    ("phone", "Our US line is (415) 555-2671.", "(415) 555-2671"),
    ("card", "My card 4111 1111 1111 1111 was charged twice.", "4111 1111 1111 1111"),
    ("card", "Amex 3782-822463-10005 expired.", "3782-822463-10005"),
    ("ip", "The server at 192.168.10.24 is down.", "192.168.10.24"),
    ("national_id", "SSN 123-45-6789 on file.", "123-45-6789"),
    ("national_id", "NI number AB 12 34 56 C.", "AB 12 34 56 C"),
    ("secret", "export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "token ghp_" + "a1B2" * 9 + " leaked", "ghp_" + "a1B2" * 9),
    ("secret", 'config: api_key = "sk_live_51HxYz0123"', "sk_live_51HxYz0123"),
    (
        "secret",
        "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    ),
]

CLEAN = [
    "Card 4111 1111 1111 1112 fails the Luhn check.",  # Luhn-invalid: not a card
    "On 2024-01-15 at 10:30 we sold 1,234 units at $5.99.",
    "Upgrade to version 3.11.2 or 1.2.3.4.5, then bind 127.0.0.1 or 0.0.0.0.",
    "Order 1234567890123 shipped; tracking 9400 1000 0000 0000 0000 00.",
    "The password is wrong, and the secret is patience.",
    "Email support at the usual address; ping me @jane on chat.",
    "Room 000-12-3456 is not an SSN (area 000).",
]


@pytest.mark.parametrize(("kind", "text", "span"), CASES)
def test_detects_each_kind(kind: str, text: str, span: str) -> None:
    findings = PiiDetector().find(text)
    assert [(f.kind, text[f.start : f.end]) for f in findings] == [(kind, span)]


@pytest.mark.parametrize("text", CLEAN)
def test_leaves_clean_text_alone(text: str) -> None:
    assert PiiDetector().find(text) == []


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize(("kind", "text", "span"), CASES)
def test_redact_policy_rewrites_every_text(
    make_candidate: MakeCandidate, kind: str, text: str, span: str
) -> None:
    pii = PiiFilter(policy="redact")
    prompt = ({"role": "user", "content": f"Context: {text}"},)
    verdict = pii.check(make_candidate(chosen=text, rejected=f"Earlier: {text}", prompt=prompt))
    assert verdict.accepted
    marker = f"[{kind.upper()}]"
    assert verdict.candidate.chosen == text.replace(span, marker)
    assert verdict.candidate.rejected == f"Earlier: {text}".replace(span, marker)
    assert verdict.candidate.prompt[0]["content"] == f"Context: {text}".replace(span, marker)
    assert verdict.detail == f"redacted={kind}"


@pytest.mark.parametrize(("kind", "text", "span"), CASES)
def test_reject_policy(make_candidate: MakeCandidate, kind: str, text: str, span: str) -> None:
    verdict = PiiFilter(policy="reject").check(make_candidate(chosen=text))
    assert not verdict.accepted
    assert verdict.reasons == (PII,)
    assert verdict.detail == f"kinds={kind}"
    assert verdict.candidate.chosen == text  # rejected as is, not rewritten


def test_reject_policy_sees_the_prompt(make_candidate: MakeCandidate) -> None:
    prompt = ({"role": "user", "content": "I am jane@example.com"},)
    verdict = PiiFilter(policy="reject").check(make_candidate(prompt=prompt))
    assert verdict.reasons == (PII,)


@pytest.mark.parametrize("policy", ["redact", "reject"])
def test_clean_candidate_passes_unchanged(make_candidate: MakeCandidate, policy: str) -> None:
    c = make_candidate(chosen=CLEAN[0], rejected=CLEAN[1])
    verdict = PiiFilter(policy=policy).check(c)  # type: ignore[arg-type]
    assert verdict.accepted
    assert verdict.candidate is c


def test_kinds_can_be_limited(make_candidate: MakeCandidate) -> None:
    pii = PiiFilter(policy="reject", kinds=["secret"])
    assert pii.check(make_candidate(chosen="mail jane@example.com")).accepted
    assert not pii.check(make_candidate(chosen="AKIAIOSFODNN7EXAMPLE")).accepted


def test_bad_config() -> None:
    with pytest.raises(ConfigError, match="unknown PII kinds"):
        PiiDetector(kinds=["email", "dna"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="policy"):
        PiiFilter(policy="mask")  # type: ignore[arg-type]


def test_findings_deep_in_long_text_keep_their_offsets() -> None:
    prose = "Nothing to see in this sentence, version 2.0 aside. " * 20
    text = f"{prose}Card 4111-1111-1111-1111, {prose}call +1 415 555 2671 or {prose}AB123456C."
    redacted, findings = PiiDetector().redact(text)
    assert [f.kind for f in findings] == ["card", "phone", "national_id"]
    assert redacted == f"{prose}Card [CARD], {prose}call [PHONE] or {prose}[NATIONAL_ID]."


# Each kind at the fewest digits it can have, so the digit-count gate on windows (a window is
# only scanned for kinds whose matches it has enough digits for) never hides one; and beside a
# few-digit run that must not lend or take digits.
MINIMAL = [
    ("ip", "Ping 1.2.3.4 now.", "1.2.3.4"),
    ("national_id", "NI AB123456C here.", "AB123456C"),
    ("national_id", "SSN 123 45 6789 ok.", "123 45 6789"),
    ("phone", "Call +1 234 5678 now.", "+1 234 5678"),
    ("card", "Card 4222222222222 used.", "4222222222222"),
    ("ip", "Item 42: host 10.0.0.7 and item 7.", "10.0.0.7"),
]


@pytest.mark.parametrize(("kind", "text", "span"), MINIMAL)
def test_detects_kinds_at_their_fewest_digits(kind: str, text: str, span: str) -> None:
    findings = PiiDetector().find(text)
    assert [(f.kind, text[f.start : f.end]) for f in findings] == [(kind, span)]
