"""The trainer's one frozen settings object (``FLYWHEEL_TRAINER_*``, ``__`` for nesting),
``JobConfig``, every knob of one LoRA DPO or KTO job (its recipe hash is computed from it), and
``GateSettings``, when a trained adapter may replace the champion (docs/trainer.md)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from flywheel_common.settings import KafkaSettings, LakeSettings, LoggingSettings
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_THRESHOLD",
    "GateSettings",
    "JobConfig",
    "KtoLossType",
    "KtoSettings",
    "KubernetesSettings",
    "LoraSettings",
    "LossType",
    "Method",
    "Precision",
    "TrainerSettings",
]

DEFAULT_THRESHOLD = 1_000
DEFAULT_MIN_INTERVAL_S = 3_600.0
DEFAULT_POLL_INTERVAL_S = 30.0

LossType = Literal[
    "sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero"
]
KtoLossType = Literal["kto", "apo_zero_unpaired"]
Method = Literal["dpo", "kto"]
Precision = Literal["auto", "bf16", "fp32"]


class LoraSettings(BaseModel):
    """The PEFT LoRA adapter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


class KtoSettings(BaseModel):
    """TRL's KTOTrainer on ``kto_examples`` plus the pairs of ``dpo_pairs`` unpaired."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss_type: KtoLossType = "kto"
    # None: set from the class balance of the training rows as TRL documents (the rarer class
    # is up-weighted so desirable_weight*n_desirable : undesirable_weight*n_undesirable lies in
    # [1, 4/3]); see training.kto_weights.
    desirable_weight: float | None = Field(default=None, gt=0)
    undesirable_weight: float | None = Field(default=None, gt=0)
    # Unpair dpo_pairs (chosen -> desirable, rejected -> undesirable) into the KTO set.
    include_pairs: bool = True


class JobConfig(BaseModel):
    """One LoRA preference job. Everything that changes the trained model is here, so its hash
    names the recipe in the registry and the model card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = "dpo"
    kto: KtoSettings = KtoSettings()
    base_model: str = "Qwen/Qwen2.5-0.5B-Instruct"  # hub id or local path
    base_revision: str | None = None
    # Refuse any hub access; HF_HUB_OFFLINE in the job's environment is honoured as well.
    local_files_only: bool = False
    lora: LoraSettings = LoraSettings()
    beta: float = Field(default=0.1, gt=0)
    loss_type: LossType = "sigmoid"
    learning_rate: float = Field(default=5e-6, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = Field(default=-1, ge=-1)  # -1: run the epochs
    max_length: int = Field(default=1024, ge=8)
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    gradient_checkpointing: bool = False
    precision: Precision = "auto"  # auto: bf16 on a GPU that supports it, fp32 on CPU
    seed: int = 0
    # Held-out split by prompt group (split.py): the share of each feature's prompt groups held
    # out, the seed of the group hash, and the size from which a feature always has one.
    eval_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    split_seed: int = 0
    eval_min_feature_groups: int = Field(default=5, ge=1)
    eval_batch_size: int = Field(default=8, ge=1)
    max_eval_pairs: int = Field(default=2_000, ge=1)
    logging_steps: int = Field(default=1, ge=1)

    def recipe_hash(self) -> str:
        """Stable short hash of the recipe (field order independent); the run's config hash
        (``JobSpec.config_hash``) adds the data and the code."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class GateSettings(BaseModel):
    """When a trained adapter may replace the champion (docs/trainer.md, "The gate")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The lower bound of the confidence interval of held-out accuracy gain (candidate minus
    # champion, bootstrapped by prompt group) must be positive and at least this.
    min_accuracy_gain: float = Field(default=0.02, ge=0.0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    bootstrap_resamples: int = Field(default=2_000, ge=100)
    bootstrap_seed: int = 0
    # Fewer held-out pairs or prompt groups than this: the run is "inconclusive".
    min_eval_pairs: int = Field(default=30, ge=1)
    min_eval_groups: int = Field(default=10, ge=2)
    # A slice (feature, source) with at least slice_min_pairs held-out pairs may lose at most
    # slice_tolerance accuracy against the champion.
    slice_min_pairs: int = Field(default=20, ge=1)
    slice_tolerance: float = Field(default=0.05, ge=0.0)
    # The golden set may lose at most this much accuracy against the champion.
    golden_tolerance: float = Field(default=0.0, ge=0.0)
    # Promote automatically when the gate passes; otherwise the run stays "succeeded".
    auto_promote: bool = True


class KubernetesSettings(BaseModel):
    """How the kubernetes launcher renders and submits a batch/v1 Job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = "flywheel"
    image: str = "ghcr.io/flywheel/trainer:latest"
    gpus: int = Field(default=1, ge=0)
    cpu: str = "4"
    memory: str = "32Gi"
    lake_claim: str = "flywheel-lake"  # PersistentVolumeClaim holding the Delta tables
    lake_mount: str = "/lake"
    artifacts_claim: str = "flywheel-artifacts"
    artifacts_mount: str = "/artifacts"
    service_account: str | None = None
    env_secret: str | None = (
        None  # a Secret whose keys become env vars (object-store keys, HF token)
    )
    backoff_limit: int = Field(default=0, ge=0)  # a retried pod would train the version twice
    ttl_seconds_after_finished: int = Field(default=86_400, ge=0)
    node_selector: dict[str, str] = Field(default_factory=dict)
    # Submit only when a cluster is configured; otherwise the manifest is written, not applied.
    submit: bool = False
    kubeconfig: str | None = None


class TrainerSettings(BaseSettings):
    """Everything the trainer can be told. Frozen: built once in main(), passed down."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_TRAINER_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    kafka: KafkaSettings = KafkaSettings(client_id="flywheel-trainer")
    lake: LakeSettings = LakeSettings()
    logging: LoggingSettings = LoggingSettings()
    job: JobConfig = JobConfig()
    gate: GateSettings = GateSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()

    group_id: str = "flywheel-trainer"
    pairs_table: str = "dpo_pairs"
    # Read by KTO jobs when it exists (the curator writes it); DPO jobs ignore it.
    kto_table: str = "kto_examples"
    registry_table: str = "training_runs"
    threshold: int = Field(default=DEFAULT_THRESHOLD, ge=1)  # new pairs that trigger a job
    min_interval_s: float = Field(default=DEFAULT_MIN_INTERVAL_S, ge=0)  # between job launches
    poll_interval_s: float = Field(default=DEFAULT_POLL_INTERVAL_S, gt=0)  # table version poll
    max_concurrent_jobs: int = Field(default=1, ge=1)
    launcher: Literal["local", "kubernetes"] = "local"
    artifact_store: str = "./runs"
    # The golden set, curated by humans: a Delta table (name in the lake, or a URI) with
    # prompt/chosen/rejected columns, pinned to its version at launch and read by time travel;
    # or a JSONL file in TRL's conversational format, pinned by its SHA-256. Without either,
    # nothing guards against learning the wrong thing: the trainer says so loudly.
    golden_table: str | None = None
    golden_eval_path: str | None = None

    def pairs_uri(self) -> str:
        return self.lake.table_uri(self.pairs_table)

    def kto_uri(self) -> str:
        return self.lake.table_uri(self.kto_table)

    def golden_uri(self) -> str | None:
        """The golden table's URI: a bare name lives in the lake, a path or URI is used as is."""
        name = self.golden_table
        if name is None:
            return None
        if "://" in name or name.startswith("/"):
            return name
        return self.lake.table_uri(name)

    @model_validator(mode="after")
    def _one_golden_set(self) -> TrainerSettings:
        if self.golden_table and self.golden_eval_path:
            raise ValueError("set golden_table or golden_eval_path, not both")
        return self

    def registry_uri(self) -> str:
        return self.lake.table_uri(self.registry_table)
