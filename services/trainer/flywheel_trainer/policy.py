"""When to launch a job, as a pure function of the registry's runs and the tables' sizes: N
new rows since the last job that trained, never twice on the same data, one split seed per
table, a minimum interval, a cap on concurrent jobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from flywheel_trainer.registry import TrainingRun
from flywheel_trainer.settings import Method

__all__ = ["LaunchDecision", "decide_launch"]


@dataclass(frozen=True, slots=True)
class LaunchDecision:
    launch: bool
    reason: str
    version: int | None = None
    rows: int = 0
    new_pairs: int = 0


def _taken(
    runs: Sequence[TrainingRun], version: int, kto_version: int | None, method: str
) -> TrainingRun | None:
    """The run that already has this data: the pairs version (and, for KTO, the kto version)."""
    for r in runs:
        if r.dataset_version == version and (method != "kto" or r.kto_version == kto_version):
            return r
    return None


def _new_rows(
    mine: Sequence[TrainingRun], rows: int, method: str
) -> tuple[TrainingRun | None, int]:
    """Rows added since the last run that trained: failed runs trained nothing."""
    baseline = next((r for r in reversed(mine) if r.status != "failed"), None)
    if baseline is None:
        return None, rows
    trained = (baseline.rows or 0) + ((baseline.kto_rows or 0) if method == "kto" else 0)
    return baseline, rows - trained


def decide_launch(
    *,
    table_uri: str,
    target_version: int | None,
    target_rows: int,
    runs: Sequence[TrainingRun],
    now: datetime,
    threshold: int,
    min_interval_s: float,
    max_concurrent: int,
    split_seed: int,
    method: Method = "dpo",
    kto_version: int | None = None,
    kto_rows: int = 0,
) -> LaunchDecision:
    """Pure: whether to launch a job on ``target_version`` given the registry's runs. A KTO job
    also counts (and pins) the rows of ``kto_examples``."""
    if target_version is None:
        return LaunchDecision(False, "the pairs table does not exist yet")
    mine = [r for r in runs if r.table_uri == table_uri]
    active = [r for r in runs if r.active]
    if len(active) >= max_concurrent:
        return LaunchDecision(False, f"{len(active)} job(s) running (max {max_concurrent})")
    taken = _taken(mine, target_version, kto_version, method)
    if taken is not None:
        return LaunchDecision(
            False, f"version {target_version} already has run {taken.run_id} ({taken.status})"
        )
    # Another seed would reshuffle the prompt groups: held-out prompts would be trained on.
    other = [r for r in mine if int(r.config.get("split_seed", 0)) != split_seed]
    if other:
        return LaunchDecision(
            False,
            f"split_seed {split_seed} differs from run {other[-1].run_id}'s "
            f"{other[-1].config.get('split_seed', 0)}: held-out prompt groups would be trained on",
        )
    baseline, new = _new_rows(mine, target_rows + (kto_rows if method == "kto" else 0), method)
    unit = "pairs and KTO rows" if method == "kto" else "pairs"
    if new < threshold:
        since = f"version {baseline.dataset_version}" if baseline else "the start"
        return LaunchDecision(
            False,
            f"{new} new {unit} since {since} < threshold {threshold}",
            target_version,
            target_rows,
            new,
        )
    if mine:
        elapsed = (now - max(r.created_at for r in mine)).total_seconds()
        if elapsed < min_interval_s:
            return LaunchDecision(
                False,
                f"last job {elapsed:.0f}s ago < min interval {min_interval_s:.0f}s",
                target_version,
                target_rows,
                new,
            )
    return LaunchDecision(
        True, f"{new} new {unit} >= threshold {threshold}", target_version, target_rows, new
    )
