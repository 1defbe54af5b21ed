"""``flywheel filters evaluate --input labelled.jsonl``: argument parsing and printing around
``flywheel_curator.evaluate`` (see there for the input format and what the figures mean)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from flywheel_common.cli import Handler
from flywheel_common.errors import ConfigError

from flywheel_curator.evaluate import (
    ACCEPT,
    DEFAULT_THRESHOLDS,
    Counts,
    Report,
    evaluate,
    read_labelled,
)
from flywheel_curator.filters import build_filters
from flywheel_curator.settings import CuratorSettings

__all__ = ["evaluate_command", "lines_of"]

_SHOWN_MISMATCHES = 20
_HEADER = f"{'TP':>5}{'FP':>5}{'FN':>5}{'TN':>5}{'precision':>11}{'recall':>8}{'FPR':>7}"


def evaluate_command(parser: argparse.ArgumentParser) -> Handler:
    """Run the filter chain over labelled candidates; print precision, recall and FPR.

    Each line of --input is a candidate and the expected verdict:
    {"source": "edit", "prompt": "...", "chosen": "...", "rejected": "...", "expect": "accept"}
    where expect is "accept", "reject", a reason code or a list of them. The chain is the one
    the curator's settings (FLYWHEEL_CURATOR_FILTERS__*) describe. See docs/curator.md.
    """
    parser.add_argument("--input", required=True, type=Path, help="labelled.jsonl")
    parser.add_argument(
        "--thresholds",
        help="toxicity max_score values to sweep, comma-separated (default 0.05 to 0.95)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    return _evaluate


def _evaluate(args: argparse.Namespace) -> int:
    thresholds = DEFAULT_THRESHOLDS
    if args.thresholds:
        try:
            thresholds = tuple(float(t) for t in args.thresholds.split(","))
        except ValueError as exc:
            raise ConfigError(f"--thresholds must be numbers, got {args.thresholds!r}") from exc
        if not all(0.0 < t <= 1.0 for t in thresholds):
            raise ConfigError(f"--thresholds must lie in (0, 1], got {args.thresholds!r}")
    labelled = read_labelled(args.input)
    chain = build_filters(CuratorSettings().filters)
    report = evaluate(chain, labelled, thresholds=thresholds)
    if args.format == "json":
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(lines_of(report)))
    return 0


def lines_of(report: Report) -> Iterator[str]:
    """The report as text tables."""
    yield f"{report.lines} labelled candidates; toxicity scorer {report.scorer}"
    yield ""
    yield f"{'':<20}{_HEADER}"
    yield _row("chain (any reason)", report.chain)
    yield "by filter"
    yield from (_row(f"  {name}", c) for name, c in report.filters.items())
    yield "by reason"
    yield from (_row(f"  {name}", c) for name, c in report.reasons.items())
    if report.sweep:
        yield ""
        yield "toxicity sweep: toxic_chosen at each max_score (the worst chosen piece >= it)"
        yield f"{'max_score':<20}{_HEADER}"
        yield from (_row(f"  {t:.2f}", c) for t, c in report.sweep)
    if report.mismatches:
        yield ""
        yield f"{len(report.mismatches)} lines not as labelled (line: expected -> got):"
        for m in report.mismatches[:_SHOWN_MISMATCHES]:
            got = ",".join(m["got"]) or ACCEPT
            yield f"  {m['line']}: {','.join(m['expected'])} -> {got}  {m['detail']}"


def _row(name: str, c: Counts) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    return (
        f"{name:<20}{c.tp:>5}{c.fp:>5}{c.fn:>5}{c.tn:>5}"
        f"{pct(c.precision):>11}{pct(c.recall):>8}{pct(c.fpr):>7}"
    )
