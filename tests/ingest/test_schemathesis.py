"""A bounded, deterministic schemathesis run over the webhook's OpenAPI document, against the
real service and broker: every operation, generated bodies, headers and query parameters (valid
and not), and not one server error. Deterministic (``derandomize``): the coverage phase's
boundary and negative cases for every operation (about 1,500 in all) plus 10 generated cases per
operation and phase; about 30 s."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.metadata import version

import pytest
import requests
import schemathesis
from flywheel_ingest.openapi import build_openapi
from flywheel_ingest.settings import IngestSettings
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.ingest.conftest import ACME_KEY, IngestServer

SCHEMA = schemathesis.openapi.from_dict(
    build_openapi(IngestSettings(), version=version("flywheel-ingest"))
)
CASES_PER_OPERATION = 10
SEEN: dict[str, int] = {}


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@SCHEMA.parametrize()
@settings(
    max_examples=CASES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(
    case: schemathesis.Case, reject_ingest: IngestServer, session: requests.Session
) -> None:
    headers = {"authorization": f"Bearer {ACME_KEY}"}
    response = case.call(base_url=reject_ingest.url, session=session, headers=headers)
    SEEN[case.operation.label] = SEEN.get(case.operation.label, 0) + 1
    case.validate_response(response, checks=[not_a_server_error])


def test_the_run_covered_every_operation_and_counted_no_500(
    reject_ingest: IngestServer, capsys: pytest.CaptureFixture[str]
) -> None:
    operations = {op.ok().label for op in SCHEMA.get_all_operations()}
    assert set(SEEN) == operations, operations - set(SEEN)
    with capsys.disabled():  # the figure RELIABILITY.md quotes
        sys.stdout.write(f"\nschemathesis: {sum(SEEN.values())} cases, {len(SEEN)} operations\n")
    metrics = requests.get(f"{reject_ingest.url}/metrics", timeout=10).text
    assert 'status="500"' not in metrics
