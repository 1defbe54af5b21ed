"""deploy/k8s: every overlay renders with kustomize, every object validates offline against the
Kubernetes OpenAPI schema, and the manifests keep the promises docs/deploy.md makes."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
from flywheel_common.settings import Topics
from flywheel_curator.settings import CuratorSettings
from flywheel_ingest.settings import IngestSettings

from tests.deploy.k8s import (
    K8S,
    OVERLAYS,
    containers,
    custom_kinds,
    find,
    kustomize_command,
    render,
)
from tests.deploy_env import unknown_variables

# The oldest Kubernetes the manifests are checked against (autoscaling/v2 and policy/v1 are GA
# since 1.23; kubectl here is 1.32).
KUBERNETES_VERSION = "1.30"
SERVICES = ("flywheel-ingest", "flywheel-curator", "flywheel-trainer")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if kustomize_command() is None:
        pytest.skip("neither kubectl nor kustomize is on PATH; `make k8s-tools` installs kustomize")
    overlay: str = request.param
    return overlay, render(overlay)


def test_every_object_validates_against_the_kubernetes_schema(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    builtin = [o for o in objects if o not in custom_kinds(objects)]
    assert {o["kind"] for o in builtin} >= {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "StatefulSet",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PersistentVolumeClaim",
    }
    for obj in builtin:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_validator_is_not_a_rubber_stamp() -> None:
    objects = render(OVERLAYS[0])
    broken = copy.deepcopy(find(objects, "Deployment", "flywheel-ingest"))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {"cpu": "1"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_settings_name_real_fields(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    settings = find(objects, "ConfigMap", "flywheel-settings")["data"]
    assert unknown_variables(IngestSettings, settings) == []
    assert unknown_variables(CuratorSettings, settings) == []
    for name, value in settings.items():
        assert value.strip() == value and value, f"{name}={value!r}"


def test_curators_never_outnumber_partitions(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    settings = find(objects, "ConfigMap", "flywheel-settings")["data"]
    partitions = {int(v) for k, v in settings.items() if k.endswith("_KAFKA__PARTITIONS")}
    assert len(partitions) == 1, "every service must see one partition count"
    curator = find(objects, "StatefulSet", "flywheel-curator")
    assert 1 <= curator["spec"]["replicas"] <= partitions.pop()


def test_strimzi_topics_match_the_settings(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    topics = [o for o in custom_kinds(objects) if o["kind"] == "KafkaTopic"]
    if not topics:
        return  # this overlay creates its topics with the topics Job
    settings = find(objects, "ConfigMap", "flywheel-settings")["data"]
    assert sorted(t["spec"]["topicName"] for t in topics) == sorted(Topics().all())
    for topic in topics:
        assert str(topic["spec"]["partitions"]) == settings["FLYWHEEL_CURATOR_KAFKA__PARTITIONS"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"]


def test_pods_run_unprivileged_with_requests_and_limits(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    seen = set()
    for workload, container in containers(objects):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        seen.add(name)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert security["readOnlyRootFilesystem"] is True, name
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
        assert {"cpu", "memory"} <= container["resources"]["limits"].keys(), name
    assert set(SERVICES) <= seen


def test_services_have_probes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for name in ("flywheel-ingest", "flywheel-curator"):
        kind = "Deployment" if name == "flywheel-ingest" else "StatefulSet"
        container = find(objects, kind, name)["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"], name
        assert container["livenessProbe"]["httpGet"]["path"], name


def test_ingest_scales_behind_a_service_with_a_budget(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    hpa = find(objects, "HorizontalPodAutoscaler", "flywheel-ingest")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "flywheel-ingest"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = find(objects, "PodDisruptionBudget", "flywheel-ingest")
    assert pdb["spec"]["maxUnavailable"] == 1  # a drain never takes every replica at once
    service = find(objects, "Service", "flywheel-ingest")
    assert service["spec"]["selector"] == pdb["spec"]["selector"]["matchLabels"]


def test_one_trainer_watcher(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    trainer = find(objects, "Deployment", "flywheel-trainer")
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"]["type"] == "Recreate"


def test_every_secret_is_rendered_or_documented(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    present = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    example = K8S / "overlays" / overlay / "secrets.example.env"
    documented = example.read_text() if example.exists() else ""
    settings = find(objects, "ConfigMap", "flywheel-settings")["data"]
    job_secret = settings.get("FLYWHEEL_TRAINER_KUBERNETES__ENV_SECRET")
    required = {job_secret} if job_secret else set()
    for _, container in containers(objects):
        for source in container.get("envFrom", []):
            ref = source.get("secretRef")
            if ref and not ref.get("optional"):
                required.add(ref["name"])
    for name in required:
        assert name in present or f"# {name}" in documented, name
