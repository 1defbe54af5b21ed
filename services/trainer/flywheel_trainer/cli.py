"""``flywheel data …`` and ``flywheel models …``: pins, restores, history and export of the
training data; listing, inspecting, promoting and rolling back models. Entry points in the
``flywheel.cli`` group (see services/trainer/pyproject.toml). Settings come from the same
``FLYWHEEL_TRAINER_*`` environment as the service."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from dataclasses import asdict
from typing import Any

from flywheel_common.cli import Handler

from flywheel_trainer import lake_admin
from flywheel_trainer.dataset import head_version
from flywheel_trainer.export import export
from flywheel_trainer.gate import NO_GOLDEN
from flywheel_trainer.registry import Registry
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.status import status_lines, trainer_status

__all__ = [
    "data_export",
    "data_history",
    "data_pin",
    "data_restore",
    "data_unpin",
    "models_list",
    "models_promote",
    "models_rollback",
    "models_show",
    "status",
]


def _who(parser: argparse.ArgumentParser, *, reason_required: bool = False) -> None:
    parser.add_argument("--actor", default=f"cli:{getpass.getuser()}", help="who does this")
    parser.add_argument("--reason", required=reason_required, help="why (kept in the registry)")


def _registry(settings: TrainerSettings) -> Registry:
    return Registry(settings.registry_uri(), storage_options=settings.lake.storage_options_plain())


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def data_pin(parser: argparse.ArgumentParser) -> Handler:
    """Train on at most version V of the pairs table until unpinned."""
    parser.add_argument("--version", type=int, required=True)
    _who(parser)

    def handle(args: argparse.Namespace) -> int:
        lake_admin.pin(TrainerSettings(), args.version, actor=args.actor, reason=args.reason)
        print(f"pinned: jobs train on version <= {args.version}")
        return 0

    return handle


def data_unpin(parser: argparse.ArgumentParser) -> Handler:
    """Remove the pin: jobs follow the newest version again."""
    _who(parser)

    def handle(args: argparse.Namespace) -> int:
        lake_admin.unpin(TrainerSettings(), actor=args.actor, reason=args.reason)
        print("unpinned")
        return 0

    return handle


def data_restore(parser: argparse.ArgumentParser) -> Handler:
    """Delta RESTORE of the pairs table to version V after a poisoned batch (recorded)."""
    parser.add_argument("--version", type=int, required=True)
    _who(parser, reason_required=True)

    def handle(args: argparse.Namespace) -> int:
        committed, removed = lake_admin.restore(
            TrainerSettings(), args.version, actor=args.actor, reason=args.reason
        )
        _emit(
            {
                "restored_to": args.version,
                "new_version": committed,
                "removed_offsets": [asdict(r) for r in removed],
                "note": "the curator's offsets stay past the removed rows; replay is explicit",
            }
        )
        return 0

    return handle


def data_history(parser: argparse.ArgumentParser) -> Handler:
    """Versions of the pairs table with the runs, pins and restores on each."""
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="one JSON document")

    def handle(args: argparse.Namespace) -> int:
        settings = TrainerSettings()
        entries = lake_admin.history(settings, limit=args.limit)
        pinned = _registry(settings).pinned_version()
        if args.json:
            _emit({"pinned_version": pinned, "versions": [e.as_dict() for e in entries]})
            return 0
        print(f"pinned: {pinned if pinned is not None else 'no'}")
        print(f"{'version':>7} {'rows':>8} {'added':>6}  {'operation':<10} runs / notes")
        for e in entries:
            extra = " ".join([*e.runs, e.note]).strip()
            print(
                f"{e.version:>7} {e.rows if e.rows is not None else '?':>8} "
                f"{e.added if e.added is not None else '':>6}  {e.operation:<10} {extra}"
            )
        return 0

    return handle


def data_export(parser: argparse.ArgumentParser) -> Handler:
    """Export one version as TRL JSONL: preference pairs (trl) or unpaired rows (trl-kto)."""
    parser.add_argument("--version", type=int, default=None, help="default: the pinned or newest")
    parser.add_argument(
        "--format",
        choices=["trl", "trl-kto"],
        default="trl",
        help="trl: conversational pairs; trl-kto: kto_examples plus the pairs unpaired",
    )
    parser.add_argument("--split", choices=["all", "train", "eval"], default="all")
    parser.add_argument("--output", "-o", default="-", help="file, or - for stdout")

    def handle(args: argparse.Namespace) -> int:
        settings = TrainerSettings()
        storage = settings.lake.storage_options_plain()
        version = args.version
        if version is None:
            version = _registry(settings).pinned_version()
        if version is None:
            version = head_version(settings.pairs_uri(), storage)
        if version is None:
            print(f"no pairs table at {settings.pairs_uri()}", file=sys.stderr)
            return 2
        kwargs = {"fmt": args.format, "split": args.split}
        if args.output == "-":
            n = export(settings, version, sys.stdout, **kwargs)
        else:
            with open(args.output, "w", encoding="utf-8") as out:
                n = export(settings, version, out, **kwargs)
        what = "pairs" if args.format == "trl" else "unpaired rows"
        print(f"exported {n} {what} from version {version}", file=sys.stderr)
        return 0

    return handle


def models_list(parser: argparse.ArgumentParser) -> Handler:
    """Training runs, newest first; * marks the champion."""
    parser.add_argument("--json", action="store_true")

    def handle(args: argparse.Namespace) -> int:
        registry = _registry(TrainerSettings())
        events = registry.events()
        stack = registry.champion_stack(events)
        champion = stack[-1] if stack else None
        runs = sorted(registry.runs(events).values(), key=lambda r: r.created_at, reverse=True)
        if args.json:
            _emit([{**r.summary(), "champion": r.run_id == champion} for r in runs])
            return 0
        for r in runs:
            acc = (r.metrics.get("after") or {}).get("held_out", {}).get("accuracy")
            mark = "*" if r.run_id == champion else " "
            acc_s = f"{acc:.3f}" if isinstance(acc, float) else "-"
            ci = (
                f"[{r.gain_ci_low:+.3f},{r.gain_ci_high:+.3f}]"
                if r.gain_ci_low is not None and r.gain_ci_high is not None
                else "-"
            )
            gap = f"{r.slice_gap:.3f}" if r.slice_gap is not None else "-"
            print(
                f"{mark} {r.run_id}  {r.status:<12} {r.method or 'dpo'} v{r.dataset_version}  "
                f"rows={r.rows}  acc={acc_s}  gain={ci}  worst={r.worst_slice or '-'} "
                f"gap={gap}  {r.reason or ''}"
            )
        return 0

    return handle


def models_show(parser: argparse.ArgumentParser) -> Handler:
    """Everything about one run: lineage, the gate's verdict (interval, slices, worst slice and
    gap, golden set), config, metrics, artifact."""
    parser.add_argument("run_id")

    def handle(args: argparse.Namespace) -> int:
        registry = _registry(TrainerSettings())
        run = registry.run(args.run_id)
        champion = registry.champion()
        gate = run.gate_summary()
        if not gate["golden"].get("configured"):
            gate["golden"] = {**gate["golden"], "warning": NO_GOLDEN}
        _emit(
            {
                **run.summary(),
                "champion": champion is not None and champion.run_id == run.run_id,
                "gate": gate,
                "train_rows": run.train_rows,
                "eval_rows": run.eval_rows,
                "pairs_by_source": run.pairs_by_source,
                "config": run.config,
                "code_version": run.code_version,
                "artifact_uri": run.artifact_uri,
                "launcher": run.launcher,
                "launcher_ref": run.launcher_ref,
                "metrics": run.metrics,
            }
        )
        return 0

    return handle


def models_promote(parser: argparse.ArgumentParser) -> Handler:
    """Make a run the champion by hand (overrides the gate; recorded with who and why)."""
    parser.add_argument("run_id")
    _who(parser, reason_required=True)

    def handle(args: argparse.Namespace) -> int:
        _registry(TrainerSettings()).promote(args.run_id, actor=args.actor, reason=args.reason)
        print(f"champion: {args.run_id}")
        return 0

    return handle


def models_rollback(parser: argparse.ArgumentParser) -> Handler:
    """Retire the champion; the previous champion (or the base model) serves again."""
    _who(parser, reason_required=True)

    def handle(args: argparse.Namespace) -> int:
        back = _registry(TrainerSettings()).rollback(actor=args.actor, reason=args.reason)
        print(f"champion: {back.run_id if back else 'none (base model)'}")
        return 0

    return handle


def status(parser: argparse.ArgumentParser) -> Handler:
    """The trainer at a glance: tables, pin, champion and its gate, active runs, golden set."""
    parser.add_argument("--json", action="store_true")

    def handle(args: argparse.Namespace) -> int:
        settings = TrainerSettings()
        report = trainer_status(settings)
        if args.json:
            _emit(report)
            return 0
        for line in status_lines(report):
            print(line)
        return 0

    return handle
