"""The public surface of flywheel_common: exported names, logs, errors, the CLI shell."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import types
import uuid

import flywheel_common
import pytest
from flywheel_common import FlywheelError, JsonFormatter, LakeSettings
from flywheel_common.errors import DecodeError, SinkCommitError, UnknownSchemaError
from flywheel_common.topics import Topics


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name, value in vars(flywheel_common).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(flywheel_common.__all__) == public


def test_error_tree() -> None:
    assert issubclass(UnknownSchemaError, DecodeError)
    assert issubclass(SinkCommitError, FlywheelError)
    err = SinkCommitError("dpo_pairs", "conflict")
    assert "dpo_pairs" in str(err) and err.table == "dpo_pairs"


def test_json_logs_carry_extra_fields() -> None:
    record = logging.LogRecord("svc", logging.WARNING, __file__, 1, "lost %s", ("nothing",), None)
    record.partition = 2
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "lost nothing"
    assert line["level"] == "warning" and line["partition"] == 2
    assert line["ts"].endswith("Z")


def test_lake_table_uris() -> None:
    s3 = LakeSettings(uri="s3://b/lake/", storage_options={"aws_conditional_put": "etag"})
    assert s3.table_uri("dpo_pairs") == "s3://b/lake/dpo_pairs"


def test_flywheel_cli_lists_commands_and_exits_cleanly() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "flywheel_common.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "COMMAND" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "flywheel_common.cli", "no-such-command"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_a_broken_plugin_does_not_take_the_cli_down() -> None:
    from importlib.metadata import EntryPoint

    from flywheel_common.cli import _load_command

    broken = EntryPoint("x", "no_such_module_anywhere:cmd", "flywheel.cli")
    parser = __import__("argparse").ArgumentParser()
    handler = _load_command(broken)(parser)
    assert handler(parser.parse_args([])) == 2


@pytest.mark.parametrize("name", ["codec", "kafka", "settings", "errors", "logs", "topics", "cli"])
def test_every_module_has_a_docstring(name: str) -> None:
    module = __import__(f"flywheel_common.{name}", fromlist=["_"])
    assert (module.__doc__ or "").strip()


def test_topics_cli_creates_and_lists(kafka_bootstrap: str) -> None:
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    base = [sys.executable, "-m", "flywheel_common.cli", "topics"]
    args = ["--bootstrap-servers", kafka_bootstrap, "--prefix", prefix]
    missing = subprocess.run([*base, "list", *args], capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and "missing" in missing.stdout
    first = subprocess.run(
        [*base, "create", *args, "--partitions", "3"], capture_output=True, text=True, check=True
    )
    assert first.stdout.count("created") == len(Topics().all())
    again = subprocess.run(
        [*base, "create", *args, "--partitions", "3"], capture_output=True, text=True, check=True
    )
    assert again.stdout.count("exists") == len(Topics().all())
    wrong = subprocess.run(
        [*base, "create", *args, "--partitions", "4"], capture_output=True, text=True, check=False
    )
    assert wrong.returncode == 2 and "co-partitioning" in wrong.stderr
    listed = subprocess.run([*base, "list", *args], capture_output=True, text=True, check=True)
    assert f"{prefix}.flywheel.runs.v1\t3" in listed.stdout
    assert f"{prefix}.flywheel.curator.pairing.v1\t3" in listed.stdout


def test_topics_cli_names_an_unreachable_broker() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "flywheel_common.cli",
            "topics",
            "list",
            "--bootstrap-servers",
            "127.0.0.1:1",
            "--wait",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "no Kafka broker answered at 127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr
