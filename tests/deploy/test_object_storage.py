"""An s3:// lake whose concurrent commits could overwrite each other is refused at start-up,
with an error naming the setting and never echoing the storage options (credentials)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from flywheel_common.settings import LakeSettings
from flywheel_curator.settings import CuratorSettings
from pydantic import ValidationError

SECRET = "wJalrXUtnFEMI-not-a-real-key"  # noqa: S105 - a fake key that must never be echoed


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({}, "aws_conditional_put"),
        (
            {"AWS_S3_LOCKING_PROVIDER": "dynamodb", "DELTA_DYNAMO_TABLE_NAME": "locks"},
            "AWS_S3_LOCKING_PROVIDER",
        ),
        ({"aws_conditional_put": "disabled"}, "aws_conditional_put='disabled'"),
        ({"AWS_S3_ALLOW_UNSAFE_RENAME": "true"}, "aws_conditional_put"),
    ],
)
@pytest.mark.parametrize("uri", ["s3://bucket/lake", "s3a://bucket/lake", "S3://bucket/lake"])
def test_unsafe_s3_lakes_are_refused(uri: str, options: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError) as refused:
        LakeSettings(uri=uri, storage_options={**options, "AWS_SECRET_ACCESS_KEY": SECRET})
    message = str(refused.value)
    assert named in message
    assert '"aws_conditional_put": "etag"' in message  # the fix is spelled out
    assert SECRET not in message


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("s3://bucket/lake", {"aws_conditional_put": "etag"}),
        (
            "s3://bucket/lake",
            {"AWS_CONDITIONAL_PUT": " ETag ", "AWS_ENDPOINT_URL": "http://minio:9000"},
        ),
        ("s3://bucket/lake", {"conditional_put": "etag", "AWS_S3_LOCKING_PROVIDER": "dynamodb"}),
        ("/lake", {}),
        ("./lake", {}),
        ("file:///lake", {}),
        ("gs://bucket/lake", {}),
        ("az://container/lake", {}),
        ("abfss://container@account.dfs.core.windows.net/lake", {}),
    ],
)
def test_safe_lakes_are_accepted(uri: str, options: dict[str, str]) -> None:
    assert LakeSettings(uri=uri, storage_options=options).uri == uri


def test_a_service_refuses_it_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_CURATOR_LAKE__URI", "s3://bucket/lake")
    monkeypatch.setenv(
        "FLYWHEEL_CURATOR_LAKE__STORAGE_OPTIONS", f'{{"AWS_SECRET_ACCESS_KEY": "{SECRET}"}}'
    )
    with pytest.raises(ValidationError) as refused:
        CuratorSettings()
    assert refused.value.errors()[0]["loc"] == ("lake", "uri")
    assert SECRET not in str(refused.value)


def test_the_curator_process_does_not_start() -> None:
    """The real entry point: it exits before touching Kafka or the lake."""
    env = {
        **os.environ,
        "FLYWHEEL_CURATOR_LAKE__URI": "s3://bucket/lake",
        "FLYWHEEL_CURATOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "flywheel_curator"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "aws_conditional_put" in proc.stderr
