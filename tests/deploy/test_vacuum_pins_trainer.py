"""The curator's vacuum guard reads the pin exactly as the trainer's registry writes it (the
trainer's ``flywheel data pin``/``unpin``). Needs the trainer environment (make test-trainer)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from flywheel_common.settings import LakeSettings
from flywheel_curator.retention import REGISTRY_TABLE, pinned_version

lake_admin = pytest.importorskip(
    "flywheel_trainer.lake_admin", reason="needs the trainer environment"
)
from flywheel_trainer.settings import TrainerSettings  # noqa: E402


def test_the_registrys_pins_are_what_the_vacuum_guard_reads(tmp_path: Path) -> None:
    settings = TrainerSettings(lake=LakeSettings(uri=str(tmp_path)))
    assert settings.registry_table == REGISTRY_TABLE
    for i in range(3):
        write_deltalake(settings.pairs_uri(), pa.table({"n": [i]}), mode="append")
    registry = settings.registry_uri()
    assert pinned_version(registry, None) is None
    lake_admin.pin(settings, 1, actor="test", reason="reproduce run 1")
    assert pinned_version(registry, None) == 1
    lake_admin.pin(settings, 2, actor="test", reason=None)
    assert pinned_version(registry, None) == 2
    lake_admin.unpin(settings, actor="test", reason=None)
    assert pinned_version(registry, None) is None
