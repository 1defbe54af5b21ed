"""A realistic, deterministic sample of client telemetry: runs, feedback and edits of two
features across tenants, as the JSON bodies a client app would POST to the ingest webhook.

Used by the demo, and meant for the curator's and the benchmarks' fixtures too: every pair
source of DESIGN.md appears (edits, thumbs-down with a correction, regenerations with
``parent_run_id`` followed by a kept answer, paired ratings on the same prompt).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["FEATURES", "TENANTS", "SampleEvent", "generate_sample"]

EventKind = Literal["run", "feedback", "edit"]

TENANTS = ("acme", "globex")
FEATURES = ("support_chat", "summarize")
_MODEL = "llama-3.1-8b-instruct"
_MODEL_VERSIONS = ("base", "lora-2025-01-14")
_SUPPORT_SYSTEM = "You are a concise, friendly support agent for a project-management SaaS."

# (question, model answer, better answer a user would give)
_SUPPORT = [
    (
        "How do I reset my password?",
        "You can reset your password from the login page by clicking Forgot password.",
        "Click 'Forgot password' on the login page, enter your work email, and follow the "
        "link we send you within 5 minutes. Links expire after an hour.",
    ),
    (
        "Can I export my project to CSV?",
        "Yes, exports are available.",
        "Yes: open the project, choose Settings > Export, pick CSV, and you will get a "
        "download link by email once the export finishes.",
    ),
    (
        "Why was I charged twice this month?",
        "Billing issues happen sometimes. Please check your bank.",
        "Sorry about that. A double charge usually means a plan change mid-cycle was "
        "prorated. Reply with the invoice numbers and we will refund any duplicate.",
    ),
    (
        "How do I add a guest to a board?",
        "Open the board, click Share, and enter their email with the Guest role.",
        "Open the board, click Share, enter their email and choose the Guest role. Guests "
        "only see the boards you share with them.",
    ),
    (
        "Is there an API rate limit?",
        "The API allows 100 requests per minute per token.",
        "The API allows 100 requests per minute per token; responses carry "
        "X-RateLimit-Remaining so you can back off before you hit 429.",
    ),
    (
        "How do I delete my account?",
        "Go to Profile > Danger zone > Delete account.",
        "Go to Profile > Danger zone > Delete account. Workspace owners must transfer "
        "ownership first; deletion is final after 30 days.",
    ),
]

# (document, model summary, user's edited summary)
_SUMMARIES = [
    (
        "Q3 revenue grew 12% year over year to $4.1M, driven by enterprise seats. Churn rose "
        "slightly to 3.2% as two mid-market customers consolidated vendors. Hiring is paused "
        "until Q1 except for two support roles.",
        "Revenue grew 12% to $4.1M. Churn rose to 3.2%. Hiring is paused.",
        "Q3 revenue grew 12% YoY to $4.1M on enterprise seats; churn rose to 3.2% after two "
        "mid-market consolidations. Hiring paused until Q1 except two support roles.",
    ),
    (
        "The outage on March 3 lasted 47 minutes. A config push disabled the cache layer, "
        "and database load spiked until the push was rolled back. We are adding a canary "
        "stage to config deploys.",
        "There was an outage on March 3 caused by a config push.",
        "On March 3 a config push disabled the cache for 47 minutes and overloaded the "
        "database until rollback; config deploys will get a canary stage.",
    ),
    (
        "Customer interviews (n=14) show that teams want recurring tasks, calendar sync and "
        "better mobile notifications. Recurring tasks came up in 11 of 14 interviews.",
        "Customers want recurring tasks, calendar sync and mobile notifications.",
        "Interviews (n=14): recurring tasks (11/14) lead, then calendar sync and better "
        "mobile notifications.",
    ),
    (
        "The new onboarding checklist raised 7-day activation from 38% to 46% in an A/B test "
        "over 5,200 signups. The effect was strongest for teams of 5 or more.",
        "The onboarding checklist improved activation.",
        "The onboarding checklist lifted 7-day activation from 38% to 46% (A/B, 5,200 "
        "signups), most for teams of 5+.",
    ),
]

_IMPLICIT = ("copy", "accept", "cite_click", "follow_up", "rephrase", "abandon", "early_stop")


@dataclass(frozen=True)
class SampleEvent:
    """One webhook call: which tenant sends it, to which event type, with what JSON body."""

    tenant: str
    kind: EventKind
    body: dict[str, Any] = field(hash=False)

    @property
    def route(self) -> str:
        return {"run": "/v1/runs", "feedback": "/v1/feedback", "edit": "/v1/edits"}[self.kind]


def generate_sample(
    *,
    seed: int = 7,
    runs_per_tenant: int = 16,
    tenants: Sequence[str] = TENANTS,
    start_ms: int = 1_736_000_000_000,
) -> list[SampleEvent]:
    """A deterministic sample: about ``runs_per_tenant`` runs per tenant across both
    features, with the feedback and edits users gave on them, in time order per run.

    Every event carries its own ``event_id`` (what a well-behaved client does)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible sample data, not secrets
    clock = start_ms

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def tick(max_ms: int = 90_000) -> int:
        nonlocal clock
        clock += rng.randint(200, max_ms)
        return clock

    out: list[SampleEvent] = []
    for tenant in tenants:
        users = [f"{tenant}-user-{i}" for i in range(5)]
        for i in range(runs_per_tenant):
            feature = FEATURES[i % len(FEATURES)]
            user = rng.choice(users)
            session = f"{tenant}-sess-{rng.randint(1, 6)}"
            run_id = f"run-{new_id()}"
            if feature == "support_chat":
                question, answer, better = _SUPPORT[rng.randrange(len(_SUPPORT))]
                prompt: Any = [
                    {"role": "system", "content": _SUPPORT_SYSTEM},
                    {"role": "user", "content": question},
                ]
            else:
                doc, answer, better = _SUMMARIES[rng.randrange(len(_SUMMARIES))]
                prompt = f"Summarize for an executive update:\n\n{doc}"
            run = {
                "event_id": new_id(),
                "occurred_at": tick(),
                "run_id": run_id,
                "prompt": prompt,
                "response": answer,
                "model": _MODEL,
                "model_version": rng.choice(_MODEL_VERSIONS),
                "feature": feature,
                "system_prompt_hash": "sha256:" + format(rng.getrandbits(64), "016x"),
                "tokens": {"prompt": rng.randint(40, 900), "completion": rng.randint(20, 300)},
                "cost_usd": round(rng.uniform(0.0001, 0.004), 6),
                "latency_ms": round(rng.uniform(180, 2400), 1),
                "session_id": session,
                "thread_id": f"{session}-t{rng.randint(1, 3)}",
                "user_id": user,
                "trace_id": format(rng.getrandbits(128), "032x"),
                "metadata": {"app_version": rng.choice(["2.3.0", "2.4.1"]), "locale": "en-US"},
            }
            out.append(SampleEvent(tenant, "run", run))

            def feedback(
                kind: str,
                run_id: str = run_id,
                tenant: str = tenant,
                user: str = user,
                session: str = session,
                **fields: Any,
            ) -> None:
                body = {
                    "event_id": new_id(),
                    "occurred_at": tick(30_000),
                    "run_id": run_id,
                    "kind": kind,
                    "user_id": user,
                    "session_id": session,
                    **fields,
                }
                out.append(SampleEvent(tenant, "feedback", body))

            roll = rng.random()
            if roll < 0.2:  # thumbs-down with the answer the user wanted
                feedback("thumbs", value=-1, correction=better, comment="Not quite right.")
            elif roll < 0.35:  # regenerate; the user keeps the second answer
                feedback("regenerate")
                regen_id = f"run-{new_id()}"
                regen = {
                    **run,
                    "event_id": new_id(),
                    "occurred_at": tick(5_000),
                    "run_id": regen_id,
                    "response": better,
                    "parent_run_id": run_id,
                    "trace_id": format(rng.getrandbits(128), "032x"),
                }
                out.append(SampleEvent(tenant, "run", regen))
                feedback("copy", run_id=regen_id)
            elif roll < 0.55:  # the user rewrote the answer before using it
                out.append(
                    SampleEvent(
                        tenant,
                        "edit",
                        {
                            "event_id": new_id(),
                            "occurred_at": tick(120_000),
                            "run_id": run_id,
                            "prompt": prompt,
                            "original": answer,
                            "final": better,
                            "surface": rng.choice(["inline", "draft_editor"]),
                            "time_to_edit_ms": rng.randint(4_000, 90_000),
                            "user_id": user,
                            "model": _MODEL,
                            "model_version": run["model_version"],
                            "feature": feature,
                        },
                    )
                )
                feedback("accept")
            elif roll < 0.75:
                feedback("rating", value=rng.choice([1, 2, 4, 5, 5]))
            elif roll < 0.85:
                feedback("thumbs", value=1)
                feedback("dwell", value=rng.randint(2_000, 60_000))
            elif roll < 0.92:
                feedback("helpful", value=rng.choice([0, 1]))
            else:
                feedback(rng.choice(_IMPLICIT))
    return out
