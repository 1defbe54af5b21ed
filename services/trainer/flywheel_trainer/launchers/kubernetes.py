"""The kubernetes launcher: one batch/v1 Job per run, requesting ``nvidia.com/gpu``, with the
lake and the artifact store mounted from PersistentVolumeClaims.

``render_job`` is a pure function (tested for shape without a cluster). The spec travels inline
in the Job's arguments, rewritten to the paths the pod sees; secrets come from ``env_secret``.
``backoffLimit`` defaults to 0: a retried pod would start a second training of the same version.
Submission uses the kubernetes client only when ``kubernetes.submit`` is set (a cluster is
configured); otherwise the manifest is written to the run folder for someone to apply.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flywheel_trainer.errors import LaunchError
from flywheel_trainer.launchers import JobHandle, JobState
from flywheel_trainer.registry import TrainingRun
from flywheel_trainer.settings import KubernetesSettings, TrainerSettings
from flywheel_trainer.spec import JobSpec

__all__ = ["GPU_RESOURCE", "KubernetesLauncher", "job_name", "pod_spec", "render_job"]

log = logging.getLogger(__name__)

GPU_RESOURCE = "nvidia.com/gpu"
_LAKE_VOLUME = "lake"
_ARTIFACTS_VOLUME = "artifacts"
_DRY_RUN = "dry-run"


def job_name(run_id: str) -> str:
    return f"flywheel-train-{run_id}"[:63].rstrip("-")


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _rebase(uri: str, root: str, mount: str) -> str:
    """A local path under ``root`` as seen under ``mount`` in the pod; URIs pass unchanged."""
    if not _is_local(uri):
        return uri
    rel = Path(uri.removeprefix("file://")).resolve().relative_to(Path(root).resolve())
    return str(Path(mount) / rel)


def pod_spec(spec: JobSpec, settings: TrainerSettings) -> JobSpec:
    """The spec with every local path replaced by where the pod mounts it."""
    k8s = settings.kubernetes
    lake_root = settings.lake.uri
    try:
        tables = {
            name: _rebase(uri, lake_root, k8s.lake_mount)
            for name in ("table_uri", "registry_uri", "kto_table_uri", "golden_uri")
            if (uri := getattr(spec, name)) is not None
        }
        return spec.model_copy(
            update={**tables, "artifact_dir": str(Path(k8s.artifacts_mount) / spec.run_id)}
        )
    except ValueError as exc:
        raise LaunchError(spec.run_id, f"a local table is outside the lake root: {exc}") from exc


def render_job(spec: JobSpec, settings: TrainerSettings) -> dict[str, Any]:
    """The batch/v1 Job manifest for ``spec``."""
    k8s: KubernetesSettings = settings.kubernetes
    inner = pod_spec(spec, settings)
    labels = {"app.kubernetes.io/name": "flywheel-trainer", "flywheel.io/run-id": spec.run_id}
    resources: dict[str, dict[str, str]] = {
        "requests": {"cpu": k8s.cpu, "memory": k8s.memory},
        "limits": {"memory": k8s.memory},
    }
    if k8s.gpus:
        # Extended resources are requested through limits (requests default to them).
        resources["limits"][GPU_RESOURCE] = str(k8s.gpus)
    env = [
        {
            "name": "FLYWHEEL_TRAINER_LAKE__URI",
            "value": k8s.lake_mount if _is_local(settings.lake.uri) else settings.lake.uri,
        },
        {"name": "FLYWHEEL_TRAINER_ARTIFACT_STORE", "value": k8s.artifacts_mount},
        {"name": "FLYWHEEL_TRAINER_LOGGING__FORMAT", "value": "json"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    container: dict[str, Any] = {
        "name": "trainer",
        "image": k8s.image,
        "command": ["python", "-m", "flywheel_trainer.job"],
        "args": ["--spec-json", inner.model_dump_json()],
        "env": env,
        "resources": resources,
        "volumeMounts": [
            {"name": _LAKE_VOLUME, "mountPath": k8s.lake_mount},
            {"name": _ARTIFACTS_VOLUME, "mountPath": k8s.artifacts_mount},
        ],
    }
    if k8s.env_secret:
        container["envFrom"] = [{"secretRef": {"name": k8s.env_secret}}]
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": _LAKE_VOLUME, "persistentVolumeClaim": {"claimName": k8s.lake_claim}},
            {
                "name": _ARTIFACTS_VOLUME,
                "persistentVolumeClaim": {"claimName": k8s.artifacts_claim},
            },
        ],
    }
    if k8s.gpus:
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if k8s.node_selector:
        pod["nodeSelector"] = dict(k8s.node_selector)
    if k8s.service_account:
        pod["serviceAccountName"] = k8s.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(spec.run_id), "namespace": k8s.namespace, "labels": labels},
        "spec": {
            "backoffLimit": k8s.backoff_limit,
            "ttlSecondsAfterFinished": k8s.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


class KubernetesLauncher:
    name = "kubernetes"

    def __init__(self, settings: TrainerSettings) -> None:
        self._settings = settings
        self._api: Any = None

    def _batch_api(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            if self._settings.kubernetes.kubeconfig:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=self._settings.kubernetes.kubeconfig
                )
            else:
                try:
                    config.load_incluster_config()  # type: ignore[no-untyped-call]
                except config.ConfigException:
                    config.load_kube_config()  # type: ignore[no-untyped-call]
            self._api = client.BatchV1Api()
        return self._api

    def launch(self, spec: JobSpec) -> JobHandle:
        manifest = render_job(spec, self._settings)
        folder = Path(spec.artifact_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "job.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        if not self._settings.kubernetes.submit:
            log.warning(
                "kubernetes.submit is off: manifest written, not applied",
                extra={"run_id": spec.run_id, "manifest": str(folder / "job.json")},
            )
            return JobHandle(spec.run_id, self.name, _DRY_RUN)
        from kubernetes.client.exceptions import ApiException

        try:
            self._batch_api().create_namespaced_job(namespace=ns, body=manifest)
        except ApiException as exc:
            raise LaunchError(spec.run_id, f"cannot create Job {ns}/{name}: {exc}") from exc
        log.info("kubernetes job created", extra={"run_id": spec.run_id, "job": f"{ns}/{name}"})
        return JobHandle(spec.run_id, self.name, f"{ns}/{name}")

    def state(self, handle: JobHandle) -> JobState:
        if handle.ref in ("", _DRY_RUN):
            return "unknown"
        from kubernetes.client.exceptions import ApiException

        ns, name = handle.ref.split("/", 1)
        try:
            job = self._batch_api().read_namespaced_job_status(name=name, namespace=ns)
        except ApiException as exc:
            if exc.status == 404:
                return "exited"  # deleted (TTL) or never created
            raise LaunchError(handle.run_id, f"cannot read Job {handle.ref}: {exc}") from exc
        status = job.status
        if (status.succeeded or 0) > 0 or (status.failed or 0) > 0:
            return "exited"
        return "running"

    def adopt(self, run: TrainingRun) -> JobHandle:
        return JobHandle(run.run_id, self.name, run.launcher_ref or "")
