"""The last step before anything is written: rows, dead-letter details, error messages and log
records lose their PII whatever the PII filter's policy."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from flywheel_common.logs import JsonFormatter
from flywheel_curator.filters import (
    PiiLogFilter,
    ToxicityScorerError,
    install_log_redaction,
    redact_row,
    redact_text,
)

# One value of each kind the detector knows, and the marker that replaces it.
PII_VALUES = {
    "email": "jane.doe@example.com",
    "phone": "+44 20 7946 0958",
    "card": "4111 1111 1111 1111",
    "ip": "192.168.10.24",
    "national_id": "123-45-6789",
    "secret": "AKIAIOSFODNN7EXAMPLE",
}
ALL = " ".join(f"{kind}: {value};" for kind, value in PII_VALUES.items())


def assert_clean(blob: str) -> None:
    leaked = [kind for kind, value in PII_VALUES.items() if value in blob]
    assert not leaked, f"raw {leaked} in {blob[:2000]}"


def test_redact_text_replaces_every_kind() -> None:
    redacted = redact_text(ALL)
    assert_clean(redacted)
    for kind in PII_VALUES:
        assert f"[{kind.upper()}]" in redacted


@pytest.mark.parametrize(
    "row",
    [
        # dpo_pairs / rejected_candidates / sft_examples shapes
        {"prompt": [{"role": "user", "content": ALL}], "chosen": ALL, "rejected": ALL},
        {"prompt": [{"role": "system", "content": ALL}], "response": ALL, "detail": None},
        {"chosen": ALL, "rejected": "", "detail": f"kinds=email; {ALL}", "prompt": []},
    ],
)
def test_redact_row_covers_every_text_column(row: dict[str, Any]) -> None:
    keys = dict.fromkeys(row)
    out = redact_row(row)
    assert out is row and list(out) == list(keys)  # in place, same columns
    assert_clean(json.dumps(out))


def test_redact_row_leaves_other_columns_alone() -> None:
    row = {"pair_id": "ab" * 32, "run_id": "r-1", "similarity": 0.5, "reasons": ["pii"]}
    assert redact_row(dict(row)) == row


def test_toxicity_scorer_error_never_carries_pii() -> None:
    err = ToxicityScorerError("judge/m", f"ValueError: could not convert string to float: {ALL!r}")
    assert_clean(str(err))
    assert_clean(err.reason)
    assert "[EMAIL]" in err.reason


def _json_log(logger: logging.Logger) -> io.StringIO:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return out


def test_log_filter_redacts_message_args_extras_and_traceback() -> None:
    logger = logging.getLogger("tests.redaction.direct")
    out = _json_log(logger)
    install_log_redaction(logger)
    install_log_redaction(logger)  # idempotent
    assert sum(isinstance(f, PiiLogFilter) for f in logger.handlers[0].filters) == 1
    logger.info("plain %s", ALL, extra={"text": ALL, "items": [ALL], "count": 3})
    try:
        raise ValueError(ALL)
    except ValueError:
        logger.exception("failed on %r", ALL)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert_clean(out.getvalue())
    first, second = lines
    assert "[EMAIL]" in first["msg"] and "[CARD]" in first["text"]
    assert first["count"] == 3  # untouched where there is nothing to redact
    assert "Traceback" in second["exc"] and "[SECRET]" in second["exc"]


def test_log_filter_sees_child_loggers_through_the_handler() -> None:
    parent = logging.getLogger("tests.redaction.parent")
    out = _json_log(parent)
    install_log_redaction(parent)
    logging.getLogger("tests.redaction.parent.child").warning("from a module: %s", ALL)
    assert out.getvalue()
    assert_clean(out.getvalue())
