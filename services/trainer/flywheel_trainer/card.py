"""The model card (README.md beside the adapter): lineage, recipe, the held-out split, and the
gate's evidence (interval, slices, golden set), so an adapter explains itself without the
registry."""

from __future__ import annotations

import json
from typing import Any

from flywheel_trainer.gate import NO_GOLDEN
from flywheel_trainer.spec import JobSpec

__all__ = ["model_card"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _slices(gate: dict[str, Any]) -> list[str]:
    rows = [
        "| slice | pairs | candidate | champion | delta | judged |",
        "|---|---|---|---|---|---|",
    ]
    for s in gate.get("slices") or []:
        mark = " **regressed**" if s["regressed"] else ""
        rows.append(
            f"| {s['name']} | {s['pairs']} | {_pct(s['candidate'])} | {_pct(s['champion'])} "
            f"| {s['delta']:+.3f}{mark} | {'yes' if s['judged'] else 'too few pairs'} |"
        )
    if len(rows) == 2:
        rows.append("| (none: too few held-out pairs to slice) | | | | | |")
    return rows


def _gate_section(gate: dict[str, Any]) -> list[str]:
    interval = gate.get("interval")
    worst = gate.get("worst") or {}
    golden = gate.get("golden") or {"configured": False}
    lines = [f"**Gate: {gate['decision']}** — {gate['reason']}", ""]
    if interval:
        lines.append(
            f"- accuracy gain over the champion: {interval['estimate']:+.4f}, "
            f"{interval['confidence']:.0%} interval [{interval['low']:+.4f}, "
            f"{interval['high']:+.4f}] ({interval['resamples']} bootstrap resamples of "
            f"{interval['groups']} prompt groups)"
        )
    else:
        lines.append("- accuracy gain interval: not computed (too few held-out pairs)")
    if worst.get("worst_slice"):
        lines.append(
            f"- worst slice {worst['worst_slice']} at {_pct(worst['worst_accuracy'])}; "
            f"worst-best gap {_pct(worst['gap'])}"
        )
    if golden.get("configured"):
        lines.append(
            f"- golden set: {_pct(golden.get('candidate'))} vs champion "
            f"{_pct(golden.get('champion'))} on {golden.get('pairs')} pairs "
            f"(tolerance {golden.get('tolerance')})"
        )
    else:
        lines.append(f"- golden set: **{NO_GOLDEN}**")
    return [*lines, "", *_slices(gate)]


def model_card(spec: JobSpec, run_metrics: dict[str, Any]) -> str:
    cfg = spec.job
    lineage = run_metrics["lineage"]
    split = lineage["split"]
    trainer = "KTOTrainer" if cfg.method == "kto" else "DPOTrainer"
    kto = lineage.get("kto_table_uri")
    return "\n".join(
        [
            "---",
            "library_name: peft",
            f"base_model: {cfg.base_model}",
            f"tags: [flywheel, trl, {cfg.method}, lora]",
            "---",
            f"# Flywheel LoRA {cfg.method.upper()} adapter `{spec.run_id}`",
            "",
            "## Lineage",
            f"- dataset: `{spec.table_uri}` at Delta version **{spec.dataset_version}**",
            f"- kto_examples: `{kto}` at version {lineage['kto_version']}"
            if kto
            else "- kto_examples: no table at launch",
            f"- pairs: {lineage['rows']} ({lineage['train_rows']} train, "
            f"{lineage['eval_rows']} held out); KTO rows: {lineage['kto_rows']}",
            f"- pairs by source: {json.dumps(lineage['pairs_by_source'])}",
            f"- held-out split: by prompt group (tenant, feature, normalised prompt), seed "
            f"{split['seed']}, threshold {split['threshold']}, groups held out per feature "
            f"{json.dumps(split['held_out_groups'])} of {json.dumps(split['groups'])}",
            f"- config hash: `{spec.config_hash()}` (recipe `{cfg.recipe_hash()}`)",
            f"- code version: `{spec.code_version}`",
            f"- golden set: {spec.golden_label}",
            "",
            "## Recipe",
            f"TRL {trainer}, beta {cfg.beta}, learning rate {cfg.learning_rate}, epochs "
            f"{cfg.epochs}, max length {cfg.max_length}; LoRA rank {cfg.lora.rank}, alpha "
            f"{cfg.lora.alpha}, dropout {cfg.lora.dropout}, targets "
            f"{', '.join(cfg.lora.target_modules)}.",
            "",
            "```json",
            json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True),
            "```",
            "",
            "## Evaluation (held-out prompt groups; rewards relative to the base model)",
            *_gate_section(run_metrics["gate"]),
            "",
            "```json",
            json.dumps({k: run_metrics[k] for k in ("before", "after", "champion")}, indent=2),
            "```",
            "",
        ]
    )
