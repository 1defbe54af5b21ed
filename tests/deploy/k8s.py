"""deploy/k8s rendered with ``kubectl kustomize`` (or a standalone ``kustomize``), and read back:
objects by kind and name, a container's effective FLYWHEEL_* environment."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import yaml

from tests.deploy.engine import REPO, run_command

K8S = REPO / "deploy" / "k8s"
OVERLAYS = tuple(sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir()))
JOB_TEMPLATE = "flywheel-trainer-job-template"
# Stand-ins in the Job template for what differs per run.
EXAMPLE_RUN_ID = "example"
SPEC_PLACEHOLDER = "SPEC_JSON"


def kustomize_command() -> list[str] | None:
    """``kubectl kustomize`` when kubectl is on PATH, else a standalone ``kustomize build``."""
    for name, argv in (("kubectl", ["kustomize"]), ("kustomize", ["build"])):
        found = shutil.which(name)
        if found:
            return [found, *argv]
    return None


def render(overlay: str) -> list[dict[str, Any]]:
    command = kustomize_command()
    if command is None:
        raise FileNotFoundError("neither kubectl nor kustomize is on PATH (make k8s-tools)")
    out = run_command([*command, str(K8S / "overlays" / overlay)], 120.0).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name_prefix: str) -> dict[str, Any]:
    """The one object of ``kind`` whose name starts with ``name_prefix`` (generated ConfigMaps
    carry a hash suffix)."""
    found = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)
    ]
    if len(found) != 1:
        raise LookupError(f"{len(found)} {kind} objects named {name_prefix}*")
    return found[0]


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every pod template."""
    for obj in objects:
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {})
        for container in pod.get("containers", []):
            yield obj, container


def container_env(objects: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """The plain environment of ``workload``'s first container: ConfigMaps it loads with
    envFrom, then its literal env entries (Secrets and fieldRefs are not known here)."""
    container = workload["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(find(objects, "ConfigMap", ref["name"]).get("data", {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def job_template(objects: list[dict[str, Any]]) -> dict[str, Any]:
    data = find(objects, "ConfigMap", JOB_TEMPLATE)["data"]["job.yaml"]
    template: dict[str, Any] = yaml.safe_load(data)
    return template


def custom_kinds(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects of API groups the Kubernetes OpenAPI schema does not cover (Strimzi CRDs)."""
    return [o for o in objects if o["apiVersion"].startswith("kafka.strimzi.io/")]
