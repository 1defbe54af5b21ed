"""``flywheel filters evaluate`` on the example file of docs/curator.md, its numbers checked by
hand, and on hostile input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from flywheel_common.cli import main
from flywheel_curator.evaluate import fired, read_labelled
from flywheel_curator.filters import FilterSettings, build_filters

from tests.curator.conftest import REPO

EXAMPLE = REPO / "docs" / "examples" / "labelled.jsonl"

# What the default chain (profanity_check) does with each line of the example, and why:
#  1 accept          accepted      a fluency edit (owner's ratio 0.89)
#  2 too_similar     too_similar   "." -> "!"
#  3 too_dissimilar  too_dissimilar  "Atlas." rewritten into a sentence
#  4 too_short       too_short     "x"
#  5 toxic_chosen    toxic_chosen  an insult appended to a long answer (its sentence ~1.0)
#  6 accept          accepted      a benign correction
#  7 pii             pii           an e-mail address, redacted (policy redact)
#  8 duplicate       duplicate, near_duplicate   line 1 again from another event
#  9 accept          toxicity_increase   "kill it" (0.415) where "Wait" was (0.212): a false
#                                  positive of the lexical scorer
# 10 toxic_chosen    toxicity_increase   polite prejudice scores 0.351: missed by the absolute
#                                  rule, caught by the relative one
# 11 accept          accepted      a regeneration
# 12 accept          accepted      a paired outcome
# Accepted lines (negatives): 1, 6, 9, 11, 12. Lines to catch (positives): the other seven.


def run(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["filters", "evaluate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, Any]:
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "fpr": fp / (fp + tn) if fp + tn else None,
    }


@pytest.fixture
def example(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, _ = run(
        "--input", str(EXAMPLE), "--format", "json", "--thresholds", "0.3,0.5", capsys=capsys
    )
    assert code == 0
    report: dict[str, Any] = json.loads(out)
    return report


def test_example_chain_figures_by_hand(example: dict[str, Any]) -> None:
    assert example["lines"] == 12
    assert example["scorer"].startswith("profanity_check/")
    # All seven caught; line 9 is the one false positive among five accepted lines.
    assert example["chain"] == counts(tp=7, fp=1, fn=0, tn=4)


def test_example_filter_and_reason_figures_by_hand(example: dict[str, Any]) -> None:
    filters, reasons = example["filters"], example["reasons"]
    assert filters["length"] == counts(tp=1, fp=0, fn=0, tn=5)  # line 4
    assert filters["similarity"] == counts(tp=2, fp=0, fn=0, tn=5)  # lines 2, 3
    assert filters["pii"] == counts(tp=1, fp=0, fn=0, tn=5)  # line 7
    assert filters["dedup"] == counts(tp=1, fp=0, fn=0, tn=5)  # line 8
    # near-dup fired on line 8, expected as "duplicate": not counted either way.
    assert filters["near_dup"] == counts(tp=0, fp=0, fn=0, tn=5)
    assert filters["toxicity"] == counts(tp=2, fp=1, fn=0, tn=4)  # 5 and 10; 9
    assert reasons["toxic_chosen"] == counts(tp=1, fp=0, fn=1, tn=5)  # 5; 10 missed
    assert reasons["toxicity_increase"] == counts(tp=0, fp=1, fn=0, tn=4)  # 9
    assert set(reasons) == {
        "too_similar", "too_dissimilar", "too_short", "toxic_chosen", "toxicity_increase",
        "pii", "duplicate", "near_duplicate",
    }  # fmt: skip


def test_example_sweep_and_mismatches_by_hand(example: dict[str, Any]) -> None:
    # Worst chosen pieces: line 5 ~1.0, line 10 0.351, line 9 0.415, the rest lower.
    assert example["toxicity_sweep"] == [
        {"max_score": 0.3, **counts(tp=2, fp=1, fn=0, tn=4)},
        {"max_score": 0.5, **counts(tp=1, fp=0, fn=1, tn=5)},
    ]
    assert [(m["line"], m["expected"], m["got"]) for m in example["mismatches"]] == [
        (9, ["accept"], ["toxicity_increase"]),
        (10, ["toxic_chosen"], ["toxicity_increase"]),
    ]


def test_text_report(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run("--input", str(EXAMPLE), capsys=capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "12 labelled candidates; toxicity scorer " + lines[0].split()[-1]
    chain = next(line for line in lines if line.startswith("chain (any reason)"))
    assert chain.split()[3:] == ["7", "1", "0", "4", "0.875", "1.000", "0.200"]
    assert "  0.50                  1    0    1    5      1.000   0.500  0.000" in lines
    assert "  9: accept -> toxicity_increase  added 0.415 > removed 0.212 + 0.05" in lines


def test_settings_come_from_the_curator_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLYWHEEL_CURATOR_FILTERS__PII__POLICY", "reject")
    monkeypatch.setenv("FLYWHEEL_CURATOR_FILTERS__TOXICITY__ENABLED", "false")
    code, out, _ = run("--input", str(EXAMPLE), "--format", "json", capsys=capsys)
    assert code == 0
    report = json.loads(out)
    assert report["scorer"] == "none" and report["toxicity_sweep"] == []
    assert report["reasons"]["pii"] == counts(tp=1, fp=0, fn=0, tn=5)
    assert "toxicity" not in report["filters"]


def test_fired_counts_a_redaction_as_the_pii_filter_firing(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    line = {"source": "edit", "chosen": "mail a.b@example.com now", "rejected": "mail me now",
            "expect": "pii"}  # fmt: skip
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    (labelled,) = read_labelled(path)
    assert labelled.expected == {"pii"} and labelled.line == 1
    verdict = build_filters(FilterSettings()).run(labelled.candidate)
    assert verdict.accepted and fired(verdict) == {"pii"}


BASE = {"source": "edit", "chosen": "a", "rejected": "b", "expect": "accept"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", r"Expecting value"),
        ("[1, 2]", r"a line must be a JSON object, not list"),
        (json.dumps({**BASE, "source": "email"}), "'source' must be one of"),
        (json.dumps({**BASE, "chosen": 3}), "'chosen' must be a string"),
        (json.dumps({k: v for k, v in BASE.items() if k != "expect"}), "'expect' must be"),
        (json.dumps({**BASE, "expect": "toxic"}), "'expect' .* is not"),
        (json.dumps({**BASE, "expect": ["accept", "pii"]}), "'expect' .* is not"),
        (json.dumps({**BASE, "prompt": 7}), "'prompt' must be"),
        (json.dumps({**BASE, "event_time": "soon"}), "soon"),
    ],
)
def test_bad_lines_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    path = tmp_path / "labelled.jsonl"
    path.write_text(f"{json.dumps(BASE)}\n{line}\n", encoding="utf-8")
    code, out, err = run("--input", str(path), capsys=capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"flywheel: error: {path}:2: "), err
    assert re.search(message, err), err


@pytest.mark.parametrize("thresholds", ["0.5,high", "0,0.5", "1.5"])
def test_bad_thresholds(capsys: pytest.CaptureFixture[str], thresholds: str) -> None:
    code, _, err = run("--input", str(EXAMPLE), "--thresholds", thresholds, capsys=capsys)
    assert code == 2 and "--thresholds" in err


def test_missing_or_empty_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run("--input", str(tmp_path / "none.jsonl"), capsys=capsys)
    assert code == 2 and "cannot read" in err
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    code, _, err = run("--input", str(tmp_path / "empty.jsonl"), capsys=capsys)
    assert code == 2 and "no labelled candidates" in err
