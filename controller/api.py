"""The DeepLabTraining API (`deeplab.io/v1alpha1`): the one source of truth for spec and status.

The CRD's OpenAPI schema is generated from these models (``controller.crd``); the controller parses
the objects it reads with the same models, so what the API server validates and what the controller
understands can never drift apart. Field names are camelCase on the wire (aliases) and snake_case in
Python; attribute docstrings become the schema's descriptions (``kubectl explain``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "deeplab.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DeepLabTraining"
PLURAL = "deeplabtrainings"
SINGULAR = "deeplabtraining"
SHORT_NAMES = ["dlt"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DEFAULT_NPU_RESOURCE = "huawei.com/Ascend910"
MAX_STAGES = 16
MAX_WORKERS = 4096


def _cel(*rules: tuple[str, ...]) -> dict[str, Any]:
    """CEL rules evaluated by the API server itself: a bad manifest is refused at `kubectl apply`.

    Each rule is ``(rule, message)`` or ``(rule, message, fieldPath)``: the field path makes the API
    server name the offending field (``spec.workers: Invalid value: ...``) instead of the object.
    """
    out = []
    for rule, message, *path in rules:
        entry = {"rule": rule, "message": message}
        if path:
            entry["fieldPath"] = path[0]
        out.append(entry)
    return {"x-kubernetes-validations": out}


class Model(BaseModel):
    # extra="ignore": the API server prunes unknown fields anyway; a newer CRD must not break an
    # older controller that reads it.
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_attribute_docstrings=True
    )

    def wire(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optionals (what the API server stores)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# -- spec ----------------------------------------------------------------------------------------
class Launcher(str, Enum):
    RANK_TABLE = "rankTable"
    DYNAMIC_CLUSTER = "dynamicCluster"


class PullPolicy(str, Enum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class ModelName(str, Enum):
    S16 = "deeplab_v3_s16"
    S8 = "deeplab_v3_s8"


class LRType(str, Enum):
    COS = "cos"
    POLY = "poly"
    EXP = "exp"


class Gang(str, Enum):
    VOLCANO = "volcano"


class PVCSource(Model):
    claim_name: str = Field(min_length=1, max_length=253)
    """Name of a PersistentVolumeClaim in the training's namespace."""
    read_only: bool | None = None
    """Mount the claim read-only (the data and pretrained volumes are always mounted read-only)."""


class HostPathSource(Model):
    path: str = Field(min_length=1, max_length=4096)
    """Directory on the node (single-node or pre-synchronised clusters only)."""
    type: str | None = Field(default=None, max_length=64)
    """hostPath type, e.g. Directory or DirectoryOrCreate."""


class EmptyDirSource(Model):
    medium: str | None = Field(default=None, max_length=16)
    size_limit: str | None = Field(default=None, max_length=32)


class VolumeSource(Model):
    """Exactly one of persistentVolumeClaim, hostPath, emptyDir."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "[has(self.persistentVolumeClaim), has(self.hostPath), has(self.emptyDir)]"
                ".filter(x, x).size() == 1",
                "exactly one of persistentVolumeClaim, hostPath, emptyDir must be set",
            )
        )
    )

    persistent_volume_claim: PVCSource | None = None
    host_path: HostPathSource | None = None
    empty_dir: EmptyDirSource | None = None


class PretrainedSource(VolumeSource):
    """Where the backbone checkpoint lives: a volume plus the file's path inside it."""

    model_config = ConfigDict(json_schema_extra=VolumeSource.model_config["json_schema_extra"])

    path: str = Field(min_length=1, max_length=1024)
    """The checkpoint file, relative to the volume's root (mounted at /pretrained)."""


class Volumes(Model):
    data: VolumeSource
    """The datasets (MindRecord files and lists), mounted read-only at /data."""
    checkpoints: VolumeSource
    """Shared by every worker and stage (e.g. a ReadWriteMany PVC), mounted at /checkpoints."""
    pretrained: PretrainedSource | None = None
    """The backbone checkpoint the first stage starts from (optional: random initialisation)."""


class Evaluate(Model):
    data_root: str = Field(default="/data", max_length=1024)
    """Root the list's relative paths are resolved against."""
    data_list: str = Field(min_length=1, max_length=1024)
    """List file of `image label` pairs (relative paths resolve under /data)."""
    scales: list[float] = Field(default=[1.0], min_length=1, max_length=8)
    """Evaluation scales (multi-scale inference sums the probabilities)."""
    flip: bool = False
    """Add horizontally flipped inference."""


class Stage(Model):
    name: str = Field(min_length=1, max_length=40, pattern=DNS_LABEL)
    """DNS label naming the stage (also the checkpoint directory: /checkpoints/<training>/<name>)."""
    model: ModelName = ModelName.S16
    data_file: str = Field(min_length=1, max_length=1024)
    """Training MindRecord file (relative paths resolve under /data)."""
    epochs: int = Field(ge=1, le=100000)
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Batch size per device."""
    base_lr: float = Field(default=0.015, alias="baseLR", gt=0)
    lr_type: LRType = LRType.COS
    min_scale: float = Field(default=0.5, gt=0)
    max_scale: float = Field(default=2.0, gt=0)
    crop_size: int = Field(default=513, ge=1, le=8192)
    num_classes: int = Field(default=21, ge=1, le=10000)
    ignore_label: int = Field(default=255, ge=0, le=65535)
    loss_scale: float = Field(default=3072.0, ge=1)
    save_steps: int = Field(default=1000, ge=1)
    keep_checkpoint_max: int = Field(default=5, ge=1, le=1000)
    extra_args: list[str] = Field(default=[], max_length=64)
    """Extra `train` flags, appended verbatim."""
    init_from: str | None = Field(default=None, max_length=40, pattern=DNS_LABEL)
    """An earlier stage whose final checkpoint initialises this one (default: the previous stage;
    the first stage starts from the pretrained backbone)."""
    evaluate: Evaluate | None = None
    """Evaluate the stage's final checkpoint and record its mIoU."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.minScale <= self.maxScale", "minScale must not exceed maxScale", ".minScale")
        )
    )


class PodTemplatePatch(Model):
    """What a cluster needs to add to every worker pod."""

    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = Field(default=None, max_length=64)
    resources: dict[str, Any] | None = None
    """Merged with the NPU request (e.g. cpu/memory requests and limits)."""
    env: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    annotations: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    priority_class_name: str | None = Field(default=None, max_length=253)


_SPEC_RULES = _cel(
    (
        "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
        "stage names must be unique",
        ".stages",
    ),
    (
        "self.stages.all(i, s, !has(s.initFrom) || self.stages.exists(j, t, j < i && t.name == s.initFrom))",
        "initFrom must name an earlier stage",
        ".stages",
    ),
    (
        "self.npuResource == '' || self.workers <= self.npusPerServer || "
        "self.workers % self.npusPerServer == 0",
        "workers spanning more than one server must fill whole servers (a multiple of npusPerServer)",
        ".workers",
    ),
    (
        "!has(self.gang) || !has(self.schedulerName) || self.schedulerName == 'volcano'",
        "gang: volcano needs schedulerName volcano (or leave schedulerName unset)",
        ".schedulerName",
    ),
)

_IMMUTABLE = _cel(
    (
        "self.workers == oldSelf.workers && self.launcher == oldSelf.launcher && "
        "self.stages == oldSelf.stages && self.volumes == oldSelf.volumes",
        "workers, launcher, stages and volumes are immutable; create a new training instead",
    )
)


class DeepLabTrainingSpec(Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": _SPEC_RULES["x-kubernetes-validations"]
            + _IMMUTABLE["x-kubernetes-validations"]
        }
    )

    image: str = Field(min_length=1, max_length=1024)
    """Worker image (runs `python -m job launch -- train ...`)."""
    image_pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    workers: int = Field(ge=1, le=MAX_WORKERS)
    """Worker pods, one NPU each."""
    npus_per_server: int = Field(default=8, ge=1, le=64)
    """NPUs per server: the rank table groups ranks per server."""
    npu_resource: str = Field(default=DEFAULT_NPU_RESOURCE, max_length=253)
    """Extended resource requested once per worker; empty for CPU workers."""
    launcher: Launcher = Launcher.RANK_TABLE
    """rankTable: HCCL rank table (Ascend). dynamicCluster: MindSpore scheduler + workers (MS_*)."""
    scheduler_port: int = Field(default=8118, ge=1024, le=65535)
    """dynamicCluster only: the MindSpore scheduler's port."""
    volumes: Volumes
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)
    """Run in order; each starts from an earlier stage's final checkpoint."""
    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Failed attempts allowed per stage before the training fails."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the training when it has been active (not suspended) for this long."""
    suspend: bool = False
    """Delete the running pods and keep the progress; unsuspending starts a new attempt that resumes."""
    pending_timeout_seconds: int = Field(default=600, ge=0, le=604800)
    """How long an attempt's pods may wait to run (unschedulable, image pull, missing volume) before the
    training fails with reason PendingTimeout, freeing the NPUs its placed pods hold; 0 waits forever.
    The cause is reported at once in the PodsPending condition and an event."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the training (and everything it created) this long after it finished."""
    scheduler_name: str | None = Field(default=None, max_length=253)
    gang: Gang | None = None
    """volcano: create a Volcano PodGroup so all workers are scheduled together or not at all."""
    template: PodTemplatePatch | None = None


# -- status --------------------------------------------------------------------------------------
class Phase(str, Enum):
    PENDING = "Pending"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


FINISHED = (Phase.SUCCEEDED, Phase.FAILED)


class Condition(Model):
    """The standard metav1.Condition shape."""

    type: str = Field(max_length=316)
    status: str = Field(json_schema_extra={"enum": ["True", "False", "Unknown"]})
    reason: str = Field(default="", max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str = Field(json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None


class StageStatus(Model):
    name: str
    phase: Phase = Phase.PENDING
    attempts: int = 0
    """Attempts started (a suspension and a failure each start a new one)."""
    failures: int = 0
    """Failed attempts, compared with backoffLimit."""
    start_time: str | None = None
    completion_time: str | None = None
    checkpoint: str | None = None
    """The stage's final checkpoint, as reported by rank 0."""
    loss: float | None = None
    miou: float | None = None
    message: str | None = None


class Progress(Model):
    """Rank 0's newest JSON progress line."""

    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    lr: float | None = None
    images_per_second: float | None = None
    eta_seconds: float | None = None
    update_time: str | None = None


class DeepLabTrainingStatus(Model):
    phase: Phase | None = None
    stage: str | None = None
    """Printable position, e.g. `2/3 s8-vocaug`."""
    stage_index: int | None = None
    attempt: int | None = None
    """The current stage's attempt number."""
    attempt_id: str | None = None
    """Identifies the current attempt's pods and rank table (DEEPLAB_ATTEMPT)."""
    attempt_start_time: str | None = None
    """When the current attempt started (pendingTimeoutSeconds counts from here)."""
    epoch: str | None = None
    """Printable `epoch/epochs` of the current stage."""
    miou: float | None = None
    """mIoU of the newest evaluated stage."""
    progress: Progress | None = None
    stages: list[StageStatus] | None = None
    start_time: str | None = None
    completion_time: str | None = None
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None


class DeepLabTraining(Model):
    """Multi-stage DeepLabV3 training on Ascend NPUs (or CPUs/GPUs through MindSpore's dynamic cluster)."""

    spec: DeepLabTrainingSpec
    status: DeepLabTrainingStatus | None = None


PRINTER_COLUMNS = [
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Epoch", "type": "string", "jsonPath": ".status.epoch"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "mIoU", "type": "number", "jsonPath": ".status.miou"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


# -- a parsed object -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Training:
    """A DeepLabTraining as read from the API server: identity, parsed spec and status."""

    name: str
    namespace: str
    uid: str
    generation: int
    resource_version: str
    spec: DeepLabTrainingSpec
    status: DeepLabTrainingStatus
    deleting: bool = False

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> Training:
        meta = obj["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace", "default"),
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 1)),
            resource_version=meta.get("resourceVersion", ""),
            spec=DeepLabTrainingSpec.model_validate(obj["spec"]),
            status=DeepLabTrainingStatus.model_validate(obj.get("status") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
        )
