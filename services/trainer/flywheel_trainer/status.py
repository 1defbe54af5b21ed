"""The trainer's status, for ``flywheel status``: the tables it reads, the pin, the champion
with its gate evidence, the runs in flight, and, loudly, whether a golden set guards
promotion. ``status_lines`` is the text form other status reports can include."""

from __future__ import annotations

from typing import Any

from flywheel_trainer.dataset import head_version
from flywheel_trainer.gate import NO_GOLDEN
from flywheel_trainer.registry import Registry, TrainingRun
from flywheel_trainer.settings import TrainerSettings

__all__ = ["golden_line", "status_lines", "trainer_status"]


def golden_line(settings: TrainerSettings) -> str:
    uri, path = settings.golden_uri(), settings.golden_eval_path
    if uri is not None:
        version = head_version(uri, settings.lake.storage_options_plain())
        if version is None:
            return f"golden set: {uri} is configured but DOES NOT EXIST: no job will launch"
        return f"golden set: {uri} (version {version})"
    if path is not None:
        return f"golden set: {path}"
    return f"golden set: {NO_GOLDEN}"


def _run_brief(run: TrainingRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    acc = (run.metrics.get("after") or {}).get("held_out", {}).get("accuracy")
    return {**run.summary(), "held_out_accuracy": acc}


def trainer_status(settings: TrainerSettings) -> dict[str, Any]:
    storage = settings.lake.storage_options_plain()
    registry = Registry(settings.registry_uri(), storage_options=storage)
    events = registry.events()
    runs = registry.runs(events)
    stack = registry.champion_stack(events)
    latest = max(runs.values(), key=lambda r: r.created_at, default=None)
    return {
        "pairs_table": settings.pairs_uri(),
        "pairs_version": head_version(settings.pairs_uri(), storage),
        "kto_table": settings.kto_uri(),
        "kto_version": head_version(settings.kto_uri(), storage),
        "pinned_version": registry.pinned_version(events),
        "method": settings.job.method,
        "champion": _run_brief(runs[stack[-1]] if stack else None),
        "latest_run": _run_brief(latest),
        "active_runs": [r.run_id for r in runs.values() if r.active],
        "golden": golden_line(settings),
        "golden_configured": bool(settings.golden_table or settings.golden_eval_path),
    }


def _fmt_run(label: str, run: dict[str, Any] | None) -> str:
    if run is None:
        return f"{label}: none (the base model serves)" if label == "champion" else f"{label}: none"
    acc = run["held_out_accuracy"]
    gain = run["gain_interval"]
    parts = [
        f"{label}: {run['run_id']} ({run['status']}, {run['method'] or 'dpo'}, {run['dataset']})",
        f"held-out accuracy {acc:.3f}" if isinstance(acc, float) else "held-out accuracy -",
        f"gain interval [{gain[0]:+.3f}, {gain[1]:+.3f}]" if gain else "gain interval -",
        f"worst slice {run['worst_slice'] or '-'}",
        f"gap {run['slice_gap']:.3f}" if run["slice_gap"] is not None else "gap -",
    ]
    return "; ".join(parts)


def status_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        f"trainer: {report['method']} on {report['pairs_table']} "
        f"(version {report['pairs_version']}, pinned {report['pinned_version']}); "
        f"kto_examples version {report['kto_version']}",
        _fmt_run("champion", report["champion"]),
        _fmt_run("latest run", report["latest_run"]),
        f"active runs: {', '.join(report['active_runs']) or 'none'}",
    ]
    golden = report["golden"]
    if not report["golden_configured"]:
        bar = "!" * 78
        return [*lines, bar, golden, bar]
    return [*lines, golden]
