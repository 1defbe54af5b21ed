"""deploy/k8s and the trainer's kubernetes launcher agree: the Job template in the manifests is
the Job ``render_job`` makes under the manifests' own settings, and the trainer's Role grants
exactly the API calls the launcher makes. Needs the trainer environment (make test-trainer)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.deploy.k8s import (
    EXAMPLE_RUN_ID,
    K8S,
    OVERLAYS,
    SPEC_PLACEHOLDER,
    container_env,
    find,
    job_template,
    render,
)

kubernetes_launcher = pytest.importorskip(
    "flywheel_trainer.launchers.kubernetes", reason="needs the trainer environment"
)
from flywheel_trainer.settings import TrainerSettings  # noqa: E402
from flywheel_trainer.spec import JobSpec  # noqa: E402

# kubernetes-client method names: <verb>_namespaced_<resource>[_<subresource>].
_VERBS = {
    "create": "create",
    "read": "get",
    "list": "list",
    "delete": "delete",
    "patch": "patch",
    "replace": "update",
}
_METHOD = re.compile(
    r"^(create|read|list|delete|patch|replace)_namespaced_([a-z]+?)(?:_(status))?$"
)


def _trainer_settings(
    objects: list[dict[str, Any]], overlay: str, mp: pytest.MonkeyPatch
) -> TrainerSettings:
    """TrainerSettings from the trainer Deployment's environment, plus the example Secret values
    an overlay documents (e.g. the S3 storage options)."""
    env = container_env(objects, find(objects, "Deployment", "flywheel-trainer"))
    example = K8S / "overlays" / overlay / "secrets.example.env"
    if example.exists():
        for line in example.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.startswith("FLYWHEEL_TRAINER_LAKE__") and "<" not in value:
                env[name] = value
    for name in list(os.environ):
        if name.startswith("FLYWHEEL_TRAINER_"):
            mp.delenv(name)
    for name, value in env.items():
        if name.startswith("FLYWHEEL_TRAINER_"):
            mp.setenv(name, value)
    return TrainerSettings()


def _example_spec(settings: TrainerSettings, artifact_dir: str | None = None) -> JobSpec:
    return JobSpec(
        run_id=EXAMPLE_RUN_ID,
        table_uri=settings.pairs_uri(),
        dataset_version=0,
        registry_uri=settings.registry_uri(),
        artifact_dir=artifact_dir or f"{settings.artifact_store}/{EXAMPLE_RUN_ID}",
        job=settings.job,
        gate=settings.gate,
        code_version="0",
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_job_template_is_the_launchers_job(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(overlay)
    settings = _trainer_settings(objects, overlay, monkeypatch)
    rendered = kubernetes_launcher.render_job(_example_spec(settings), settings)
    rendered["spec"]["template"]["spec"]["containers"][0]["args"][1] = SPEC_PLACEHOLDER
    assert job_template(objects) == rendered, (
        f"deploy/k8s template for {overlay} differs from launchers/kubernetes.py; it should be:\n"
        + yaml.safe_dump(rendered, sort_keys=False)
    )
    # The Job runs the image the Deployment runs, in the namespace the manifests use.
    trainer = find(objects, "Deployment", "flywheel-trainer")
    assert (
        rendered["spec"]["template"]["spec"]["containers"][0]["image"]
        == (trainer["spec"]["template"]["spec"]["containers"][0]["image"])
    )
    assert rendered["metadata"]["namespace"] == trainer["metadata"]["namespace"]


class _RecordingBatchApi:
    """Stands in for kubernetes.client.BatchV1Api: records every method the launcher calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return SimpleNamespace(status=SimpleNamespace(succeeded=None, failed=None))

        return call


def _permission(method: str) -> tuple[str, str, str]:
    match = _METHOD.match(method)
    assert match, f"the launcher calls {method}: map it to an RBAC rule"
    verb, resource, sub = match.groups()
    return ("batch", f"{resource}s" + (f"/{sub}" if sub else ""), _VERBS[verb])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_trainer_role_grants_exactly_the_launchers_calls(
    overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objects = render(overlay)
    settings = _trainer_settings(objects, overlay, monkeypatch)
    launcher = kubernetes_launcher.KubernetesLauncher(
        settings.model_copy(
            update={"kubernetes": settings.kubernetes.model_copy(update={"submit": True})}
        )
    )
    api = _RecordingBatchApi()
    launcher._api = api  # the launcher's client, replaced: no cluster here
    handle = launcher.launch(_example_spec(settings, artifact_dir=str(tmp_path)))
    launcher.state(handle)
    used = {_permission(method) for method in api.calls}
    role = find(objects, "Role", "flywheel-trainer-launcher")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == used
    binding = find(objects, "RoleBinding", "flywheel-trainer-launcher")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "flywheel-trainer",
            "namespace": role["metadata"]["namespace"],
        }
    ]
    trainer = find(objects, "Deployment", "flywheel-trainer")
    assert trainer["spec"]["template"]["spec"]["serviceAccountName"] == "flywheel-trainer"
